//! A global allocator for programs that run kernels (`kc`): the system allocator, except for blocks of 1 MiB
//! or more (tensors), which start a multiple of 64 bytes past a 2 MiB boundary, successive blocks at offsets
//! 1,088 bytes (17 lines) apart modulo 64 KiB.
//!
//! Why: glibc serves a large request with its own `mmap`, and the block starts 16 bytes into a page: a
//! tensor's elements start 16 bytes past a cache line, so every 64-byte vector load or store of a streaming
//! kernel spans two lines. Measured on the Zen 4 host with a C loop of AdamW's arithmetic in zmm registers
//! over four 64 MiB arrays: 12–12.5 ms with the arrays page-aligned (glibc's `aligned_alloc(4096, ..)`),
//! 8.6–9.6 ms with them 2 MiB-aligned, at equal offsets or 1,088 bytes apart; kc's adamw at 16.7 M parameters
//! (one thread) went from 15.0 to 8.8–9.8 ms. The offsets differ so that a kernel streaming many tensors does
//! not find them all in the same L1 sets (with every block at offset 0, rmsnorm's backward, which streams
//! more tensors, went from 78–96 to 120–131 ms; staggered, it is as before within the noise). A block's
//! place depends only on its layout and its address, so `dealloc` finds the 2 MiB boundary below it, and
//! under that boundary the address of the memory it came from.
//!
//! The memory is taken at the system's own alignment and aligned here, so that a zeroed block comes from
//! `calloc`: fresh pages, not written until the kernel writes them, which `gm::huge_pages` can still advise
//! to be huge pages. Asked for 2 MiB alignment, the system allocator clears every byte itself: each large
//! zeroed tensor (every intermediate and output) was written through once before its launch and mapped in
//! 4 KiB pages. `kc bench` of `moe_experts` spent about 3 s of its setup in that `memset` (the whole
//! command took 10.3–12.9 s before, 9.0–10.4 s after, three runs each).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Blocks of at least this many bytes (and an alignment of at most [`LINE`]) are placed by this allocator.
pub const LARGE: usize = 1 << 20;
/// The boundary such a block's memory starts on: a transparent huge page.
pub const ALIGN: usize = 2 << 20;
/// A cache line: a large block starts at a multiple of it past the boundary.
pub const LINE: usize = 64;
/// The offsets of successive large blocks step by [`STAGGER`] bytes modulo [`SPAN`].
pub const STAGGER: usize = 17 * LINE;
pub const SPAN: usize = 64 << 10;

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// The allocator (`#[global_allocator] static A: kc_runtime::alloc::Aligned = kc_runtime::alloc::Aligned;`).
pub struct Aligned;

impl Aligned {
    /// A block for `l` (`zeroed`: of zero bytes).
    ///
    /// # Safety
    /// As [`GlobalAlloc::alloc`].
    unsafe fn take(&self, l: Layout, zeroed: bool) -> *mut u8 {
        let Some(big) = placed(l) else {
            // SAFETY: forwarded contract.
            return unsafe {
                if zeroed {
                    System.alloc_zeroed(l)
                } else {
                    System.alloc(l)
                }
            };
        };
        // SAFETY: a non-zero size. The system's memory at its own alignment: `calloc` for a zeroed block, which
        // maps fresh pages for a large one and writes nothing (asked for 2 MiB alignment, `System` allocates
        // and then clears every byte, touching every page before `gm::huge_pages` can advise them).
        let raw = unsafe {
            if zeroed {
                System.alloc_zeroed(big)
            } else {
                System.alloc(big)
            }
        };
        if raw.is_null() {
            return raw;
        }
        // The first 2 MiB boundary with room for the address of `raw` in the 8 bytes below it.
        let aligned = (raw as usize + HEADER).next_multiple_of(ALIGN);
        let off = NEXT.fetch_add(1, Ordering::Relaxed) % (SPAN / STAGGER) * STAGGER;
        // SAFETY: `raw + HEADER <= aligned` and `aligned + off + l.size() <= raw + big.size()` (`placed`); the
        // word below `aligned` is 8-aligned memory of the block taken, outside the block handed out.
        unsafe {
            let at = raw.add(aligned - raw as usize);
            at.sub(HEADER).cast::<usize>().write(raw as usize);
            at.add(off)
        }
    }
}

/// The bytes below a placed block's 2 MiB boundary that hold the address the system gave.
const HEADER: usize = 8;

/// Whether a block of layout `l` is placed here, and the layout of the memory taken for it from the system.
fn placed(l: Layout) -> Option<Layout> {
    if l.size() < LARGE || l.align() > LINE {
        return None;
    }
    // Room for the boundary (at most ALIGN - 1 + HEADER past the system's address) and the offset (< SPAN);
    // the system's own alignment (16), so that a zeroed block is `calloc`'s.
    Layout::from_size_align(l.size().checked_add(SPAN + ALIGN)?, 16).ok()
}

// SAFETY: a placed block is `b + off` with `b` the first 2 MiB boundary at least `HEADER` bytes past `raw`,
// the system's block of layout `placed(l)`, whose address is stored in the word below `b`, and `off < SPAN <
// ALIGN` a multiple of `LINE` (so the block is aligned for `l` and ends inside the memory taken); `dealloc`
// gets the same `l` (the `GlobalAlloc` contract), recomputes `placed(l)`, finds `b` by rounding the pointer
// down to `ALIGN` and `raw` below it. Other blocks go to `System` unchanged.
unsafe impl GlobalAlloc for Aligned {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        // SAFETY: forwarded contract (non-zero size).
        unsafe { self.take(l, false) }
    }

    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        // SAFETY: as `alloc`. The system's zeroed memory (fresh pages, not written: `gm::huge_pages` can
        // still advise them before their first touch).
        unsafe { self.take(l, true) }
    }

    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        match placed(l) {
            // SAFETY: `p` came from `System.alloc(l)`.
            None => unsafe { System.dealloc(p, l) },
            Some(big) => {
                let off = p as usize % ALIGN;
                // SAFETY: `p - off` is the 2 MiB boundary `take` chose (`off < SPAN < ALIGN`), and the word below
                // it the address the system gave for `big`.
                unsafe {
                    let raw = p.sub(off).sub(HEADER).cast::<usize>().read() as *mut u8;
                    System.dealloc(raw, big)
                }
            }
        }
    }

    unsafe fn realloc(&self, p: *mut u8, l: Layout, new_size: usize) -> *mut u8 {
        let Ok(nl) = Layout::from_size_align(new_size, l.align()) else { return std::ptr::null_mut() };
        if placed(l).is_none() && placed(nl).is_none() {
            // SAFETY: both the system's blocks.
            return unsafe { System.realloc(p, l, new_size) };
        }
        // SAFETY: a new block, the common prefix copied, the old block freed with its own layout.
        unsafe {
            let q = self.alloc(nl);
            if !q.is_null() {
                std::ptr::copy_nonoverlapping(p, q, l.size().min(new_size));
                self.dealloc(p, l);
            }
            q
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Large blocks start a multiple of 64 bytes less than 64 KiB past a 2 MiB boundary, successive ones at
    /// different offsets; zeroed ones are zero; `realloc` keeps the contents across the small/large border
    /// both ways; small blocks and blocks asking for more than a line's alignment are the system's.
    #[test]
    fn large_blocks_are_placed_and_keep_their_contents() {
        let a = Aligned;
        let big = Layout::from_size_align(3 << 20, 4).expect("layout");
        unsafe {
            let (p, q) = (a.alloc(big), a.alloc_zeroed(big));
            assert!(!p.is_null() && !q.is_null());
            for x in [p, q] {
                assert_eq!(x as usize % LINE, 0);
                assert!(x as usize % ALIGN < SPAN);
            }
            assert_ne!(p as usize % ALIGN, q as usize % ALIGN, "successive blocks at one offset");
            assert!(std::slice::from_raw_parts(q, big.size()).iter().all(|&b| b == 0));
            std::ptr::write_bytes(p, 7, big.size());
            a.dealloc(q, big);
            // Large → small → large, and the bytes stay.
            let small = a.realloc(p, big, 1000);
            assert!(std::slice::from_raw_parts(small, 1000).iter().all(|&b| b == 7));
            let s = Layout::from_size_align(1000, 4).expect("layout");
            let back = a.realloc(small, s, 5 << 20);
            assert!(back as usize % ALIGN < SPAN && (back as usize).is_multiple_of(LINE));
            assert!(std::slice::from_raw_parts(back, 1000).iter().all(|&b| b == 7));
            a.dealloc(back, Layout::from_size_align(5 << 20, 4).expect("layout"));
            // A page-aligned request is left to the system, aligned as asked.
            let page = Layout::from_size_align(2 << 20, 4096).expect("layout");
            let r = a.alloc(page);
            assert_eq!(r as usize % 4096, 0);
            a.dealloc(r, page);
        }
    }
}

//! What the runtime's timing examples share: clocks, and memory backed by huge pages.

#[repr(C)]
struct Timespec {
    sec: i64,
    nsec: i64,
}

extern "C" {
    fn clock_gettime(clock: i32, ts: *mut Timespec) -> i32;
    fn madvise(addr: *mut std::ffi::c_void, len: usize, advice: i32) -> i32;
}

/// `CLOCK_THREAD_CPUTIME_ID`: this thread's CPU time, less disturbed by other processes on a busy machine
/// than the wall clock.
pub const THREAD_CPU: i32 = 3;
/// `CLOCK_MONOTONIC`: wall time.
#[allow(dead_code)]
pub const WALL: i32 = 1;

/// A clock's time in seconds.
pub fn clock(id: i32) -> f64 {
    let mut ts = Timespec { sec: 0, nsec: 0 };
    // SAFETY: a valid output pointer; an unknown clock id leaves it zero.
    unsafe { clock_gettime(id, &mut ts) };
    ts.sec as f64 + ts.nsec as f64 * 1e-9
}

/// `len` zeroed `T` in 2 MiB-aligned memory advised to be backed by huge pages (`MADV_HUGEPAGE`), as
/// `kc bench`'s copies of its inputs; leaked on purpose. For `T` whose all-zero bytes are a valid value.
pub fn huge_zeroed<T: Copy>(len: usize) -> &'static mut [T] {
    let bytes = (len * std::mem::size_of::<T>()).max(1);
    let layout = std::alloc::Layout::from_size_align(bytes.div_ceil(2 << 20) * (2 << 20), 2 << 20).unwrap();
    // SAFETY: a non-zero size, aligned for any `T` here (u16, f32); the memory is zeroed, which the callers'
    // types (integers, floats) accept as values; never freed, so the slice may be 'static.
    unsafe {
        let p = std::alloc::alloc_zeroed(layout);
        assert!(!p.is_null(), "out of memory");
        madvise(p.cast(), layout.size(), 14);
        std::slice::from_raw_parts_mut(p.cast(), len)
    }
}

//! Row maxima recorded by the host cube routine as it stores a block, for the vector program's
//! `reduce.max` over the same rows (attention's score blocks: the maximum is taken while the rows are still
//! in L1, instead of a second read of the block from L2).
//!
//! The JIT asks for it only for a GM tensor `W` that the launch writes with `mmad`s alone, every one with
//! the same constant row stride `L` as the `reduce.max`s that read it (`lower::row_max_tensors`). An
//! `mmad` into `W` then records, for each row it wrote, the row's key (the address of column 0 of `W`'s
//! row), the window's first column and width, and the maximum of the row's window with the bits of
//! [`rowmath::reduce_row`] (the function itself computes it). A `reduce.max` over a window of `W` looks
//! each row up and takes the recorded value when the key, first column and width match: the data of the
//! window is then what the recording `mmad` stored, because
//! - every write of `W` in the launch is such an `mmad`, and it replaces the entry of every row it writes
//!   (the key is per row of `W`, whatever the columns; a window that runs past its row's end forgets every
//!   entry);
//! - a launch's unit (a cube core and its vector cores) runs on one thread from start to end, and the table is
//!   the thread's: the thread forgets it before every unit ([`forget`]), so an entry is never older than the
//!   unit that reads it, and another unit cannot write the rows a race-free unit writes and then reads.
//!
//! A missing or evicted entry (the table is direct-mapped) only means the row is read again.

use super::rowmath::{self, Row};
use kc_ir::graph::ReduceOp;
use std::cell::RefCell;

/// Entries per thread (consecutive rows of `W` take consecutive entries).
const ENTRIES: usize = 1024;

#[derive(Copy, Clone, Default)]
struct Entry {
    /// The row's key (the address of column 0 of the row); 0 for none.
    key: usize,
    /// The table's epoch when recorded.
    epoch: u64,
    /// The window's first column and width.
    col0: u32,
    n: u32,
    max: f32,
}

struct Table {
    epoch: u64,
    entries: Vec<Entry>,
}

thread_local! {
    static TABLE: RefCell<Table> = const { RefCell::new(Table { epoch: 1, entries: Vec::new() }) };
}

fn slot(key: usize, stride_bytes: usize) -> usize {
    (key / stride_bytes.max(1)) % ENTRIES
}

/// Forgets every entry of this thread's table (before each unit of a launch).
pub fn forget() {
    let _ = TABLE.try_with(|t| {
        if let Ok(mut t) = t.try_borrow_mut() {
            t.epoch = t.epoch.wrapping_add(1);
        }
    });
}

/// Records the maxima of `rows` rows of `n` f32 from `c` (row stride `ldc` elements), whose first column is
/// column `col0` of rows of `ldc` elements.
///
/// # Safety
///
/// The rows readable.
pub unsafe fn record(c: *const f32, ldc: usize, rows: usize, n: usize, col0: usize) {
    let _ = TABLE.try_with(|t| {
        let Ok(mut t) = t.try_borrow_mut() else { return };
        if col0 + n > ldc || n > u32::MAX as usize || n == 0 {
            // A window past its row's end writes rows it does not record: forget everything.
            t.epoch = t.epoch.wrapping_add(1);
            return;
        }
        if t.entries.is_empty() {
            t.entries = vec![Entry::default(); ENTRIES];
        }
        let epoch = t.epoch;
        let stride_bytes = ldc * 4;
        for r in 0..rows {
            // SAFETY: the caller's: row `r` holds `n` readable f32s.
            let row = unsafe { std::slice::from_raw_parts(c.add(r * ldc), n) };
            let Some(max) = rowmath::reduce_row(ReduceOp::Max, None, Row::F32(row)) else { return };
            let key = (row.as_ptr() as usize).wrapping_sub(col0 * 4);
            t.entries[slot(key, stride_bytes)] = Entry { key, epoch, col0: col0 as u32, n: n as u32, max };
        }
    });
}

/// The recorded maximum of the row window of `n` f32 at `row` (column `col0` of rows of `ld` elements), if
/// the last write of the row recorded exactly this window.
pub fn lookup(row: *const f32, ld: usize, n: usize, col0: usize) -> Option<f32> {
    if n == 0 || col0 + n > ld {
        return None;
    }
    TABLE
        .try_with(|t| {
            let t = t.try_borrow().ok()?;
            let key = (row as usize).wrapping_sub(col0 * 4);
            let e = t.entries.get(slot(key, ld * 4))?;
            (e.key == key && e.epoch == t.epoch && e.col0 as usize == col0 && e.n as usize == n).then_some(e.max)
        })
        .ok()
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_match_only_their_window_and_unit() {
        let mut w = vec![0f32; 4 * 64];
        for (i, x) in w.iter_mut().enumerate() {
            *x = (i % 37) as f32 - 20.0;
        }
        w[64 + 10] = f32::NAN;
        w[2 * 64 + 3] = -0.0;
        forget();
        // Columns 16..48 of rows 0..3.
        // SAFETY: the rows are inside `w`.
        unsafe { record(w[16..].as_ptr(), 64, 3, 32, 16) };
        for r in 0..3 {
            let row = &w[r * 64 + 16..r * 64 + 48];
            let want = rowmath::reduce_row(ReduceOp::Max, None, Row::F32(row)).unwrap();
            let got = lookup(row.as_ptr(), 64, 32, 16).unwrap();
            assert_eq!(got.to_bits(), want.to_bits(), "row {r}");
        }
        // Another window of a recorded row, a row not recorded, another unit: none.
        assert!(lookup(w[16..].as_ptr(), 64, 16, 16).is_none());
        assert!(lookup(w[17..].as_ptr(), 64, 32, 17).is_none());
        assert!(lookup(w[3 * 64 + 16..].as_ptr(), 64, 32, 16).is_none());
        // A later write of other columns of row 1 replaces its entry.
        // SAFETY: the rows are inside `w`.
        unsafe { record(w[64..].as_ptr(), 64, 1, 16, 0) };
        assert!(lookup(w[64 + 16..].as_ptr(), 64, 32, 16).is_none());
        assert!(lookup(w[16..].as_ptr(), 64, 32, 16).is_some());
        // A window past its row's end forgets everything.
        // SAFETY: the rows are inside `w`.
        unsafe { record(w[60..].as_ptr(), 64, 1, 8, 60) };
        assert!(lookup(w[16..].as_ptr(), 64, 32, 16).is_none());
        // SAFETY: the rows are inside `w`.
        unsafe { record(w[16..].as_ptr(), 64, 3, 32, 16) };
        forget();
        assert!(lookup(w[16..].as_ptr(), 64, 32, 16).is_none());
    }

    /// `kc_mmad_row_max` records the maxima of the rows it stores, with the bits of `reduce_row` over them,
    /// on every path and at sizes with partial tiles (rows past 16 and 32, columns not a multiple of 16 or
    /// 32, a `k` that is not a multiple of 32), with NaN rows and rows of zeros of both signs (accumulating
    /// `±0 + 0·b`).
    #[test]
    fn the_mmad_records_what_it_stores() {
        use crate::host::mmad::{kc_mmad_row_max, release_tiles};
        use half::bf16;
        let mut rng = 7u64;
        let mut next = || {
            rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((rng >> 33) as f32 / (1u64 << 31) as f32) * 4.0 - 2.0
        };
        for &(m, k, n, acc) in &[(40, 64, 72, false), (17, 40, 256, false), (33, 128, 33, true), (5, 32, 16, true)] {
            let ldc = n + 24;
            let col0 = 8;
            let mut a: Vec<bf16> = (0..m * k).map(|_| bf16::from_f32(next())).collect();
            let b: Vec<bf16> = (0..k * n).map(|_| bf16::from_f32(-next().abs() - 0.5)).collect();
            a[k + 3] = bf16::from_f32(f32::NAN);
            for x in &mut a[2 * k..3 * k] {
                *x = bf16::from_f32(0.0);
            }
            let mut c = vec![0f32; m * ldc];
            for (j, x) in c[2 * ldc + col0..2 * ldc + col0 + n].iter_mut().enumerate() {
                *x = if j % 3 == 0 { -0.0 } else { 0.0 };
            }
            forget();
            // SAFETY: the blocks are inside the vectors.
            unsafe {
                kc_mmad_row_max(
                    a.as_ptr().cast(),
                    1,
                    k as i64,
                    b.as_ptr().cast(),
                    1,
                    n as i64,
                    c.as_mut_ptr().add(col0),
                    ldc as i64,
                    m as i64,
                    k as i64,
                    n as i64,
                    i64::from(acc),
                    col0 as i64,
                )
            };
            release_tiles();
            for r in 0..m {
                let row = &c[r * ldc + col0..r * ldc + col0 + n];
                let want = rowmath::reduce_row(ReduceOp::Max, None, Row::F32(row)).unwrap();
                let got =
                    lookup(row.as_ptr(), ldc, n, col0).unwrap_or_else(|| panic!("{m}x{k}x{n}: row {r} not recorded"));
                assert_eq!(got.to_bits(), want.to_bits(), "{m}x{k}x{n}: row {r}");
            }
            assert!(lookup(c[ldc + col0..].as_ptr(), ldc, n, col0).unwrap().is_nan());
        }
    }
}

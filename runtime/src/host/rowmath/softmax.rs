//! Softmax over a block of rows in one call ([`kc_rt_softmax_rows`]): the six statements of the standard
//! library's `softmax` (a row maximum, its copy, `exp(x - where(m == -inf, 0, m))` with its row sum, the
//! sum's copy, the division into bf16) with the bits of the row routines that compute them one statement
//! at a time, but with one row's division computed inside the next row's `exp` loop.
//!
//! Why: compiled statement by statement, softmax makes three passes a row: the maxima (a read from
//! DRAM), the `exp`s (bound by the FMA pipes: about 13 cycles a block of 16 on Zen 4) and the division
//! (bound by its non-temporal stores to DRAM). Interleaving the division with the next row's `exp`s lets
//! the stores drain while the FMA pipes work. On rows whose arguments all lie in `[-40, 0]` (every row of
//! logits whose range is under 40, checked per row from the row's minimum), the `exp`s skip the clamps
//! and the zeroing mask (the same bits there: the clamps and the mask change nothing in that range) and
//! the division skips its per-block range check (every quotient is normal and every dividend inside the
//! reciprocal's exact range). Any other row takes the statement-by-statement routines. In a loop of such
//! calls ([`SOFTMAX_CARRY`]) each call's last division is carried into the next call's first `exp` loop.

use super::*;

/// [`kc_rt_softmax_rows`]' flags: the source rows are bf16 (otherwise `f32`).
pub const SOFTMAX_SRC_BF16: i64 = 1;
/// [`kc_rt_softmax_rows`]' flags: the results go to a large GM tensor by non-temporal stores (as
/// [`ROW_DST_STREAM`]).
pub const SOFTMAX_STREAM: i64 = 2;
/// [`kc_rt_softmax_rows`]' flags: the call is one of a loop between [`kc_rt_softmax_begin`] and
/// [`kc_rt_softmax_end`] whose other statements touch no memory: its last row's division is left to the
/// next call of the loop (inside that call's first `exp` loop) or to [`kc_rt_softmax_end`].
pub const SOFTMAX_CARRY: i64 = 4;
/// The number of words of [`kc_rt_softmax_rows`]' arguments.
pub const SOFTMAX_WORDS: usize = 17;

/// A row's arguments of the fast path lie in `[SOFTMAX_LOW, 0]`: `exp` of them is at least `2^-58`.
const SOFTMAX_LOW: f32 = -40.0;

/// Whether [`kc_rt_softmax_rows`] has its fast path on this host (AVX512-BF16): the JIT calls it only then,
/// and compiles the statements one at a time elsewhere.
pub fn softmax_rows_fast() -> bool {
    has_bf16_cvt()
}

/// The arguments, addresses of row 0 and strides in bytes.
struct Args {
    x: *const u8,
    xs: isize,
    y: *mut u8,
    ys: isize,
    e: *mut f32,
    es: isize,
    /// The maximum's window, its copy's, the sum's, its copy's: `(address, stride)`.
    small: [(*mut f32, isize); 4],
    rows: usize,
    n: usize,
    bf16: bool,
    stream: bool,
}

impl Args {
    fn x(&self, r: usize) -> *const u8 {
        self.x.wrapping_offset(r as isize * self.xs)
    }
    fn y(&self, r: usize) -> *mut u8 {
        self.y.wrapping_offset(r as isize * self.ys)
    }
    fn e(&self, r: usize) -> *mut f32 {
        self.e.cast::<u8>().wrapping_offset(r as isize * self.es).cast()
    }
    /// Element `r` of small window `k` (0: the maximum, 1: its copy, 2: the sum, 3: its copy).
    fn at(&self, k: usize, r: usize) -> *mut f32 {
        let (p, s) = self.small[k];
        p.cast::<u8>().wrapping_offset(r as isize * s).cast()
    }
    /// The flags of the division's [`kc_rt_row_scalar`] call.
    fn div_flags(&self) -> i64 {
        (3 << ROW_OP_SHIFT) | ROW_DST_BF16 | if self.stream { ROW_DST_STREAM } else { 0 }
    }
    /// The flags of the `exp`'s [`kc_rt_row_exp`] call.
    fn exp_flags(&self) -> i64 {
        ROW_EXP_SUB | if self.bf16 { ROW_SRC_BF16 } else { 0 }
    }
}

/// The value subtracted before the `exp`: `where(m == -inf, 0.0, m)`.
fn shift(m: f32) -> f32 {
    if m == f32::NEG_INFINITY {
        0.0
    } else {
        m
    }
}

#[cfg(test)]
thread_local! {
    /// Rows the fast path computed (tests).
    static FAST_ROWS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

thread_local! {
    /// The last call's source address and how far it had moved from the call before (a loop over row
    /// blocks: the next block is likely that far on again).
    static LAST: std::cell::Cell<(usize, usize)> = const { std::cell::Cell::new((0, 0)) };
}

/// A row's division left for later: its `e` row, its `y` row, its sum, its length, and whether `y` is
/// streamed.
#[derive(Clone, Copy)]
struct Carried {
    e: *const f32,
    y: *mut u8,
    t: f32,
    n: usize,
    stream: bool,
}

impl Carried {
    /// Its `e` row's and its `y` row's bytes.
    fn spans(&self) -> [(usize, usize); 2] {
        [(self.e as usize, self.e as usize + self.n * 4), (self.y as usize, self.y as usize + self.n * 2)]
    }
}

thread_local! {
    /// `Some` between [`kc_rt_softmax_begin`] and [`kc_rt_softmax_end`], holding the division the last call
    /// left, if any.
    static CARRY: std::cell::Cell<Option<Option<Carried>>> = const { std::cell::Cell::new(None) };
}

/// The start of a loop whose softmax calls carry their last row's division to the next call
/// ([`SOFTMAX_CARRY`]): forgets whatever an earlier loop left (one that a failed bounds check ended).
pub extern "C" fn kc_rt_softmax_begin() {
    CARRY.with(|c| c.set(Some(None)));
}

/// The end of such a loop: the division the last call left, then no carrying.
///
/// # Safety
/// Called by the thread that ran the loop, right after it, the loop's windows still valid.
pub unsafe extern "C" fn kc_rt_softmax_end() {
    if let Some(Some(p)) = CARRY.with(|c| c.replace(None)) {
        // SAFETY: a carried division was left by the fast path (AVX512-BF16) for rows still valid.
        unsafe { flush(p) };
    }
}

/// A carried division alone.
///
/// # Safety
/// Its rows are valid; the host has AVX512-BF16 (the fast path left it).
unsafe fn flush(p: Carried) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the caller's.
    unsafe {
        fast::div_row(p)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

fn apart(a: (usize, usize), b: (usize, usize)) -> bool {
    a.1 <= b.0 || b.1 <= a.0
}

/// Whether a carried division can run inside this call's first `exp` loop (or, if the first row is not a fast
/// one, right after its maximum): the same row length, and no overlap with what the call touches until then,
/// which the statements' order puts after the division: its `y` row apart from the first two rows of `x`
/// (read by the first row's maximum and its loop), from the first `e` row and from the small windows' first
/// elements (written); its `e` row apart from those elements and from the first `e` row, or that row itself
/// (each block of it is read before the loop stores that block).
fn fits(a: &Args, p: &Carried) -> bool {
    let esz = if a.bf16 { 2 } else { 4 };
    let row = |q: usize, bytes: usize| (q, q + bytes);
    let e0 = row(a.e as usize, a.n * 4);
    let small = a.small.map(|(q, _)| row(q as usize, 4));
    // The second row of `x` (the first again when there is one row).
    let x1 = if a.rows > 1 { a.x(1) } else { a.x };
    let read = [row(a.x as usize, a.n * esz), row(x1 as usize, a.n * esz)];
    let [pe, py] = p.spans();
    let pe_ok = small.iter().all(|&w| apart(pe, w)) && (apart(pe, e0) || pe.0 == e0.0);
    let py_ok = small.iter().chain(&read).chain([&e0]).all(|&w| apart(py, w));
    p.n == a.n && pe_ok && py_ok
}

/// Softmax over `rows` rows of `n` elements: `args` = `[x, x_stride, y, y_stride, e, e_stride, mr,
/// mr_stride, m, m_stride, tr, tr_stride, t, t_stride, rows, n, flags]` (addresses of row 0, strides in
/// bytes; `flags`: [`SOFTMAX_SRC_BF16`], [`SOFTMAX_STREAM`]). The effects are those of the statements, in
/// order, each over every row:
///
/// 1. `mr[r] = max(x[r, ..])` (`kc_rt_reduce`'s bits: [`reduce_rows`]);
/// 2. `m[r] = mr[r]`;
/// 3. `e[r, c] = exp(x[r, c] - where(m[r] == -inf, 0, m[r]))` and `tr[r] = sum(e[r, ..])` ([`kc_rt_row_exp`]);
/// 4. `t[r] = tr[r]`;
/// 5. `y[r, c] = bf16(e[r, c] / t[r])` ([`kc_rt_row_scalar`], non-temporal stores with [`SOFTMAX_STREAM`]:
///    not fenced, see [`fence_streams`]).
///
/// On an AVX512-BF16 host, with rows of a multiple of 32 elements, `e`'s rows apart, the small windows' rows
/// apart and `y`'s rows 64-byte aligned, the rows go one after the other (each statement's row `r` touches
/// only row `r` of its windows, so the order of the effects does not matter) and a row's division runs in
/// the next row's `exp` loop; otherwise the statements go one after the other.
///
/// # Safety
/// `args` points to [`SOFTMAX_WORDS`] words; `x`'s rows hold `n` readable elements, `y`'s and `e`'s `n`
/// writable ones, the small windows' one each, for every row; the seven windows do not overlap one
/// another (except the small windows' rows among themselves, which the statement order handles).
pub unsafe extern "C" fn kc_rt_softmax_rows(args: *const i64) {
    // SAFETY: the caller passes SOFTMAX_WORDS words.
    let w = unsafe { std::slice::from_raw_parts(args, SOFTMAX_WORDS) };
    if w[14] <= 0 {
        return;
    }
    let p = |k: usize| (w[k] as *mut f32, w[k + 1] as isize);
    let a = Args {
        x: w[0] as *const u8,
        xs: w[1] as isize,
        y: w[2] as *mut u8,
        ys: w[3] as isize,
        e: w[4] as *mut f32,
        es: w[5] as isize,
        small: [p(6), p(8), p(10), p(12)],
        rows: w[14] as usize,
        n: w[15].max(0) as usize,
        bf16: w[16] & SOFTMAX_SRC_BF16 != 0,
        stream: w[16] & SOFTMAX_STREAM != 0,
    };
    // The next block's rows to request while this one computes (a hint: never dereferenced here).
    let at = a.x as usize;
    let next = LAST.with(|l| {
        let (last, moved) = l.get();
        let now = at.wrapping_sub(last);
        l.set((at, now));
        (now == moved && now != 0).then(|| at.wrapping_add(now))
    });
    // A division the loop's last call left (only with `SOFTMAX_CARRY` inside a loop; otherwise anything
    // left is stale: forgotten).
    let carrying = w[16] & SOFTMAX_CARRY != 0 && CARRY.with(|c| c.get()).is_some();
    let mut incoming = if carrying { CARRY.with(|c| c.replace(Some(None))).flatten() } else { None };
    if !carrying {
        CARRY.with(|c| c.set(None));
    }
    #[cfg(target_arch = "x86_64")]
    if fast_shape(&a) && has_bf16_cvt() {
        // SAFETY: the features were detected; the caller's promises hold, and the carried row's.
        unsafe {
            if let Some(p) = incoming.filter(|p| !fits(&a, p)) {
                flush(p);
                incoming = None;
            }
            let left =
                if a.bf16 { fast::rows::<true>(&a, next, incoming) } else { fast::rows::<false>(&a, next, incoming) };
            if let Some(p) = left {
                if carrying {
                    CARRY.with(|c| c.set(Some(Some(p))));
                } else {
                    flush(p);
                }
            }
        }
        if a.stream {
            STREAMED.with(|s| s.set(true));
        }
        return;
    }
    let _ = next;
    // SAFETY: the caller's promises, and the carried row's.
    unsafe {
        if let Some(p) = incoming {
            flush(p);
        }
        by_statement(&a)
    }
}

/// Whether the rows can go one after the other with the division interleaved (see [`kc_rt_softmax_rows`]).
fn fast_shape(a: &Args) -> bool {
    a.n >= LANES
        && a.n.is_multiple_of(LANES)
        && a.es >= (a.n * 4) as isize
        && a.small.iter().all(|&(_, s)| s.unsigned_abs() >= 4)
        && (a.y as usize).is_multiple_of(64)
        && a.ys.unsigned_abs().is_multiple_of(64)
}

/// The five statements one after the other, each over every row, with the routines the JIT calls for them.
///
/// # Safety
/// As [`kc_rt_softmax_rows`].
unsafe fn by_statement(a: &Args) {
    let n = a.n;
    // SAFETY (all accesses): the caller's windows.
    unsafe {
        reduce_rows(ReduceOp::Max, a.x, a.bf16, a.xs, n, a.rows, |_| None, |r, v| *a.at(0, r) = v);
        for r in 0..a.rows {
            *a.at(1, r) = *a.at(0, r);
        }
        for r in 0..a.rows {
            kc_rt_row_exp(a.e(r), a.x(r), a.exp_flags(), shift(*a.at(1, r)), 0.0, n as i64, a.at(2, r));
        }
        for r in 0..a.rows {
            *a.at(3, r) = *a.at(2, r);
        }
        for r in 0..a.rows {
            kc_rt_row_scalar(a.y(r), a.e(r).cast(), a.div_flags(), *a.at(3, r), n as i64);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod fast {
    use super::super::wide::{cvt32_normal, load32, SAFE_HI, SAFE_LO};
    use super::*;
    use std::arch::x86_64::*;

    /// [`super::super::wide::exp16`] without its clamps and its zeroing mask: the same instructions, so
    /// the same bits, for arguments in `[-110, 89]` (where the mask keeps every lane and `min(89, x)` is
    /// `x`).
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,fma")]
    fn exp16_in_range(x: __m512) -> __m512 {
        const { assert!(SOFTMAX_LOW >= -110.0) };
        let magic = _mm512_set1_ps(MAGIC32);
        let tm = _mm512_fmadd_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E), magic);
        let nf = _mm512_sub_ps(tm, magic);
        let r = _mm512_fmadd_ps(nf, _mm512_set1_ps(-LN2_C1), x);
        let r = _mm512_fmadd_ps(nf, _mm512_set1_ps(-LN2_C2), r);
        let mut p = _mm512_set1_ps(EXPF_P[5]);
        for &c in EXPF_P[..5].iter().rev() {
            p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
        }
        let r2 = _mm512_mul_ps(r, r);
        let p = _mm512_fmadd_ps(p, r2, r);
        let p = _mm512_add_ps(p, _mm512_set1_ps(1.0));
        _mm512_scalef_ps(p, nf)
    }

    /// A row's maximum with [`reduce_rows`]' bits, `None` when it is NaN or a zero (the fold's order decides
    /// a zero's sign: the caller asks [`reduce_rows`]), and its minimum (any order: it only picks the path).
    type Scan = (Option<f32>, f32);

    /// [`Scan`] of a row, 32 elements at a time: `minmax_avx512`'s lanes for the maximum (`vmaxps(x, lane)`)
    /// and its NaN mask, and running minima.
    struct Scanner {
        l: [__m512; 2],
        s: [__m512; 2],
        nan: __mmask16,
    }

    impl Scanner {
        #[inline]
        #[target_feature(enable = "avx512f,avx512bw,avx512vl,fma")]
        fn new() -> Scanner {
            let (lo, hi) = (_mm512_set1_ps(f32::NEG_INFINITY), _mm512_set1_ps(f32::INFINITY));
            Scanner { l: [lo, lo], s: [hi, hi], nan: 0 }
        }

        /// Elements `i..i + 32` of row `x`.
        ///
        /// # Safety
        /// The row holds them.
        #[inline]
        #[target_feature(enable = "avx512f,avx512bw,avx512vl,fma")]
        unsafe fn block<const SBF: bool>(&mut self, x: *const u8, i: usize) {
            // SAFETY: the caller's.
            let (a, b) = unsafe { load32::<SBF>(x, i) };
            self.nan |= _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(a, b);
            self.l = [_mm512_max_ps(a, self.l[0]), _mm512_max_ps(b, self.l[1])];
            self.s = [_mm512_min_ps(a, self.s[0]), _mm512_min_ps(b, self.s[1])];
        }

        #[inline]
        #[target_feature(enable = "avx512f,avx512bw,avx512vl,fma")]
        fn finish(&self) -> Scan {
            let mn = _mm512_reduce_min_ps(_mm512_min_ps(self.s[0], self.s[1]));
            if self.nan != 0 {
                return (None, mn);
            }
            let m = _mm512_reduce_max_ps(_mm512_max_ps(self.l[1], self.l[0]));
            ((m != 0.0).then_some(m), mn)
        }
    }

    /// [`Scan`] of a row alone.
    ///
    /// # Safety
    /// The row holds `n` elements, a positive multiple of 32.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,fma")]
    unsafe fn max_min<const SBF: bool>(x: *const u8, n: usize) -> Scan {
        let mut scan = Scanner::new();
        let mut i = 0;
        while i < n {
            // SAFETY: `i + 32 <= n`.
            unsafe { scan.block::<SBF>(x, i) };
            i += 32;
        }
        scan.finish()
    }

    /// The division of a row into bf16, `y[c] = bf16(e[c] / t)`, 32 elements: `div32`'s arithmetic without
    /// its check (the caller's row is inside the reciprocal's exact range).
    #[inline(always)]
    unsafe fn div_block(e: *const f32, y: *mut u8, i: usize, t: __m512, rt: __m512, stream: bool) {
        // SAFETY: the caller's rows hold `i + 32` elements; `y` is 64-byte aligned.
        unsafe {
            let q = |x: __m512| {
                let q0 = _mm512_mul_ps(x, rt);
                _mm512_fmadd_ps(_mm512_fnmadd_ps(q0, t, x), rt, q0)
            };
            let (a, b) = (_mm512_loadu_ps(e.add(i)), _mm512_loadu_ps(e.add(i + 16)));
            let v = cvt32_normal(q(a), q(b));
            let p = y.cast::<u16>().add(i).cast::<__m512i>();
            if stream {
                _mm512_stream_si512(p, v);
            } else {
                _mm512_store_si512(p, v);
            }
        }
    }

    /// A pending division.
    type Pending = Option<Carried>;

    /// The rows of [`kc_rt_softmax_rows`] one after the other (see there), `next` the address of the next
    /// block's first row to request meanwhile.
    ///
    /// # Safety
    /// As [`kc_rt_softmax_rows`], with [`fast_shape`]; the host has AVX512-BF16.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,fma,avx512bf16")]
    pub(super) unsafe fn rows<const SBF: bool>(a: &Args, next: Option<usize>, carried: Pending) -> Pending {
        let n = a.n;
        let esz = if SBF { 2 } else { 4 };
        let mut pend: Pending = carried;
        // Row `r`'s maximum and minimum when the previous row's `exp` loop scanned it.
        let mut scanned: Option<Scan> = None;
        for r in 0..a.rows {
            let pf = next.map(|p| p.wrapping_add(r * a.xs as usize));
            let following = (r + 1 < a.rows).then(|| a.x(r + 1));
            // SAFETY: row `r` of each window, the pending row's, the next row of `x`.
            unsafe {
                // Statements 1 and 2.
                let (m, mn) = scanned.take().unwrap_or_else(|| max_min::<SBF>(a.x(r), n));
                let m = match m {
                    Some(m) => m,
                    None => {
                        let mut v = 0.0;
                        reduce_rows(ReduceOp::Max, a.x(r), SBF, a.xs, n, 1, |_| None, |_, x| v = x);
                        v
                    }
                };
                *a.at(0, r) = m;
                *a.at(1, r) = m;
                let s = shift(m);
                // `x - s` for every `x` of the row lies in `[mn - s, m - s]` rounded (subtraction rounds
                // monotonically): `[-40, 0]` when `m` and `mn` are finite and `mn - s ≥ -40`.
                let fast = m.is_finite() && mn.is_finite() && mn - s >= SOFTMAX_LOW;
                // Statements 3 and 4.
                let t = if fast {
                    #[cfg(test)]
                    FAST_ROWS.with(|c| c.set(c.get() + 1));
                    let (t, scan) = exp_row::<SBF>(a, r, s, pend.take(), pf, esz, following);
                    scanned = scan;
                    t
                } else {
                    if let Some(p) = pend.take() {
                        div_row(p);
                    }
                    let mut t = 0.0;
                    kc_rt_row_exp(a.e(r), a.x(r), a.exp_flags(), s, 0.0, n as i64, &mut t);
                    t
                };
                *a.at(2, r) = t;
                *a.at(3, r) = t;
                // Statement 5. Every `e` of a fast row is in `[2^-58, 1]` and its sum in `[1, n]`: the
                // quotients are normal and the reciprocal division exact (`scalar_row_body`'s range).
                let mag = (t.to_bits() & 0x7FFF_FFFF) as i32;
                if fast && (SAFE_LO..=SAFE_HI).contains(&mag) {
                    pend = Some(Carried { e: a.e(r), y: a.y(r), t, n, stream: a.stream });
                } else {
                    kc_rt_row_scalar(a.y(r), a.e(r).cast(), a.div_flags(), t, n as i64);
                }
            }
        }
        pend
    }

    /// A pending row's division alone.
    ///
    /// # Safety
    /// Its rows are valid; the host has AVX512-BF16.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,fma,avx512bf16")]
    pub(super) unsafe fn div_row(p: Carried) {
        let (tv, rt) = (_mm512_set1_ps(p.t), _mm512_set1_ps(1.0 / p.t));
        let mut i = 0;
        while i < p.n {
            // SAFETY: the row's `n` elements.
            unsafe { div_block(p.e, p.y, i, tv, rt, p.stream) };
            i += 32;
        }
        if p.stream {
            STREAMED.with(|s| s.set(true));
        }
    }

    /// Row `r`'s `exp`s into `e` and their sum (`exp_row_body`'s order: lane `c mod 32`, the lanes' tree,
    /// `(0 + tree) + 0`), with, a block of 32 at a time, the pending row's division, the [`Scan`] of the
    /// `following` row (returned with the sum) and a line of `pf` (a row of the next block).
    ///
    /// # Safety
    /// As [`rows`]; row `r`'s arguments are in `[-40, 0]`; the pending row is another row of `e` and `y`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,fma,avx512bf16")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn exp_row<const SBF: bool>(
        a: &Args,
        r: usize,
        s: f32,
        pend: Pending,
        pf: Option<usize>,
        esz: usize,
        following: Option<*const u8>,
    ) -> (f32, Option<Scan>) {
        let n = a.n;
        let (x, e) = (a.x(r), a.e(r));
        let sv = _mm512_set1_ps(s);
        let (mut l0, mut l1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
        let (pe, py, pt, ps) = match pend {
            Some(p) => (p.e, p.y, p.t, p.stream),
            None => (std::ptr::null(), std::ptr::null_mut(), 1.0, false),
        };
        let (tv, rt) = (_mm512_set1_ps(pt), _mm512_set1_ps(1.0 / pt));
        let mut scan = Scanner::new();
        let mut i = 0;
        // SAFETY (all accesses): rows of `n` elements; prefetches never fault.
        unsafe {
            while i < n {
                if let Some(p) = pf {
                    // One line of the next block's row per 64 bytes of this row read.
                    let o = i * esz;
                    _mm_prefetch::<_MM_HINT_T1>(p.wrapping_add(o) as *const i8);
                    if esz == 4 {
                        _mm_prefetch::<_MM_HINT_T1>(p.wrapping_add(o + 64) as *const i8);
                    }
                }
                let (u, v) = load32::<SBF>(x, i);
                let (u, v) = (exp16_in_range(_mm512_sub_ps(u, sv)), exp16_in_range(_mm512_sub_ps(v, sv)));
                if !pe.is_null() {
                    div_block(pe, py, i, tv, rt, ps);
                }
                if let Some(f) = following {
                    scan.block::<SBF>(f, i);
                }
                _mm512_storeu_ps(e.add(i), u);
                _mm512_storeu_ps(e.add(i + 16), v);
                l0 = _mm512_add_ps(l0, u);
                l1 = _mm512_add_ps(l1, v);
                i += 32;
            }
            let mut lanes = [0f32; LANES];
            _mm512_storeu_ps(lanes.as_mut_ptr(), l0);
            _mm512_storeu_ps(lanes.as_mut_ptr().add(16), l1);
            ((0.0 + sum_lanes(lanes)) + 0.0, following.map(|_| scan.finish()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 64-byte aligned area of `bytes` bytes (zeroed), as `u64`s.
    fn area(bytes: usize) -> Vec<u64> {
        vec![0u64; bytes.div_ceil(8) + 16]
    }

    fn aligned(v: &mut [u64]) -> *mut u8 {
        let p = v.as_mut_ptr().cast::<u8>();
        p.wrapping_add(p.align_offset(64))
    }

    /// `xs` into `area` (aligned) as bf16 (the upper halves) or `f32`: the source rows.
    fn source(area: &mut [u64], xs: &[f32], bf16: bool) -> *mut u8 {
        let x = aligned(area);
        for (i, &v) in xs.iter().enumerate() {
            // SAFETY: the caller's area holds `xs` after its alignment.
            unsafe {
                if bf16 {
                    *x.cast::<u16>().add(i) = (v.to_bits() >> 16) as u16;
                } else {
                    *x.cast::<f32>().add(i) = v;
                }
            }
        }
        x
    }

    /// Row `kind` of `n` values: the paths' corners (see the test).
    fn row(kind: usize, n: usize, rnd: &mut impl FnMut() -> u64) -> Vec<f32> {
        let mut u = || (rnd() >> 40) as f32 / (1u64 << 24) as f32;
        let mut v: Vec<f32> = match kind {
            0 => (0..n).map(|_| (u() - 0.5) * 8.0).collect(),
            1 => (0..n).map(|_| u() * -70.0 + 10.0).collect(),
            // Just inside and just outside the fast path's range.
            2 => (0..n).map(|i| if i % 7 == 0 { 3.0 - 39.9 } else { 3.0 - u() }).collect(),
            3 => (0..n).map(|i| if i % 7 == 0 { 3.0 - 40.2 } else { 3.0 - u() }).collect(),
            4 => vec![f32::NEG_INFINITY; n],
            5 => (0..n).map(|i| if i % 2 == 0 { 0.0 } else { -0.0 }).collect(),
            6 => (0..n).map(|i| if i % 3 == 0 { -0.0 } else { -u() }).collect(),
            7 => vec![5.0; n],
            8 => (0..n).map(|i| if i % 2 == 0 { 1e30 } else { -1e30 }).collect(),
            9 => (0..n).map(|_| (u() - 0.5) * 1e-38).collect(),
            _ => (0..n).map(|_| (u() - 0.5) * 8.0).collect(),
        };
        // Specials in a random place of some rows.
        let at = (rnd() % n as u64) as usize;
        match kind {
            10 => v[at] = f32::NAN,
            11 => v[at] = f32::INFINITY,
            12 => v[at] = f32::NEG_INFINITY,
            _ => {}
        }
        v
    }

    /// Runs `kc_rt_softmax_rows` (`whole`) or the statements one at a time over the same inputs, returning
    /// every byte each wrote: `y`, `e` and the four small windows.
    #[allow(clippy::too_many_arguments)]
    fn run(
        whole: bool,
        xs: &[f32],
        rows: usize,
        n: usize,
        bf16: bool,
        stream: bool,
        y_skew: usize,
        small_stride: isize,
    ) -> Vec<u8> {
        let esz = if bf16 { 2 } else { 4 };
        let mut xa = area(rows * n * esz);
        let x = source(&mut xa, xs, bf16);
        let y_bytes = rows * n * 2 + y_skew;
        let mut ya = area(y_bytes);
        let y = aligned(&mut ya).wrapping_add(y_skew);
        // `e`'s rows 8 elements apart beyond `n`.
        let es = (n + 8) * 4;
        let mut ea = area(rows * es);
        let e = aligned(&mut ea);
        let span = (rows as isize * small_stride.abs()).max(1) as usize * 4 + 4;
        let mut sa: Vec<Vec<u64>> = (0..4).map(|_| area(span)).collect();
        let small: Vec<*mut u8> = sa.iter_mut().map(|v| aligned(v)).collect();
        let start = |p: *mut u8| if small_stride < 0 { p.wrapping_add(span - 4) } else { p };
        let mut w = vec![x as i64, (n * esz) as i64, y as i64, (n * 2) as i64, e as i64, es as i64];
        for &p in &small {
            w.extend([start(p) as i64, small_stride as i64 * 4]);
        }
        let flags = if bf16 { SOFTMAX_SRC_BF16 } else { 0 } | if stream { SOFTMAX_STREAM } else { 0 };
        w.extend([rows as i64, n as i64, flags]);
        // SAFETY: the windows above hold what the words say.
        unsafe {
            if whole {
                kc_rt_softmax_rows(w.as_ptr());
            } else {
                let a = Args {
                    x,
                    xs: w[1] as isize,
                    y,
                    ys: w[3] as isize,
                    e: e.cast(),
                    es: es as isize,
                    small: [0, 1, 2, 3].map(|k| (start(small[k]).cast::<f32>(), small_stride * 4)),
                    rows,
                    n,
                    bf16,
                    stream,
                };
                by_statement(&a);
            }
            fence_streams();
            let mut out = std::slice::from_raw_parts(y, rows * n * 2).to_vec();
            out.extend_from_slice(std::slice::from_raw_parts(e, rows * es));
            for &p in &small {
                out.extend_from_slice(std::slice::from_raw_parts(p, span));
            }
            out
        }
    }

    /// The call's effects are the statements' to the bit (results, `exp` rows, maxima, sums, and what the
    /// small windows hold when their rows coincide or run backwards), on every path: rows inside and
    /// outside the fast range, NaN, infinities, a row of `-inf`, maxima that are zeros of either sign,
    /// constant rows, huge and subnormal values; bf16 and `f32` sources; streamed or not; rows of a
    /// multiple of 32 elements or not, `y` aligned or not; more rows than a round of maxima.
    #[test]
    fn softmax_rows_are_the_statements_bit_for_bit() {
        let mut rnd = crate::host::rowmath::tests::xorshift(0x9E37_79B9_7F4A_7C15);
        FAST_ROWS.with(|c| c.set(0));
        let shapes = [(19, 4096), (13, 64), (3, 96), (5, 100), (1, 32), (4, 16)];
        for (si, &(rows, n)) in shapes.iter().enumerate() {
            for bf16 in [true, false] {
                for (variant, (stream, y_skew, small_stride)) in
                    [(true, 0, 1), (false, 0, 3), (true, 2, 1), (false, 0, 0), (true, 0, -1)].into_iter().enumerate()
                {
                    let mut xs = Vec::new();
                    for r in 0..rows {
                        let kind = (r + si + variant) % 14;
                        xs.extend(row(kind, n, &mut rnd));
                    }
                    let got = run(true, &xs, rows, n, bf16, stream, y_skew, small_stride);
                    let want = run(false, &xs, rows, n, bf16, stream, y_skew, small_stride);
                    if let Some(i) = got.iter().zip(&want).position(|(a, b)| a != b) {
                        panic!("rows {rows}, n {n}, bf16 {bf16}, variant {variant}: byte {i} differs");
                    }
                }
            }
        }
        // The fast path ran (on a host that has it), for most rows.
        if softmax_rows_fast() {
            assert!(FAST_ROWS.with(|c| c.get()) > 100, "{}", FAST_ROWS.with(|c| c.get()));
        }
    }

    /// A loop of calls that carry their last row's division ([`SOFTMAX_CARRY`]), blocks of 1 to 3 rows that
    /// share one `e` area as the tiler's blocks do, gives the bits of the calls made one by one without
    /// carrying: every `y`, every small window, the `e` area at the end; with `y` apart from `x` and in
    /// place (`y` the memory of `x`), bf16 and `f32` sources, and a call of another width in the middle
    /// (which takes the carried division first).
    #[test]
    fn carried_divisions_are_the_calls_bit_for_bit() {
        let mut rnd = crate::host::rowmath::tests::xorshift(0x2545_F491_4F6C_DD1D);
        let blocks = [2, 2, 1, 3, 2, 2, 1, 2, 3, 2, 2];
        let rows: usize = blocks.iter().sum();
        for (n, bf16, in_place, stream) in [
            (4096, true, false, true),
            (256, true, true, true),
            (64, false, false, false),
            (128, true, true, false),
            (4096, false, false, true),
        ] {
            let esz = if bf16 { 2 } else { 4 };
            let mut xs = Vec::new();
            for r in 0..rows {
                xs.extend(row((r * 5 + n) % 14, n, &mut rnd));
            }
            let go = |carry: bool| -> Vec<u8> {
                let mut xa = area(rows * n * esz);
                let x = source(&mut xa, &xs, bf16);
                let mut ya = area(rows * n * 2);
                // In place: `y` is `x`'s memory (bf16 only: the same elements).
                let y = if in_place { x } else { aligned(&mut ya) };
                let mut ea = area(3 * n * 4);
                let e = aligned(&mut ea);
                let mut sa: Vec<Vec<u64>> = (0..4).map(|_| area(rows * 4)).collect();
                let small: Vec<*mut u8> = sa.iter_mut().map(|v| aligned(v)).collect();
                // SAFETY: the windows below are inside the areas.
                unsafe {
                    if carry {
                        kc_rt_softmax_begin();
                    }
                    let mut r0 = 0;
                    for (b, &k) in blocks.iter().enumerate() {
                        // The seventh block is one row of half the width.
                        let width = if b == 6 { n / 2 } else { n };
                        let mut w = vec![
                            x.add(r0 * n * esz) as i64,
                            (n * esz) as i64,
                            y.add(r0 * n * 2) as i64,
                            (n * 2) as i64,
                            e as i64,
                            (n * 4) as i64,
                        ];
                        for &p in &small {
                            w.extend([p.add(r0 * 4) as i64, 4]);
                        }
                        let flags = if bf16 { SOFTMAX_SRC_BF16 } else { 0 }
                            | if stream { SOFTMAX_STREAM } else { 0 }
                            | if carry { SOFTMAX_CARRY } else { 0 };
                        w.extend([k as i64, width as i64, flags]);
                        kc_rt_softmax_rows(w.as_ptr());
                        r0 += k;
                    }
                    if carry {
                        kc_rt_softmax_end();
                    }
                    fence_streams();
                    let mut out = std::slice::from_raw_parts(y, rows * n * 2).to_vec();
                    out.extend_from_slice(std::slice::from_raw_parts(e, 3 * n * 4));
                    for &p in &small {
                        out.extend_from_slice(std::slice::from_raw_parts(p, rows * 4));
                    }
                    out
                }
            };
            let (got, want) = (go(true), go(false));
            if let Some(i) = got.iter().zip(&want).position(|(a, b)| a != b) {
                panic!("n {n}, bf16 {bf16}, in place {in_place}: byte {i} differs");
            }
        }
    }

    /// A loop that ends without [`kc_rt_softmax_end`] (a failed bounds check returns from the core's code)
    /// leaves a carried division that no later call makes: a call without [`SOFTMAX_CARRY`], or the next
    /// loop's [`kc_rt_softmax_begin`], forgets it, so nothing is written into the rows it named.
    #[test]
    fn a_stale_carried_division_is_forgotten() {
        if !softmax_rows_fast() {
            return;
        }
        let n = 64;
        let xs: Vec<f32> = (0..2 * n).map(|i| (i % 13) as f32 * 0.25).collect();
        let call = |x: *mut u8, y: *mut u8, e: *mut u8, small: *mut u8, carry: bool| {
            let mut w = vec![x as i64, n as i64 * 2, y as i64, n as i64 * 2, e as i64, n as i64 * 4];
            for k in 0..4 {
                w.extend([small as i64 + k * 16, 4]);
            }
            w.extend([2, n as i64, SOFTMAX_SRC_BF16 | if carry { SOFTMAX_CARRY } else { 0 }]);
            // SAFETY: the areas below hold the windows.
            unsafe { kc_rt_softmax_rows(w.as_ptr()) };
        };
        let (mut xa, mut ya, mut ea, mut sa) = (area(2 * n * 2), area(2 * n * 2), area(2 * n * 4), area(64));
        let (x, y, e, small) = (source(&mut xa, &xs, true), aligned(&mut ya), aligned(&mut ea), aligned(&mut sa));
        for second in [false, true] {
            // SAFETY: `y`'s two rows.
            unsafe { std::ptr::write_bytes(y, 0xAB, 2 * n * 2) };
            kc_rt_softmax_begin();
            call(x, y, e, small, true);
            // The loop is abandoned here: row 1's division is carried, row 0's is done.
            // SAFETY: `y`'s rows.
            let row = |r: usize| unsafe { std::slice::from_raw_parts(y.add(r * n * 2), n * 2).to_vec() };
            assert!(row(0).iter().any(|&b| b != 0xAB) && row(1).iter().all(|&b| b == 0xAB));
            let (mut xb, mut yb, mut eb, mut sb) = (area(2 * n * 2), area(2 * n * 2), area(2 * n * 4), area(64));
            let other = (source(&mut xb, &xs, true), aligned(&mut yb), aligned(&mut eb), aligned(&mut sb));
            if second {
                // The next loop.
                kc_rt_softmax_begin();
                call(other.0, other.1, other.2, other.3, true);
                // SAFETY: the loop's windows are valid.
                unsafe { kc_rt_softmax_end() };
            } else {
                call(other.0, other.1, other.2, other.3, false);
            }
            fence_streams();
            assert!(row(1).iter().all(|&b| b == 0xAB), "a stale division was made (second loop: {second})");
        }
    }
}

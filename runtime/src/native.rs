//! Running compiled tile programs on the host: the ABI of a compiled core program, the host routines it
//! calls, and the executor that runs a program's launches on a pool of threads.
//!
//! # The core ABI
//!
//! Each launch's `cube` and `vector` programs are compiled (by `kc-codegen`) to one function each,
//! [`CoreFn`]: `extern "C" fn(*mut CoreCtx) -> i32`, returning 0 when the core finished, and not 0 when it
//! stopped on a failure, which it recorded with [`kc_rt_fail`] (or a host routine recorded). [`CoreCtx`] is
//! `#[repr(C)]`; the code reads its fields at the `CTX_*` offsets:
//! - `gm`: the base address of every GM tensor, indexed by [`TensorId`](kc_ir::tile::TensorId);
//! - `bufs`: the base address of every buffer of the launch that belongs to this core's kind, indexed by
//!   [`BufId`](kc_ir::tile::BufId) (slot `s` starts `s * slot_bytes` after it); buffers hold zeros when the
//!   core starts, as on the NPU model;
//! - `core`: the core's index among the launch's cores of its kind;
//! - `state`: the executor's per-core state, passed back to the host routines.
//!
//! Element dtypes are passed to host routines as codes: [`dtype_code`].
//!
//! # Scheduling, and why it cannot deadlock
//!
//! A mixed launch's cube core `i` and its vector cores `i*ratio .. (i+1)*ratio` wait on each other's
//! cross-core flags. They form one schedulable unit: each member runs on its own coroutine stack
//! (`corosensei`), all on one host thread, resumed round-robin; a `CrossWait` whose flag has not been set
//! suspends its coroutine ([`kc_rt_cross_wait`]) so that its partners run. Cores without partners are units
//! of their own. Units are independent, so the threads of the pool take them in any order, one at a time,
//! and whatever the number of threads (1 included) every unit runs to its end. A unit in which every
//! unfinished core waits is a deadlock of the program: the waits return an abort status, the cores return,
//! and the launch fails with `Code::Internal`.
//!
//! # Failures
//!
//! A core that meets a run-time error of the kernel (an out-of-range gather index, an integer division by
//! zero) or a broken invariant (an access outside a buffer) records the failure's [`Site`] and values and
//! returns. The other cores run on (their cross-core waits return at once); the launch then fails with the
//! diagnostic of the first failing core in core order. Global memory is the executor's own copy of the
//! arguments, so a failed launch leaves the caller's tensors as they were. [`run_in_place`] writes the
//! caller's `inout` tensors directly only for programs that [`crate::inplace::plan`] shows cannot fail
//! once started.

use crate::gm::{self, Results};
use crate::host::rowmath;
use corosensei::stack::DefaultStack;
use corosensei::{Coroutine, CoroutineResult, Yielder};
use kc_ir::diag::{Code, Diagnostic};
use kc_ir::dtype::DType;
use kc_ir::graph::{Graph, ReduceOp};
use kc_ir::interp::Limits;
use kc_ir::launch::Args;
use kc_ir::ops::{self, Acc, CumAcc, Val};
use kc_ir::span::Span;
use kc_ir::tensor::TensorData;
use kc_ir::tile::{Launch, TensorRole, TileProgram};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

/// A compiled core program.
pub type CoreFn = unsafe extern "C" fn(*mut CoreCtx) -> i32;

/// What a compiled core program sees (see the module documentation).
#[repr(C)]
pub struct CoreCtx {
    pub gm: *const *mut u8,
    pub bufs: *const *mut u8,
    pub core: i64,
    pub state: *mut CoreState,
}

/// Byte offsets of [`CoreCtx`]'s fields.
pub const CTX_GM: i32 = 0;
pub const CTX_BUFS: i32 = 8;
pub const CTX_CORE: i32 = 16;

/// The cross-core flag ids are `0..CROSS_FLAGS`.
pub const CROSS_FLAGS: usize = 11;

/// Status codes a core program returns.
pub const STATUS_OK: i32 = 0;
pub const STATUS_FAILED: i32 = 1;
/// A cross-core wait gave up: the unit deadlocked or another core failed.
pub const STATUS_ABORTED: i32 = 2;

/// The dtype code host routines take: f32 0, bf16 1, f16 2, i32 3, bool 4.
pub fn dtype_code(d: DType) -> i64 {
    match d {
        DType::F32 => 0,
        DType::BF16 => 1,
        DType::F16 => 2,
        DType::I32 => 3,
        DType::Bool => 4,
    }
}

fn dtype_of(code: i64) -> Option<DType> {
    Some(match code {
        0 => DType::F32,
        1 => DType::BF16,
        2 => DType::F16,
        3 => DType::I32,
        4 => DType::Bool,
        _ => return None,
    })
}

/// A place in a compiled program that can fail, with what is needed to describe the failure. The values
/// recorded with it (`vals`) are documented per variant.
#[derive(Clone, Debug, PartialEq)]
pub enum Site {
    /// A broken invariant, fully described at compile time (`vals`: unused).
    Internal(String),
    /// An access outside its storage: `what` names the statement and the region (`vals`: offset, row
    /// stride, rows, cols; `limit`: the storage's elements).
    Bounds { what: String, limit: u64 },
    /// A gather index outside `0..src_rows` (`vals`: the index, the row of the tile).
    Gather { span: Span, tensor: String, src_rows: u64, error: Option<String> },
    /// An integer division by zero in a vector statement, reported at the kernel's span as the simulator
    /// does (`vals`: the dividend, 0 for `/` and 1 for `%`).
    DivByZero,
    /// A library operation: its description (the run-time checks are the host routine's).
    Library { span: Span, op: LibKind, what: String },
    /// A reduction (`vals`: unused; failures are type errors, internal).
    Reduce { op: ReduceOp, what: String },
}

/// The library operations, as the host routine [`kc_rt_library`] takes them.
#[derive(Copy, Clone, Debug, PartialEq)]
pub enum LibKind {
    TopK { k: u64, values: bool, indices: bool },
    ArgSort { descending: bool },
    CumSum { exclusive: bool, carry: bool },
    BinCount { n: u64 },
}

/// A compiled launch as the executor runs it.
pub struct NativeLaunch<'a> {
    pub cube: Option<CoreFn>,
    pub vector: Option<CoreFn>,
    pub sites: &'a [Site],
    /// The buffers (by [`BufId`](kc_ir::tile::BufId)) the compiled code uses; only these get scratch
    /// memory (zeroed when a core starts). `None`: every buffer.
    pub used: Option<&'a [bool]>,
    /// The unit-private workspaces the compiled code addresses relative to the running unit's area:
    /// `(tensor, elements, bytes of an area)` ([`crate::gm::unit_private_workspaces`]). Each thread passes
    /// its own area (kept from launch to launch, so warm) as these tensors' GM pointers.
    pub private: &'a [(usize, u64, usize)],
}

/// The executor's state of one core, reached by host routines through [`CoreCtx::state`].
pub struct CoreState {
    yielder: *const Yielder<(), ()>,
    unit: *mut UnitState,
    /// The core's position in its unit: 0 the cube core (if any), then its vector cores.
    member: usize,
    sites: *const [Site],
    abort: *const AtomicBool,
    failure: Option<(usize, [i64; 4])>,
    /// The last row window of each of a few row-reduction sites (`(site, first row's address, change since
    /// the call before)`): see [`rowmath::prefetch_rows`].
    reduce_windows: [(usize, usize, usize); 4],
}

/// The error of a gather whose index check carries its own words (`Stmt::Gather`'s `error`: the grouped
/// template's checks of `segment`'s offsets), failing at row `row` of the gathered tile: `{row}` and
/// `{next}` in the words become `row` and `row + 1`.
pub fn gather_error(span: Span, error: &str, row: i64) -> Diagnostic {
    let msg = error.replace("{row}", &row.to_string()).replace("{next}", &(row + 1).to_string());
    Diagnostic::error(Code::IndexOutOfRange, span, msg).with_label("the segment's offsets")
}

/// Cross-core flag counters of a unit: `inbox[member][sender][flag]`.
struct UnitState {
    has_cube: bool,
    members: usize,
    inbox: Vec<Vec<[u32; CROSS_FLAGS]>>,
    /// Bumped on every set and every consumed wait: no change over a round of resumes is a deadlock.
    events: u64,
    deadlocked: bool,
    max_count: u32,
}

unsafe fn state<'a>(ctx: *mut CoreCtx) -> &'a mut CoreState {
    // SAFETY: the executor passes a live context whose `state` outlives the call.
    unsafe { &mut *(*ctx).state }
}

/// Records a failure at `site` with its values; returns [`STATUS_FAILED`], which the core returns.
///
/// # Safety
/// `ctx` is the context the executor passed to the calling core program.
pub unsafe extern "C" fn kc_rt_fail(ctx: *mut CoreCtx, site: i64, a: i64, b: i64, c: i64, d: i64) -> i32 {
    let st = unsafe { state(ctx) };
    fail(st, site as usize, [a, b, c, d])
}

fn fail(st: &mut CoreState, site: usize, vals: [i64; 4]) -> i32 {
    if st.failure.is_none() {
        st.failure = Some((site, vals));
    }
    // SAFETY: the launch's abort flag outlives its cores.
    unsafe { &*st.abort }.store(true, Ordering::Relaxed);
    STATUS_FAILED
}

/// `CrossSet`: one more signal of `flag` to each partner of the core.
///
/// # Safety
/// `ctx` is the context the executor passed to the calling core program.
pub unsafe extern "C" fn kc_rt_cross_set(ctx: *mut CoreCtx, flag: i64, site: i64) -> i32 {
    let st = unsafe { state(ctx) };
    // SAFETY: the unit state outlives its cores; one thread runs a unit.
    let unit = unsafe { &mut *st.unit };
    let f = flag as usize;
    if f >= CROSS_FLAGS || !unit.has_cube || unit.members < 2 {
        return fail(st, site as usize, [flag, 0, 0, 0]);
    }
    if st.member == 0 {
        for m in 1..unit.members {
            let c = &mut unit.inbox[m][0][f];
            *c = c.saturating_add(1);
            unit.max_count = unit.max_count.max(*c);
        }
    } else {
        let c = &mut unit.inbox[0][st.member - 1][f];
        *c = c.saturating_add(1);
        unit.max_count = unit.max_count.max(*c);
    }
    unit.events += 1;
    STATUS_OK
}

/// `CrossWait`: waits (suspending the core's coroutine) until every partner has signalled `flag`, then
/// takes one signal from each. Returns [`STATUS_ABORTED`] if the unit deadlocked or the launch failed.
///
/// # Safety
/// `ctx` is the context the executor passed to the calling core program.
pub unsafe extern "C" fn kc_rt_cross_wait(ctx: *mut CoreCtx, flag: i64, site: i64) -> i32 {
    let st = unsafe { state(ctx) };
    let f = flag as usize;
    {
        let unit = unsafe { &*st.unit };
        if f >= CROSS_FLAGS || !unit.has_cube || unit.members < 2 {
            return fail(st, site as usize, [flag, 1, 0, 0]);
        }
    }
    loop {
        // SAFETY: as in `kc_rt_cross_set`; no reference to the unit is held across the suspension.
        let unit = unsafe { &mut *st.unit };
        let inbox = &mut unit.inbox[st.member];
        if inbox.iter().all(|row| row[f] > 0) {
            for row in inbox.iter_mut() {
                row[f] -= 1;
            }
            unit.events += 1;
            return STATUS_OK;
        }
        if unit.deadlocked || unsafe { &*st.abort }.load(Ordering::Relaxed) {
            return STATUS_ABORTED;
        }
        // SAFETY: the yielder belongs to the coroutine this code runs on.
        unsafe { &*st.yielder }.suspend(());
    }
}

// ---------------------------------------------------------------------------------------------------------
// Element access by dtype code, for the host routines that are not on a hot path.

unsafe fn load(p: *const u8, d: DType, i: isize) -> Val {
    // SAFETY: the caller checked that element `i` is inside the storage.
    unsafe {
        match d {
            DType::F32 => Val::F(*(p as *const f32).offset(i)),
            DType::BF16 => Val::F(half::bf16::from_bits(*(p as *const u16).offset(i)).to_f32()),
            DType::F16 => Val::F(half::f16::from_bits(*(p as *const u16).offset(i)).to_f32()),
            DType::I32 => Val::I(i64::from(*(p as *const i32).offset(i))),
            DType::Bool => Val::B(*p.offset(i) != 0),
        }
    }
}

/// Stores as [`ops::store`] does; a value of another kind is stored as its conversion (never happens in a
/// verified program).
unsafe fn store(p: *mut u8, d: DType, i: isize, v: Val) {
    let f = |v: Val| match v {
        Val::F(x) => x,
        Val::I(x) => x as f32,
        Val::B(x) => f32::from(u8::from(x)),
    };
    // SAFETY: the caller checked that element `i` is inside the storage.
    unsafe {
        match d {
            DType::F32 => *(p as *mut f32).offset(i) = f(v),
            DType::BF16 => *(p as *mut u16).offset(i) = half::bf16::from_f32(f(v)).to_bits(),
            DType::F16 => *(p as *mut u16).offset(i) = half::f16::from_f32(f(v)).to_bits(),
            DType::I32 => {
                *(p as *mut i32).offset(i) = match v {
                    Val::I(x) => x as i32,
                    Val::F(x) => x as i32,
                    Val::B(x) => i32::from(x),
                }
            }
            DType::Bool => {
                *p.offset(i) = u8::from(match v {
                    Val::B(x) => x,
                    Val::I(x) => x != 0,
                    Val::F(x) => x != 0.0,
                })
            }
        }
    }
}

/// A region passed to a host routine: base address (of the element `(0, 0)`), dtype code, row stride.
#[derive(Copy, Clone)]
struct Reg {
    p: *mut u8,
    d: DType,
    stride: isize,
}

impl Reg {
    /// Reads three words `[ptr, dtype, stride]`.
    unsafe fn at(w: *const i64) -> Option<Reg> {
        // SAFETY: the caller passes an argument block of the documented length.
        let (p, d, s) = unsafe { (*w, *w.add(1), *w.add(2)) };
        Some(Reg { p: p as *mut u8, d: dtype_of(d)?, stride: s as isize })
    }
    fn idx(&self, r: i64, c: i64) -> isize {
        r as isize * self.stride + c as isize
    }
    /// The addresses `[start, end)` a window of `rows` (at least 1) rows of `cols` elements spans.
    fn span(&self, rows: i64, cols: usize) -> (usize, usize) {
        let a = self.p as usize;
        (a, a + ((rows - 1) as usize * self.stride.max(0) as usize + cols) * self.d.size_bytes())
    }
    unsafe fn get(&self, r: i64, c: i64) -> Val {
        unsafe { load(self.p, self.d, self.idx(r, c)) }
    }
    unsafe fn put(&self, r: i64, c: i64, v: Val) {
        unsafe { store(self.p, self.d, self.idx(r, c), v) }
    }
}

/// A vector statement of the constant `+0.0` into a float tensor, or `0` into an `i32` one (every byte of the
/// result zero): `args` = `[dst, dst_dtype, dst_stride, rows, cols]` (the `(0, 0)` element's address, the
/// stride in elements). Each row is cleared with `memset` (64-byte stores) instead of the inline code's
/// 16-byte stores, one per 4 lanes: the attention template zeroes a 64 × 128 `f32` accumulator per task
/// (4% of the JIT code's samples went to that loop).
///
/// # Safety
///
/// `args` points to five words; the window (`rows` rows of `cols` elements, `dst_stride` apart) is writable.
pub unsafe extern "C" fn kc_rt_zero(args: *const i64) {
    // SAFETY: the caller passes the five words.
    let (Some(dst), rows, cols) = (unsafe { Reg::at(args) }, unsafe { *args.add(3) }, unsafe { *args.add(4) }) else {
        return;
    };
    if rows <= 0 || cols <= 0 {
        return;
    }
    let es = dst.d.size_bytes();
    // SAFETY: every byte written lies in the window the caller vouches for.
    unsafe {
        if rows == 1 || dst.stride == cols as isize {
            std::ptr::write_bytes(dst.p, 0, rows as usize * cols as usize * es);
        } else {
            for r in 0..rows {
                std::ptr::write_bytes(dst.p.offset(dst.idx(r, 0) * es as isize), 0, cols as usize * es);
            }
        }
    }
}

/// How many rows ahead [`kc_rt_copy`] prefetches the destination of a converting copy for writing.
const CONVERT_AHEAD: i64 = 8;

/// `Copy`: `args` = `[dst, dst_dtype, dst_stride, src, src_dtype, src_stride, rows, cols]` (addresses of the
/// `(0, 0)` elements, strides in elements). Same dtypes copy row by row; float dtypes convert (rounding to
/// nearest-even). The compiled code checked the bounds.
///
/// # Safety
/// The regions are inside their storage.
pub unsafe extern "C" fn kc_rt_copy(args: *const i64) {
    let (Some(dst), Some(src)) = (unsafe { Reg::at(args) }, unsafe { Reg::at(args.add(3)) }) else { return };
    let (rows, cols) = unsafe { (*args.add(6), *args.add(7)) };
    if rows <= 0 || cols <= 0 {
        return;
    }
    let cols_u = cols as usize;
    let (ss, ds) = (src.d.size_bytes(), dst.d.size_bytes());
    // Overlapping windows (never made by the tiler) go through a copy of the source: reads before writes.
    let ((s0, s1), (d0, d1)) = (src.span(rows, cols_u), dst.span(rows, cols_u));
    if s0 < d1 && d0 < s1 {
        let n = (s1 - s0).div_ceil(8);
        let mut tmp = vec![0u64; n];
        unsafe {
            std::ptr::copy_nonoverlapping(src.p, tmp.as_mut_ptr() as *mut u8, s1 - s0);
            let mut w = [0i64; 8];
            std::ptr::copy_nonoverlapping(args, w.as_mut_ptr(), 8);
            w[3] = tmp.as_mut_ptr() as i64;
            kc_rt_copy(w.as_ptr());
        }
        return;
    }
    unsafe {
        if dst.d == src.d {
            let row = cols_u * ss;
            if rows == 1 || (src.stride == cols as isize && dst.stride == cols as isize) {
                std::ptr::copy_nonoverlapping(src.p, dst.p, rows as usize * row);
                return;
            }
            for r in 0..rows {
                let s = src.p.offset(src.idx(r, 0) * ss as isize);
                let d = dst.p.offset(dst.idx(r, 0) * ds as isize);
                copy_small(s, d, row);
            }
            return;
        }
        // The destination rows `CONVERT_AHEAD` ahead are fetched for writing (`prefetchw`) while this one is
        // converted: a matmul's result block (256 rows of 512 bytes, 8 KiB apart in a 4096-wide output) went
        // out one store miss at a time, and its conversion was 17% of a 4096 × 1024 × 4096 matmul (its
        // samples fell by a third).
        let row_bytes = cols_u * ds;
        for r in 0..rows {
            let s = src.p.offset(src.idx(r, 0) * ss as isize);
            let d = dst.p.offset(dst.idx(r, 0) * ds as isize);
            #[cfg(target_arch = "x86_64")]
            if r + CONVERT_AHEAD < rows {
                use std::arch::x86_64::{_mm_prefetch, _MM_HINT_ET0};
                // In bounds: row `r + CONVERT_AHEAD` of the window (and a prefetch never faults anyway).
                let ahead = dst.p.offset(dst.idx(r + CONVERT_AHEAD, 0) * ds as isize);
                let mut o = 0;
                while o < row_bytes {
                    _mm_prefetch::<_MM_HINT_ET0>(ahead.add(o).cast());
                    o += 64;
                }
            }
            convert_row(d, dst.d, s, src.d, cols_u);
        }
    }
}

/// `Copy` into a large GM tensor (the JIT's `streams`: one that no cache holds by the time it is read
/// again): as [`kc_rt_copy`], with the destination's whole 64-byte lines written by non-temporal stores on
/// AVX-512 hosts, for same-dtype copies and `f32` → bf16 conversions (the same bits as [`kc_rt_copy`]).
/// A plain store to a line that is not cached first reads it from memory: MoE's permuted rows (134 MB)
/// went out at half the bandwidth. The stores are not fenced here: the thread fences them
/// ([`crate::host::rowmath::fence_streams`]) before its results are handed to another thread, and its own
/// later loads see them in program order. Anything else takes [`kc_rt_copy`].
///
/// # Safety
/// As [`kc_rt_copy`].
pub unsafe extern "C" fn kc_rt_copy_stream(args: *const i64) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512bw") {
        // SAFETY: the caller's; the feature is present.
        if unsafe { copy_stream_avx512(args) } {
            crate::host::rowmath::note_streams();
            return;
        }
    }
    // SAFETY: the caller's.
    unsafe { kc_rt_copy(args) }
}

/// [`kc_rt_copy_stream`]'s AVX-512 body: whether it made the copy (false: [`kc_rt_copy`] is to make it).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn copy_stream_avx512(args: *const i64) -> bool {
    let (Some(dst), Some(src)) = (unsafe { Reg::at(args) }, unsafe { Reg::at(args.add(3)) }) else { return false };
    let (rows, cols) = unsafe { (*args.add(6), *args.add(7)) };
    let same = dst.d == src.d;
    if rows <= 0 || cols <= 0 || !(same || (src.d == DType::F32 && dst.d == DType::BF16)) {
        return false;
    }
    let cols_u = cols as usize;
    let (ss, ds) = (src.d.size_bytes(), dst.d.size_bytes());
    let ((s0, s1), (d0, d1)) = (src.span(rows, cols_u), dst.span(rows, cols_u));
    if s0 < d1 && d0 < s1 {
        return false;
    }
    // SAFETY: every row lies in its window, which the caller vouches for; the windows do not overlap.
    unsafe {
        if same && (rows == 1 || (src.stride == cols as isize && dst.stride == cols as isize)) {
            stream_bytes(dst.p, src.p, rows as usize * cols_u * ss);
            return true;
        }
        const CHUNK: usize = 1024;
        let mut buf = [0u16; CHUNK];
        for r in 0..rows {
            let s = src.p.offset(src.idx(r, 0) * ss as isize);
            let d = dst.p.offset(dst.idx(r, 0) * ds as isize);
            if same {
                stream_bytes(d, s, cols_u * ss);
                continue;
            }
            let mut c = 0;
            while c < cols_u {
                let n = (cols_u - c).min(CHUNK);
                to_bf16_avx512(&mut buf[..n], std::slice::from_raw_parts(s.cast::<u32>().add(c), n));
                stream_bytes(d.add(c * 2), buf.as_ptr().cast(), n * 2);
                c += n;
            }
        }
    }
    true
}

/// Copies `n` bytes between non-overlapping places, the destination's whole 64-byte lines with
/// non-temporal stores, the partial lines at either end with plain ones.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn stream_bytes(d: *mut u8, s: *const u8, n: usize) {
    use std::arch::x86_64::{__m512i, _mm512_loadu_si512, _mm512_stream_si512};
    // SAFETY: the caller's: `n` bytes at each, not overlapping.
    unsafe {
        let head = (d as usize).wrapping_neg() % 64;
        if n < head + 64 {
            copy_small(s, d, n);
            return;
        }
        copy_small(s, d, head);
        let mut i = head;
        while i + 64 <= n {
            let v = _mm512_loadu_si512(s.add(i).cast::<__m512i>());
            _mm512_stream_si512(d.add(i).cast::<__m512i>(), v);
            i += 64;
        }
        copy_small(s.add(i), d.add(i), n - i);
    }
}

/// Copies `n` bytes between non-overlapping places: inline 64- and 16-byte moves for the short rows of
/// tiles (a `memcpy` call per row costs more than the row), `memcpy` for long ones.
#[inline]
unsafe fn copy_small(s: *const u8, d: *mut u8, n: usize) {
    unsafe {
        if n > 1024 {
            std::ptr::copy_nonoverlapping(s, d, n);
            return;
        }
        let mut i = 0;
        while i + 64 <= n {
            let v = std::ptr::read_unaligned(s.add(i) as *const [u64; 8]);
            std::ptr::write_unaligned(d.add(i) as *mut [u64; 8], v);
            i += 64;
        }
        while i + 16 <= n {
            let v = std::ptr::read_unaligned(s.add(i) as *const [u64; 2]);
            std::ptr::write_unaligned(d.add(i) as *mut [u64; 2], v);
            i += 16;
        }
        while i < n {
            *d.add(i) = *s.add(i);
            i += 1;
        }
    }
}

/// f32 bits to bf16 bits, rounding to nearest-even without branches (vectorized by the compiler); NaN stays
/// a quiet NaN.
#[inline(always)]
fn to_bf16(dst: &mut [u16], src: &[u32]) {
    for (o, &b) in dst.iter_mut().zip(src) {
        let rounded = (b.wrapping_add(0x7FFF + ((b >> 16) & 1))) >> 16;
        let nan = (b & 0x7FFF_FFFF) > 0x7F80_0000;
        *o = if nan { ((b >> 16) | 0x40) as u16 } else { rounded as u16 };
    }
}

/// [`to_bf16`] compiled for AVX-512 (the same bits, 16 lanes at a time).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
fn to_bf16_avx512(dst: &mut [u16], src: &[u32]) {
    to_bf16(dst, src)
}

/// A loop of column copies as one call: `args` = `[dst, dst_dtype, dst_stride, src, src_dtype, src_stride,
/// rows, n, dst_step, src_step]`: for `j < n`, the `rows × 1` column at element `j · dst_step` (from the first
/// column's `(0, 0)`) of `dst` receives the one at `j · src_step` of `src` (the tiler's transposing loads, a
/// row of one operand becoming a column of the other), or converting between float dtypes (a symmetric
/// product's mirrored block, from L0C); windows that overlap, and conversions other than a transpose into
/// 16-bit runs, go column by column through [`kc_rt_copy`], which handles them.
///
/// # Safety
///
/// `args` points at 10 words; every column's window is inside its storage (the caller checked the first
/// and the last, and the steps are constant).
pub unsafe extern "C" fn kc_rt_copy_cols(args: *const i64) {
    let (Some(dst), Some(src)) = (unsafe { Reg::at(args) }, unsafe { Reg::at(args.add(3)) }) else { return };
    let (rows, n, dstep, sstep) = unsafe { (*args.add(6), *args.add(7), *args.add(8), *args.add(9)) };
    if rows <= 0 || n <= 0 {
        return;
    }
    let es = src.d.size_bytes();
    // The byte ranges both windows span, all columns included.
    let span = |r: &Reg, step: i64| {
        let es = r.d.size_bytes();
        let a = r.p as isize;
        let (lo, hi) = [
            0,
            (rows - 1) as isize * r.stride,
            (n - 1) as isize * step as isize,
            (rows - 1) as isize * r.stride + (n - 1) as isize * step as isize,
        ]
        .iter()
        .fold((isize::MAX, isize::MIN), |(lo, hi), &x| (lo.min(x), hi.max(x)));
        (a + lo * es as isize, a + (hi + 1) * es as isize)
    };
    let ((s0, s1), (d0, d1)) = (span(&src, sstep), span(&dst, dstep));
    // A converting transpose into 16-bit elements (a symmetric product's mirrored block, f32 in L0C to bf16
    // rows of the result): the `rows × n` window converted row by row into a scratch tile (the same
    // conversion as `kc_rt_copy`'s, so the same bits), then transposed as below.
    #[cfg(target_arch = "x86_64")]
    if dst.d != src.d
        && dst.d.size_bytes() == 2
        && dst.d.is_float()
        && src.d.is_float()
        && dst.stride == 1
        && sstep == 1
        && !(s0 < d1 && d0 < s1)
    {
        let (r, w) = (rows as usize, n as usize);
        CONVERT_TILE.with(|t| {
            let mut t = t.borrow_mut();
            // Every element of the first `rows · n` is written below before it is read: no clearing.
            if t.len() < r * w {
                t.resize(r * w, 0);
            }
            // SAFETY: row `i` of the source window is `n` elements at `i · src.stride` (inside it, the
            // caller's checks); the scratch row is `n` 16-bit elements at `i · n` of a `rows · n` vector.
            // `transpose_u16` then reads the scratch's `rows × n` and writes the destination's `n` runs of
            // `rows` elements, `dstep` apart (inside it); the two do not overlap (the scratch is ours).
            unsafe {
                for i in 0..r {
                    let sp = src.p.offset(src.idx(i as i64, 0) * es as isize);
                    convert_row(t.as_mut_ptr().add(i * w) as *mut u8, dst.d, sp, src.d, w);
                }
                transpose_u16_runs(dst.p as *mut u16, dstep as isize, t.as_ptr(), w as isize, w, r);
            }
        });
        return;
    }
    if dst.d != src.d || (s0 < d1 && d0 < s1) {
        for j in 0..n {
            let mut w = [0i64; 8];
            unsafe {
                std::ptr::copy_nonoverlapping(args, w.as_mut_ptr(), 8);
                w[0] = dst.p.offset(j as isize * dstep as isize * dst.d.size_bytes() as isize) as i64;
                w[3] = src.p.offset(j as isize * sstep as isize * es as isize) as i64;
                w[7] = 1;
                kc_rt_copy(w.as_ptr());
            }
        }
        return;
    }
    // A transpose (each column of `dst` is a contiguous run of `src`, and the columns are adjacent): 8 × 8
    // blocks, through SSE2 registers for 16-bit elements.
    #[cfg(target_arch = "x86_64")]
    if es == 2 && src.stride == 1 && dstep == 1 {
        // SAFETY: as below.
        unsafe {
            transpose_u16(dst.p as *mut u16, dst.stride, src.p as *const u16, sstep as isize, rows as usize, n as usize)
        };
        return;
    }
    // The other way round: each column of `src` (strided) becomes a contiguous run of `dst`.
    #[cfg(target_arch = "x86_64")]
    if es == 2 && dst.stride == 1 && sstep == 1 {
        // SAFETY: as below.
        unsafe {
            transpose_u16_runs(
                dst.p as *mut u16,
                dstep as isize,
                src.p as *const u16,
                src.stride,
                n as usize,
                rows as usize,
            )
        };
        return;
    }
    // SAFETY: inside both windows (the caller's checks); the windows do not overlap.
    unsafe {
        macro_rules! cols {
            ($t:ty) => {{
                let (d, s) = (dst.p as *mut $t, src.p as *const $t);
                for j in 0..n as isize {
                    let (d, s) = (d.offset(j * dstep as isize), s.offset(j * sstep as isize));
                    for r in 0..rows as isize {
                        *d.offset(r * dst.stride) = *s.offset(r * src.stride);
                    }
                }
            }};
        }
        match es {
            1 => cols!(u8),
            2 => cols!(u16),
            _ => cols!(u32),
        }
    }
}

thread_local! {
    /// [`kc_rt_copy_cols`]'s converted tile (a thread's, kept: a mirrored block is 128 KiB).
    static CONVERT_TILE: std::cell::RefCell<Vec<u16>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `d[r * ld_d + j] = s[j * ld_s + r]` for `r < rows`, `j < n` (16-bit elements): 8 × 8 blocks transposed
/// in SSE2 registers, the edges element by element.
///
/// # Safety
///
/// Both windows valid for those elements and disjoint.
#[cfg(target_arch = "x86_64")]
unsafe fn transpose_u16(d: *mut u16, ld_d: isize, s: *const u16, ld_s: isize, rows: usize, n: usize) {
    unsafe { transpose_u16_order::<false>(d, ld_d, s, ld_s, rows, n) }
}

/// [`transpose_u16`] writing eight rows of `d` whole before the next eight (eight sequential streams):
/// for rows of `d` far apart in memory (a mirrored block of a symmetric product, 2 KiB apart in a
/// 1024-wide result), going down all rows of `d` for each 8 columns left every line to be fetched for
/// writing once per 8 columns.
///
/// # Safety
/// As [`transpose_u16`].
#[cfg(target_arch = "x86_64")]
unsafe fn transpose_u16_runs(d: *mut u16, ld_d: isize, s: *const u16, ld_s: isize, rows: usize, n: usize) {
    unsafe { transpose_u16_order::<true>(d, ld_d, s, ld_s, rows, n) }
}

/// [`transpose_u16`]'s body; `ROWS_OUTER`: the 8 × 8 blocks row band by row band of `d` (else column band
/// by column band).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn transpose_u16_order<const ROWS_OUTER: bool>(
    d: *mut u16,
    ld_d: isize,
    s: *const u16,
    ld_s: isize,
    rows: usize,
    n: usize,
) {
    use std::arch::x86_64::*;
    let (r8, n8) = (rows / 8 * 8, n / 8 * 8);
    let (outer, inner) = if ROWS_OUTER { (r8, n8) } else { (n8, r8) };
    // SAFETY: the caller's; every access is at `r < rows`, `j < n`.
    unsafe {
        for o0 in (0..outer).step_by(8) {
            for i0 in (0..inner).step_by(8) {
                let (j0, r0) = if ROWS_OUTER { (i0, o0) } else { (o0, i0) };
                let ld = |k: usize| _mm_loadu_si128(s.offset((j0 + k) as isize * ld_s + r0 as isize) as *const __m128i);
                let (x0, x1, x2, x3, x4, x5, x6, x7) = (ld(0), ld(1), ld(2), ld(3), ld(4), ld(5), ld(6), ld(7));
                let (a0, a1) = (_mm_unpacklo_epi16(x0, x1), _mm_unpackhi_epi16(x0, x1));
                let (a2, a3) = (_mm_unpacklo_epi16(x2, x3), _mm_unpackhi_epi16(x2, x3));
                let (a4, a5) = (_mm_unpacklo_epi16(x4, x5), _mm_unpackhi_epi16(x4, x5));
                let (a6, a7) = (_mm_unpacklo_epi16(x6, x7), _mm_unpackhi_epi16(x6, x7));
                let (b0, b1) = (_mm_unpacklo_epi32(a0, a2), _mm_unpackhi_epi32(a0, a2));
                let (b2, b3) = (_mm_unpacklo_epi32(a1, a3), _mm_unpackhi_epi32(a1, a3));
                let (b4, b5) = (_mm_unpacklo_epi32(a4, a6), _mm_unpackhi_epi32(a4, a6));
                let (b6, b7) = (_mm_unpacklo_epi32(a5, a7), _mm_unpackhi_epi32(a5, a7));
                let cols = [
                    _mm_unpacklo_epi64(b0, b4),
                    _mm_unpackhi_epi64(b0, b4),
                    _mm_unpacklo_epi64(b1, b5),
                    _mm_unpackhi_epi64(b1, b5),
                    _mm_unpacklo_epi64(b2, b6),
                    _mm_unpackhi_epi64(b2, b6),
                    _mm_unpacklo_epi64(b3, b7),
                    _mm_unpackhi_epi64(b3, b7),
                ];
                for (k, c) in cols.iter().enumerate() {
                    _mm_storeu_si128(d.offset((r0 + k) as isize * ld_d + j0 as isize) as *mut __m128i, *c);
                }
            }
        }
        // The edges: rows past the last full block of 8, then columns past it.
        for j in 0..n {
            let from = if j < n8 { r8 } else { 0 };
            for r in from..rows {
                *d.offset(r as isize * ld_d + j as isize) = *s.offset(j as isize * ld_s + r as isize);
            }
        }
    }
}

/// `dst[i] = bf16(src[i])` for `i < n` (nothing when `n ≤ 0`): f32 bits rounded to nearest-even, NaN a quiet
/// NaN — the bits of the JIT's inline rounding — 16 lanes at a time on AVX-512.
///
/// # Safety
/// `src` points to `n` readable `f32`s and `dst` to `n` writable `u16`s, not overlapping.
pub unsafe extern "C" fn kc_rt_f32_to_bf16(dst: *mut u16, src: *const u32, n: i64) {
    if n <= 0 {
        return;
    }
    // SAFETY: the caller passes `n` elements each.
    let (dst, src) =
        unsafe { (std::slice::from_raw_parts_mut(dst, n as usize), std::slice::from_raw_parts(src, n as usize)) };
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw")
        && std::arch::is_x86_feature_detected!("avx512vl")
    {
        // SAFETY: the features were detected.
        unsafe { to_bf16_avx512(dst, src) };
        return;
    }
    to_bf16(dst, src);
}

/// Converts `n` elements between float dtypes (other pairs convert as a store would).
unsafe fn convert_row(d: *mut u8, dd: DType, s: *const u8, sd: DType, n: usize) {
    use half::slice::HalfFloatSliceExt;
    unsafe {
        match (sd, dd) {
            (DType::F32, DType::BF16) => {
                let src = std::slice::from_raw_parts(s as *const u32, n);
                let dst = std::slice::from_raw_parts_mut(d as *mut u16, n);
                #[cfg(target_arch = "x86_64")]
                if std::arch::is_x86_feature_detected!("avx512bw") {
                    to_bf16_avx512(dst, src);
                    return;
                }
                to_bf16(dst, src);
            }
            (DType::F32, DType::F16) => std::slice::from_raw_parts_mut(d as *mut half::f16, n)
                .convert_from_f32_slice(std::slice::from_raw_parts(s as *const f32, n)),
            (DType::BF16, DType::F32) => {
                let src = std::slice::from_raw_parts(s as *const u16, n);
                let dst = std::slice::from_raw_parts_mut(d as *mut u32, n);
                for (o, &h) in dst.iter_mut().zip(src) {
                    *o = u32::from(h) << 16;
                }
            }
            (DType::F16, DType::F32) => std::slice::from_raw_parts(s as *const half::f16, n)
                .convert_to_f32_slice(std::slice::from_raw_parts_mut(d as *mut f32, n)),
            _ => {
                for i in 0..n as isize {
                    store(d, dd, i, load(s, sd, i));
                }
            }
        }
    }
}

/// `Gather`: `args` = `[dst, dst_dtype, dst_stride, src, src_dtype, src_rows, row_stride, col_offset,
/// index, index_stride, rows, cols]` (`src` the tensor's base, `index` an i32 region's `(0, 0)`). An index
/// outside `0..src_rows` fails at `site` ([`Site::Gather`]).
///
/// # Safety
/// `ctx` is the calling core's; the regions are inside their storage (the source rows are checked here).
pub unsafe extern "C" fn kc_rt_gather(ctx: *mut CoreCtx, site: i64, args: *const i64) -> i32 {
    unsafe {
        let st = state(ctx);
        let Some(dst) = Reg::at(args) else { return fail(st, site as usize, [0; 4]) };
        let Some(sd) = dtype_of(*args.add(4)) else { return fail(st, site as usize, [0; 4]) };
        let src = *args.add(3) as *const u8;
        let (src_rows, row_stride, col_offset) = (*args.add(5), *args.add(6), *args.add(7));
        let index = *args.add(8) as *const i32;
        let istride = *args.add(9) as isize;
        let (rows, cols) = (*args.add(10), *args.add(11));
        let row_bytes = cols as usize * sd.size_bytes();
        for r in 0..rows {
            let v = i64::from(*index.offset(r as isize * istride));
            if v < 0 || v >= src_rows {
                return fail(st, site as usize, [v, r, 0, 0]);
            }
            // Every row's lines requested before the first is copied: the rows are pages apart (the
            // hardware prefetchers start over on each), and copied one after another each waited for
            // memory alone (MoE's combine gathers 4 KiB rows of a 134 MB tensor).
            #[cfg(target_arch = "x86_64")]
            if rows > 1 && row_bytes >= 256 {
                let s = src.wrapping_offset(((v * row_stride + col_offset) as isize) * sd.size_bytes() as isize);
                let mut o = 0;
                while o < row_bytes {
                    std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(s.wrapping_add(o).cast());
                    o += 64;
                }
            }
        }
        for r in 0..rows {
            let v = i64::from(*index.offset(r as isize * istride));
            let s = src.offset(((v * row_stride + col_offset) as isize) * sd.size_bytes() as isize);
            let d = dst.p.offset(dst.idx(r, 0) * dst.d.size_bytes() as isize);
            if sd == dst.d {
                std::ptr::copy(s, d, cols as usize * sd.size_bytes());
            } else {
                convert_row(d, dst.d, s, sd, cols as usize);
            }
        }
        STATUS_OK
    }
}

/// `Reduce`: `args` = `[dst, dst_dtype, dst_stride, src, src_dtype, src_stride, rows, cols, axis,
/// accumulate]`, the reduction at `site` ([`Site::Reduce`]), with the interpreter's NaN rules ([`Acc`]);
/// float sums along a row use 32 running sums (see the fast path), everything else the interpreter's order.
///
/// # Safety
/// `ctx` is the calling core's; the regions are inside their storage.
pub unsafe extern "C" fn kc_rt_reduce(ctx: *mut CoreCtx, site: i64, args: *const i64) -> i32 {
    unsafe {
        let st = state(ctx);
        let op = match (&*st.sites).get(site as usize) {
            Some(Site::Reduce { op, .. }) => *op,
            _ => return fail(st, site as usize, [0; 4]),
        };
        let (Some(dst), Some(src)) = (Reg::at(args), Reg::at(args.add(3))) else {
            return fail(st, site as usize, [0; 4]);
        };
        let (rows, cols, axis, accumulate) = (*args.add(6), *args.add(7), *args.add(8), *args.add(9) != 0);
        let ty = src.d.compute();
        let (lines, len) = if axis == 1 { (rows, cols) } else { (cols, rows) };
        let at = |l: i64, i: i64| if axis == 1 { (l, i) } else { (i, l) };
        let out_at = |l: i64| if axis == 1 { (l, 0) } else { (0, l) };
        if matches!(src.d, DType::F32 | DType::BF16)
            && dst.d == DType::F32
            && matches!(op, ReduceOp::Sum | ReduceOp::Max | ReduceOp::Min)
        {
            // The common case, without `Val`s. Max and min give the interpreter's values whatever the order
            // (NaN wins either way); a sum along a row is split over 32 running sums (a different rounding
            // from the interpreter's sequential sum, within the tolerance of `kc run --check`); a sum along a
            // column is sequential per column, as the interpreter's.
            let d = dst.p as *mut f32;
            let get = |r: i64, c: i64| -> f32 {
                let i = src.idx(r, c);
                if src.d == DType::F32 {
                    *(src.p as *const f32).offset(i)
                } else {
                    f32::from_bits(u32::from(*(src.p as *const u16).offset(i)) << 16)
                }
            };
            let init = match op {
                ReduceOp::Sum => 0.0,
                ReduceOp::Max => f32::NEG_INFINITY,
                _ => f32::INFINITY,
            };
            let comb = |a: f32, x: f32| match op {
                ReduceOp::Sum => a + x,
                ReduceOp::Max => ops::nan_max(a, x),
                _ => ops::nan_min(a, x),
            };
            if axis == 1 {
                // Row by row, 32 lanes at a time (`host::rowmath`, 16-lane vectors on AVX-512 hosts).
                let n = cols.max(0) as usize;
                if rows > 0 {
                    let esz: isize = if src.d == DType::F32 { 4 } else { 2 };
                    let first = (src.p as *const u8).offset(src.idx(0, 0) * esz);
                    let stride = (src.idx(1, 0) - src.idx(0, 0)) * esz;
                    if n > 0 {
                        // A site whose window moved by the same amount twice running (a loop over row tiles)
                        // will likely read the window that far on next: the row routines that follow request
                        // it into the cache while they compute (a hint, see `rowmath::prefetch_rows`).
                        let at = first as usize;
                        let site = site as usize;
                        let slot = st.reduce_windows.iter().position(|w| w.0 == site).unwrap_or(site % 4);
                        let (old_site, last, moved) = st.reduce_windows[slot];
                        let now = at.wrapping_sub(last);
                        if old_site == site && now == moved && now != 0 {
                            let rstride = if rows > 1 { stride as usize } else { 0 };
                            rowmath::prefetch_rows(at.wrapping_add(now), n * esz as usize, rstride, rows as usize);
                        }
                        st.reduce_windows[slot] = (site, at, if old_site == site { now } else { 0 });
                    }
                    let bf16 = src.d == DType::BF16;
                    // `reduce_rows` may read several rows before it writes their results: when the results'
                    // window overlaps the rows' (not in the tiler's programs), one row at a time, each read
                    // after the writes before it.
                    let span = |a: isize, b: isize, len: isize| (a.min(b), a.max(b) + len);
                    let last = rows - 1;
                    let (s_lo, s_hi) = span(src.idx(0, 0) * esz, src.idx(last, 0) * esz, n as isize * esz);
                    let (s_lo, s_hi) = (src.p as isize + s_lo, src.p as isize + s_hi);
                    let (d_lo, d_hi) = span(dst.idx(0, 0) * 4, dst.idx(last, 0) * 4, 4);
                    let (d_lo, d_hi) = (dst.p as isize + d_lo, dst.p as isize + d_hi);
                    let apart = d_hi <= s_lo || s_hi <= d_lo;
                    let step = if apart { rows as usize } else { 1 };
                    let mut r0 = 0;
                    while r0 < rows as usize {
                        let count = step.min(rows as usize - r0);
                        let at = |r: usize| dst.idx((r0 + r) as i64, 0);
                        let acc = |r: usize| accumulate.then(|| *d.offset(at(r)));
                        let out = |r: usize, v: f32| *d.offset(at(r)) = v;
                        let from = first.wrapping_offset(r0 as isize * stride);
                        if rowmath::reduce_rows(op, from, bf16, stride, n, count, acc, out).is_none() {
                            return fail(st, site as usize, [0; 4]);
                        }
                        r0 += count;
                    }
                }
            } else {
                let mut accs: Vec<f32> =
                    (0..cols).map(|c| if accumulate { *d.offset(dst.idx(0, c)) } else { init }).collect();
                for r in 0..rows {
                    for (c, a) in accs.iter_mut().enumerate() {
                        *a = comb(*a, get(r, c as i64));
                    }
                }
                for (c, a) in accs.into_iter().enumerate() {
                    *d.offset(dst.idx(0, c as i64)) = a;
                }
            }
            return STATUS_OK;
        }
        let mut out = Vec::with_capacity(lines.max(0) as usize);
        for l in 0..lines {
            let acc = if accumulate {
                let (r, c) = out_at(l);
                Acc::start(op, dst.get(r, c))
            } else {
                Acc::new(op, ty)
            };
            let Ok(mut acc) = acc else { return fail(st, site as usize, [0; 4]) };
            for i in 0..len {
                let (r, c) = at(l, i);
                match acc.add(op, ty, i, src.get(r, c)) {
                    Ok(a) => acc = a,
                    Err(_) => return fail(st, site as usize, [0; 4]),
                }
            }
            out.push(acc.finish());
        }
        for (l, v) in out.into_iter().enumerate() {
            let (r, c) = out_at(l as i64);
            dst.put(r, c, v);
        }
        STATUS_OK
    }
}

/// `Library`: `args` = `[src, src_dtype, src_stride, rows, cols, out1 (3 words), out2 (3 words)]`, the
/// operation described by `site` ([`Site::Library`]): TopK's outputs are values then indices (each
/// present only if the site says so), ArgSort's and CumSum's the destination then CumSum's carry,
/// BinCount's the destination. Semantics as the simulator's.
///
/// # Safety
/// `ctx` is the calling core's; the regions are inside their storage.
pub unsafe extern "C" fn kc_rt_library(ctx: *mut CoreCtx, site: i64, args: *const i64) -> i32 {
    unsafe {
        let st = state(ctx);
        let Some(Site::Library { op, .. }) = (&*st.sites).get(site as usize).cloned() else {
            return fail(st, site as usize, [0; 4]);
        };
        let Some(src) = Reg::at(args) else { return fail(st, site as usize, [0; 4]) };
        let (rows, cols) = (*args.add(3), *args.add(4));
        let out1 = Reg::at(args.add(5));
        let out2 = Reg::at(args.add(8));
        let row_vals = |r: i64| -> Vec<Val> { (0..cols).map(|c| src.get(r, c)).collect() };
        match op {
            LibKind::TopK { k, values, indices } => {
                let kk = k as i64;
                if kk > cols {
                    return fail(st, site as usize, [cols, 1, 0, 0]);
                }
                let (vr, ir) = match (values, indices) {
                    (true, true) => (out1, out2),
                    (true, false) => (out1, None),
                    (false, true) => (None, out1),
                    (false, false) => (None, None),
                };
                let ku = kk as usize;
                let mut keys = Vec::with_capacity(cols.max(0) as usize);
                let mut out = Vec::with_capacity((rows * kk).max(0) as usize);
                for r in 0..rows {
                    sort_keys(&mut keys, &src, r, cols, true);
                    if ku == 0 {
                        continue;
                    }
                    // The k first of the order (the keys are distinct): a few by insertion into the first k
                    // (router rows: 2 of 8, 8 of 64), more by selection, then sorted.
                    if ku <= 16 {
                        keys[..ku].sort_unstable();
                        for i in ku..keys.len() {
                            let key = keys[i];
                            if key < keys[ku - 1] {
                                let mut j = ku - 1;
                                while j > 0 && keys[j - 1] > key {
                                    keys[j] = keys[j - 1];
                                    j -= 1;
                                }
                                keys[j] = key;
                            }
                        }
                    } else {
                        if ku < keys.len() {
                            keys.select_nth_unstable(ku - 1);
                        }
                        keys[..ku].sort_unstable();
                    }
                    out.extend(keys[..ku].iter().map(|&key| {
                        let i = i64::from(key as u32);
                        (src.get(r, i), i)
                    }));
                }
                for (n, (v, i)) in out.into_iter().enumerate() {
                    let (r, j) = (n as i64 / kk.max(1), n as i64 % kk.max(1));
                    if let Some(p) = &vr {
                        p.put(r, j, v);
                    }
                    if let Some(p) = &ir {
                        p.put(r, j, Val::I(i));
                    }
                }
            }
            LibKind::ArgSort { descending } => {
                let Some(dst) = out1 else { return fail(st, site as usize, [0; 4]) };
                let mut keys = Vec::with_capacity(cols.max(0) as usize);
                let mut out = Vec::with_capacity((rows * cols).max(0) as usize);
                for r in 0..rows {
                    sort_keys(&mut keys, &src, r, cols, descending);
                    // Stable, so that runs already in order (the blocks a long argsort merges) cost one pass.
                    keys.sort();
                    out.extend(keys.iter().map(|&key| key as u32));
                }
                for (n, i) in out.into_iter().enumerate() {
                    dst.put(n as i64 / cols.max(1), n as i64 % cols.max(1), Val::I(i64::from(i)));
                }
            }
            LibKind::CumSum { exclusive, carry } => {
                let Some(dst) = out1 else { return fail(st, site as usize, [0; 4]) };
                let carry = if carry { out2 } else { None };
                let float = src.d.is_float();
                let mut out = Vec::with_capacity((rows * cols).max(0) as usize);
                let mut totals = Vec::with_capacity(rows.max(0) as usize);
                for r in 0..rows {
                    let mut acc = match &carry {
                        Some(p) => match CumAcc::start(float, p.get(r, 0)) {
                            Ok(a) => a,
                            Err(_) => return fail(st, site as usize, [0; 4]),
                        },
                        None => CumAcc::new(float),
                    };
                    for x in row_vals(r) {
                        if exclusive {
                            out.push(acc.value());
                        }
                        acc.add(x);
                        if !exclusive {
                            out.push(acc.value());
                        }
                    }
                    totals.push(acc.value());
                }
                for (n, v) in out.into_iter().enumerate() {
                    dst.put(n as i64 / cols.max(1), n as i64 % cols.max(1), v);
                }
                if let Some(p) = &carry {
                    for (r, v) in totals.into_iter().enumerate() {
                        p.put(r as i64, 0, v);
                    }
                }
            }
            LibKind::BinCount { n } => {
                let Some(dst) = out1 else { return fail(st, site as usize, [0; 4]) };
                let mut counts = vec![0i64; n as usize];
                for r in 0..rows {
                    for c in 0..cols {
                        let v = match src.get(r, c) {
                            Val::I(v) => v,
                            _ => return fail(st, site as usize, [0, 0, 0, 1]),
                        };
                        match usize::try_from(v).ok().and_then(|u| counts.get_mut(u)) {
                            Some(k) => *k += 1,
                            None => return fail(st, site as usize, [v, r, c, 0]),
                        }
                    }
                }
                for (j, k) in counts.into_iter().enumerate() {
                    if let Val::I(x) = dst.get(0, j as i64) {
                        dst.put(0, j as i64, Val::I(x.wrapping_add(k)));
                    }
                }
            }
        }
        STATUS_OK
    }
}

/// Sets `keys` to one 64-bit key per element of row `r` of `src` (`cols` elements) whose plain order is the
/// order of [`ops::sort_indices`]: the value's rank under [`ops::cmp_nan_max`] in the high half (NaN above
/// every number, all NaNs equal, `-0.0` equal to `0.0`; inverted for a descending order), the element's
/// index in the low half (equal values in index order, in both directions). The keys are distinct, so any
/// sort of them gives the stable sort's order: a 64-element top-k took 1.9 µs a row through the comparator
/// of `Val`s.
fn sort_keys(keys: &mut Vec<u64>, src: &Reg, r: i64, cols: i64, descending: bool) {
    let flip = if descending { u32::MAX } else { 0 };
    let key = |rank: u32, c: i64| u64::from(rank ^ flip) << 32 | c as u64;
    let float = |x: f32| {
        if x.is_nan() {
            u32::MAX
        } else {
            // `+ 0.0` makes `-0.0` `+0.0`; then negative numbers' bits inverted, positive ones' sign set.
            let b = (x + 0.0).to_bits();
            if b >> 31 == 1 {
                !b
            } else {
                b | 1 << 31
            }
        }
    };
    keys.clear();
    // SAFETY (the reads): the caller's region holds `cols` elements in row `r`.
    match src.d {
        DType::F32 => {
            let p = src.p as *const f32;
            keys.extend((0..cols).map(|c| key(float(unsafe { *p.offset(src.idx(r, c)) }), c)));
        }
        DType::I32 => {
            let p = src.p as *const i32;
            keys.extend((0..cols).map(|c| key((unsafe { *p.offset(src.idx(r, c)) } as u32) ^ 1 << 31, c)));
        }
        _ => keys.extend((0..cols).map(|c| {
            let rank = match unsafe { src.get(r, c) } {
                Val::F(x) => float(x),
                // Not made by the other dtypes (i32 is above).
                Val::I(i) => (i as i32 as u32) ^ 1 << 31,
                Val::B(b) => u32::from(b),
            };
            key(rank, c)
        })),
    }
}

/// `pow` of floats, as the interpreter computes it (in f64, rounded once).
pub extern "C" fn kc_rt_powf(x: f32, y: f32) -> f32 {
    libm::pow(f64::from(x), f64::from(y)) as f32
}

/// The floor remainder of floats, as the interpreter computes it.
pub extern "C" fn kc_rt_fmodf(x: f32, y: f32) -> f32 {
    ops::floor_mod_f32(x, y)
}

// ---------------------------------------------------------------------------------------------------------
// The executor.

/// What the executor measured of one launch.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NativeStats {
    /// The largest value a cross-core flag counter reached, per launch.
    pub max_cross_count: Vec<u32>,
}

/// Raw pointers shared with the worker threads.
#[derive(Copy, Clone)]
struct Shared<T>(T);
unsafe impl<T> Send for Shared<T> {}
unsafe impl<T> Sync for Shared<T> {}

/// Runs `prog` (lowered from `graph`, compiled to `launches`, one per `prog.launches` entry) on `args` with
/// `threads` host threads. Arguments and limits are checked as the simulator checks them. With the
/// environment variable `KC_TIME` set, the time of global-memory setup, the launches and the results is
/// printed to stderr (for profiling; `codegen/examples/time_kernel` uses it).
pub fn run(
    prog: &TileProgram,
    graph: &Graph,
    args: &Args,
    launches: &[NativeLaunch<'_>],
    threads: usize,
    limits: &Limits,
    reuse: Option<Reuse<'_>>,
) -> Result<(Results, NativeStats), Vec<Diagnostic>> {
    if launches.len() != prog.launches.len() {
        return Err(vec![gm::internal(
            graph.span,
            format!("{} compiled launches for a program of {}", launches.len(), prog.launches.len()),
        )]);
    }
    let mut kept = Kept::take(reuse, prog, graph);
    let r = run_kept(prog, graph, args, launches, threads, limits, &mut kept);
    kept.put_back();
    r
}

#[allow(clippy::too_many_arguments)]
fn run_kept(
    prog: &TileProgram,
    graph: &Graph,
    args: &Args,
    launches: &[NativeLaunch<'_>],
    threads: usize,
    limits: &Limits,
    kept: &mut Kept<'_>,
) -> Result<(Results, NativeStats), Vec<Diagnostic>> {
    let t0 = std::time::Instant::now();
    // Parameters no statement writes are read in place (the compiled code never writes them).
    // (Not an `inout` parameter: a result may be read back from it.)
    let written = gm::written(prog);
    let borrow = |t: kc_ir::tile::TensorId| read_only_param(prog, graph, &written, t) || kept.has(t) || kept.shares(t);
    let (binding, mut mem) = gm::setup_borrowing(prog, graph, args, limits, "running", &borrow)?;
    kept.lend(&mut mem);
    let mut ptrs = gm_ptrs(prog, graph, args, &mut mem, &|_| false);
    kept.point_shared(&mut ptrs);
    let t1 = std::time::Instant::now();
    let stats = run_launches(prog, graph, launches, &ptrs, threads, kept.zero(), kept.poison);
    kept.keep(&mut mem);
    let stats = stats?;
    let t2 = std::time::Instant::now();
    let r = gm::results(prog, graph, &binding, mem)?;
    if std::env::var_os("KC_TIME").is_some() {
        eprintln!("setup {:?} launches {:?} results {:?}", t1 - t0, t2 - t1, t2.elapsed());
    }
    Ok((r, stats))
}

/// Whether GM tensor `t` is a parameter no statement writes (`written`: [`gm::written`]) and no result is
/// read back from (not an `inout`): the compiled code reads it where the caller's argument is.
fn read_only_param(
    prog: &TileProgram,
    graph: &Graph,
    written: &std::collections::BTreeSet<kc_ir::tile::TensorId>,
    t: kc_ir::tile::TensorId,
) -> bool {
    !written.contains(&t)
        && match prog.tensors.get(t.0 as usize).map(|g| &g.role) {
            Some(TensorRole::Param(p)) => !graph.results.iter().any(|r| r.inout == Some(*p)),
            _ => false,
        }
}

/// The base address of every GM tensor: its entry of `mem`, or, for a parameter `setup_borrowing` left empty
/// (borrowed), the caller's argument — except the tensors `skip` names (the caller points them itself).
fn gm_ptrs(
    prog: &TileProgram,
    graph: &Graph,
    args: &Args,
    mem: &mut [TensorData],
    skip: &dyn Fn(kc_ir::tile::TensorId) -> bool,
) -> Vec<*mut u8> {
    let mut ptrs: Vec<*mut u8> = mem.iter_mut().map(data_ptr).collect();
    for (i, t) in prog.tensors.iter().enumerate() {
        if let (TensorRole::Param(p), true) = (&t.role, mem[i].is_empty()) {
            if skip(kc_ir::tile::TensorId(i as u32)) {
                continue;
            }
            let arg = graph.params.get(*p).and_then(|p| args.tensors.get(&p.name));
            if let Some(a) = arg.filter(|a| a.dtype() == t.dtype && !a.data.is_empty()) {
                ptrs[i] = const_ptr(&a.data) as *mut u8;
            }
        }
    }
    ptrs
}

/// Runs the program's launches one after another on `ptrs`.
fn run_launches(
    prog: &TileProgram,
    graph: &Graph,
    launches: &[NativeLaunch<'_>],
    ptrs: &[*mut u8],
    threads: usize,
    zero: Option<&[Vec<bool>]>,
    poison: bool,
) -> Result<NativeStats, Vec<Diagnostic>> {
    let mut stats = NativeStats::default();
    let timed = std::env::var_os("KC_TIME").is_some();
    for (li, (l, nl)) in prog.launches.iter().zip(launches).enumerate() {
        let z = zero.and_then(|z| z.get(li)).map(|z| z.as_slice());
        let t0 = std::time::Instant::now();
        let cpu = timed.then(AtomicU64::default);
        stats.max_cross_count.push(run_launch(graph, li, l, nl, ptrs, threads.max(1), z, poison, cpu.as_ref())?);
        if let Some(cpu) = cpu {
            let cpu = std::time::Duration::from_nanos(cpu.into_inner());
            eprintln!("  launch {li} `{}`: {:?} (threads' CPU {:?})", l.name, t0.elapsed(), cpu);
        }
    }
    Ok(stats)
}

/// Global memory a compiled program keeps from one call to the next: its intermediates and workspaces,
/// allocated (and page-faulted) once instead of on every call. Which ones a call may take back, dirty,
/// and which scratch buffers need no zeroing, is [`crate::reuse::plan`]'s proof; a concurrent call on
/// the same program (the arena busy) gets fresh memory.
#[derive(Default)]
pub struct Arena {
    /// Whether a call holds the arena, and per GM tensor its kept memory.
    kept: Mutex<(bool, Vec<Option<TensorData>>)>,
    /// Results the caller gave back ([`Arena::recycle`]), newest last.
    spare: Mutex<Vec<TensorData>>,
}

/// The most result tensors an [`Arena`] holds for reuse.
const MAX_SPARE: usize = 8;

impl Arena {
    /// Gives back results of earlier calls that the caller no longer needs: a later call may write an
    /// output of the same dtype and number of elements into one of them instead of fresh memory (whose
    /// pages the kernel faults in and clears on every call: a third of a `kc bench` of softmax at
    /// 8192×4096), when [`crate::reuse::plan`] proves that the program writes every element of that output
    /// and reads none before writing it, so that its old contents are never seen. Keeps the
    /// [`MAX_SPARE`] newest.
    pub fn recycle(&self, results: impl IntoIterator<Item = TensorData>) {
        let mut spare = self.spare.lock().unwrap_or_else(|e| e.into_inner());
        spare.extend(results.into_iter().filter(|d| !d.is_empty()));
        let extra = spare.len().saturating_sub(MAX_SPARE);
        spare.drain(..extra);
    }
}

/// What a call may reuse: the program's arena and, once computed, its plan (without one, nothing is
/// reused or kept, and every buffer is zeroed: a program called once holds no memory after its call).
#[derive(Copy, Clone)]
pub struct Reuse<'a> {
    pub arena: &'a Arena,
    pub plan: Option<&'a crate::reuse::Plan>,
    /// For tests: fill the memory handed out dirty (kept tensors, scratch buffers not zeroed) with `0xFF`
    /// bytes (NaN in every float dtype) first, so that a read of it would show in the results.
    pub poison: bool,
}

fn data_dtype(d: &TensorData) -> DType {
    match d {
        TensorData::F32(_) => DType::F32,
        TensorData::BF16(_) => DType::BF16,
        TensorData::F16(_) => DType::F16,
        TensorData::I32(_) => DType::I32,
        TensorData::Bool(_) => DType::Bool,
    }
}

/// One call's hold on an arena.
struct Kept<'a> {
    arena: Option<&'a Arena>,
    plan: Option<&'a crate::reuse::Plan>,
    /// Per GM tensor: memory taken from the arena (for tensors the plan keeps, of the right size), then the
    /// call's memory to store back.
    mem: Vec<Option<TensorData>>,
    /// Per GM tensor: whether it is stored back after the call.
    store: Vec<bool>,
    poison: bool,
}

impl<'a> Kept<'a> {
    fn take(reuse: Option<Reuse<'a>>, prog: &TileProgram, graph: &Graph) -> Kept<'a> {
        let none = Kept { arena: None, plan: None, mem: Vec::new(), store: Vec::new(), poison: false };
        let Some(r) = reuse else { return none };
        let Ok(mut guard) = r.arena.kept.try_lock() else { return none };
        if guard.0 {
            return none;
        }
        guard.0 = true;
        let n = prog.tensors.len();
        let mut mem = std::mem::take(&mut guard.1);
        drop(guard);
        mem.resize_with(n, || None);
        let store: Vec<bool> = (0..n)
            .map(|t| {
                matches!(prog.tensors[t].role, TensorRole::Intermediate(_) | TensorRole::Workspace { .. })
                    && r.plan.is_some_and(|p| p.keep.get(t).copied().unwrap_or(false))
            })
            .collect();
        for (t, m) in mem.iter_mut().enumerate() {
            // Only what the plan proves written before read is handed out, and only at its size and dtype.
            let fits = m.as_ref().is_some_and(|d| {
                data_dtype(d) == prog.tensors[t].dtype && gm::tensor_elems(prog, t) == Some(d.len() as u64)
            });
            let shared = r.plan.is_some_and(|p| p.share.get(t).copied().flatten().is_some() && store[t]);
            if !(fits && r.plan.is_some_and(|p| p.keep.get(t).copied().unwrap_or(false))) || shared {
                *m = None;
            }
        }
        // Outputs the plan proves written whole before any read (not an `inout` result's, which may be
        // written into its argument) get recycled memory of their dtype and size.
        if let Some(p) = r.plan {
            let mut spare = r.arena.spare.lock().unwrap_or_else(|e| e.into_inner());
            for (t, m) in mem.iter_mut().enumerate() {
                let x = &prog.tensors[t];
                let TensorRole::Output(i) = x.role else { continue };
                let inout = graph.results.get(i).is_none_or(|res| res.inout.is_some());
                if inout || !p.outputs.get(t).copied().unwrap_or(false) || m.is_some() {
                    continue;
                }
                let Some(elems) = gm::tensor_elems(prog, t) else { continue };
                let found = spare.iter().rposition(|d| data_dtype(d) == x.dtype && d.len() as u64 == elems);
                *m = found.map(|k| spare.remove(k));
            }
        }
        if r.poison {
            for d in mem.iter_mut().flatten() {
                let n = d.len() * dtype_bytes(d);
                // SAFETY: `n` bytes of the tensor's own storage; every bit pattern is a valid element.
                unsafe { std::ptr::write_bytes(data_ptr(d), 0xFF, n) };
            }
        }
        Kept { arena: Some(r.arena), plan: r.plan, mem, store, poison: r.poison }
    }

    fn has(&self, t: kc_ir::tile::TensorId) -> bool {
        self.mem.get(t.0 as usize).is_some_and(|m| m.is_some())
    }

    /// The kept intermediate whose memory `t` uses this call (`reuse::Plan::share`): both stored back (the
    /// plan keeps them), so that memory is the owner's, taken from the arena or fresh.
    fn owner(&self, t: usize) -> Option<usize> {
        let o = self.plan?.share.get(t).copied().flatten()?;
        (self.store.get(t) == Some(&true) && self.store.get(o) == Some(&true)).then_some(o)
    }

    /// Whether `t` uses another tensor's memory this call (it gets none of its own).
    fn shares(&self, t: kc_ir::tile::TensorId) -> bool {
        self.owner(t.0 as usize).is_some()
    }

    /// Points the tensors that share memory at their owner's.
    fn point_shared(&self, ptrs: &mut [*mut u8]) {
        for t in 0..ptrs.len() {
            if let Some(o) = self.owner(t) {
                ptrs[t] = ptrs[o];
            }
        }
    }

    /// Moves the taken memory into the call's global memory (the entries `setup_borrowing` left empty).
    fn lend(&mut self, gm: &mut [TensorData]) {
        for (m, g) in self.mem.iter_mut().zip(gm.iter_mut()) {
            if let Some(d) = m.take() {
                *g = d;
            }
        }
    }

    /// Takes back the memory to store once the launches are over (whether they failed or not: the plan's
    /// tensors are written before they are read, whatever they held).
    fn keep(&mut self, gm: &mut [TensorData]) {
        for ((m, g), &st) in self.mem.iter_mut().zip(gm.iter_mut()).zip(&self.store) {
            if st && !g.is_empty() {
                *m = Some(std::mem::replace(g, TensorData::Bool(Vec::new())));
            }
        }
    }

    fn zero(&self) -> Option<&'a [Vec<bool>]> {
        self.plan.map(|p| p.zero.as_slice())
    }

    fn put_back(self) {
        if let Some(a) = self.arena {
            *a.kept.lock().unwrap_or_else(|e| e.into_inner()) = (false, self.mem);
        }
    }
}

/// How [`run_in_place`] ran a program.
#[derive(Clone, Debug, PartialEq)]
pub enum Mode {
    /// The `inout` tensors were updated in place.
    InPlace,
    /// The program ran on copies (the copy path of [`run`]), for this reason; the results then replaced the
    /// `inout` arguments.
    Copied(String),
}

/// Runs `prog` as [`run`] does, but updates the caller's `inout` tensors in `args` (each replaced by its
/// final value) and returns only the other results, in order. When `plan` (from
/// [`crate::inplace::plan`] on the compiled programs) allows it and every `inout` argument already has
/// its parameter's dtype, the program writes the arguments' memory directly: no copy of them is made and
/// no tensor is allocated for their results. The plan proves that such a run cannot fail once it has
/// started (every check that could fail is made before the first launch), so a failure still leaves the
/// arguments as they were. Otherwise the program runs on copies and its results are moved into `args`.
#[allow(clippy::too_many_arguments)]
pub fn run_in_place(
    prog: &TileProgram,
    graph: &Graph,
    args: &mut Args,
    launches: &[NativeLaunch<'_>],
    plan: &Result<crate::inplace::Plan, String>,
    threads: usize,
    limits: &Limits,
    reuse: Option<Reuse<'_>>,
) -> Result<(Results, NativeStats, Mode), Vec<Diagnostic>> {
    let why = match plan {
        Ok(p) => p
            .inout
            .iter()
            .find_map(|&(_, pi, t, _)| {
                let name = &graph.params.get(pi)?.name;
                let a = args.tensors.get(name)?;
                let want = prog.tensors.get(t.0 as usize)?.dtype;
                (a.dtype() != want).then(|| format!("the argument `{name}` is {}, not {want}", a.dtype()))
            })
            .map_or(Ok(p), Err),
        Err(e) => Err(e.clone()),
    };
    let plan = match why {
        Ok(p) if launches.len() == prog.launches.len() => p,
        r => {
            let why = r.err().unwrap_or_else(|| "the compiled launches do not match the program".to_string());
            let (res, stats) = run(prog, graph, args, launches, threads, limits, reuse)?;
            let mut rest = Vec::new();
            for ((name, t), r) in res.into_iter().zip(&graph.results) {
                match r.inout.and_then(|pi| graph.params.get(pi)) {
                    Some(p) => {
                        args.tensors.insert(p.name.clone(), t);
                    }
                    None => rest.push((name, t)),
                }
            }
            return Ok((rest, stats, Mode::Copied(why)));
        }
    };
    let mut kept = Kept::take(reuse, prog, graph);
    let r = run_in_place_kept(prog, graph, args, launches, plan, threads, limits, &mut kept);
    kept.put_back();
    r
}

#[allow(clippy::too_many_arguments)]
fn run_in_place_kept(
    prog: &TileProgram,
    graph: &Graph,
    args: &mut Args,
    launches: &[NativeLaunch<'_>],
    plan: &crate::inplace::Plan,
    threads: usize,
    limits: &Limits,
    kept: &mut Kept<'_>,
) -> Result<(Results, NativeStats, Mode), Vec<Diagnostic>> {
    let t0 = std::time::Instant::now();
    let written = gm::written(prog);
    let in_place: std::collections::BTreeSet<kc_ir::tile::TensorId> =
        plan.inout.iter().flat_map(|&(_, _, p, o)| std::iter::once(p).chain(o)).collect();
    let borrow = |t: kc_ir::tile::TensorId| {
        in_place.contains(&t) || read_only_param(prog, graph, &written, t) || kept.has(t) || kept.shares(t)
    };
    let (binding, mut mem) = gm::setup_borrowing(prog, graph, args, limits, "running", &borrow)?;
    kept.lend(&mut mem);
    // Everything that could fail is checked before the first launch: the results' tensors, the threads.
    let elems = |ti: usize| -> usize {
        if in_place.contains(&kc_ir::tile::TensorId(ti as u32)) {
            prog.tensors[ti].shape.iter().product::<u64>() as usize
        } else {
            mem[ti].len()
        }
    };
    let sources = gm::result_sources(prog, graph, &binding, &elems)?;
    for l in &prog.launches {
        let n = threads.max(1).min(units(l).len()).max(1);
        if n > 1 {
            pool(n).map_err(|e| vec![gm::internal(graph.span, format!("cannot start {n} threads: {e}"))])?;
        }
    }
    let mut ptrs = gm_ptrs(prog, graph, args, &mut mem, &|t| in_place.contains(&t));
    for &(_, pi, p, o) in &plan.inout {
        let a = graph.params.get(pi).and_then(|p| args.tensors.get_mut(&p.name));
        let Some(a) = a else {
            return Err(vec![gm::internal(graph.span, format!("parameter #{pi} has no argument"))]);
        };
        let q = data_ptr(&mut a.data);
        ptrs[p.0 as usize] = q;
        if let Some(o) = o {
            ptrs[o.0 as usize] = q;
        }
    }
    kept.point_shared(&mut ptrs);
    let t1 = std::time::Instant::now();
    // Cannot fail (the plan's walk made every check the compiled code makes).
    let stats = run_launches(prog, graph, launches, &ptrs, threads, kept.zero(), kept.poison);
    kept.keep(&mut mem);
    let stats = stats?;
    let t2 = std::time::Instant::now();
    let mut rest = Vec::new();
    for (k, (ti, shape)) in sources.iter().enumerate() {
        if graph.results[k].inout.is_some() {
            continue;
        }
        let last_use = !sources[k + 1..].iter().any(|(o, _)| o == ti);
        let data =
            if last_use { std::mem::replace(&mut mem[*ti], TensorData::Bool(Vec::new())) } else { mem[*ti].clone() };
        rest.push((graph.results[k].name.clone(), kc_ir::tensor::Tensor { shape: shape.clone(), data }));
    }
    if std::env::var_os("KC_TIME").is_some() {
        eprintln!("in place: setup {:?} launches {:?} results {:?}", t1 - t0, t2 - t1, t2.elapsed());
    }
    Ok((rest, stats, Mode::InPlace))
}

fn dtype_bytes(d: &TensorData) -> usize {
    match d {
        TensorData::F32(_) | TensorData::I32(_) => 4,
        TensorData::BF16(_) | TensorData::F16(_) => 2,
        TensorData::Bool(_) => 1,
    }
}

fn const_ptr(d: &TensorData) -> *const u8 {
    match d {
        TensorData::F32(v) => v.as_ptr() as *const u8,
        TensorData::BF16(v) => v.as_ptr() as *const u8,
        TensorData::F16(v) => v.as_ptr() as *const u8,
        TensorData::I32(v) => v.as_ptr() as *const u8,
        TensorData::Bool(v) => v.as_ptr() as *const u8,
    }
}

fn data_ptr(d: &mut TensorData) -> *mut u8 {
    match d {
        TensorData::F32(v) => v.as_mut_ptr() as *mut u8,
        TensorData::BF16(v) => v.as_mut_ptr() as *mut u8,
        TensorData::F16(v) => v.as_mut_ptr() as *mut u8,
        TensorData::I32(v) => v.as_mut_ptr() as *mut u8,
        TensorData::Bool(v) => v.as_mut_ptr() as *mut u8,
    }
}

/// The process's thread pool of `n` threads, started once and kept (a launch must not pay for starting
/// threads: small kernels take microseconds).
fn pool(n: usize) -> Result<std::sync::Arc<rayon::ThreadPool>, String> {
    static POOLS: Mutex<Vec<(usize, std::sync::Arc<rayon::ThreadPool>)>> = Mutex::new(Vec::new());
    let mut pools = POOLS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, p)) = pools.iter().find(|(k, _)| *k == n) {
        return Ok(p.clone());
    }
    let p = rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .thread_name(|i| format!("kc-worker-{i}"))
        .build()
        .map_err(|e| e.to_string())?;
    let p = std::sync::Arc::new(p);
    pools.push((n, p.clone()));
    Ok(p)
}

/// A unit of scheduling: an optional cube core and its vector cores.
#[derive(Clone, Debug)]
struct Unit {
    cube: Option<u32>,
    vectors: Vec<u32>,
}

fn units(l: &Launch) -> Vec<Unit> {
    let (c, v) = (l.cube_cores, l.vector_cores);
    let ratio = v.checked_div(c).unwrap_or(0);
    let mut out = Vec::new();
    let mut grouped = 0;
    for i in 0..c {
        let vectors: Vec<u32> = if ratio > 0 { (i * ratio..(i + 1) * ratio).collect() } else { Vec::new() };
        grouped = grouped.max(if ratio > 0 { (i + 1) * ratio } else { 0 });
        out.push(Unit { cube: Some(i), vectors });
    }
    for j in grouped..v {
        out.push(Unit { cube: None, vectors: vec![j] });
    }
    out
}

const ALIGN: usize = 64;

thread_local! {
    /// Each thread's scratch for the buffers of the cores it runs, kept across launches.
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    /// Each thread's areas of the unit-private workspaces ([`NativeLaunch::private`]), kept across launches.
    static AREAS: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}
const STACK_BYTES: usize = 1 << 20;

/// A core's scratch: the byte offset of each buffer of its kind, the total, and the byte ranges that must
/// hold zeros when the core starts.
struct Layout {
    offs: Vec<Option<usize>>,
    bytes: usize,
    zero: Vec<(usize, usize)>,
}

/// The scratch layout of one kind of core (`zero`: per buffer, whether it must start as zeros; `None`:
/// all of them).
fn layout(l: &Launch, cube: bool, used: Option<&[bool]>, zero: Option<&[bool]>) -> Layout {
    let mut off = 0usize;
    let mut offs = Vec::with_capacity(l.buffers.len());
    let mut ranges: Vec<(usize, usize)> = Vec::new();
    for (i, b) in l.buffers.iter().enumerate() {
        if b.mem.on_cube() == cube && used.is_none_or(|u| u.get(i).copied().unwrap_or(true)) {
            offs.push(Some(off));
            let bytes = (b.bytes() as usize).div_ceil(ALIGN) * ALIGN;
            if zero.is_none_or(|z| z.get(i).copied().unwrap_or(true)) {
                match ranges.last_mut() {
                    Some(r) if r.1 == off => r.1 = off + bytes,
                    _ => ranges.push((off, off + bytes)),
                }
            }
            off += bytes;
        } else {
            offs.push(None);
        }
    }
    Layout { offs, bytes: off, zero: ranges }
}

/// The calling thread's CPU time in nanoseconds (`CLOCK_THREAD_CPUTIME_ID`), for `KC_TIME`'s per-launch
/// figures: on a loaded machine a launch's wall time includes the time its threads waited for a CPU, its
/// threads' CPU time does not. 0 where unknown.
fn thread_cpu_ns() -> u64 {
    #[cfg(target_os = "linux")]
    {
        extern "C" {
            fn clock_gettime(clock: i32, ts: *mut [i64; 2]) -> i32;
        }
        const CLOCK_THREAD_CPUTIME_ID: i32 = 3;
        let mut ts = [0i64; 2];
        // SAFETY: libc's `clock_gettime` (linked by std) writes one `struct timespec` (two 64-bit words on
        // the 64-bit targets kc runs on) to the pointer it is given, a live local here.
        if unsafe { clock_gettime(CLOCK_THREAD_CPUTIME_ID, &mut ts) } == 0 {
            return (ts[0] as u64).saturating_mul(1_000_000_000).saturating_add(ts[1] as u64);
        }
    }
    0
}

/// How a launch's units are handed to its threads. Unit `i` belongs to thread `i % threads`, which runs its
/// own units in increasing order; a thread that has run out of its own takes the last unit left of the
/// thread with the most left. Each unit runs exactly once. With balanced threads this is the order that
/// taking units in turns gives, but it does not drift: a matmul's cores that walk the same columns of C
/// (core `c` and `c + 2` of Muon's `b·x`) stay on one thread, which packs only those columns' windows of
/// its `b` operand, where after one thread had taken two units in a row it took the other columns' cores
/// and packed (nearly) every window too. A thread that starts late (woken late, preempted) loses its last
/// units to the others instead of holding up the launch.
struct Handout {
    threads: usize,
    /// Per thread, its remaining own units as `(front, back)`: indices `j` in `front..back` of units
    /// `t + j * threads`, packed in one word (`front << 32 | back`) so that taking from either end is one
    /// compare-and-swap.
    lists: Vec<AtomicU64>,
}

impl Handout {
    /// The most units a launch may have (a list's ends are 32-bit halves of one word).
    const MAX_UNITS: usize = u32::MAX as usize;

    fn new(units: usize, threads: usize) -> Handout {
        let threads = threads.max(1);
        let lists = (0..threads)
            .map(|t| {
                let own = units.saturating_sub(t).div_ceil(threads) as u64;
                AtomicU64::new(own)
            })
            .collect();
        Handout { threads, lists }
    }

    /// The next unit for thread `t`: its own first unit left, else the last one left of the thread with the
    /// most left; `None` when every unit has been taken.
    fn next(&self, t: usize) -> Option<usize> {
        let t = t % self.threads;
        if let Some(j) = Self::take(&self.lists[t], true) {
            return Some(t + j * self.threads);
        }
        loop {
            let (mut best, mut most) = (None, 0u64);
            for (u, l) in self.lists.iter().enumerate() {
                let w = l.load(Ordering::Acquire);
                let left = (w & 0xFFFF_FFFF).saturating_sub(w >> 32);
                if left > most {
                    (best, most) = (Some(u), left);
                }
            }
            let u = best?;
            if let Some(j) = Self::take(&self.lists[u], false) {
                return Some(u + j * self.threads);
            }
        }
    }

    /// Takes the front (`front == true`) or back index of one list, if it has any left.
    fn take(l: &AtomicU64, front: bool) -> Option<usize> {
        let mut w = l.load(Ordering::Acquire);
        loop {
            let (f, b) = (w >> 32, w & 0xFFFF_FFFF);
            if f >= b {
                return None;
            }
            let (new, j) = if front { ((f + 1) << 32 | b, f) } else { (f << 32 | (b - 1), b - 1) };
            match l.compare_exchange_weak(w, new, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Some(j as usize),
                Err(cur) => w = cur,
            }
        }
    }
}

/// A failure of one core: (kind order, core index, site, values).
type CoreFailure = (u8, u32, usize, [i64; 4]);

#[allow(clippy::too_many_arguments)]
fn run_launch(
    graph: &Graph,
    li: usize,
    l: &Launch,
    nl: &NativeLaunch<'_>,
    gm: &[*mut u8],
    threads: usize,
    zero: Option<&[bool]>,
    poison: bool,
    cpu: Option<&AtomicU64>,
) -> Result<u32, Vec<Diagnostic>> {
    let units = units(l);
    let cube_layout = layout(l, true, nl.used, zero);
    let vec_layout = layout(l, false, nl.used, zero);
    let abort = AtomicBool::new(false);
    let failures: Mutex<Vec<CoreFailure>> = Mutex::new(Vec::new());
    let deadlocks: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let max_count = AtomicUsize::new(0);
    let n_gm = gm.len();
    let gm = Shared(gm.as_ptr());
    let threads = threads.min(units.len()).max(1);
    if units.len() > Handout::MAX_UNITS {
        return Err(vec![gm::internal(
            graph.span,
            format!("launch #{li} `{}` has {} units, more than the executor hands out", l.name, units.len()),
        )]);
    }
    let handout = Handout::new(units.len(), threads);
    // The packings of windows that the launch's threads all read (`kc_mmad`'s bit 5), made once for all of
    // them: taken empty for this launch, and given back only after every thread has returned (`broadcast`
    // returns then), so no thread reads a packing of another launch or of older data.
    let shared_packs = (threads > 1).then(crate::host::mmad::SharedPacks::take);
    // `t`: the thread's index among the launch's threads.
    let work = |t: usize| {
        let cpu0 = cpu.map(|_| thread_cpu_ns());
        // Packed matrix operands kept by the host cube routine are valid for one launch only.
        crate::host::mmad::clear_b_cache();
        let mut stacks: Vec<DefaultStack> = Vec::new();
        // The thread's scratch, kept from launch to launch (not page-faulted again).
        let mut scratch: Vec<u8> = SCRATCH.with(|s| s.take());
        // The unit-private workspaces: one area each for this thread, which the units it runs reuse in turn
        // (each unit reads only what it wrote: `TensorRole::Workspace`'s `unit_private`), passed as these
        // tensors' GM pointers to this thread's cores.
        let mut areas: Vec<u8> = AREAS.with(|s| s.take());
        let mut local: Vec<*mut u8> = Vec::new();
        let gm = if nl.private.is_empty() {
            gm
        } else {
            let total: usize = nl.private.iter().map(|p| p.2.next_multiple_of(ALIGN)).sum::<usize>() + ALIGN;
            if areas.len() < total {
                areas = vec![0u8; total];
            }
            // SAFETY: `gm` points to the caller's `n_gm` tensor pointers, alive for the launch.
            local.extend_from_slice(unsafe { std::slice::from_raw_parts(gm.0, n_gm) });
            let base = areas.as_mut_ptr();
            // SAFETY (both `add`s): `total` bytes hold the alignment's `ALIGN` and then each area in turn.
            let mut at = unsafe { base.add(base.align_offset(ALIGN)) };
            for &(t, _, bytes) in nl.private {
                if let Some(p) = local.get_mut(t) {
                    *p = at;
                }
                at = unsafe { at.add(bytes.next_multiple_of(ALIGN)) };
            }
            Shared(local.as_ptr())
        };
        crate::host::mmad::with_shared(shared_packs.as_deref(), || {
            while let Some(unit) = handout.next(t).and_then(|i| units.get(i)) {
                if poison && !nl.private.is_empty() {
                    // For tests: a unit that read its area before writing it would see NaNs, not an earlier unit's
                    // values. (Through the raw pointer the cores use: no reference to the areas is made while
                    // they hold pointers into them.)
                    // SAFETY: `areas.len()` bytes of the thread's own areas, which no core is using between units.
                    unsafe { std::ptr::write_bytes(areas.as_mut_ptr(), 0xFF, areas.len()) };
                }
                let r = run_unit(unit, nl, gm, &cube_layout, &vec_layout, &abort, &mut stacks, &mut scratch, poison);
                match r {
                    Ok((fails, max)) => {
                        max_count.fetch_max(max as usize, Ordering::Relaxed);
                        if !fails.is_empty() {
                            failures.lock().unwrap_or_else(|e| e.into_inner()).extend(fails);
                        }
                    }
                    Err(msg) => {
                        abort.store(true, Ordering::Relaxed);
                        deadlocks.lock().unwrap_or_else(|e| e.into_inner()).push(msg);
                    }
                }
            }
        });
        SCRATCH.with(|s| s.replace(scratch));
        drop(local);
        AREAS.with(|s| s.replace(areas));
        // The row routines' non-temporal stores are globally visible before the launch's end is signalled
        // (another thread may read them in the next launch).
        crate::host::rowmath::fence_streams();
        if let (Some(cpu), Some(cpu0)) = (cpu, cpu0) {
            cpu.fetch_add(thread_cpu_ns().saturating_sub(cpu0), Ordering::Relaxed);
        }
    };
    if threads == 1 {
        work(0);
    } else {
        match pool(threads) {
            Ok(p) => {
                p.broadcast(|b| work(b.index()));
            }
            Err(e) => return Err(vec![gm::internal(graph.span, format!("cannot start {threads} threads: {e}"))]),
        }
    }
    drop(shared_packs);
    let mut failures = failures.into_inner().unwrap_or_else(|e| e.into_inner());
    failures.sort_by_key(|f| (f.0, f.1));
    if let Some(&(kind, core, site, vals)) = failures.first() {
        return Err(vec![describe(graph, l, nl, kind, core, site, vals)]);
    }
    let deadlocks = deadlocks.into_inner().unwrap_or_else(|e| e.into_inner());
    if let Some(d) = deadlocks.first() {
        return Err(vec![gm::internal(graph.span, format!("launch #{li} `{}` deadlocks: {d}", l.name))]);
    }
    Ok(max_count.load(Ordering::Relaxed) as u32)
}

fn describe(
    graph: &Graph,
    l: &Launch,
    nl: &NativeLaunch<'_>,
    kind: u8,
    core: u32,
    site: usize,
    v: [i64; 4],
) -> Diagnostic {
    let who = format!("{} core {core} of launch `{}`", if kind == 0 { "cube" } else { "vector" }, l.name);
    let span = graph.span;
    match nl.sites.get(site) {
        None => gm::internal(span, format!("{who} failed at unknown site #{site}")),
        Some(Site::Internal(msg)) => gm::internal(span, format!("{who}: {msg}")),
        Some(Site::Bounds { what, limit }) => gm::internal(
            span,
            format!(
                "{who}: {what}: {} × {} elements at offset {} with row stride {} are outside 0..{limit}",
                v[2], v[3], v[0], v[1]
            ),
        ),
        Some(Site::Gather { span, error: Some(e), .. }) => gather_error(*span, e, v[1]),
        Some(Site::Gather { span, tensor, src_rows, error: None }) => Diagnostic::error(
            Code::IndexOutOfRange,
            *span,
            format!("index {} is out of range for axis 0 of `{tensor}` (size {src_rows})", v[0]),
        )
        .with_label(format!("index {} out of 0..{src_rows}", v[0]))
        .with_note(format!("at row {} of the gathered tile", v[1])),
        Some(Site::DivByZero) => Diagnostic::error(Code::DivByZero, span, "integer division by zero")
            .with_label(format!("{} {} 0", v[0], if v[1] == 0 { "/" } else { "%" })),
        Some(Site::Library { span, op, what }) => match op {
            LibKind::TopK { k, .. } if v[1] == 1 => Diagnostic::error(
                Code::ArgShape,
                *span,
                format!("topk asks for the {k} largest values of rows of {} elements", v[0]),
            )
            .with_label(format!("k = {k}")),
            LibKind::BinCount { n } if v[3] == 0 => Diagnostic::error(
                Code::IndexOutOfRange,
                *span,
                format!("bincount of {what} meets the value {}, outside 0..{n}", v[0]),
            )
            .with_label(format!("counts values in 0..{n}"))
            .with_note(format!("at element ({}, {}) of the counted tile", v[1], v[2])),
            _ => gm::internal(*span, format!("{who}: the library operation on {what} met values of the wrong type")),
        },
        Some(Site::Reduce { op, what }) => {
            gm::internal(span, format!("{who}: the {} reduction of {what} met values of the wrong type", op.name()))
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn run_unit(
    unit: &Unit,
    nl: &NativeLaunch<'_>,
    gm: Shared<*const *mut u8>,
    cube_layout: &Layout,
    vec_layout: &Layout,
    abort: &AtomicBool,
    stacks: &mut Vec<DefaultStack>,
    scratch: &mut Vec<u8>,
    poison: bool,
) -> Result<(Vec<CoreFailure>, u32), String> {
    // The members: (kind 0 cube / 1 vector, core index, function, buffer offsets, bytes).
    #[allow(clippy::type_complexity)]
    let mut members: Vec<(u8, u32, Option<CoreFn>, &[Option<usize>], usize)> = Vec::new();
    let mut layouts: Vec<&Layout> = Vec::new();
    if let Some(c) = unit.cube {
        members.push((0, c, nl.cube, &cube_layout.offs, cube_layout.bytes));
        layouts.push(cube_layout);
    }
    for &v in &unit.vectors {
        members.push((1, v, nl.vector, &vec_layout.offs, vec_layout.bytes));
        layouts.push(vec_layout);
    }
    let total: usize = members.iter().map(|m| m.4).sum::<usize>() + ALIGN;
    if scratch.len() < total {
        *scratch = vec![0u8; total];
    }
    let base = scratch.as_mut_ptr();
    let base = unsafe { base.add(base.align_offset(ALIGN)) };
    // Buffers hold zeros when a core starts (except those the program provably writes before it reads
    // them: `crate::reuse`).
    if poison {
        unsafe { std::ptr::write_bytes(base, 0xFF, total - ALIGN) };
    }
    let mut at = 0usize;
    for (m, lay) in members.iter().zip(&layouts) {
        for &(a, b) in &lay.zero {
            unsafe { std::ptr::write_bytes(base.add(at + a), 0, b - a) };
        }
        at += m.4;
    }
    let n = members.len();
    let mut unit_state = UnitState {
        has_cube: unit.cube.is_some(),
        members: n,
        inbox: (0..n)
            .map(|m| {
                let senders = if m == 0 && unit.cube.is_some() { (n - 1).max(1) } else { 1 };
                vec![[0u32; CROSS_FLAGS]; senders]
            })
            .collect(),
        events: 0,
        deadlocked: false,
        max_count: 0,
    };
    let up: *mut UnitState = &mut unit_state;
    let mut bufs: Vec<Vec<*mut u8>> = Vec::with_capacity(n);
    let mut off = 0usize;
    for m in &members {
        bufs.push(m.3.iter().map(|o| o.map_or(std::ptr::null_mut(), |o| unsafe { base.add(off + o) })).collect());
        off += m.4;
    }
    let mut states: Vec<CoreState> = (0..n)
        .map(|i| CoreState {
            yielder: std::ptr::null(),
            unit: up,
            member: i,
            sites: nl.sites as *const [Site],
            abort,
            failure: None,
            reduce_windows: [(usize::MAX, 0, 0); 4],
        })
        .collect();
    let sp = states.as_mut_ptr();
    let mut ctxs: Vec<CoreCtx> = (0..n)
        .map(|i| CoreCtx {
            gm: gm.0,
            bufs: bufs[i].as_ptr(),
            core: i64::from(members[i].1),
            state: unsafe { sp.add(i) },
        })
        .collect();
    let mut failures = Vec::new();
    if n == 1 {
        // A core without partners runs on the thread's own stack; a cross-core wait fails before suspending.
        let ctx: *mut CoreCtx = &mut ctxs[0];
        if let Some(f) = members[0].2 {
            let status = unsafe { f(ctx) };
            if status != STATUS_OK {
                if let Some((site, vals)) = unsafe { (*sp).failure } {
                    failures.push((members[0].0, members[0].1, site, vals));
                }
            }
        }
        return Ok((failures, 0));
    }
    // Coroutines, one per member, round-robin.
    type Co = Coroutine<(), (), i32, DefaultStack>;
    let mut cos: Vec<Option<Co>> = Vec::with_capacity(n);
    for i in 0..n {
        let stack = match stacks.pop() {
            Some(s) => s,
            None => DefaultStack::new(STACK_BYTES).map_err(|e| format!("cannot allocate a core's stack: {e}"))?,
        };
        let ctx = Shared(&mut ctxs[i] as *mut CoreCtx);
        let f = members[i].2;
        let co: Co = Coroutine::with_stack(stack, move |y: &Yielder<(), ()>, ()| {
            let ctx = ctx;
            let Some(f) = f else { return STATUS_OK };
            // SAFETY: the context and its state live until the coroutine has finished (below).
            unsafe {
                (*(*ctx.0).state).yielder = y;
                f(ctx.0)
            }
        });
        cos.push(Some(co));
    }
    let mut status = vec![None; n];
    let mut last_events = u64::MAX;
    loop {
        let mut all_done = true;
        for i in 0..n {
            let Some(co) = cos[i].as_mut() else { continue };
            match co.resume(()) {
                CoroutineResult::Return(s) => {
                    status[i] = Some(s);
                    if let Some(co) = cos[i].take() {
                        stacks.push(co.into_stack());
                    }
                    unsafe { (*up).events += 1 };
                }
                CoroutineResult::Yield(()) => all_done = false,
            }
        }
        if all_done {
            break;
        }
        let events = unsafe { (*up).events };
        if events == last_events {
            // A whole round without a set, a consumed wait or a finished core: every core waits.
            unsafe { (*up).deadlocked = true };
        }
        last_events = events;
    }
    for i in 0..n {
        if status[i] != Some(STATUS_OK) {
            if let Some((site, vals)) = unsafe { (*sp.add(i)).failure } {
                failures.push((members[i].0, members[i].1, site, vals));
            }
        }
    }
    let (deadlocked, max_count) = unsafe { ((*up).deadlocked, (*up).max_count) };
    drop(ctxs);
    drop(states);
    if deadlocked && failures.is_empty() && !abort.load(Ordering::Relaxed) {
        let who: Vec<String> = members
            .iter()
            .zip(&status)
            .filter(|(_, s)| **s == Some(STATUS_ABORTED))
            .map(|(m, _)| {
                format!("{} core {} waits for a cross-core flag", if m.0 == 0 { "cube" } else { "vector" }, m.1)
            })
            .collect();
        return Err(format!("{}, and no core can set it", who.join(", ")));
    }
    Ok((failures, max_count))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn words(v: &[i64]) -> Vec<i64> {
        v.to_vec()
    }

    /// Copies convert f32 → bf16 with round-to-nearest-even exactly as `half` does (NaN stays NaN), widen
    /// exactly, and copy strided windows of any dtype.
    #[test]
    fn copies_convert_and_stride() {
        let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
        let mut src: Vec<f32> = (0..4096).map(|_| f32::from_bits(rng.random::<u32>())).collect();
        src.extend([0.0, -0.0, f32::INFINITY, f32::NEG_INFINITY, f32::NAN, 1.0 + f32::EPSILON, 3.0e38]);
        let n = src.len();
        let mut dst = vec![0u16; n];
        let a = words(&[dst.as_mut_ptr() as i64, 1, n as i64, src.as_ptr() as i64, 0, n as i64, 1, n as i64]);
        unsafe { kc_rt_copy(a.as_ptr()) };
        for (x, &b) in src.iter().zip(&dst) {
            let want = half::bf16::from_f32(*x);
            if x.is_nan() {
                assert!(half::bf16::from_bits(b).is_nan());
            } else {
                assert_eq!(b, want.to_bits(), "{x:e}");
            }
        }
        let mut back = vec![0f32; n];
        let a = words(&[back.as_mut_ptr() as i64, 0, n as i64, dst.as_ptr() as i64, 1, n as i64, 1, n as i64]);
        unsafe { kc_rt_copy(a.as_ptr()) };
        for (&b, &y) in dst.iter().zip(&back) {
            let w = half::bf16::from_bits(b).to_f32();
            assert!(w.to_bits() == y.to_bits() || (w.is_nan() && y.is_nan()));
        }
        // A 3 × 5 window with row strides 7 (source) and 6 (destination), i32.
        let s: Vec<i32> = (0..21).collect();
        let mut d = vec![-1i32; 18];
        let a = words(&[d.as_mut_ptr() as i64, 3, 6, s.as_ptr() as i64 + 4, 3, 7, 3, 5]);
        unsafe { kc_rt_copy(a.as_ptr()) };
        assert_eq!(d, vec![1, 2, 3, 4, 5, -1, 8, 9, 10, 11, 12, -1, 15, 16, 17, 18, 19, -1]);
    }

    /// A converting copy of a window of many rows (more than `CONVERT_AHEAD`: the destination rows ahead are
    /// prefetched for writing) writes exactly the window, converted, and nothing around it: a 40 × 100 f32
    /// window (source row stride 103) into the last rows of a bf16 tensor (row stride 130), ending at the
    /// tensor's last element.
    #[test]
    fn converting_copy_of_many_rows_writes_only_its_window() {
        let mut rng = rand::rngs::SmallRng::seed_from_u64(11);
        let (rows, cols, ls, ld) = (40usize, 100usize, 103usize, 130usize);
        let src: Vec<f32> = (0..rows * ls).map(|_| rng.random_range(-8.0f32..8.0)).collect();
        let (total_rows, col0) = (rows + 3, ld - cols);
        let mut dst = vec![0xABCDu16; total_rows * ld];
        let at = 3 * ld + col0;
        let a = words(&[
            dst.as_mut_ptr() as i64 + 2 * at as i64,
            1,
            ld as i64,
            src.as_ptr() as i64,
            0,
            ls as i64,
            rows as i64,
            cols as i64,
        ]);
        unsafe { kc_rt_copy(a.as_ptr()) };
        for (i, &got) in dst.iter().enumerate() {
            let (r, c) = (i / ld, i % ld);
            if r >= 3 && c >= col0 {
                let want = half::bf16::from_f32(src[(r - 3) * ls + c - col0]).to_bits();
                assert_eq!(got, want, "row {r} col {c}");
            } else {
                assert_eq!(got, 0xABCD, "row {r} col {c} is outside the window");
            }
        }
    }

    /// The reduction fast path: max and min equal the interpreter's (`Acc`), NaN included; a row sum is
    /// within f32 rounding of the sequential sum; a column sum is the sequential sum exactly.
    #[test]
    fn reductions_match_the_interpreter() {
        let mut rng = rand::rngs::SmallRng::seed_from_u64(3);
        let (rows, cols) = (5i64, 37i64);
        let mut x: Vec<f32> = (0..rows * cols).map(|_| rng.random_range(-4.0f32..4.0)).collect();
        x[(2 * cols + 9) as usize] = f32::NAN;
        let reference = |op: ReduceOp, axis: i64, l: i64| -> f32 {
            let mut acc = Acc::new(op, kc_ir::ScalarTy::F32).unwrap();
            let len = if axis == 1 { cols } else { rows };
            for i in 0..len {
                let v = if axis == 1 { x[(l * cols + i) as usize] } else { x[(i * cols + l) as usize] };
                acc = acc.add(op, kc_ir::ScalarTy::F32, i, Val::F(v)).unwrap();
            }
            match acc.finish() {
                Val::F(v) => v,
                _ => unreachable!(),
            }
        };
        let mut sites = vec![Site::Reduce { op: ReduceOp::Sum, what: "x".into() }];
        for op in [ReduceOp::Max, ReduceOp::Min, ReduceOp::Sum] {
            sites[0] = Site::Reduce { op, what: "x".into() };
            for axis in [1i64, 0] {
                let lines = if axis == 1 { rows } else { cols };
                let mut out = vec![0f32; lines as usize];
                let stride = if axis == 1 { 1 } else { cols };
                let a = words(&[out.as_mut_ptr() as i64, 0, stride, x.as_ptr() as i64, 0, cols, rows, cols, axis, 0]);
                let abort = AtomicBool::new(false);
                let mut st = CoreState {
                    yielder: std::ptr::null(),
                    unit: std::ptr::null_mut(),
                    member: 0,
                    sites: sites.as_slice() as *const [Site],
                    abort: &abort,
                    failure: None,
                    reduce_windows: [(usize::MAX, 0, 0); 4],
                };
                let mut ctx = CoreCtx { gm: std::ptr::null(), bufs: std::ptr::null(), core: 0, state: &mut st };
                assert_eq!(unsafe { kc_rt_reduce(&mut ctx, 0, a.as_ptr()) }, STATUS_OK);
                for (l, got) in out.iter().enumerate() {
                    let want = reference(op, axis, l as i64);
                    let ok = if want.is_nan() {
                        got.is_nan()
                    } else if op == ReduceOp::Sum && axis == 1 {
                        (got - want).abs() <= 1e-5 * 4.0 * cols as f32
                    } else {
                        got.to_bits() == want.to_bits()
                    };
                    assert!(ok, "{op:?} axis {axis} line {l}: {got} vs {want}");
                }
            }
        }
    }

    /// Every unit is handed out exactly once, whatever the numbers of units and threads and however the
    /// threads interleave (threads taking units concurrently, some from others' lists).
    #[test]
    fn handout_gives_every_unit_once() {
        for (units, threads) in [(0usize, 1usize), (1, 1), (7, 1), (16, 2), (17, 2), (36, 2), (5, 3), (100, 3), (2, 4)]
        {
            for _round in 0..20 {
                let h = Handout::new(units, threads);
                let got: Vec<Vec<usize>> = std::thread::scope(|sc| {
                    let hs: Vec<_> = (0..threads)
                        .map(|t| {
                            let h = &h;
                            sc.spawn(move || std::iter::from_fn(|| h.next(t)).collect::<Vec<_>>())
                        })
                        .collect();
                    hs.into_iter().map(|h| h.join().unwrap()).collect()
                });
                let mut all: Vec<usize> = got.concat();
                all.sort_unstable();
                assert_eq!(all, (0..units).collect::<Vec<_>>(), "{units} units, {threads} threads: {got:?}");
                assert_eq!(h.next(0), None);
            }
        }
    }

    /// A thread runs its own units (`i % threads == t`) first, in increasing order, even when the threads
    /// do not alternate (the drift that made both threads of Muon's `b·x` pack every window of `x`); then it
    /// takes the others' last units, from the thread with the most left.
    #[test]
    fn handout_keeps_units_on_their_thread_and_steals_from_the_back() {
        // Thread 0 takes three units in a row, then the threads alternate: each still gets only its own.
        let h = Handout::new(16, 2);
        let mut seq = vec![(0, h.next(0)), (0, h.next(0)), (0, h.next(0))];
        for _ in 0..5 {
            seq.push((1, h.next(1)));
            seq.push((0, h.next(0)));
        }
        for (t, u) in &seq {
            assert_eq!(u.map(|u| u % 2), Some(*t), "{seq:?}");
        }
        assert_eq!(
            seq.iter().filter(|s| s.0 == 0).map(|s| s.1.unwrap()).collect::<Vec<_>>(),
            [0, 2, 4, 6, 8, 10, 12, 14]
        );
        // Thread 0 has run out: it takes thread 1's last units while thread 1 goes on from its front.
        assert_eq!(h.next(0), Some(15));
        assert_eq!(h.next(1), Some(11));
        assert_eq!(h.next(0), Some(13));
        assert_eq!(h.next(1), None);
        assert_eq!(h.next(0), None);
        // Threads that never come (started late): thread 0 runs all of their units, each time the last one of
        // the thread with the most left (the lower thread on a tie). Thread 1 owns 1 and 4, thread 2 owns 2, 5.
        let h = Handout::new(7, 3);
        let got: Vec<usize> = std::iter::from_fn(|| h.next(0)).collect();
        assert_eq!(got, [0, 3, 6, 4, 5, 1, 2]);
    }

    /// The streaming copy writes the bytes the plain copy writes and nothing else: same-dtype and
    /// converting windows, contiguous or strided, rows shorter than a line, rows starting off a line, rows
    /// longer than its conversion chunk; and it makes the other conversions by the plain copy.
    #[test]
    fn streaming_copies_write_what_plain_copies_write() {
        let mut rng = rand::rngs::SmallRng::seed_from_u64(5);
        let src: Vec<f32> = (0..12000).map(|_| f32::from_bits(rng.random::<u32>())).collect();
        // (source dtype, destination dtype, rows, cols, source stride, destination stride, destination start)
        let cases = [
            (0, 1, 1, 3000, 3000, 3000, 0),
            (0, 1, 3, 2500, 2600, 2700, 5),
            (0, 1, 40, 7, 9, 8, 1),
            (1, 1, 1, 9000, 9000, 9000, 3),
            (1, 1, 4, 2048, 2048, 2048, 0),
            (1, 1, 5, 1000, 1100, 1003, 17),
            (1, 1, 6, 20, 20, 25, 31),
            (0, 0, 7, 900, 901, 950, 2),
            (3, 3, 2, 1500, 1500, 1500, 0),
            (1, 0, 3, 700, 700, 800, 4),
        ];
        for (sd, dd, rows, cols, ls, ld, at) in cases {
            let size = |d: i64| if d == 1 { 2 } else { 4 };
            let bytes = (at + (rows - 1) * ld + cols + 16) * size(dd) as usize;
            let run = |routine: unsafe extern "C" fn(*const i64)| {
                let mut dst = vec![0xA5u8; bytes];
                let base = dst.as_mut_ptr() as i64 + (at * size(dd) as usize) as i64;
                let a = words(&[base, dd, ld as i64, src.as_ptr() as i64, sd, ls as i64, rows as i64, cols as i64]);
                unsafe { routine(a.as_ptr()) };
                rowmath::fence_streams();
                dst
            };
            let (plain, streamed) = (run(kc_rt_copy), run(kc_rt_copy_stream));
            assert!(plain == streamed, "{sd} -> {dd}, {rows} x {cols}: other bytes");
            assert!(plain.iter().any(|&b| b != 0xA5), "nothing copied");
        }
    }

    /// The library ops' sort keys order a row as `ops::sort_indices` does, ascending and descending: NaNs
    /// (of any sign and payload) above every number and equal to each other, `-0.0` equal to `0.0`, the
    /// infinities, many ties; i32 rows with the extremes; bf16 rows (the generic reads).
    #[test]
    fn sort_keys_order_rows_as_the_interpreter() {
        let mut rng = rand::rngs::SmallRng::seed_from_u64(9);
        let special = [f32::NAN, -f32::NAN, f32::from_bits(0x7FC0_1234), 0.0, -0.0, f32::INFINITY, f32::NEG_INFINITY];
        let f: Vec<f32> = (0..300)
            .map(|i| {
                if i % 5 == 0 {
                    special[rng.random_range(0..special.len())]
                } else {
                    rng.random_range(-4i32..4) as f32 / 2.0
                }
            })
            .collect();
        let ints: Vec<i32> = (0..300)
            .map(|i| if i % 7 == 0 { [i32::MIN, i32::MAX, 0][i % 3] } else { rng.random_range(-5..5) })
            .collect();
        let halves: Vec<u16> = f.iter().map(|&x| half::bf16::from_f32(x).to_bits()).collect();
        let regs = [
            Reg { p: f.as_ptr() as *mut u8, d: DType::F32, stride: 0 },
            Reg { p: ints.as_ptr() as *mut u8, d: DType::I32, stride: 0 },
            Reg { p: halves.as_ptr() as *mut u8, d: DType::BF16, stride: 0 },
        ];
        for reg in regs {
            for descending in [false, true] {
                let mut keys = Vec::new();
                sort_keys(&mut keys, &reg, 0, 300, descending);
                keys.sort_unstable();
                let got: Vec<usize> = keys.iter().map(|&k| k as u32 as usize).collect();
                let mut want = Vec::new();
                ops::sort_indices(&mut want, 300, |i| unsafe { reg.get(0, i as i64) }, descending);
                assert_eq!(got, want, "{:?}, descending {descending}", reg.d);
            }
        }
    }
}

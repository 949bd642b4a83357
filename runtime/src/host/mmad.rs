//! The host cube unit: a matrix multiply-accumulate on small tiles, called by JIT-compiled kernel code
//! through [`kc_mmad`].
//!
//! # Contract
//!
//! ```text
//! c[i*ldc + j] = (accumulate ? c[i*ldc + j] : 0.0) + Σ_{p<k} a[i*lda + p] * b[p*ldb + j]     for i < m, j < n
//! ```
//!
//! - `a` is `m × k`, row-major, row stride `lda` elements; `b` is `k × n`, row-major, row stride `ldb`
//!   elements; `c` is `m × n` f32, row stride `ldc` elements. Nothing outside the `m × n` block of `c` is
//!   written, and nothing outside the `m × k` / `k × n` blocks of `a` / `b` is read.
//! - The elements of `a` and `b` are [`Dtype::F32`], [`Dtype::Bf16`] or [`Dtype::F16`] (codes 0, 1, 2; the
//!   two operands may differ). Products and sums are in f32.
//! - Any `m, k, n ≥ 0`. With `k == 0` and no accumulate the block of `c` is set to zero; with `m == 0` or
//!   `n == 0` nothing is touched.
//! - **Transposed `b`** ([`mmad_bt_with`], `kc_mmad`'s bit 3): `b` is given as its transpose, an `n × k`
//!   row-major block with row stride `ldb` (`b[p][j]` at `b[j * ldb + p]`): a weight stored `[N, K]`, Kᵀ,
//!   `xᵀ`. The AMX path packs its VNNI panels straight from those rows (a pair of k values of one column is
//!   one 32-bit word of a row, so a panel is a 16 × 16 transpose of words, `pack_bt_vnni`), instead of the
//!   caller materializing the transpose for it to repack; the other paths read it element by element. A
//!   kept packing (bit 1) of a transposed `b` is made from its second use on (`seen_before`), and from its
//!   first once the thread's calls find kept ones again (`packed_bt`): a grouped matmul's weight tiles are
//!   used once per row tile of their expert (once, or by 2–3 consecutive items), and kept when used once
//!   they only pushed the reused packings out of the caches. A transposed `b` flagged as rows of the
//!   matrix the `a` operands come from (bit 4, `x·xᵀ`) is kept from its first use, and its window's `a`
//!   packing is made in the same pass and kept for the call that reads it as its `a` (`packed_bt_shared`).
//! - **Packings shared by a launch's threads** (bit 5: `a` and `b` are windows of the same read-only matrix,
//!   `x·xᵀ` and `a·a`): when the executor runs a launch on two or more threads it gives them one
//!   [`SharedPacks`] ([`with_shared`]), and the kept packings of such calls go there, each window packed
//!   once per launch by the first thread that needs it (the others wait for its flag), instead of once per
//!   thread in the thread-local caches: every thread reads nearly every window of such a product.
//! - The order of summation depends on the path. [`Path::Portable`] sums sequentially,
//!   `acc = c_or_0; for p in 0..k { acc = acc + a_ip * b_pj }` with a rounded f32 product and a rounded f32
//!   add per step, so it is bit-identical to the obvious scalar f32 loop. The vector paths reassociate
//!   (AMX and AVX512-BF16 sum pairs of products inside `tdpbf16ps` / `vdpbf16ps`, and flush denormals) and
//!   agree with it to rounding.
//!
//! # Paths
//!
//! Chosen once per process from the CPU's features ([`path`]); [`mmad_with`] / [`mmad_raw`] force one for
//! tests and benchmarks.
//!
//! 1. [`Path::Amx`] (x86-64 with AMX-TILE, AMX-BF16 and AVX-512BW, and the Linux kernel granting
//!    `XFEATURE_XTILEDATA` through `arch_prctl(ARCH_REQ_XCOMP_PERM)`): bf16 × bf16 only; other dtypes take
//!    the AVX-512 path. Tiles of 16 × 16 f32 of `c` are accumulated 2 × 2 at a time (`tmm0..3`) from two
//!    16 × 32 bf16 tiles of `a` (`tmm4..5`) and two 16-pair × 16 tiles of `b` (`tmm6..7`, loaded with the
//!    non-temporal hint of `tileloaddt1`: they are streamed) with `tdpbf16ps`.
//!    `b` is packed per call into the VNNI layout (one panel per 16 columns, `k` padded to a multiple of
//!    32; element `(p, j)` of a panel at `[(p / 2) * 32 + 2 j + p % 2]`) in a thread-local scratch buffer;
//!    `a` is read in place (stride `lda * 2` bytes, at most 512: attention's P·V reads its 256-wide rows of
//!    probabilities where they are) when `k` is a multiple of 32, except a last partial
//!    block of rows, which is copied zero-padded to 16 rows; otherwise `a` is copied zero-padded to a
//!    multiple of 32 columns and to 16 rows, chunk by chunk of k (each chunk's panels contiguous, so that
//!    a 16-row tile load walks consecutive 1 KiB rows instead of rows one `k` apart, which alias in L1 when
//!    `k` is a large power of two). Edge tiles of `c` go through a scratch tile. Loops: k in chunks of 512
//!    (a block's two A panels, 32 KiB, stay in L1 while its B panels stream by, 2 KiB per step; the
//!    accumulators stay in their tiles for the whole chunk, so `c` goes through memory once per 512 of k:
//!    with chunks of 256 a 4096 × 1024 × 4096 launch's mmad time was 9% longer, see docs/perf.md), then
//!    32-row blocks of `c`, then 32-column blocks. A call whose kept `b` packing (bit 1) directly follows, in its arena, the one the thread's
//!    previous call used (a matmul core walking its blocks along a row of C uses the kept packings in the
//!    order they were packed) prefetches the next packing into L2, a few lines per k step of its second and
//!    later row blocks, so the next call's first pass over the rows does not wait for its whole `b` from L3. The tile configuration (palette 1, every tile 16 rows × 64 bytes) is loaded once per thread
//!    (a thread-local flag) and left loaded ([`release_tiles`] releases it): nothing else in the process
//!    may change it.
//! 2. [`Path::Avx512Bf16`] (AVX-512F/BW and AVX512-BF16, no AMX: AMD Zen 4, Intel Cooper Lake): bf16 × bf16
//!    only, everything of the AMX path (the same packings, kept and shared, `a` read in place or packed by
//!    tile rows, k in chunks of 512, the next packing prefetched) except the block: each 32 × 32 block of
//!    `c` is computed 8 rows at a time, 8 × 2 zmm accumulators of 16 f32 read and written in `c` with masks,
//!    with one `vdpbf16ps` per row, panel and k pair (the row's pair of `a` elements broadcast, the panel's
//!    64-byte VNNI row loaded once per pair for the 8 rows). On a Zen 4 core (one 512-bit `vdpbf16ps` a
//!    cycle, 234 GFLOP/s measured) a 2048³ matmul runs at 217 GFLOP/s; the AVX-512 path took 104. Slicing
//!    each block's k into 4-step slices so that its B panels stay in L1 across the row groups was 2% slower.
//! 3. [`Path::Avx512`] (AVX-512F and AVX-512BW): every dtype pair. `b` is converted to f32 and packed into
//!    panels of 32 columns (`[panel][p][32]`, zero-padded); `a` is read in place when f32, else converted to
//!    f32 one block of 8 rows at a time. A micro-kernel keeps an 8 × 32 block of `c` in 16 zmm registers and
//!    does one broadcast and two FMAs per element of `a`.
//! 4. [`Path::Portable`]: plain Rust, the reference described above.
//!
//! Scratch memory is thread-local, grows to the largest call seen and is reused: a steady-state call does not
//! allocate. The packings kept for a launch (`kc_mmad`'s bits 1 and 2) go one after another into 2 MiB-aligned
//! chunks of 8 MiB (or the entry's size) that Linux is asked to back with transparent huge pages: AMX tile
//! loads read the packed panels at a 512-byte or 1 KiB row stride, and a launch's packings are megabytes, so
//! with 4 KiB pages the tile loads kept walking new pages (10% of a 2048³ matmul).

use std::cell::{Cell, RefCell};
use std::sync::OnceLock;

/// The element type of an operand, with the code the JIT passes.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Dtype {
    /// Code 0: IEEE single.
    F32 = 0,
    /// Code 1: bfloat16, as its `u16` bits.
    Bf16 = 1,
    /// Code 2: IEEE half, as its `u16` bits.
    F16 = 2,
}

impl Dtype {
    /// The dtype with JIT code `code`, if any.
    pub fn from_code(code: i64) -> Option<Dtype> {
        match code {
            0 => Some(Dtype::F32),
            1 => Some(Dtype::Bf16),
            2 => Some(Dtype::F16),
            _ => None,
        }
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Dtype::F32 => 4,
            Dtype::Bf16 | Dtype::F16 => 2,
        }
    }
}

/// An implementation of the multiply-accumulate.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Path {
    /// Intel AMX tiles (bf16 × bf16 only).
    Amx,
    /// AVX512-BF16 `vdpbf16ps` (bf16 × bf16 only), with the AMX path's packings and loops.
    Avx512Bf16,
    /// AVX-512 FMA micro-kernel (every dtype).
    Avx512,
    /// Plain Rust, sequential sums.
    Portable,
}

impl Path {
    /// Every path, fastest first.
    pub const ALL: [Path; 4] = [Path::Amx, Path::Avx512Bf16, Path::Avx512, Path::Portable];
}

/// Whether `path` can run on this machine (for [`Path::Amx`]: the CPU has it and the kernel allowed it).
pub fn supported(path: Path) -> bool {
    match path {
        Path::Amx => amx_ok(),
        Path::Avx512Bf16 => avx512bf16_ok(),
        Path::Avx512 => avx512_ok(),
        Path::Portable => true,
    }
}

/// Returns the calling thread's AMX tile state to its initial state (`tilerelease`), if an AMX call on it
/// loaded a configuration; the next AMX call on the thread loads it again. Optional: a thread that will not
/// multiply again (e.g. a JIT worker going idle) can call it so context switches stop saving its 8 KiB of
/// tile registers.
pub fn release_tiles() {
    #[cfg(target_arch = "x86_64")]
    amx::release();
}

/// The path [`kc_mmad`] and [`mmad`] take on this machine (for bf16 × bf16; other dtypes fall from
/// [`Path::Amx`] to [`Path::Avx512`]). Detected once and cached.
pub fn path() -> Path {
    static BEST: OnceLock<Path> = OnceLock::new();
    *BEST.get_or_init(|| Path::ALL.into_iter().find(|&p| supported(p)).unwrap_or(Path::Portable))
}

#[cfg(target_arch = "x86_64")]
fn avx512_ok() -> bool {
    std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx512bw")
}

#[cfg(not(target_arch = "x86_64"))]
fn avx512_ok() -> bool {
    false
}

/// AVX-512F/BW with AVX512-BF16 (`vdpbf16ps`).
#[cfg(target_arch = "x86_64")]
fn avx512bf16_ok() -> bool {
    avx512_ok() && std::arch::is_x86_feature_detected!("avx512bf16")
}

#[cfg(not(target_arch = "x86_64"))]
fn avx512bf16_ok() -> bool {
    false
}

/// AMX in the CPU (CPUID leaf 7: EDX bit 24 AMX-TILE, bit 22 AMX-BF16), AVX-512 for the packing, and the
/// kernel's permission to use the tile data state (asked for once per process).
#[cfg(target_arch = "x86_64")]
fn amx_ok() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| {
        use std::arch::x86_64::{__cpuid, __cpuid_count};
        if __cpuid(0).eax < 7 || !avx512_ok() {
            return false;
        }
        let edx = __cpuid_count(7, 0).edx;
        let cpu = edx & (1 << 24) != 0 && edx & (1 << 22) != 0;
        cpu && amx::request_permission()
    })
}

#[cfg(not(target_arch = "x86_64"))]
fn amx_ok() -> bool {
    false
}

/// A read-only operand for [`mmad`]: the elements of a row-major matrix.
#[derive(Copy, Clone, Debug)]
pub enum Operand<'a> {
    F32(&'a [f32]),
    Bf16(&'a [half::bf16]),
    F16(&'a [half::f16]),
}

impl Operand<'_> {
    /// The dtype of the elements.
    pub fn dtype(&self) -> Dtype {
        match self {
            Operand::F32(_) => Dtype::F32,
            Operand::Bf16(_) => Dtype::Bf16,
            Operand::F16(_) => Dtype::F16,
        }
    }

    fn len(&self) -> usize {
        match self {
            Operand::F32(s) => s.len(),
            Operand::Bf16(s) => s.len(),
            Operand::F16(s) => s.len(),
        }
    }

    fn ptr(&self) -> *const u8 {
        match self {
            Operand::F32(s) => s.as_ptr().cast(),
            Operand::Bf16(s) => s.as_ptr().cast(),
            Operand::F16(s) => s.as_ptr().cast(),
        }
    }
}

/// The elements a `rows × cols` matrix with row stride `ld` spans (0 when empty).
fn span(rows: usize, cols: usize, ld: usize) -> usize {
    if rows == 0 || cols == 0 {
        0
    } else {
        (rows - 1) * ld + cols
    }
}

/// [`mmad_with`] on the best path ([`path`]).
#[allow(clippy::too_many_arguments)]
pub fn mmad(
    a: Operand,
    lda: usize,
    b: Operand,
    ldb: usize,
    c: &mut [f32],
    ldc: usize,
    (m, k, n): (usize, usize, usize),
    accumulate: bool,
) {
    mmad_with(path(), a, lda, b, ldb, c, ldc, (m, k, n), accumulate)
}

/// The multiply-accumulate of the module's contract on slices, asking for `path` (which falls back as in
/// [`mmad_raw`]).
///
/// # Panics
///
/// If a slice is shorter than the block it holds, or a row stride is smaller than the row (`lda < k`,
/// `ldb < n`, `ldc < n` when the matrix has more than one row).
#[allow(clippy::too_many_arguments)]
pub fn mmad_with(
    path: Path,
    a: Operand,
    lda: usize,
    b: Operand,
    ldb: usize,
    c: &mut [f32],
    ldc: usize,
    (m, k, n): (usize, usize, usize),
    accumulate: bool,
) {
    checked(path, a, lda, b, ldb, c, ldc, (m, k, n), accumulate, false)
}

/// The multiply-accumulate of the module's contract on raw pointers, on `path` if it can run here: an
/// unsupported path, or [`Path::Amx`] with operands other than bf16 × bf16, falls back to the next path of
/// [`Path::ALL`] that can.
///
/// # Safety
///
/// `a` must be valid for reads of the `m × k` block with row stride `lda` elements of `a_dtype`, `b` of the
/// `k × n` block with row stride `ldb`, `c` valid for reads and writes of the `m × n` block with row stride
/// `ldc`, and the block of `c` must not overlap the others. No alignment is required.
#[allow(clippy::too_many_arguments)]
pub unsafe fn mmad_raw(
    path: Path,
    a: *const u8,
    a_dtype: Dtype,
    lda: usize,
    b: *const u8,
    b_dtype: Dtype,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
    m: usize,
    k: usize,
    n: usize,
    accumulate: bool,
) {
    let args = Args {
        a,
        a_dtype,
        lda,
        b,
        b_dtype,
        ldb,
        c,
        ldc,
        m,
        k,
        n,
        accumulate,
        b_const: false,
        a_const: false,
        b_trans: false,
        b_shares_a: false,
        same_src: false,
    };
    // SAFETY: the caller's guarantees.
    unsafe { dispatch(path, &args) }
}

/// [`mmad_with`] with `b` given as its transpose `bt` (`n × k`, row-major, row stride `ldbt`): the contract's
/// `b[p][j]` is `bt[j * ldbt + p]`. The matrix unit's transposed-B mode (`kc_mmad`'s bit 3).
///
/// # Panics
///
/// As [`mmad_with`], with `ldbt < k` (when `bt` has more than one row) and `bt`'s span checked instead.
#[allow(clippy::too_many_arguments)]
pub fn mmad_bt_with(
    path: Path,
    a: Operand,
    lda: usize,
    bt: Operand,
    ldbt: usize,
    c: &mut [f32],
    ldc: usize,
    (m, k, n): (usize, usize, usize),
    accumulate: bool,
) {
    checked(path, a, lda, bt, ldbt, c, ldc, (m, k, n), accumulate, true)
}

/// [`mmad_with`] (`b_trans` false: `b` is `k × n`) or [`mmad_bt_with`] (true: `b` is `bt`, `n × k`): the
/// slices' spans and row strides checked, then the call on raw pointers.
#[allow(clippy::too_many_arguments)]
fn checked(
    path: Path,
    a: Operand,
    lda: usize,
    b: Operand,
    ldb: usize,
    c: &mut [f32],
    ldc: usize,
    (m, k, n): (usize, usize, usize),
    accumulate: bool,
    b_trans: bool,
) {
    let (b_rows, b_cols) = if b_trans { (n, k) } else { (k, n) };
    let name = if b_trans { "bt" } else { "b" };
    assert!(m <= 1 || k == 0 || lda >= k, "mmad: lda {lda} < k {k}");
    assert!(b_rows <= 1 || b_cols == 0 || ldb >= b_cols, "mmad: ld{name} {ldb} < {}", if b_trans { "k" } else { "n" });
    assert!(m <= 1 || n == 0 || ldc >= n, "mmad: ldc {ldc} < n {n}");
    assert!(a.len() >= span(m, k, lda), "mmad: a has {} elements, needs {}", a.len(), span(m, k, lda));
    assert!(
        b.len() >= span(b_rows, b_cols, ldb),
        "mmad: {name} has {} elements, needs {}",
        b.len(),
        span(b_rows, b_cols, ldb)
    );
    assert!(c.len() >= span(m, n, ldc), "mmad: c has {} elements, needs {}", c.len(), span(m, n, ldc));
    let args = Args {
        a: a.ptr(),
        a_dtype: a.dtype(),
        lda,
        b: b.ptr(),
        b_dtype: b.dtype(),
        ldb,
        c: c.as_mut_ptr(),
        ldc,
        m,
        k,
        n,
        accumulate,
        b_const: false,
        a_const: false,
        b_trans,
        b_shares_a: false,
        same_src: false,
    };
    // SAFETY: the asserts above keep every access of the contract inside the slices, and `c` (a unique
    // borrow) cannot overlap `a` or `b`.
    unsafe { dispatch(path, &args) }
}

/// Runs one call on `path`, or on the next path that can take it (AMX takes bf16 × bf16 only).
///
/// # Safety
///
/// As [`mmad_raw`], for `x`'s blocks.
unsafe fn dispatch(path: Path, x: &Args) {
    if x.m == 0 || x.n == 0 {
        return;
    }
    let bf16 = x.a_dtype == Dtype::Bf16 && x.b_dtype == Dtype::Bf16;
    let path = match path {
        Path::Amx if bf16 && supported(Path::Amx) => Path::Amx,
        Path::Amx | Path::Avx512Bf16 if bf16 && supported(Path::Avx512Bf16) => Path::Avx512Bf16,
        Path::Amx | Path::Avx512Bf16 | Path::Avx512 if supported(Path::Avx512) => Path::Avx512,
        _ => Path::Portable,
    };
    // SAFETY: the caller's guarantees, and the path was checked to be supported.
    unsafe {
        match path {
            #[cfg(target_arch = "x86_64")]
            Path::Amx => with_scratch(|s| amx::mmad(x, s, false)),
            #[cfg(target_arch = "x86_64")]
            Path::Avx512Bf16 => with_scratch(|s| amx::mmad(x, s, true)),
            #[cfg(target_arch = "x86_64")]
            Path::Avx512 => with_scratch(|s| avx512::mmad(x, s)),
            _ => portable(x),
        }
    }
}

/// The entry point JIT-compiled code calls (by its address): the module's contract with dtype codes
/// (0 f32, 1 bf16, 2 f16) on the best path. Does nothing if a dtype code is unknown or a size or stride is
/// negative. Never unwinds. `accumulate` is a set of bits: bit 0 accumulates into `c`; bit 1 says that `b`
/// will not change until the thread's next [`clear_b_cache`], so the AMX path may keep its packed form and
/// reuse it for the next call with the same `b` window (the JIT sets it for operands in GM tensors that no
/// statement of the launch writes); bit 2 says the same of `a` (kept when the AMX path packs `a`, which it
/// does for an `a` read in place from a wide tensor); bit 3 says that `b` is given as its transpose (`b[p][j]`
/// at `b[j * ldb + p]`: an `n × k` block, row stride `ldb`), as [`mmad_bt_with`]; bit 4 (with bits 1 and 3)
/// says that the transposed `b`'s rows are rows of the read-only matrix the launch's `a` operands come from
/// (`x @ transpose(x)`): its window is, or will be, another call's `a`, so its packing is kept from its
/// first use and the `a` packing of the same window is made in the same pass ([`packed_bt_shared`]); bit 5
/// (with bits 1 and 2) says that `a` and `b` are windows of the same read-only matrix (`x @ transpose(x)`,
/// `a @ a`): every window is read by many blocks of the launch, on any thread, so when the executor gave
/// the thread its launch's [`SharedPacks`] ([`with_shared`]) the kept packings of `a` and `b` go there and
/// each window is packed once per launch, not once per thread.
///
/// # Safety
///
/// As [`mmad_raw`] (with bit 3: `b` valid for reads of the `n × k` block with row stride `ldb`).
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn kc_mmad(
    a: *const u8,
    a_dtype: i64,
    lda: i64,
    b: *const u8,
    b_dtype: i64,
    ldb: i64,
    c: *mut f32,
    ldc: i64,
    m: i64,
    k: i64,
    n: i64,
    accumulate: i64,
) {
    let (Some(ad), Some(bd)) = (Dtype::from_code(a_dtype), Dtype::from_code(b_dtype)) else { return };
    if [lda, ldb, ldc, m, k, n].iter().any(|&v| v < 0) {
        return;
    }
    let u = |v: i64| v as usize;
    let args = Args {
        a,
        a_dtype: ad,
        lda: u(lda),
        b,
        b_dtype: bd,
        ldb: u(ldb),
        c,
        ldc: u(ldc),
        m: u(m),
        k: u(k),
        n: u(n),
        accumulate: accumulate & 1 != 0,
        b_const: accumulate & 2 != 0,
        a_const: accumulate & 4 != 0,
        b_trans: accumulate & 8 != 0,
        b_shares_a: accumulate & 16 != 0,
        same_src: accumulate & 32 != 0,
    };
    // SAFETY: the caller's guarantees.
    unsafe { dispatch(path(), &args) }
}

/// Forgets the packed `b` operands this thread kept (see `kc_mmad`'s `accumulate` bit 1). The executor
/// calls it on each thread before a launch: a kept operand is valid only while its memory is unchanged.
pub fn clear_b_cache() {
    let _ = KEEP_FIRST.try_with(|k| k.set(false));
    let _ = SEEN.try_with(|s| {
        if let Ok(mut s) = s.try_borrow_mut() {
            s.clear();
        }
    });
    for cache in [&B_CACHE, &A_CACHE] {
        let _ = cache.try_with(|c| {
            if let Ok(mut c) = c.try_borrow_mut() {
                // The memory stays for the next launch (fresh memory would be zeroed and faulted in again).
                c.forget();
            }
        });
    }
}

/// A packed operand's key: (address, leading dimension, and its two sizes).
type PackKey = (usize, usize, usize, usize);

/// Memory for packed operands: 2 MiB-aligned chunks that the kernel is asked to back with huge pages
/// (`madvise(MADV_HUGEPAGE)`), never freed while the thread lives.
///
/// Why huge pages: a launch's packed operands are megabytes (a 2048³ matmul keeps 8 MiB of each operand per
/// thread), read back by AMX tile loads one 64-byte row per page-sized stride; with 4 KiB pages each block
/// of tile loads walks new pages.
struct Chunk {
    ptr: *mut u8,
    bytes: usize,
}

impl Chunk {
    const ALIGN: usize = 2 << 20;

    /// A chunk of at least `bytes` (rounded up to 2 MiB), or `None` if the allocation fails.
    fn new(bytes: usize) -> Option<Chunk> {
        let bytes = bytes.div_ceil(Self::ALIGN).max(1) * Self::ALIGN;
        let layout = std::alloc::Layout::from_size_align(bytes, Self::ALIGN).ok()?;
        // SAFETY: a non-zero size.
        let ptr = unsafe { std::alloc::alloc(layout) };
        if ptr.is_null() {
            return None;
        }
        advise_huge(ptr, bytes);
        Some(Chunk { ptr, bytes })
    }
}

impl Drop for Chunk {
    fn drop(&mut self) {
        // SAFETY: allocated in `Chunk::new` with this layout.
        unsafe {
            std::alloc::dealloc(self.ptr, std::alloc::Layout::from_size_align_unchecked(self.bytes, Self::ALIGN))
        };
    }
}

/// Asks Linux to back `[ptr, ptr + bytes)` with transparent huge pages (a hint: ignored where unsupported).
#[cfg(target_os = "linux")]
fn advise_huge(ptr: *mut u8, bytes: usize) {
    extern "C" {
        fn madvise(addr: *mut std::ffi::c_void, len: usize, advice: i32) -> i32;
    }
    const MADV_HUGEPAGE: i32 = 14;
    // SAFETY: the range is a live allocation of this process; the advice changes no contents.
    unsafe { madvise(ptr.cast(), bytes, MADV_HUGEPAGE) };
}

#[cfg(not(target_os = "linux"))]
fn advise_huge(_ptr: *mut u8, _bytes: usize) {}

/// A thread's packed operands: entries placed one after another in the chunks (a bump allocator), all
/// forgotten at once.
#[derive(Default)]
struct PackArena {
    chunks: Vec<Chunk>,
    /// The chunk and offset where the next entry goes.
    at: (usize, usize),
    /// (key, address) of the entries.
    entries: Vec<(PackKey, *mut u8)>,
    /// Calls that found their operand here since the last [`PackArena::forget`].
    hits: usize,
}

impl PackArena {
    /// Forgets every entry; the chunks stay.
    fn forget(&mut self) {
        self.entries.clear();
        self.at = (0, 0);
        self.hits = 0;
    }

    /// The entry of `key`, if kept (counted as a hit).
    #[cfg(target_arch = "x86_64")]
    fn find(&mut self, key: PackKey) -> Option<*const u8> {
        let p = self.entries.iter().find(|(k, _)| *k == key).map(|&(_, p)| p.cast_const())?;
        self.hits += 1;
        Some(p)
    }

    /// Whether `key` is kept (not counted as a hit).
    #[cfg(target_arch = "x86_64")]
    fn contains(&self, key: PackKey) -> bool {
        self.entries.iter().any(|(k, _)| *k == key)
    }

    /// Packs `key` by `pack` into new room and keeps it. When the arena holds `B_CACHE_ENTRIES` operands,
    /// all are forgotten first; `on_full` is told how many calls found an entry since the last forget.
    #[cfg(target_arch = "x86_64")]
    fn insert(
        &mut self,
        key: PackKey,
        bytes: usize,
        pack: impl FnOnce(*mut u8),
        on_full: impl FnOnce(usize),
    ) -> Option<*const u8> {
        if self.entries.len() >= B_CACHE_ENTRIES {
            on_full(self.hits);
            self.forget();
        }
        let p = self.alloc(bytes)?;
        pack(p);
        self.entries.push((key, p));
        Some(p.cast_const())
    }

    /// Room for `bytes` (64-byte aligned), in the current chunk or the next (allocated if needed).
    fn alloc(&mut self, bytes: usize) -> Option<*mut u8> {
        let bytes = bytes.div_ceil(64).max(1) * 64;
        loop {
            let (c, off) = self.at;
            if c == self.chunks.len() {
                self.chunks.push(Chunk::new(bytes.max(PACK_CHUNK_BYTES))?);
            }
            let chunk = &self.chunks[c];
            if off + bytes <= chunk.bytes {
                self.at = (c, off + bytes);
                // SAFETY: inside the chunk.
                return Some(unsafe { chunk.ptr.add(off) });
            }
            if off == 0 {
                // Too small even when empty: replace it by one that holds the entry.
                self.chunks[c] = Chunk::new(bytes)?;
                continue;
            }
            self.at = (c + 1, 0);
        }
    }
}

/// The size of a packing chunk (a multiple of 2 MiB).
const PACK_CHUNK_BYTES: usize = 8 << 20;

type PackCache = RefCell<PackArena>;

/// The packed form of the operand `key` in `cache` (`bytes` long), packed by `pack` into new room if it is
/// not there yet. When the cache holds `B_CACHE_ENTRIES` operands, all are forgotten first. `None` if the
/// cache is unavailable (the thread is ending, or a borrow is active) or memory for it cannot be had.
#[cfg(target_arch = "x86_64")]
fn packed(
    cache: &'static std::thread::LocalKey<PackCache>,
    key: PackKey,
    bytes: usize,
    pack: impl FnOnce(*mut u8),
) -> Option<*const u8> {
    cache
        .try_with(|c| {
            let mut c = c.try_borrow_mut().ok()?;
            if let Some(p) = c.find(key) {
                return Some(p);
            }
            c.insert(key, bytes, pack, |_| {})
        })
        .ok()
        .flatten()
}

/// The kept packing of a transposed `b` (`kc_mmad`'s bits 1 and 3), or `None` when it is not to be kept
/// (the caller packs it into its scratch) or cannot be.
///
/// When to keep one: a grouped matmul's weight panels are used once per row tile of their expert, so
/// once when every expert fits one row tile (its rows < `grouped_rows`) and 2 or 3 times, by consecutive
/// items, when the experts have 256–660 rows (the benchmark's T = 4096); x·xᵀ's and Kᵀ's panels are used
/// many times. Kept when used once, the packings only push the reused ones out of the caches (a new
/// 64 KiB of arena per panel instead of the same scratch: +17% of packing time with one row tile per
/// expert); packed again on their second use, the weights are packed twice. So a thread keeps them from
/// their second use (`seen_before`) until its calls show reuse (a kept packing found again), and from
/// then on from their first use, until the cache fills with no packing found again since it was last
/// emptied (the reuse has stopped). Each launch starts over ([`clear_b_cache`]).
#[cfg(target_arch = "x86_64")]
fn packed_bt(key: PackKey, bytes: usize, pack: impl FnOnce(*mut u8)) -> Option<*const u8> {
    B_CACHE
        .try_with(|c| {
            let mut c = c.try_borrow_mut().ok()?;
            if let Some(p) = c.find(key) {
                let _ = KEEP_FIRST.try_with(|k| k.set(true));
                return Some(p);
            }
            let keep_first = KEEP_FIRST.try_with(Cell::get).unwrap_or(false);
            if !keep_first && !seen_before(key) {
                return None;
            }
            c.insert(key, bytes, pack, |hits| {
                if hits == 0 {
                    let _ = KEEP_FIRST.try_with(|k| k.set(false));
                }
            })
        })
        .ok()
        .flatten()
}

/// The kept packing of a transposed `b` whose rows are rows of the matrix the launch's `a` operands are read
/// from (`kc_mmad`'s bit 4: in `x @ transpose(x)` block column `j`'s `b` window is block row `j`'s `a`
/// window), or `None` when it cannot be kept (the caller packs it into its scratch).
///
/// Kept from its first use (every such window is read by the blocks of its column of the product, not
/// once), and when `a_form` is given (the key and size of the `a` packing that a call reading the same
/// window as its `a` makes and keeps in `A_CACHE`) and that packing is not kept yet, `pack(b_dst,
/// Some(a_dst))` makes both in one pass over the window's rows, and the `a` packing is kept under that
/// key: the call that reads the window as its `a` finds it instead of reading the rows again (x·xᵀ read
/// each row panel of `x` twice a launch, once per form, and packed its transposed form twice). Valid
/// because both packings are of the same bytes, which bit 1 says do not change until the next
/// [`clear_b_cache`], which forgets both caches.
#[cfg(target_arch = "x86_64")]
fn packed_bt_shared(
    key: PackKey,
    bytes: usize,
    a_form: Option<(PackKey, usize)>,
    pack: impl FnOnce(*mut u8, Option<*mut u8>),
) -> Option<*const u8> {
    B_CACHE
        .try_with(|c| {
            let mut c = c.try_borrow_mut().ok()?;
            if let Some(p) = c.find(key) {
                return Some(p);
            }
            c.insert(
                key,
                bytes,
                |b_dst| {
                    let mut pack = Some(pack);
                    if let Some((a_key, a_bytes)) = a_form {
                        let _ = A_CACHE.try_with(|ac| {
                            let Ok(mut ac) = ac.try_borrow_mut() else { return };
                            if !ac.contains(a_key) {
                                // `insert` calls the packing only once it has the room.
                                let _ = ac.insert(
                                    a_key,
                                    a_bytes,
                                    |a_dst| {
                                        if let Some(pack) = pack.take() {
                                            pack(b_dst, Some(a_dst))
                                        }
                                    },
                                    |_| {},
                                );
                            }
                        });
                    }
                    if let Some(pack) = pack.take() {
                        pack(b_dst, None)
                    }
                },
                |_| {},
            )
        })
        .ok()
        .flatten()
}

/// Packings shared by the threads of one launch (`kc_mmad`'s bit 5: `a` and `b` are windows of the same
/// read-only GM tensor, Muon's `x·xᵀ` and `a·a`).
///
/// Why: in such a product every window is read by the blocks of its row of C (as `a`) and of its column
/// (as `b`), and the threads take the launch's units in any order, so with thread-local caches
/// ([`A_CACHE`], [`B_CACHE`]) each thread packed nearly every window: the packing did not split across
/// threads (`x·xᵀ` and `a·a` ran only about 1.4× faster on two threads than on one). Here each window is
/// packed once per launch, by whichever thread needs it first, into memory the launch's threads share.
///
/// Synchronization: the index (which windows have a slot, where their packing lies) is behind a mutex, held
/// only to look up or claim a slot, never while packing. The thread that claims a slot packs it and then
/// sets the slot's `ready` flag with `Release`; a thread that finds the slot loads the flag with `Acquire`
/// (waiting until it is set) before reading the packing, so the packer's writes happen-before its reads. A
/// packing is written only by its claimant, before its flag is set, and never again until
/// [`SharedPacks::reset`], which takes `&mut self` (no thread of a launch holds a reference then: the
/// executor resets it before the launch's threads start and after they have all returned). A claimant
/// packs synchronously (no yield, no lock, no panic in the packing routines), so a waiter never waits on
/// itself or on a thread that waits for it.
///
/// Validity: bit 1 and 2 promise that the operands do not change during the launch; every launch takes
/// the packings from [`SharedPacks::take`], which resets them, so a new launch or changed data never finds
/// an old packing.
pub struct SharedPacks {
    index: std::sync::Mutex<SharedIndex>,
    /// Per slot: its packing is complete.
    ready: Box<[std::sync::atomic::AtomicBool]>,
    /// Packings made since the last reset (for tests and `KC_TIME`-style accounting).
    packs: std::sync::atomic::AtomicUsize,
}

/// The index of a [`SharedPacks`]: slot `i` is `entries[i]`, `(form, key, packing)`; form 0 is an `a`
/// packing (key as [`A_CACHE`]'s), 1 a `b` packing (key as [`B_CACHE`]'s).
#[derive(Default)]
struct SharedIndex {
    arena: PackArena,
    entries: Vec<(u8, PackKey, *mut u8)>,
    /// The bytes of the entries.
    bytes: usize,
}

// SAFETY: the arena's chunks are heap allocations owned by it (not tied to a thread), and the entries'
// pointers point into them; every access goes through the mutex.
unsafe impl Send for SharedIndex {}

/// Slots of a [`SharedPacks`] (a launch that needs more packs the rest in its threads' own caches).
const SHARED_SLOTS: usize = 1024;

/// The most memory a [`SharedPacks`] gives its packings (more packs in the threads' own caches).
const SHARED_BYTES: usize = 256 << 20;

/// A slot's state as [`SharedPacks::claim`] finds it.
#[cfg(target_arch = "x86_64")]
enum Claim {
    /// Packed (or being packed by another thread: wait for `ready[slot]`), at the pointer.
    Found(usize, *const u8),
    /// New: the caller packs it at the pointer, then calls [`SharedPacks::publish`].
    Mine(usize, *mut u8),
    /// No room: the caller packs it elsewhere.
    Full,
}

impl SharedPacks {
    fn new() -> SharedPacks {
        SharedPacks {
            index: std::sync::Mutex::new(SharedIndex::default()),
            ready: (0..SHARED_SLOTS).map(|_| std::sync::atomic::AtomicBool::new(false)).collect(),
            packs: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// Shared packings for one launch, empty: from a process-wide pool (their memory kept from launch to
    /// launch, already faulted in), returned to it when dropped.
    pub fn take() -> PooledPacks {
        let mut p = shared_pool().lock().unwrap_or_else(|e| e.into_inner()).pop().unwrap_or_else(SharedPacks::new);
        p.reset();
        PooledPacks(Some(p))
    }

    /// Forgets every packing (the memory stays).
    fn reset(&mut self) {
        let index = self.index.get_mut().unwrap_or_else(|e| e.into_inner());
        for r in &mut self.ready[..index.entries.len()] {
            *r.get_mut() = false;
        }
        index.entries.clear();
        index.bytes = 0;
        index.arena.forget();
        *self.packs.get_mut() = 0;
    }

    /// How many packings were made since the launch began.
    pub fn packings(&self) -> usize {
        self.packs.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Looks up the packing of `(form, key)`, claiming a new slot of `bytes` for it if it has none.
    #[cfg(target_arch = "x86_64")]
    fn claim(&self, form: u8, key: PackKey, bytes: usize) -> Claim {
        let Ok(mut index) = self.index.lock() else { return Claim::Full };
        if let Some(slot) = index.entries.iter().position(|&(f, k, _)| f == form && k == key) {
            return Claim::Found(slot, index.entries[slot].2.cast_const());
        }
        let slot = index.entries.len();
        if slot >= self.ready.len() || index.bytes + bytes > SHARED_BYTES {
            return Claim::Full;
        }
        let Some(p) = index.arena.alloc(bytes) else { return Claim::Full };
        index.bytes += bytes;
        index.entries.push((form, key, p));
        self.packs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Claim::Mine(slot, p)
    }

    /// Marks slot `slot`'s packing complete (its claimant, after writing it).
    #[cfg(target_arch = "x86_64")]
    fn publish(&self, slot: usize) {
        self.ready[slot].store(true, std::sync::atomic::Ordering::Release);
    }

    /// Waits until slot `slot`'s packing is complete (another thread is writing it).
    #[cfg(target_arch = "x86_64")]
    fn wait(&self, slot: usize) {
        let mut spins = 0u32;
        while !self.ready[slot].load(std::sync::atomic::Ordering::Acquire) {
            spins += 1;
            if spins < 4096 {
                std::hint::spin_loop();
            } else {
                // The packer may be descheduled on a loaded machine.
                std::thread::yield_now();
            }
        }
    }

    /// The packing of `(form, key)`, made by `pack` into new room if no thread of the launch made it yet, or
    /// `None` when there is no room (the caller packs it in its own cache or scratch).
    #[cfg(target_arch = "x86_64")]
    fn packed(&self, form: u8, key: PackKey, bytes: usize, pack: impl FnOnce(*mut u8)) -> Option<*const u8> {
        match self.claim(form, key, bytes) {
            Claim::Found(slot, p) => {
                self.wait(slot);
                Some(p)
            }
            Claim::Mine(slot, p) => {
                pack(p);
                self.publish(slot);
                Some(p.cast_const())
            }
            Claim::Full => None,
        }
    }

    /// [`packed_bt_shared`] on these packings: the transposed `b` of `key`, and when `a_form` is given and no
    /// thread has claimed that `a` packing yet, the `a` packing too, from the same pass over the rows.
    #[cfg(target_arch = "x86_64")]
    fn packed_bt_a(
        &self,
        key: PackKey,
        bytes: usize,
        a_form: Option<(PackKey, usize)>,
        pack: impl FnOnce(*mut u8, Option<*mut u8>),
    ) -> Option<*const u8> {
        let (slot, p) = match self.claim(1, key, bytes) {
            Claim::Found(slot, p) => {
                self.wait(slot);
                return Some(p);
            }
            Claim::Full => return None,
            Claim::Mine(slot, p) => (slot, p),
        };
        match a_form.map(|(a_key, a_bytes)| self.claim(0, a_key, a_bytes)) {
            Some(Claim::Mine(a_slot, a_p)) => {
                pack(p, Some(a_p));
                self.publish(a_slot);
            }
            _ => pack(p, None),
        }
        self.publish(slot);
        Some(p.cast_const())
    }
}

/// [`SharedPacks`] taken from the pool for one launch; returned to it when dropped.
pub struct PooledPacks(Option<SharedPacks>);

impl std::ops::Deref for PooledPacks {
    type Target = SharedPacks;
    fn deref(&self) -> &SharedPacks {
        // Always `Some` until dropped.
        self.0.as_ref().unwrap_or_else(|| unreachable!())
    }
}

impl Drop for PooledPacks {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            shared_pool().lock().unwrap_or_else(|e| e.into_inner()).push(p);
        }
    }
}

fn shared_pool() -> &'static std::sync::Mutex<Vec<SharedPacks>> {
    static POOL: std::sync::Mutex<Vec<SharedPacks>> = std::sync::Mutex::new(Vec::new());
    &POOL
}

/// Runs `f` with `packs` as this thread's shared packings (`kc_mmad`'s bit 5 packs into them; without, or
/// with `None`, the thread's own caches), restoring the previous ones afterwards, also when `f` unwinds.
pub fn with_shared<R>(packs: Option<&SharedPacks>, f: impl FnOnce() -> R) -> R {
    struct Restore(*const SharedPacks);
    impl Drop for Restore {
        fn drop(&mut self) {
            let _ = SHARED.try_with(|s| s.set(self.0));
        }
    }
    let now = packs.map_or(std::ptr::null(), |p| p as *const SharedPacks);
    let _restore = Restore(SHARED.try_with(|s| s.replace(now)).unwrap_or(std::ptr::null()));
    f()
}

/// This thread's shared packings, if [`with_shared`] set some.
#[cfg(target_arch = "x86_64")]
fn shared_packs<'a>() -> Option<&'a SharedPacks> {
    let p = SHARED.try_with(Cell::get).unwrap_or(std::ptr::null());
    // SAFETY: set by `with_shared` from a reference that outlives its `f`, and reset before it returns; a
    // call of the routine that reads it runs inside that `f` on this thread, and the reference is used only
    // within the call.
    unsafe { p.as_ref() }
}

/// Whether the transposed `b` operand `key` was seen since the thread's last [`clear_b_cache`] (and records it
/// if not): the last `SEEN_KEYS` keys are remembered.
#[cfg(target_arch = "x86_64")]
fn seen_before(key: PackKey) -> bool {
    SEEN.try_with(|s| {
        let Ok(mut s) = s.try_borrow_mut() else { return false };
        if s.contains(&key) {
            return true;
        }
        if s.len() >= SEEN_KEYS {
            s.remove(0);
        }
        s.push(key);
        false
    })
    .unwrap_or(false)
}

/// How many operand keys [`seen_before`] remembers.
#[cfg(target_arch = "x86_64")]
const SEEN_KEYS: usize = 256;

/// Packed `b` operands by (address, ldb, k, n): at most `B_CACHE_ENTRIES`, forgotten all at once when full.
#[cfg(target_arch = "x86_64")]
const B_CACHE_ENTRIES: usize = 64;

thread_local! {
    static B_CACHE: PackCache = RefCell::new(PackArena::default());
    /// Packed `a` operands by (address, lda, m, k), kept like `B_CACHE` (`kc_mmad`'s `accumulate` bit 2): a
    /// matmul's A tile is used once per column block, so packing it each time did the same work many times.
    static A_CACHE: PackCache = RefCell::new(PackArena::default());
    /// The transposed `b` operands seen (see `seen_before`), oldest first.
    static SEEN: RefCell<Vec<PackKey>> = const { RefCell::new(Vec::new()) };
    /// Whether this thread keeps a transposed `b` from its first use (see `packed_bt`).
    static KEEP_FIRST: Cell<bool> = const { Cell::new(false) };
    /// The launch's shared packings while this thread runs its units (see `with_shared`), else null.
    static SHARED: Cell<*const SharedPacks> = const { Cell::new(std::ptr::null()) };
}

/// The arguments of one call, checked and converted.
struct Args {
    a: *const u8,
    a_dtype: Dtype,
    lda: usize,
    b: *const u8,
    b_dtype: Dtype,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
    m: usize,
    k: usize,
    n: usize,
    accumulate: bool,
    /// `b` does not change until [`clear_b_cache`] is called on this thread: its packed form may be kept.
    b_const: bool,
    /// The same for `a`.
    a_const: bool,
    /// `b` is given as its transpose: element `(p, j)` of `b` is at `b[j * ldb + p]` (an `n × k` row-major
    /// block, row stride `ldb`).
    b_trans: bool,
    /// With `b_trans` and `b_const`: the transposed `b`'s rows are rows of the matrix the launch's `a`
    /// operands are read from (`kc_mmad`'s bit 4, x·xᵀ), so its window is another call's `a` (see
    /// [`packed_bt_shared`]).
    b_shares_a: bool,
    /// With `a_const` and `b_const`: `a` and `b` are windows of the same matrix (`kc_mmad`'s bit 5, x·xᵀ
    /// and a·a), so the kept packings go into the launch's [`SharedPacks`] when the thread has them.
    same_src: bool,
}

/// Element `idx` of an operand of dtype `d`, as f32.
///
/// # Safety
///
/// `ptr` must be valid for reading element `idx`.
#[inline(always)]
unsafe fn load(ptr: *const u8, d: Dtype, idx: usize) -> f32 {
    // SAFETY: the caller's guarantee; unaligned reads.
    unsafe {
        match d {
            Dtype::F32 => ptr.cast::<f32>().add(idx).read_unaligned(),
            Dtype::Bf16 => f32::from_bits((ptr.cast::<u16>().add(idx).read_unaligned() as u32) << 16),
            Dtype::F16 => half::f16::from_bits(ptr.cast::<u16>().add(idx).read_unaligned()).to_f32(),
        }
    }
}

/// The index of element `(p, j)` of `x`'s `b` (transposed or not).
#[inline(always)]
fn b_index(x: &Args, p: usize, j: usize) -> usize {
    if x.b_trans {
        j * x.ldb + p
    } else {
        p * x.ldb + j
    }
}

/// The portable path: sequential sums in f32.
///
/// # Safety
///
/// As [`mmad_raw`].
unsafe fn portable(x: &Args) {
    for i in 0..x.m {
        for j in 0..x.n {
            // SAFETY: indices inside the blocks the caller vouches for.
            unsafe {
                let cij = x.c.add(i * x.ldc + j);
                let mut acc = if x.accumulate { cij.read_unaligned() } else { 0.0 };
                for p in 0..x.k {
                    acc += load(x.a, x.a_dtype, i * x.lda + p) * load(x.b, x.b_dtype, b_index(x, p, j));
                }
                cij.write_unaligned(acc);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// Scratch memory.

/// One 64-byte, 64-byte-aligned unit of scratch.
#[derive(Copy, Clone)]
#[repr(C, align(64))]
struct Line([u8; 64]);

/// A thread's scratch buffer: grows, never shrinks.
#[derive(Default)]
struct Scratch(Vec<Line>);

impl Scratch {
    /// At least `bytes` bytes, 64-byte aligned, contents unspecified.
    fn get(&mut self, bytes: usize) -> *mut u8 {
        let lines = bytes.div_ceil(64).max(1);
        if self.0.len() < lines {
            self.0.resize(lines, Line([0; 64]));
        }
        self.0.as_mut_ptr().cast()
    }
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// Runs `f` with this thread's scratch (or a fresh one if it is unavailable: re-entered, or the thread is
/// exiting).
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
fn with_scratch<R>(f: impl FnOnce(&mut Scratch) -> R) -> R {
    let mut f = Some(f);
    let r = SCRATCH.try_with(|s| match s.try_borrow_mut() {
        Ok(mut s) => Some((f.take().expect("f is taken once"))(&mut s)),
        Err(_) => None,
    });
    match r {
        Ok(Some(r)) => r,
        _ => (f.take().expect("f is taken once"))(&mut Scratch::default()),
    }
}

// ---------------------------------------------------------------------------------------------------------
// AVX-512.

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{Args, Dtype, Scratch};
    use std::arch::x86_64::*;

    /// Rows of `c` per micro-kernel call.
    const MR: usize = 8;
    /// Columns of `c` per micro-kernel call (two zmm).
    const NR: usize = 32;

    /// The mask of the first `w` (≤ 32) lanes.
    #[inline(always)]
    pub(super) fn mask32(w: usize) -> u32 {
        if w >= 32 {
            !0
        } else {
            (1u32 << w) - 1
        }
    }

    /// Converts `w ≤ 32` elements of dtype `d` at `src` to f32 at `dst[0..32]`, zeros after `w`.
    ///
    /// # Safety
    ///
    /// `src` valid for `w` elements, `dst` for 32 f32; AVX-512F/BW.
    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn convert32(src: *const u8, d: Dtype, w: usize, dst: *mut f32) {
        let mask = mask32(w);
        let (lo, hi) = (mask as u16, (mask >> 16) as u16);
        // SAFETY: masked loads touch only the first `w` elements; `dst` holds 32.
        unsafe {
            let (x0, x1) = match d {
                Dtype::F32 => {
                    let s = src.cast::<f32>();
                    (_mm512_maskz_loadu_ps(lo, s), _mm512_maskz_loadu_ps(hi, s.add(16)))
                }
                Dtype::Bf16 => {
                    let v = _mm512_maskz_loadu_epi16(mask, src.cast());
                    let h0 = _mm512_cvtepu16_epi32(_mm512_castsi512_si256(v));
                    let h1 = _mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64::<1>(v));
                    (_mm512_castsi512_ps(_mm512_slli_epi32::<16>(h0)), _mm512_castsi512_ps(_mm512_slli_epi32::<16>(h1)))
                }
                Dtype::F16 => {
                    let v = _mm512_maskz_loadu_epi16(mask, src.cast());
                    (_mm512_cvtph_ps(_mm512_castsi512_si256(v)), _mm512_cvtph_ps(_mm512_extracti64x4_epi64::<1>(v)))
                }
            };
            _mm512_storeu_ps(dst, x0);
            _mm512_storeu_ps(dst.add(16), x1);
        }
    }

    /// Converts a row of `len` elements of dtype `d` at `src` to f32 at `dst` (which holds `len` rounded up
    /// to 32; the padding gets zeros).
    ///
    /// # Safety
    ///
    /// As [`convert32`].
    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn convert_row(src: *const u8, d: Dtype, len: usize, dst: *mut f32) {
        let mut p = 0;
        while p < len {
            // SAFETY: `p < len`, so the chunk starts inside both rows.
            unsafe { convert32(src.add(p * d.size()), d, len - p, dst.add(p)) };
            p += 32;
        }
    }

    /// The AVX-512 path.
    ///
    /// # Safety
    ///
    /// As [`super::mmad_raw`], and AVX-512F/BW present.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub(super) unsafe fn mmad(x: &Args, s: &mut Scratch) {
        let (m, k, n) = (x.m, x.k, x.n);
        let panels = n.div_ceil(NR);
        let kr = k.div_ceil(32) * 32;
        // B: [panel][p][32] f32; A block: [MR][kr] f32 when A is not f32.
        let b_len = panels * k * NR;
        let a_len = if x.a_dtype == Dtype::F32 { 0 } else { MR * kr };
        let base = s.get((b_len + a_len) * 4).cast::<f32>();
        // SAFETY: scratch holds `b_len + a_len` f32; every read of `a`, `b`, `c` is inside the caller's blocks.
        unsafe {
            let bp = base;
            let ap = base.add(b_len);
            if x.b_trans {
                // Each panel column is a row of the transpose, read along k.
                for jb in 0..panels {
                    let j0 = jb * NR;
                    for p in 0..k {
                        let dst = bp.add((jb * k + p) * NR);
                        for jj in 0..NR {
                            let j = j0 + jj;
                            *dst.add(jj) = if j < n { super::load(x.b, x.b_dtype, j * x.ldb + p) } else { 0.0 };
                        }
                    }
                }
            } else {
                for p in 0..k {
                    for jb in 0..panels {
                        let j0 = jb * NR;
                        convert32(
                            x.b.add((p * x.ldb + j0) * x.b_dtype.size()),
                            x.b_dtype,
                            n - j0,
                            bp.add((jb * k + p) * NR),
                        );
                    }
                }
            }
            let mut i0 = 0;
            while i0 < m {
                let mr = (m - i0).min(MR);
                let (a_blk, lda) = if x.a_dtype == Dtype::F32 {
                    (x.a.cast::<f32>().add(i0 * x.lda), x.lda)
                } else {
                    for r in 0..mr {
                        convert_row(x.a.add((i0 + r) * x.lda * x.a_dtype.size()), x.a_dtype, k, ap.add(r * kr));
                    }
                    (ap.cast_const(), kr)
                };
                for jb in 0..panels {
                    let j0 = jb * NR;
                    let mask = mask32(n - j0);
                    let c = x.c.add(i0 * x.ldc + j0);
                    let b = bp.add(jb * k * NR);
                    match mr {
                        8 => kernel::<8>(a_blk, lda, b, k, c, x.ldc, mask, x.accumulate),
                        7 => kernel::<7>(a_blk, lda, b, k, c, x.ldc, mask, x.accumulate),
                        6 => kernel::<6>(a_blk, lda, b, k, c, x.ldc, mask, x.accumulate),
                        5 => kernel::<5>(a_blk, lda, b, k, c, x.ldc, mask, x.accumulate),
                        4 => kernel::<4>(a_blk, lda, b, k, c, x.ldc, mask, x.accumulate),
                        3 => kernel::<3>(a_blk, lda, b, k, c, x.ldc, mask, x.accumulate),
                        2 => kernel::<2>(a_blk, lda, b, k, c, x.ldc, mask, x.accumulate),
                        _ => kernel::<1>(a_blk, lda, b, k, c, x.ldc, mask, x.accumulate),
                    }
                }
                i0 += MR;
            }
        }
    }

    /// `R × 32` block of `c` (columns masked by `mask`) += `R × k` f32 `a` (row stride `lda`) times a packed
    /// `k × 32` panel `b`.
    ///
    /// # Safety
    ///
    /// Pointers valid for those blocks; AVX-512F.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn kernel<const R: usize>(
        a: *const f32,
        lda: usize,
        b: *const f32,
        k: usize,
        c: *mut f32,
        ldc: usize,
        mask: u32,
        accumulate: bool,
    ) {
        let (m0, m1) = (mask as u16, (mask >> 16) as u16);
        let mut c0 = [_mm512_setzero_ps(); R];
        let mut c1 = [_mm512_setzero_ps(); R];
        // SAFETY: masked accesses of `c` stay inside the block; `a` rows have `k` elements, `b` `k × 32`.
        unsafe {
            if accumulate {
                for r in 0..R {
                    c0[r] = _mm512_maskz_loadu_ps(m0, c.add(r * ldc));
                    c1[r] = _mm512_maskz_loadu_ps(m1, c.add(r * ldc + 16));
                }
            }
            for p in 0..k {
                let b0 = _mm512_loadu_ps(b.add(p * 32));
                let b1 = _mm512_loadu_ps(b.add(p * 32 + 16));
                for r in 0..R {
                    let av = _mm512_set1_ps(*a.add(r * lda + p));
                    c0[r] = _mm512_fmadd_ps(av, b0, c0[r]);
                    c1[r] = _mm512_fmadd_ps(av, b1, c1[r]);
                }
            }
            for r in 0..R {
                _mm512_mask_storeu_ps(c.add(r * ldc), m0, c0[r]);
                _mm512_mask_storeu_ps(c.add(r * ldc + 16), m1, c1[r]);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// AMX.

#[cfg(target_arch = "x86_64")]
mod amx {
    use super::avx512::mask32;
    use super::{Args, Cell, Scratch};
    use std::arch::asm;
    use std::arch::x86_64::*;

    /// Asks Linux for the AMX tile data state: `arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`.
    /// Permission is per process and is kept once granted.
    pub(super) fn request_permission() -> bool {
        const SYS_ARCH_PRCTL: i64 = 158;
        const ARCH_REQ_XCOMP_PERM: i64 = 0x1023;
        const XFEATURE_XTILEDATA: i64 = 18;
        let ret: i64;
        // SAFETY: a plain system call; it only changes the process's permitted extended states. The kernel
        // clobbers rcx and r11.
        unsafe {
            asm!(
                "syscall",
                inlateout("rax") SYS_ARCH_PRCTL => ret,
                in("rdi") ARCH_REQ_XCOMP_PERM,
                in("rsi") XFEATURE_XTILEDATA,
                lateout("rcx") _,
                lateout("r11") _,
                options(nostack),
            );
        }
        ret == 0
    }

    thread_local! {
        /// Whether this thread has loaded the tile configuration.
        static CONFIGURED: Cell<bool> = const { Cell::new(false) };
    }

    /// The tile configuration: palette 1, tiles 0..8 of 16 rows × 64 bytes.
    #[repr(C, align(64))]
    struct TileConfig([u8; 64]);

    const CONFIG: TileConfig = {
        let mut c = [0u8; 64];
        c[0] = 1;
        let mut t = 0;
        while t < 8 {
            c[16 + 2 * t] = 64; // colsb, u16 little-endian
            c[48 + t] = 16; // rows
            t += 1;
        }
        TileConfig(c)
    };

    /// Loads the tile configuration if this thread has not.
    ///
    /// # Safety
    ///
    /// AMX present and permitted.
    unsafe fn configure() {
        if !CONFIGURED.with(|c| c.get()) {
            // SAFETY: a valid 64-byte configuration.
            unsafe { asm!("ldtilecfg [{}]", in(reg) &CONFIG as *const TileConfig, options(nostack, readonly)) };
            CONFIGURED.with(|c| c.set(true));
        }
    }

    /// Releases this thread's tile state (`tilerelease`) if it configured it.
    pub(super) fn release() {
        if CONFIGURED.with(|c| c.replace(false)) {
            // SAFETY: AMX was configured on this thread, so the instruction exists and is permitted; it only
            // resets tile registers and configuration, which nothing holds between calls.
            unsafe { asm!("tilerelease", options(nostack, nomem)) };
        }
    }

    /// `tileloadd tmm{T}, [ptr + stride]` (16 rows of 64 bytes); for the B tiles (6 and 7) `tileloaddt1`, the
    /// load with a non-temporal hint: a block's B panels are streamed (used once per pass over the rows of
    /// `c`), while its A panels and C tiles are reused from L1, which the hint leaves to them (7% faster on a
    /// matmul launch; the hint on the A tiles too is slower).
    #[inline(always)]
    unsafe fn load<const T: usize>(ptr: *const u8, stride: usize) {
        // SAFETY: the caller's: 16 rows of 64 bytes at `ptr` with `stride` are readable.
        unsafe {
            match T {
                0 => asm!("tileloadd tmm0, [{}+{}*1]", in(reg) ptr, in(reg) stride, options(nostack, readonly)),
                1 => asm!("tileloadd tmm1, [{}+{}*1]", in(reg) ptr, in(reg) stride, options(nostack, readonly)),
                2 => asm!("tileloadd tmm2, [{}+{}*1]", in(reg) ptr, in(reg) stride, options(nostack, readonly)),
                3 => asm!("tileloadd tmm3, [{}+{}*1]", in(reg) ptr, in(reg) stride, options(nostack, readonly)),
                4 => asm!("tileloadd tmm4, [{}+{}*1]", in(reg) ptr, in(reg) stride, options(nostack, readonly)),
                5 => asm!("tileloadd tmm5, [{}+{}*1]", in(reg) ptr, in(reg) stride, options(nostack, readonly)),
                6 => asm!("tileloaddt1 tmm6, [{}+{}*1]", in(reg) ptr, in(reg) stride, options(nostack, readonly)),
                _ => asm!("tileloaddt1 tmm7, [{}+{}*1]", in(reg) ptr, in(reg) stride, options(nostack, readonly)),
            }
        }
    }

    /// `tilestored [ptr + stride], tmm{T}` for the accumulators `T < 4`.
    #[inline(always)]
    unsafe fn store<const T: usize>(ptr: *mut u8, stride: usize) {
        // SAFETY: the caller's: 16 rows of 64 bytes at `ptr` with `stride` are writable.
        unsafe {
            match T {
                0 => asm!("tilestored [{}+{}*1], tmm0", in(reg) ptr, in(reg) stride, options(nostack)),
                1 => asm!("tilestored [{}+{}*1], tmm1", in(reg) ptr, in(reg) stride, options(nostack)),
                2 => asm!("tilestored [{}+{}*1], tmm2", in(reg) ptr, in(reg) stride, options(nostack)),
                _ => asm!("tilestored [{}+{}*1], tmm3", in(reg) ptr, in(reg) stride, options(nostack)),
            }
        }
    }

    /// `tilezero tmm{T}` for the accumulators.
    #[inline(always)]
    unsafe fn zero<const T: usize>() {
        // SAFETY: touches only a tile register.
        unsafe {
            match T {
                0 => asm!("tilezero tmm0", options(nostack, nomem)),
                1 => asm!("tilezero tmm1", options(nostack, nomem)),
                2 => asm!("tilezero tmm2", options(nostack, nomem)),
                _ => asm!("tilezero tmm3", options(nostack, nomem)),
            }
        }
    }

    /// `tdpbf16ps` into accumulator `tmm{2*TI + TJ}` from A tile `tmm{4+TI}` and B tile `tmm{6+TJ}`.
    #[inline(always)]
    unsafe fn dot<const TI: usize, const TJ: usize>() {
        // SAFETY: touches only tile registers.
        unsafe {
            match (TI, TJ) {
                (0, 0) => asm!("tdpbf16ps tmm0, tmm4, tmm6", options(nostack, nomem)),
                (0, 1) => asm!("tdpbf16ps tmm1, tmm4, tmm7", options(nostack, nomem)),
                (1, 0) => asm!("tdpbf16ps tmm2, tmm5, tmm6", options(nostack, nomem)),
                _ => asm!("tdpbf16ps tmm3, tmm5, tmm7", options(nostack, nomem)),
            }
        }
    }

    /// Where a 16 × 16 f32 tile of `c` lives during a block: in place, or in a scratch tile (edges).
    #[derive(Copy, Clone)]
    struct CTile {
        /// The tile's first element in `c`.
        c: *mut f32,
        ldc: usize,
        /// Valid rows and columns (≤ 16; 0 when the tile is outside `c` entirely).
        rows: usize,
        cols: usize,
        /// A 16 × 16 scratch tile, used when `rows` or `cols` < 16.
        tmp: *mut f32,
    }

    impl CTile {
        fn full(&self) -> bool {
            self.rows == 16 && self.cols == 16
        }

        /// The address and byte stride `tileloadd` / `tilestored` use.
        fn at(&self) -> (*mut u8, usize) {
            if self.full() {
                (self.c.cast(), self.ldc * 4)
            } else {
                (self.tmp.cast(), 64)
            }
        }

        /// Before the block: copies the valid part of `c` into the scratch tile (zeros elsewhere).
        ///
        /// # Safety
        ///
        /// The valid part of `c` readable, `tmp` writable for 256 f32; AVX-512F.
        #[target_feature(enable = "avx512f")]
        unsafe fn stage_in(&self) {
            if !self.full() {
                let mask = mask32(self.cols) as u16;
                // SAFETY: masked loads stay inside the valid columns of the valid rows.
                unsafe {
                    for r in 0..16 {
                        let v = if r < self.rows {
                            _mm512_maskz_loadu_ps(mask, self.c.add(r * self.ldc))
                        } else {
                            _mm512_setzero_ps()
                        };
                        _mm512_storeu_ps(self.tmp.add(r * 16), v);
                    }
                }
            }
        }

        /// After the block: copies the valid part of the scratch tile back to `c`.
        ///
        /// # Safety
        ///
        /// As [`CTile::stage_in`], `c` writable.
        #[target_feature(enable = "avx512f")]
        unsafe fn stage_out(&self) {
            if !self.full() {
                let mask = mask32(self.cols) as u16;
                // SAFETY: masked stores stay inside the valid columns of the valid rows.
                unsafe {
                    for r in 0..self.rows {
                        _mm512_mask_storeu_ps(self.c.add(r * self.ldc), mask, _mm512_loadu_ps(self.tmp.add(r * 16)));
                    }
                }
            }
        }
    }

    /// Lines (of 64 bytes) from `at` that a [`block`] prefetches into L2: `per_step` per k step, `lines` in all.
    /// Prefetches never fault, so `at` need not be mapped.
    #[derive(Copy, Clone)]
    struct Prefetch {
        at: *const u8,
        per_step: usize,
        lines: usize,
    }

    impl Prefetch {
        const NONE: Prefetch = Prefetch { at: std::ptr::null(), per_step: 0, lines: 0 };
    }

    thread_local! {
        /// The end of the kept B packing the thread's last AMX call used (0: none): a call whose kept packing
        /// starts there follows the arena in order.
        static LAST_B_END: Cell<usize> = const { Cell::new(0) };
    }

    /// One block of `TM × TN` tiles of `c`: `a[ti]` is the 16-row A panel of tile row `ti` (row stride
    /// `a_stride` bytes, 64 bytes per k step), `b[tj]` the VNNI panel of tile column `tj` (1024 bytes per k
    /// step).
    ///
    /// # Safety
    ///
    /// Tiles configured; every panel holds `steps` k steps; the C tiles as described by [`CTile`].
    #[inline(always)]
    unsafe fn block<const TM: usize, const TN: usize>(
        a: [*const u8; 2],
        a_stride: usize,
        b: [*const u8; 2],
        steps: usize,
        ct: &[[CTile; 2]; 2],
        accumulate: bool,
        pf: Prefetch,
    ) {
        // SAFETY: the caller's.
        unsafe {
            let c_in = |ti: usize, tj: usize| ct[ti][tj];
            // Initialise the accumulators.
            macro_rules! start {
                ($ti:literal, $tj:literal) => {{
                    let t = c_in($ti, $tj);
                    if accumulate {
                        t.stage_in();
                        let (p, s) = t.at();
                        load::<{ 2 * $ti + $tj }>(p, s);
                    } else {
                        zero::<{ 2 * $ti + $tj }>();
                    }
                }};
            }
            macro_rules! finish {
                ($ti:literal, $tj:literal) => {{
                    let t = c_in($ti, $tj);
                    let (p, s) = t.at();
                    store::<{ 2 * $ti + $tj }>(p, s);
                    t.stage_out();
                }};
            }
            start!(0, 0);
            if TN == 2 {
                start!(0, 1);
            }
            if TM == 2 {
                start!(1, 0);
                if TN == 2 {
                    start!(1, 1);
                }
            }
            for s in 0..steps {
                // A few lines of the next call's B into L2, spread over the block's steps.
                let mut l = s * pf.per_step;
                while l < ((s + 1) * pf.per_step).min(pf.lines) {
                    _mm_prefetch::<_MM_HINT_T1>(pf.at.wrapping_add(l * 64).cast());
                    l += 1;
                }
                load::<4>(a[0].add(s * 64), a_stride);
                if TM == 2 {
                    load::<5>(a[1].add(s * 64), a_stride);
                }
                load::<6>(b[0].add(s * 1024), 64);
                if TN == 2 {
                    load::<7>(b[1].add(s * 1024), 64);
                }
                dot::<0, 0>();
                if TN == 2 {
                    dot::<0, 1>();
                }
                if TM == 2 {
                    dot::<1, 0>();
                    if TN == 2 {
                        dot::<1, 1>();
                    }
                }
            }
            finish!(0, 0);
            if TN == 2 {
                finish!(0, 1);
            }
            if TM == 2 {
                finish!(1, 0);
                if TN == 2 {
                    finish!(1, 1);
                }
            }
        }
    }

    /// [`block`] with AVX512-BF16 instead of AMX: the tiles `ct[ti][tj]` (`ti < ct.len()`, `tj < tn`) of
    /// `c` += their A rows (tile row 0 at `a0` with byte stride `s0`, tile row 1 at `a1` with `s1`; 64 bytes
    /// per k step) times the VNNI panels `b[tj]` (1024 bytes per k step), over `steps` k steps. `c` is read
    /// and written in place with masks (no scratch tile), up to 8 rows at a time ([`dot_rows`]).
    ///
    /// # Safety
    ///
    /// As [`block`] (the A rows of every valid row of `c` readable for `steps` k steps); AVX512-BF16.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    unsafe fn dot_block(
        a0: *const u8,
        s0: usize,
        a1: *const u8,
        s1: usize,
        b: [*const u8; 2],
        tn: usize,
        steps: usize,
        ct: &[[CTile; 2]],
        accumulate: bool,
        pf: Prefetch,
    ) {
        // SAFETY: the caller's; prefetches never fault.
        unsafe {
            for l in 0..pf.lines {
                _mm_prefetch::<_MM_HINT_T1>(pf.at.wrapping_add(l * 64).cast());
            }
            let pairs = steps * 16;
            for (ti, tiles) in ct.iter().enumerate() {
                let (a, stride) = if ti == 0 { (a0, s0) } else { (a1, s1) };
                let masks = [mask32(tiles[0].cols) as u16, mask32(tiles[1].cols) as u16];
                let (c, ldc, rows) = (tiles[0].c, tiles[0].ldc, tiles[0].rows);
                let mut r0 = 0;
                while r0 < rows {
                    let r = (rows - r0).min(8);
                    let (a, c) = (a.add(r0 * stride), c.add(r0 * ldc));
                    macro_rules! go {
                        ($($r:literal)*) => {
                            match (r, tn) {
                                $(
                                    ($r, 2) => dot_rows::<$r, 2>(a, stride, b, pairs, c, ldc, masks, accumulate),
                                    ($r, _) => dot_rows::<$r, 1>(a, stride, b, pairs, c, ldc, masks, accumulate),
                                )*
                                _ => unreachable!(),
                            }
                        };
                    }
                    go!(1 2 3 4 5 6 7 8);
                    r0 += r;
                }
            }
        }
    }

    /// `R` rows of `c` (row stride `ldc`; `NP` panels of 16 columns, lanes masked by `masks`) = (with
    /// `accumulate`: `c` +) the A rows at `a` (byte stride `stride`) times the VNNI panels `b[..NP]`, over
    /// `pairs` k pairs: one `vdpbf16ps` per row and panel and pair, the pair of A elements broadcast.
    ///
    /// # Safety
    ///
    /// `R` A rows of `4 * pairs` bytes, `NP` panels of `64 * pairs` bytes readable; the masked rows of `c`
    /// readable and writable; AVX512-BF16.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    unsafe fn dot_rows<const R: usize, const NP: usize>(
        a: *const u8,
        stride: usize,
        b: [*const u8; 2],
        pairs: usize,
        c: *mut f32,
        ldc: usize,
        masks: [u16; 2],
        accumulate: bool,
    ) {
        // SAFETY: the caller's.
        unsafe {
            let mut acc = [[_mm512_setzero_ps(); NP]; R];
            if accumulate {
                for (r, row) in acc.iter_mut().enumerate() {
                    for (j, v) in row.iter_mut().enumerate() {
                        *v = _mm512_maskz_loadu_ps(masks[j], c.add(r * ldc + 16 * j));
                    }
                }
            }
            for t in 0..pairs {
                let mut bv = [_mm512_setzero_si512(); NP];
                for (j, v) in bv.iter_mut().enumerate() {
                    *v = _mm512_loadu_si512(b[j].add(t * 64).cast());
                }
                for (r, row) in acc.iter_mut().enumerate() {
                    let av = _mm512_set1_epi32(a.add(r * stride + 4 * t).cast::<i32>().read_unaligned());
                    for (j, v) in row.iter_mut().enumerate() {
                        *v = _mm512_dpbf16_ps(
                            *v,
                            std::mem::transmute::<__m512i, __m512bh>(av),
                            std::mem::transmute::<__m512i, __m512bh>(bv[j]),
                        );
                    }
                }
            }
            for (r, row) in acc.iter().enumerate() {
                for (j, v) in row.iter().enumerate() {
                    _mm512_mask_storeu_ps(c.add(r * ldc + 16 * j), masks[j], *v);
                }
            }
        }
    }

    /// Packs `b` (`k × n` bf16, row stride `ldb`) into the VNNI layout `tdpbf16ps` wants, one panel per 16
    /// columns (`n` rounded up to 16; zero-padded): panel `q` holds `kp / 2` rows of 64 bytes, row `pp`
    /// being `b[2pp][16q + j], b[2pp+1][16q + j]` for `j < 16`, interleaved. So element `(p, j)` of the
    /// panel is at `[(p / 2) * 32 + 2 j + p % 2]`. Rows `p ≥ k` (up to `kp`) are zeros.
    ///
    /// # Safety
    ///
    /// `b` readable for the block, `dst` writable for `n.div_ceil(16) * kp * 16` u16; AVX-512BW.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub(super) unsafe fn pack_b_vnni(b: *const u16, ldb: usize, k: usize, n: usize, kp: usize, dst: *mut u16) {
        let panels = n.div_ceil(16);
        let pstride = kp * 16;
        let mut lo_idx = [0u16; 32];
        let mut hi_idx = [0u16; 32];
        for t in 0..32 {
            let from = if t % 2 == 0 { 0 } else { 32 };
            lo_idx[t] = (from + t / 2) as u16;
            hi_idx[t] = (from + 16 + t / 2) as u16;
        }
        // SAFETY: masked loads stay inside row `p < k` of the block; stores inside `dst`; prefetches never fault.
        unsafe {
            let lo_idx = _mm512_loadu_si512(lo_idx.as_ptr().cast());
            let hi_idx = _mm512_loadu_si512(hi_idx.as_ptr().cast());
            // Blocks of PACK_PAIRS row pairs, column chunks inside: the source is read as 2·PACK_PAIRS
            // sequential row streams (a column chunk outer loop read it down the columns, a new line per load
            // at the row stride, which the prefetchers do not follow: 4x slower than a copy), and each column
            // chunk writes 2·PACK_PAIRS·64 contiguous bytes into each of two panels.
            let mut pb = 0;
            while pb < kp / 2 {
                let pe = (pb + PACK_PAIRS).min(kp / 2);
                // The next block's rows are requested into L2 while this block is packed: each row's piece is
                // a few lines on a page of its own (a 4096-wide tensor's rows are 8 KiB apart), which the
                // hardware prefetcher does not fetch ahead, so the loads waited on memory row by row.
                for r in (2 * pe).min(k)..(2 * (pe + PACK_PAIRS)).min(k) {
                    // Every line of the row's `n` elements (which need not start a line).
                    let row = b.wrapping_add(r * ldb).cast::<u8>();
                    let skew = row as usize % 64;
                    for l in 0..(skew + n * 2).div_ceil(64) {
                        _mm_prefetch::<_MM_HINT_T1>(row.wrapping_sub(skew).wrapping_add(l * 64).cast());
                    }
                }
                let mut j0 = 0;
                while j0 < panels * 16 {
                    let mask = mask32(n - j0);
                    let q = j0 / 16;
                    let lo_dst = dst.add(q * pstride);
                    let hi_dst = if q + 1 < panels { Some(dst.add((q + 1) * pstride)) } else { None };
                    let src = b.add(j0);
                    for pp in pb..pe {
                        let (r0, r1) = (2 * pp, 2 * pp + 1);
                        let (x0, x1) = if r1 < k {
                            (
                                _mm512_maskz_loadu_epi16(mask, src.add(r0 * ldb).cast()),
                                _mm512_maskz_loadu_epi16(mask, src.add(r1 * ldb).cast()),
                            )
                        } else if r0 < k {
                            (_mm512_maskz_loadu_epi16(mask, src.add(r0 * ldb).cast()), _mm512_setzero_si512())
                        } else {
                            (_mm512_setzero_si512(), _mm512_setzero_si512())
                        };
                        _mm512_storeu_si512(lo_dst.add(pp * 32).cast(), _mm512_permutex2var_epi16(x0, lo_idx, x1));
                        if let Some(hi_dst) = hi_dst {
                            _mm512_storeu_si512(hi_dst.add(pp * 32).cast(), _mm512_permutex2var_epi16(x0, hi_idx, x1));
                        }
                    }
                    j0 += 32;
                }
                pb = pe;
            }
        }
    }

    /// Transposes a 16 × 16 matrix of 32-bit words held as 16 rows in `r`.
    #[inline(always)]
    unsafe fn transpose16(r: [__m512i; 16]) -> [__m512i; 16] {
        // SAFETY: register operations only (AVX-512F, the caller's feature).
        unsafe {
            // Pairs of rows interleaved by words, then by double words: u[4g + c] holds, in its 128-bit lane L,
            // column 4L + c of rows 4g .. 4g + 4.
            let mut u = [_mm512_setzero_si512(); 16];
            for g in 0..4 {
                let (r0, r1, r2, r3) = (r[4 * g], r[4 * g + 1], r[4 * g + 2], r[4 * g + 3]);
                let (t0, t1) = (_mm512_unpacklo_epi32(r0, r1), _mm512_unpackhi_epi32(r0, r1));
                let (t2, t3) = (_mm512_unpacklo_epi32(r2, r3), _mm512_unpackhi_epi32(r2, r3));
                u[4 * g] = _mm512_unpacklo_epi64(t0, t2);
                u[4 * g + 1] = _mm512_unpackhi_epi64(t0, t2);
                u[4 * g + 2] = _mm512_unpacklo_epi64(t1, t3);
                u[4 * g + 3] = _mm512_unpackhi_epi64(t1, t3);
            }
            // Lanes gathered: column 4L + c is lane L of u[c], u[4 + c], u[8 + c], u[12 + c].
            let mut out = [_mm512_setzero_si512(); 16];
            for c in 0..4 {
                let x = _mm512_shuffle_i32x4::<0x44>(u[c], u[4 + c]);
                let y = _mm512_shuffle_i32x4::<0xEE>(u[c], u[4 + c]);
                let x2 = _mm512_shuffle_i32x4::<0x44>(u[8 + c], u[12 + c]);
                let y2 = _mm512_shuffle_i32x4::<0xEE>(u[8 + c], u[12 + c]);
                out[c] = _mm512_shuffle_i32x4::<0x88>(x, x2);
                out[4 + c] = _mm512_shuffle_i32x4::<0xDD>(x, x2);
                out[8 + c] = _mm512_shuffle_i32x4::<0x88>(y, y2);
                out[12 + c] = _mm512_shuffle_i32x4::<0xDD>(y, y2);
            }
            out
        }
    }

    /// [`pack_b_vnni`] for a `b` given as its transpose `bt` (`n × k` bf16, row stride `ldbt`): the panels of
    /// the same layout, packed straight from the rows of `bt`. A VNNI pair `(b[2pp][j], b[2pp + 1][j])` is
    /// the 32-bit word `pp` of row `j` of `bt`, so a panel's 32 k values by 16 columns is a 16 × 16 transpose
    /// of words: 16 rows of `bt` (64 bytes each, sequential streams) in, 16 panel rows out.
    ///
    /// # Safety
    ///
    /// `bt` readable for the `n × k` block, `dst` writable for `n.div_ceil(16) * kp * 16` u16; AVX-512BW.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub(super) unsafe fn pack_bt_vnni(bt: *const u16, ldbt: usize, k: usize, n: usize, kp: usize, dst: *mut u16) {
        // SAFETY: the caller's.
        unsafe { pack_bt_vnni_a(bt, ldbt, k, n, kp, dst, None) }
    }

    /// [`pack_bt_vnni`], and with `a_dst` the same `n × k` window packed as a call reading it as its `a`
    /// packs it ([`pack_a_chunks`] of `n` rows to `n` rounded up to 16, chunks of [`KC_STEPS`]) into
    /// `a_dst`, from the same loads: a 16-row tile's 64-byte rows at k step `p0 / 32` are the A panel's rows
    /// there (x·xᵀ's `b` windows are its `a` windows, [`super::packed_bt_shared`]).
    ///
    /// # Safety
    ///
    /// As [`pack_bt_vnni`]; `a_dst` writable for `n.div_ceil(16) * 16 * kp` u16.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub(super) unsafe fn pack_bt_vnni_a(
        bt: *const u16,
        ldbt: usize,
        k: usize,
        n: usize,
        kp: usize,
        dst: *mut u16,
        a_dst: Option<*mut u16>,
    ) {
        let panels = n.div_ceil(16);
        let pstride = kp * 16;
        let (mp, steps) = (panels * 16, kp / 32);
        // SAFETY: masked loads stay inside row `j < n`, columns `p < k`, of the block; stores inside `dst`
        // and `a_dst` (row `16 q + j < mp` of the chunk of `p0`, whose block of `mp × 32 len` u16 starts at
        // `mp · 32 · s0` and ends at most at `mp · kp`).
        unsafe {
            for q in 0..panels {
                let rows = (n - 16 * q).min(16);
                let src = bt.add(16 * q * ldbt);
                let pdst = dst.add(q * pstride);
                let mut p0 = 0;
                while p0 < kp {
                    // The rows of the panels ahead, at the same k (a transposed operand in GM is usually cold:
                    // 16 short row streams a page apart, which the hardware prefetchers pick up late).
                    if p0 < k {
                        for ahead in if q == 0 { 1..3 } else { 2..3 } {
                            let qa = q + ahead;
                            if qa < panels {
                                for j in 16 * qa..(16 * qa + 16).min(n) {
                                    _mm_prefetch::<_MM_HINT_T0>(bt.add(j * ldbt + p0).cast());
                                }
                            }
                        }
                    }
                    let mut r = [_mm512_setzero_si512(); 16];
                    if p0 < k {
                        let mask = mask32(k - p0);
                        for (j, rj) in r.iter_mut().enumerate().take(rows) {
                            *rj = _mm512_maskz_loadu_epi16(mask, src.add(j * ldbt + p0).cast());
                        }
                    }
                    if let Some(a_dst) = a_dst {
                        // The chunk of k steps holding step `p0 / 32`, as `pack_a_chunks` lays it out.
                        let s0 = p0 / 32 / KC_STEPS * KC_STEPS;
                        let len = (steps - s0).min(KC_STEPS);
                        let chunk = a_dst.add(mp * s0 * 32 + (p0 - s0 * 32));
                        for (j, rj) in r.iter().enumerate() {
                            _mm512_storeu_si512(chunk.add((16 * q + j) * len * 32).cast(), *rj);
                        }
                    }
                    let t = transpose16(r);
                    for (i, ti) in t.iter().enumerate() {
                        _mm512_storeu_si512(pdst.add((p0 / 2 + i) * 32).cast(), *ti);
                    }
                    p0 += 32;
                }
            }
        }
    }

    /// Row pairs of `b` per block of [`pack_b_vnni`].
    const PACK_PAIRS: usize = 16;

    /// Copies `rows` rows of `k` bf16 (row stride `lda`) to `dst` with row stride `kp`, zero-padded to `kp`
    /// columns and `rows_to` rows.
    ///
    /// # Safety
    ///
    /// `a` readable for the block, `dst` writable for `rows_to * kp` u16; AVX-512BW.
    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn pack_a(a: *const u16, lda: usize, rows: usize, rows_to: usize, k: usize, kp: usize, dst: *mut u16) {
        // SAFETY: masked loads inside row `r < rows`; stores inside `dst`.
        unsafe {
            for r in 0..rows_to {
                let mut p = 0;
                while p < kp {
                    let v = if r < rows && p < k {
                        _mm512_maskz_loadu_epi16(mask32(k - p), a.add(r * lda + p).cast())
                    } else {
                        _mm512_setzero_si512()
                    };
                    _mm512_storeu_si512(dst.add(r * kp + p).cast(), v);
                    p += 32;
                }
            }
        }
    }

    /// [`pack_a`] of all `m` rows (to `mp`) chunk by chunk of `kc` steps: the chunk of steps `s0..s0 + len` is
    /// an `mp × 32·len` block at element `mp · 32 · s0`, so a chunk's A panels are contiguous.
    ///
    /// # Safety
    ///
    /// As [`pack_a`], `dst` writable for `mp * kp` u16.
    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn pack_a_chunks(a: *const u16, lda: usize, m: usize, mp: usize, k: usize, kc: usize, dst: *mut u16) {
        let steps = k.div_ceil(32).max(1);
        let mut s0 = 0;
        while s0 < steps {
            let len = (steps - s0).min(kc);
            let p0 = s0 * 32;
            // SAFETY: the caller's; columns from p0 on, the chunk's block inside dst.
            unsafe { pack_a(a.add(p0), lda, m, mp, k.saturating_sub(p0).min(len * 32), len * 32, dst.add(mp * p0)) };
            s0 += len;
        }
    }

    /// k steps (of 32) per pass over `c`: a pair of A panels is then 32 KiB (in L1 with the streamed B panels
    /// and the block's C tiles), and the accumulators go through memory once per 512 of k. The host target's
    /// matmul tiles are 512 deep (`matmul_bk`), so a matmul's call is one chunk.
    const KC_STEPS: usize = 16;

    /// The longest row stride (bytes) at which the AMX path reads `a` in place instead of packing it:
    /// attention's P·V reads its bf16 probabilities, 256 to a row (512 bytes), where the vector cores
    /// stored them; packing them again on every call was a tenth of the calls' samples.
    pub(super) const A_IN_PLACE_STRIDE: usize = 512;

    /// Whether [`mmad`] reads a bf16 `a` of depth `k` and row stride `lda` (elements) in place instead of
    /// packing it: `k` a multiple of 32, and on the AMX path rows at most [`A_IN_PLACE_STRIDE`] bytes apart.
    /// The AVX512-BF16 path (`dot`) reads any stride in place: [`dot_rows`] reads 4 bytes of each of 8 rows a
    /// k pair, streams the prefetchers follow whatever the stride, where a tile load touches 16 rows at once
    /// (at a page a row, 16 TLB misses). Packing cost it more than it saved: Muon's `x · xᵀ` (rows 8 KiB
    /// apart) 24.3 / 25.3 → 22.9 / 22.4 ms, MoE's experts (4 KiB) 2.47 / 2.24 → 2.15 / 2.10 s, plain
    /// matmuls unchanged (one thread, alternating, session 23).
    fn reads_a_in_place(k: usize, lda: usize, dot: bool) -> bool {
        #[cfg(test)]
        if PACK_A.with(|p| p.get()) {
            return false;
        }
        k.is_multiple_of(32) && (dot || lda * 2 <= A_IN_PLACE_STRIDE)
    }

    #[cfg(test)]
    thread_local! {
        /// Tests: pack every `a` on this thread, to compare a read in place with the packed form on any path.
        pub(super) static PACK_A: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }

    /// Whether the call computes a block on the diagonal of a symmetric product: `b` given as the transpose
    /// of the very rows `a` reads (`a · aᵀ`: a diagonal block of `x · xᵀ`, or of `s @ s` with `s` symmetric,
    /// whose `b` is read as `sᵀ`'s rows), so `c[i][j]` and `c[j][i]` are the same sum of the same products
    /// in the same k order (a product of two bf16 is exact in f32, and each element's pairs are summed in
    /// the order of k whatever its position): the same bits. With `accumulate`, only when the old `c` is
    /// symmetric bit for bit too where the copies go (a cheap check against the block's work: m² loads for
    /// m²·k products).
    ///
    /// # Safety
    ///
    /// With `accumulate`, `c`'s `m × m` block readable.
    unsafe fn diagonal_of_symmetric(x: &Args) -> bool {
        let tri = x.b_trans && x.a == x.b && x.lda == x.ldb && x.m == x.n && x.m > 32 && x.k > 0;
        // SAFETY: the caller's.
        tri && (!x.accumulate || unsafe { mirrors_upper_blocks(x.c, x.ldc, x.m) })
    }

    /// Whether every element of the `m × m` block at `c` (row stride `ldc`) that [`mirror_lower_blocks`]
    /// writes equals, bit for bit, the element it copies.
    ///
    /// # Safety
    ///
    /// The block readable; AVX-512F.
    #[target_feature(enable = "avx512f")]
    unsafe fn mirrors_upper_blocks(c: *const f32, ldc: usize, m: usize) -> bool {
        let mut same = true;
        // SAFETY: the caller's (the tiles are inside the block).
        unsafe {
            lower_tiles(m, |i0, j0, rows| {
                let mirror = mirror_tile(c, ldc, i0, j0, rows);
                same &= (0..rows).all(|r| {
                    let row = _mm512_loadu_si512(c.add((i0 + r) * ldc + j0).cast());
                    _mm512_cmpneq_epi32_mask(row, mirror[r]) == 0
                });
            })
        };
        same
    }

    /// Calls `f(i0, j0, rows)` for every 16 × 16 tile (rows `i0 .. i0 + rows`, columns `j0 .. j0 + 16`) of
    /// the elements `(i, j)` of an `m × m` block with `j < i / 32 * 32`: whole 16-column tiles, since the
    /// bound is a multiple of 32 and the same for the 16 rows of a tile (`i0` is a multiple of 16).
    fn lower_tiles(m: usize, mut f: impl FnMut(usize, usize, usize)) {
        for i0 in (32..m).step_by(16) {
            for j0 in (0..i0 / 32 * 32).step_by(16) {
                f(i0, j0, (m - i0).min(16));
            }
        }
    }

    /// The mirror image of the tile [`lower_tiles`] names: row `r < rows` of the result is column `i0 + r`
    /// of rows `j0 .. j0 + 16` (above the diagonal), as 16 words.
    ///
    /// # Safety
    ///
    /// Rows `j0 .. j0 + 16`, columns `i0 .. i0 + rows` of `c` (row stride `ldc`) readable; AVX-512F.
    #[inline(always)]
    unsafe fn mirror_tile(c: *const f32, ldc: usize, i0: usize, j0: usize, rows: usize) -> [__m512i; 16] {
        let lanes = mask32(rows) as u16;
        // SAFETY: the caller's; masked lanes are not read.
        unsafe {
            transpose16(std::array::from_fn(|q| _mm512_maskz_loadu_epi32(lanes, c.add((j0 + q) * ldc + i0).cast())))
        }
    }

    /// Copies into every element `(i, j)` of the `m × m` block at `c` whose 32 × 32 block lies below the
    /// diagonal (`j < i / 32 * 32`) its mirror image `(j, i)`, which lies above it.
    ///
    /// # Safety
    ///
    /// The block readable and writable; AVX-512F.
    #[target_feature(enable = "avx512f")]
    unsafe fn mirror_lower_blocks(c: *mut f32, ldc: usize, m: usize) {
        #[cfg(test)]
        TRIANGLE_CALLS.with(|t| t.set(t.get() + 1));
        // SAFETY: the caller's; a tile's mirror lies above the diagonal, apart from the tile.
        unsafe {
            lower_tiles(m, |i0, j0, rows| {
                let mirror = mirror_tile(c, ldc, i0, j0, rows);
                for (r, v) in mirror.iter().enumerate().take(rows) {
                    _mm512_storeu_si512(c.add((i0 + r) * ldc + j0).cast(), *v);
                }
            })
        };
    }

    #[cfg(test)]
    thread_local! {
        /// The calls of this thread that computed a triangle of blocks ([`diagonal_of_symmetric`]).
        pub(super) static TRIANGLE_CALLS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    }

    /// The AMX path (bf16 × bf16), or with `dot` the AVX512-BF16 path: the same packings, caches and loops,
    /// each block of `c` computed by [`dot_block`] instead of the tiles.
    ///
    /// # Safety
    ///
    /// As [`super::mmad_raw`], and AMX supported and permitted (with `dot`: AVX512-BF16 supported).
    #[target_feature(enable = "avx512f,avx512bw")]
    pub(super) unsafe fn mmad(x: &Args, s: &mut Scratch, dot: bool) {
        let (m, k, n) = (x.m, x.k, x.n);
        let kc = KC_STEPS;
        let kp = k.div_ceil(32).max(1) * 32;
        let steps = k.div_ceil(32);
        let panels = n.div_ceil(16);
        let mp = m.div_ceil(16) * 16;
        // A in place only when k is a multiple of 32 and, on the AMX path, its rows are close together (a
        // partial last tile row is copied); else all of A is packed into tile rows. Read in place with a long
        // row stride (a matmul operand read straight from a 2048-wide GM tensor: a page per row), every tile
        // load misses the TLB 16 times: packing (m·k moves for m·k·n work) made a 2048³ matmul 1.5x faster
        // with AMX. Rows up to A_IN_PLACE_STRIDE bytes apart are close enough (a 16-row tile spans at most two
        // pages). The AVX512-BF16 path reads every stride in place (`reads_a_in_place`).
        let a_in_place = reads_a_in_place(k, x.lda, dot);
        let a_rows = if a_in_place {
            if m % 16 != 0 {
                16
            } else {
                0
            }
        } else {
            mp
        };
        let b_bytes = panels * kp * 32;
        let a_bytes = a_rows * kp * 2;
        let c_bytes = 4 * 16 * 16 * 4;
        let base = s.get(b_bytes + a_bytes + c_bytes);
        // SAFETY: scratch holds the three regions (each a multiple of 64 bytes); the blocks of `a`, `b`, `c`
        // are the caller's.
        unsafe {
            if !dot {
                configure();
            }
            let bp = base;
            let ap = base.add(b_bytes);
            let cp = base.add(b_bytes + a_bytes).cast::<f32>();
            // A `b` that does not change is packed once per launch and thread (B_CACHE).
            let mut cached: Option<*const u8> = None;
            // Whether this call packs its `b` (not found kept).
            let packs_b = Cell::new(false);
            let pack_b = |d: *mut u8| {
                packs_b.set(true);
                if x.b_trans {
                    pack_bt_vnni(x.b.cast(), x.ldb, k, n, kp, d.cast())
                } else {
                    pack_b_vnni(x.b.cast(), x.ldb, k, n, kp, d.cast())
                }
            };
            // The layout is part of the key: the same window read transposed is another operand.
            let key = (x.b as usize, x.ldb | (usize::from(x.b_trans) << 63), k, n);
            // A transposed `b` is kept when it will be used again (`packed_bt`); one whose rows are other calls'
            // `a` rows from its first use, packed in the `a` form too when such a call would pack it
            // (`packed_bt_shared`).
            // The launch's packings shared by its threads, for the windows of a matrix read as both operands.
            let shared = if x.same_src && x.a_const && x.b_const { super::shared_packs() } else { None };
            if x.b_const {
                cached = if x.b_trans && x.b_shares_a {
                    // The call reading this window as its `a` packs it unless it reads it in place.
                    let a_packs = !reads_a_in_place(k, x.ldb, dot);
                    let np = panels * 16;
                    let a_form = a_packs.then_some(((x.b as usize, x.ldb, n, k), np * kp * 2));
                    let pack_both = |d: *mut u8, a_d: Option<*mut u8>| {
                        packs_b.set(true);
                        pack_bt_vnni_a(x.b.cast(), x.ldb, k, n, kp, d.cast(), a_d.map(|p| p.cast()))
                    };
                    shared
                        .and_then(|sp| sp.packed_bt_a(key, b_bytes, a_form, pack_both))
                        .or_else(|| super::packed_bt_shared(key, b_bytes, a_form, pack_both))
                } else if x.b_trans {
                    super::packed_bt(key, b_bytes, pack_b)
                } else {
                    shared
                        .and_then(|sp| sp.packed(1, key, b_bytes, pack_b))
                        .or_else(|| super::packed(&super::B_CACHE, key, b_bytes, pack_b))
                };
            }
            let bp = match cached {
                Some(p) => p.cast_mut(),
                None => {
                    pack_b(bp);
                    bp
                }
            };
            let a16 = x.a.cast::<u16>();
            // A packed whole, kept per launch and thread when it does not change (A_CACHE).
            let mut ap = ap;
            if a_in_place {
                if m % 16 != 0 {
                    let i0 = m / 16 * 16;
                    pack_a(a16.add(i0 * x.lda), x.lda, m - i0, 16, k, kp, ap.cast());
                }
            } else {
                let mut cached: Option<*const u8> = None;
                if x.a_const {
                    let key = (x.a as usize, x.lda, m, k);
                    let pack = |d: *mut u8| pack_a_chunks(a16, x.lda, m, mp, k, kc, d.cast());
                    cached = shared
                        .and_then(|sp| sp.packed(0, key, a_bytes, pack))
                        .or_else(|| super::packed(&super::A_CACHE, key, a_bytes, pack));
                }
                match cached {
                    Some(p) => ap = p.cast_mut(),
                    None => pack_a_chunks(a16, x.lda, m, mp, k, kc, ap.cast()),
                }
            }
            // The A panel of the tile row starting at row `i0`, and its byte stride.
            let a_panel = |i0: usize, s0: usize, chunk: usize| -> (*const u8, usize) {
                if !a_in_place {
                    // Chunk-major: the chunk of steps s0.. is an mp x (chunk*32) block at mp*s0*32 elements.
                    (ap.add((mp * s0 * 32 + i0 * chunk * 32) * 2).cast_const(), chunk * 64)
                } else if i0 + 16 <= m {
                    (x.a.add(i0 * x.lda * 2 + s0 * 64), x.lda * 2)
                } else {
                    (ap.add(s0 * 64).cast_const(), kp * 2)
                }
            };
            let c_tile = |i0: usize, j0: usize, slot: usize| CTile {
                c: x.c.add(i0 * x.ldc + j0),
                ldc: x.ldc,
                rows: m.saturating_sub(i0).min(16),
                cols: n.saturating_sub(j0).min(16),
                tmp: cp.add(slot * 256),
            };
            // The next call's B, when the kept packings are used in the order they were packed (a matmul
            // launch's core walks its blocks along a row of C, and every row uses the same B windows in the same
            // order: the packing after this one in the arena is the next call's): prefetched into L2 while
            // this call runs its second and later passes over the rows of C (the first reads this call's B
            // from L3). Without it, each call's first pass waited for its whole B from L3 (128 KiB in an
            // eighth of the call).
            let in_order = cached.is_some_and(|p| p as usize == LAST_B_END.with(|e| e.get()));
            LAST_B_END.with(|e| e.set(cached.map_or(0, |p| p as usize + b_bytes)));
            let row_pairs = m.div_ceil(32);
            // A block on the diagonal of a symmetric product (`x · xᵀ`, `s @ s`): its 32 × 32 blocks below
            // the diagonal are not computed but copied from their mirror images after the k loop.
            let tri = diagonal_of_symmetric(x);
            let pf_lines = if in_order && row_pairs > 1 { b_bytes / 64 } else { 0 };
            // Spread over every k step of the blocks of the second and later row pairs, in all k chunks.
            let later_blocks = if tri { row_pairs * (row_pairs - 1) / 2 } else { (row_pairs - 1) * n.div_ceil(32) };
            let pf_per_step = pf_lines.div_ceil((later_blocks * steps).max(1));
            let mut pf_next = 0;
            // A transposed `b` this call packs: the same rows' next k window (the k columns after this call's,
            // which the next call along k reads: MoE's expert weights, x·xᵀ's row windows) is prefetched into
            // L2 over the first chunk's blocks, so the next call packs it from L2, not from 16 rows of DRAM a
            // page apart in 64-byte pieces. Only when a row holds two windows; past the block's rows' end a
            // prefetch (which never faults) only wastes a line.
            let next_rows = if x.b_trans && packs_b.get() && 2 * k <= x.ldb { n } else { 0 };
            let next_at = x.b.wrapping_add(k * 2);
            let row_lines = (k * 2).div_ceil(64);
            let first_blocks = if tri { row_pairs * (row_pairs + 1) / 2 } else { row_pairs * n.div_ceil(32) };
            let next_per_block = next_rows.div_ceil(first_blocks.max(1));
            let mut next_row = 0;
            // k in chunks of KC_STEPS steps, so a block's A panels stay in L1 (C is reloaded per chunk).
            let mut s0 = 0;
            loop {
                let chunk = (steps - s0).min(kc);
                let acc = x.accumulate || s0 > 0;
                let mut i0 = 0;
                while i0 < m {
                    let tm = if m - i0 > 16 { 2 } else { 1 };
                    let mut j0 = if tri { i0 } else { 0 };
                    while j0 < n {
                        let tn = if n - j0 > 16 { 2 } else { 1 };
                        let q = j0 / 16;
                        let b_pan = [
                            bp.add(q * kp * 32 + s0 * 1024).cast_const(),
                            bp.add((q + tn - 1) * kp * 32 + s0 * 1024).cast_const(),
                        ];
                        let (a0, a_stride) = a_panel(i0, s0, chunk);
                        let (a1, a1_stride) = a_panel(i0 + 16 * (tm - 1), s0, chunk);
                        let ct = [
                            [c_tile(i0, j0, 0), c_tile(i0, j0 + 16, 1)],
                            [c_tile(i0 + 16, j0, 2), c_tile(i0 + 16, j0 + 16, 3)],
                        ];
                        for r in next_row..(next_row + next_per_block).min(next_rows) {
                            for l in 0..row_lines {
                                _mm_prefetch::<_MM_HINT_T1>(next_at.wrapping_add(r * x.ldb * 2 + l * 64).cast());
                            }
                        }
                        next_row += next_per_block;
                        let mut pf = Prefetch::NONE;
                        if i0 > 0 && pf_next < pf_lines {
                            // `wrapping_add`: the address past the arena's last packing is only prefetched.
                            pf = Prefetch {
                                at: bp.wrapping_add(b_bytes + pf_next * 64).cast_const(),
                                per_step: pf_per_step,
                                lines: (pf_lines - pf_next).min(pf_per_step * chunk),
                            };
                            pf_next += pf.lines;
                        }
                        if dot {
                            let ct = if tm == 2 { &ct[..] } else { &ct[..1] };
                            dot_block(a0, a_stride, a1, a1_stride, b_pan, tn, chunk, ct, acc, pf);
                        } else if a_stride != a1_stride {
                            // The second tile row is the packed tail and the first is in place: one at a time.
                            for (ti, (ap_, st)) in [(a0, a_stride), (a1, a1_stride)].into_iter().enumerate() {
                                let row = [ct[ti], ct[ti]];
                                if tn == 2 {
                                    block::<1, 2>([ap_, ap_], st, b_pan, chunk, &row, acc, pf);
                                } else {
                                    block::<1, 1>([ap_, ap_], st, b_pan, chunk, &row, acc, pf);
                                }
                            }
                        } else {
                            let a = [a0, a1];
                            match (tm, tn) {
                                (2, 2) => block::<2, 2>(a, a_stride, b_pan, chunk, &ct, acc, pf),
                                (2, _) => block::<2, 1>(a, a_stride, b_pan, chunk, &ct, acc, pf),
                                (_, 2) => block::<1, 2>(a, a_stride, b_pan, chunk, &ct, acc, pf),
                                _ => block::<1, 1>(a, a_stride, b_pan, chunk, &ct, acc, pf),
                            }
                        }
                        j0 += 32;
                    }
                    i0 += 32;
                }
                s0 += chunk;
                if s0 >= steps {
                    break;
                }
            }
            if tri {
                mirror_lower_blocks(x.c, x.ldc, m);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::{bf16, f16};
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};

    /// A matrix in one dtype, with its values as f32 (exactly representable in the dtype).
    struct Mat {
        dtype: Dtype,
        f32s: Vec<f32>,
        bf16s: Vec<bf16>,
        f16s: Vec<f16>,
    }

    impl Mat {
        fn random(rng: &mut SmallRng, dtype: Dtype, len: usize) -> Mat {
            let raw: Vec<f32> = (0..len).map(|_| rng.random_range(-1.0f32..1.0)).collect();
            let bf16s: Vec<bf16> = raw.iter().map(|&v| bf16::from_f32(v)).collect();
            let f16s: Vec<f16> = raw.iter().map(|&v| f16::from_f32(v)).collect();
            let f32s = match dtype {
                Dtype::F32 => raw,
                Dtype::Bf16 => bf16s.iter().map(|v| v.to_f32()).collect(),
                Dtype::F16 => f16s.iter().map(|v| v.to_f32()).collect(),
            };
            Mat { dtype, f32s, bf16s, f16s }
        }

        fn operand(&self) -> Operand<'_> {
            match self.dtype {
                Dtype::F32 => Operand::F32(&self.f32s),
                Dtype::Bf16 => Operand::Bf16(&self.bf16s),
                Dtype::F16 => Operand::F16(&self.f16s),
            }
        }
    }

    const SHAPES: [(usize, usize, usize); 10] = [
        (1, 1, 1),
        (3, 5, 7),
        (16, 32, 16),
        (17, 33, 129),
        (33, 64, 17),
        (128, 128, 128),
        (130, 257, 70),
        (64, 512, 256),
        (5, 0, 9),
        (48, 96, 48),
    ];

    const SENTINEL: f32 = 1234.5;

    /// Runs one case on `path` and checks it against an f64 reference (and, for the portable path, a
    /// sequential f32 loop, bit for bit), and that nothing of `c` outside the block changed.
    fn check(
        path: Path,
        rng: &mut SmallRng,
        (m, k, n): (usize, usize, usize),
        ad: Dtype,
        bd: Dtype,
        pad: usize,
        acc: bool,
    ) {
        check_layout(path, rng, (m, k, n), ad, bd, pad, acc, false)
    }

    /// [`check`] with `b` given as its transpose (`n × k`, row stride `k + 2 * pad`) when `trans`.
    #[allow(clippy::too_many_arguments)]
    fn check_layout(
        path: Path,
        rng: &mut SmallRng,
        (m, k, n): (usize, usize, usize),
        ad: Dtype,
        bd: Dtype,
        pad: usize,
        acc: bool,
        trans: bool,
    ) {
        let (lda, ldc) = (k + pad, n + 3 * pad);
        let ldb = if trans { k + 2 * pad } else { n + 2 * pad };
        // Element (p, j) of b.
        let bi = |p: usize, j: usize| if trans { j * ldb + p } else { p * ldb + j };
        let a = Mat::random(rng, ad, m * lda);
        let b = Mat::random(rng, bd, if trans { n * ldb } else { k * ldb });
        let mut c: Vec<f32> = (0..m * ldc).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        for i in 0..m {
            for j in n..ldc {
                c[i * ldc + j] = SENTINEL;
            }
        }
        let c0 = c.clone();
        if trans {
            mmad_bt_with(path, a.operand(), lda, b.operand(), ldb, &mut c, ldc, (m, k, n), acc);
        } else {
            mmad_with(path, a.operand(), lda, b.operand(), ldb, &mut c, ldc, (m, k, n), acc);
        }
        let what = format!("{path:?} {ad:?}x{bd:?} m={m} k={k} n={n} pad={pad} acc={acc} trans={trans}");
        for i in 0..m {
            for j in 0..n {
                let init = if acc { c0[i * ldc + j] } else { 0.0 };
                let (mut exact, mut mag) = (init as f64, init.abs() as f64);
                let mut seq = init;
                for p in 0..k {
                    let (x, y) = (a.f32s[i * lda + p], b.f32s[bi(p, j)]);
                    exact += x as f64 * y as f64;
                    mag += (x as f64 * y as f64).abs();
                    seq += x * y;
                }
                let got = c[i * ldc + j];
                if path == Path::Portable || (k == 0 && !acc) {
                    assert_eq!(got.to_bits(), seq.to_bits(), "{what}: c[{i}][{j}] = {got}, sequential {seq}");
                }
                let err = (got as f64 - exact).abs();
                assert!(
                    err <= 1e-5 * mag + 1e-30,
                    "{what}: c[{i}][{j}] = {got}, exact {exact}, err {err:e}, Σ|ab| {mag}"
                );
            }
            for j in n..ldc {
                assert_eq!(c[i * ldc + j], SENTINEL, "{what}: c[{i}][{j}] outside the block was written");
            }
        }
    }

    /// Whether this machine has a path with the packings and caches (AMX or AVX512-BF16).
    fn packing_path() -> bool {
        supported(Path::Amx) || supported(Path::Avx512Bf16)
    }

    /// The path with the packings this machine has: AMX if it has it, else AVX512-BF16.
    fn tiled() -> Path {
        if supported(Path::Amx) {
            Path::Amx
        } else {
            Path::Avx512Bf16
        }
    }

    fn available(path: Path) -> bool {
        let ok = supported(path);
        if !ok {
            eprintln!("skipping {path:?}: this machine does not have it");
        }
        ok
    }

    fn all_dtypes(path: Path) {
        if !available(path) {
            return;
        }
        let dtypes = [Dtype::F32, Dtype::Bf16, Dtype::F16];
        let mut rng = SmallRng::seed_from_u64(7);
        for &shape in &SHAPES {
            for ad in dtypes {
                for bd in dtypes {
                    if matches!(path, Path::Amx | Path::Avx512Bf16) && (ad != Dtype::Bf16 || bd != Dtype::Bf16) {
                        continue;
                    }
                    for (pad, acc) in [(0, false), (0, true), (3, false), (5, true)] {
                        check(path, &mut rng, shape, ad, bd, pad, acc);
                    }
                }
            }
        }
    }

    #[test]
    fn host_mmad_portable() {
        all_dtypes(Path::Portable);
    }

    #[test]
    fn host_mmad_avx512() {
        all_dtypes(Path::Avx512);
    }

    #[test]
    fn host_mmad_amx() {
        all_dtypes(Path::Amx);
    }

    #[test]
    fn host_mmad_avx512_bf16() {
        all_dtypes(Path::Avx512Bf16);
    }

    /// Every size of the edge cases of the AMX blocking (tile rows, columns, k steps) around 16 and 32.
    #[test]
    fn host_mmad_edges() {
        let mut rng = SmallRng::seed_from_u64(11);
        for path in Path::ALL {
            if !available(path) {
                continue;
            }
            for m in [1, 15, 16, 17, 31, 32, 33, 47, 48, 49] {
                for n in [1, 16, 17, 32, 33, 48, 50] {
                    for k in [1, 2, 31, 32, 33, 64] {
                        check(path, &mut rng, (m, k, n), Dtype::Bf16, Dtype::Bf16, m % 3, n % 2 == 0);
                    }
                }
            }
        }
    }

    /// The AMX path reads `a` in place when its rows are at most `A_IN_PLACE_STRIDE` bytes apart (attention's
    /// P·V: 256 bf16 to a row) and packs it otherwise; the AVX512-BF16 path reads every stride in place (k a
    /// multiple of 32): either way the same bits. The same `a` at strides up to the bound, at a stride past
    /// it (packed with AMX, in place without), and packed whatever its stride (`PACK_A`) gives the same `c`,
    /// accumulating or not, a partial last tile row (copied) included.
    #[test]
    fn host_mmad_reads_a_in_place_or_packed_alike() {
        if !available(tiled()) {
            return;
        }
        let mut rng = SmallRng::seed_from_u64(31);
        let far_ld = 4096 + 8;
        for (m, k, n) in [(128, 256, 128), (17, 256, 40), (33, 128, 16), (128, 64, 256), (5, 32, 7), (40, 40, 24)] {
            for lda in [k, k + 16, amx::A_IN_PLACE_STRIDE / 2] {
                if lda < k {
                    continue;
                }
                let a = Mat::random(&mut rng, Dtype::Bf16, m * lda);
                // The same values at a stride past the bound.
                let mut far = vec![bf16::from_f32(0.0); m * far_ld];
                for i in 0..m {
                    far[i * far_ld..i * far_ld + k].copy_from_slice(&a.bf16s[i * lda..i * lda + k]);
                }
                let b = Mat::random(&mut rng, Dtype::Bf16, k * n);
                for acc in [false, true] {
                    let c0: Vec<f32> = (0..m * n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
                    let run = |a: Operand<'_>, lda: usize, pack: bool| {
                        let mut c = c0.clone();
                        amx::PACK_A.with(|p| p.set(pack));
                        mmad_with(tiled(), a, lda, b.operand(), n, &mut c, n, (m, k, n), acc);
                        amx::PACK_A.with(|p| p.set(false));
                        c
                    };
                    let want = run(a.operand(), lda, false);
                    for (what, got) in [
                        ("far", run(Operand::Bf16(&far), far_ld, false)),
                        ("packed", run(a.operand(), lda, true)),
                        ("far packed", run(Operand::Bf16(&far), far_ld, true)),
                    ] {
                        for (i, (x, y)) in want.iter().zip(&got).enumerate() {
                            assert_eq!(
                                x.to_bits(),
                                y.to_bits(),
                                "m={m} k={k} n={n} lda={lda} acc={acc} {what}: c[{i}] {x} vs {y}"
                            );
                        }
                    }
                }
            }
        }
    }

    /// The transposed-B mode on every path and dtype pair, at the shapes of `SHAPES` and around the AMX
    /// blocking's edges (k and n not multiples of 16 or 32, one row, one column).
    #[test]
    fn host_mmad_transposed_b() {
        let mut rng = SmallRng::seed_from_u64(23);
        let dtypes = [Dtype::F32, Dtype::Bf16, Dtype::F16];
        for path in Path::ALL {
            if !available(path) {
                continue;
            }
            for &shape in &SHAPES {
                for ad in dtypes {
                    for bd in dtypes {
                        if matches!(path, Path::Amx | Path::Avx512Bf16) && (ad != Dtype::Bf16 || bd != Dtype::Bf16) {
                            continue;
                        }
                        for (pad, acc) in [(0, false), (3, true)] {
                            check_layout(path, &mut rng, shape, ad, bd, pad, acc, true);
                        }
                    }
                }
            }
            for m in [1, 16, 17, 33] {
                for n in [1, 15, 16, 17, 31, 32, 33, 50] {
                    for k in [1, 2, 3, 31, 32, 33, 63, 64, 65, 300] {
                        check_layout(path, &mut rng, (m, k, n), Dtype::Bf16, Dtype::Bf16, k % 3, n % 2 == 0, true);
                    }
                }
            }
        }
    }

    /// The packing of a transposed `b` gives exactly the panels `pack_b_vnni` makes of the materialized
    /// transpose (every element, the zero padding included).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn host_mmad_pack_bt_matches_pack_b() {
        if !supported(Path::Avx512) {
            return;
        }
        for (k, n, pad) in
            [(1usize, 1usize, 0usize), (2, 3, 1), (31, 17, 0), (32, 16, 2), (33, 33, 5), (64, 48, 0), (100, 70, 3)]
        {
            let kp = k.div_ceil(32).max(1) * 32;
            let ldbt = k + pad;
            let bt: Vec<u16> = (0..n * ldbt).map(|i| (i as u16).wrapping_mul(7919) | 1).collect();
            let b: Vec<u16> = (0..k * n).map(|i| bt[(i % n) * ldbt + i / n]).collect();
            let len = n.div_ceil(16) * kp * 16;
            let (mut want, mut got) = (vec![0xAAAAu16; len], vec![0x5555u16; len]);
            // SAFETY: the blocks are the vectors' own; `want` and `got` hold the panels.
            unsafe {
                amx::pack_b_vnni(b.as_ptr(), n, k, n, kp, want.as_mut_ptr());
                amx::pack_bt_vnni(bt.as_ptr(), ldbt, k, n, kp, got.as_mut_ptr());
            }
            assert_eq!(got, want, "k={k} n={n} pad={pad}");
        }
    }

    /// The transposed mode through the JIT's entry point (bit 3), with its packing kept (bit 1): a kept
    /// packing of the same window read the other way is not reused.
    #[test]
    fn host_mmad_entry_point_transposed() {
        let (m, k, n) = (20usize, 48usize, 48usize);
        let a: Vec<u16> = (0..m * k).map(|i| bf16::from_f32(((i % 7) as f32) - 3.0).to_bits()).collect();
        let w: Vec<u16> = (0..k * n).map(|i| bf16::from_f32(((i % 5) as f32) - 2.0).to_bits()).collect();
        let f = |x: u16| bf16::from_bits(x).to_f32();
        let reference = |trans: bool| -> Vec<f32> {
            let mut c = vec![0f32; m * n];
            for i in 0..m {
                for j in 0..n {
                    for p in 0..k {
                        let b = if trans { w[j * k + p] } else { w[p * n + j] };
                        c[i * n + j] += f(a[i * k + p]) * f(b);
                    }
                }
            }
            c
        };
        let run = |bits: i64| -> Vec<f32> {
            let mut c = vec![0f32; m * n];
            let (mi, ki, ni) = (m as i64, k as i64, n as i64);
            let ldb = if bits & 8 != 0 { ki } else { ni };
            // SAFETY: the three windows are the vectors' own (k == n, so both layouts span `w`).
            unsafe {
                kc_mmad(a.as_ptr().cast(), 1, ki, w.as_ptr().cast(), 1, ldb, c.as_mut_ptr(), ni, mi, ki, ni, bits)
            };
            c
        };
        clear_b_cache();
        assert_eq!(run(8), reference(true));
        assert_eq!(run(2 | 8), reference(true));
        assert_eq!(run(2), reference(false), "the kept transposed packing is another operand");
        assert_eq!(run(2 | 8), reference(true));
        clear_b_cache();
    }

    /// When a transposed `b` (bits 1 and 3) is kept (`packed_bt`), seen through the contract: a kept
    /// packing is used until the cache is cleared, so a window changed after a kept call still gives the old
    /// result. Kept from the second use on; from the first once a kept packing was found again; from the
    /// second again once the cache filled without a hit; and every launch (`clear_b_cache`) starts over.
    #[test]
    fn host_mmad_keeps_transposed_b_once_reused() {
        if !packing_path() {
            return;
        }
        let (m, k, n) = (16usize, 32usize, 32usize);
        let windows = 2 * B_CACHE_ENTRIES + 4;
        let a: Vec<u16> = (0..m * k).map(|i| bf16::from_f32(((i % 7) as f32) - 3.0).to_bits()).collect();
        let val = |v: f32| bf16::from_f32(v).to_bits();
        let mut w: Vec<u16> = vec![val(1.0); windows * n * k];
        let f = |x: u16| bf16::from_bits(x).to_f32();
        // c = a · wᵀ for window `i` (w[i] holds one value `v`: c[r][j] = v · Σ_p a[r][p]).
        let reference = |v: f32| -> Vec<f32> {
            let mut c = vec![0f32; m * n];
            for r in 0..m {
                let s: f32 = (0..k).map(|p| f(a[r * k + p])).sum();
                for j in 0..n {
                    c[r * n + j] = v * s;
                }
            }
            c
        };
        let run = |w: &[u16], i: usize| -> Vec<f32> {
            let mut c = vec![0f32; m * n];
            let (mi, ki, ni) = (m as i64, k as i64, n as i64);
            let b = w[i * n * k..].as_ptr();
            // SAFETY: `a` and `c` are the vectors' own; window `i` of `w` holds `n × k` elements.
            unsafe { kc_mmad(a.as_ptr().cast(), 1, ki, b.cast(), 1, ki, c.as_mut_ptr(), ni, mi, ki, ni, 2 | 8) };
            c
        };
        let set = |w: &mut Vec<u16>, i: usize, v: f32| w[i * n * k..(i + 1) * n * k].fill(val(v));
        clear_b_cache();
        // Window 0: its first use is not kept, its second is, its third finds it.
        assert_eq!(run(&w, 0), reference(1.0));
        set(&mut w, 0, 2.0);
        assert_eq!(run(&w, 0), reference(2.0), "a first use is not kept");
        set(&mut w, 0, 3.0);
        assert_eq!(run(&w, 0), reference(2.0), "the second use is kept");
        // Reuse seen: window 1 is kept from its first use.
        assert_eq!(run(&w, 1), reference(1.0));
        set(&mut w, 1, 2.0);
        assert_eq!(run(&w, 1), reference(1.0), "after a hit, a first use is kept");
        // Windows used once each fill the cache, then fill it again without a hit: first uses stop being kept.
        for i in 2..2 + 2 * B_CACHE_ENTRIES {
            assert_eq!(run(&w, i), reference(1.0));
        }
        let last = windows - 1;
        assert_eq!(run(&w, last), reference(1.0));
        set(&mut w, last, 2.0);
        assert_eq!(run(&w, last), reference(2.0), "a cache filled without hits: first uses are not kept");
        // A new launch starts over (nothing kept, first uses not kept).
        clear_b_cache();
        set(&mut w, 1, 4.0);
        assert_eq!(run(&w, 1), reference(4.0), "cleared");
        set(&mut w, 1, 5.0);
        assert_eq!(run(&w, 1), reference(5.0), "a new launch keeps from the second use");
        clear_b_cache();
    }

    /// A block on the diagonal of `x · xᵀ` (`b` the transpose of the very rows `a` reads) computes its 32 × 32
    /// blocks on and above the diagonal and copies the ones below: every element is the bits of the same
    /// call with `b` at a copy of the rows (which computes them all). Accumulating, it does so only into a
    /// symmetric `c`; into another `c` it computes every block. Partial blocks (rows not a multiple of 32 or
    /// 16), k with a partial step, the kept-packing bits.
    #[test]
    fn host_mmad_diagonal_block_computes_a_triangle() {
        if !packing_path() {
            return;
        }
        let mut rng = SmallRng::seed_from_u64(16);
        for (m, k, ld, bits) in [
            (128usize, 512usize, 4096usize, 8i64),
            (128, 512, 4096, 2 | 4 | 8 | 16 | 32),
            (70, 40, 40, 8),
            (33, 64, 100, 8),
            (100, 96, 96, 2 | 4 | 8),
            (256, 256, 256, 8),
        ] {
            let x: Vec<u16> = (0..m * ld).map(|_| bf16::from_f32(rng.random_range(-1.0f32..1.0)).to_bits()).collect();
            let copy = x.clone();
            let call = |b: &[u16], c: &mut [f32], acc: i64| {
                clear_b_cache();
                // SAFETY: `a` and `b` are `m` rows of `k` elements at row stride `ld` inside `x` and `b`;
                // `c` is `m × m`.
                unsafe {
                    kc_mmad(
                        x.as_ptr().cast(),
                        1,
                        ld as i64,
                        b.as_ptr().cast(),
                        1,
                        ld as i64,
                        c.as_mut_ptr(),
                        m as i64,
                        m as i64,
                        k as i64,
                        m as i64,
                        bits | acc,
                    )
                }
            };
            let triangles = || amx::TRIANGLE_CALLS.with(|t| t.get());
            let case = format!("m {m} k {k} ld {ld} bits {bits}");
            // Overwriting.
            let (mut want, mut got) = (vec![0f32; m * m], vec![0f32; m * m]);
            let before = triangles();
            call(&copy, &mut want, 0);
            assert_eq!(triangles(), before, "{case}: rows elsewhere are not a diagonal block");
            call(&x, &mut got, 0);
            assert_eq!(triangles(), before + 1, "{case}: a triangle");
            let bits_of = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits_of(&got), bits_of(&want), "{case}");
            // Accumulating into the symmetric result: a triangle again.
            call(&copy, &mut want, 1);
            call(&x, &mut got, 1);
            assert_eq!(triangles(), before + 2, "{case}: accumulating into a symmetric c");
            assert_eq!(bits_of(&got), bits_of(&want), "{case}: accumulated");
            // Into a c that is not symmetric (at the first, the last and a middle element the copies write;
            // one bit of difference is enough): every block computed.
            let last = m - 1;
            for (i, j) in [(32, 0), (last, last / 32 * 32 - 1), (last / 2 + 16, (last / 2 + 16) / 32 * 32 / 2)] {
                let (mut want, mut got) = (want.clone(), got.clone());
                want[i * m + j] = f32::from_bits(want[i * m + j].to_bits() ^ 1);
                got[i * m + j] = want[i * m + j];
                call(&copy, &mut want, 1);
                call(&x, &mut got, 1);
                assert_eq!(triangles(), before + 2, "{case}: c not symmetric at ({i}, {j})");
                assert_eq!(bits_of(&got), bits_of(&want), "{case}: accumulated into a c not symmetric");
            }
        }
        clear_b_cache();
    }

    /// `x · xᵀ` by blocks of `blk` rows and k windows of `kw`, the transposed `b` flagged as rows of `a`'s
    /// matrix (`kc_mmad`'s bit 4, with bits 1 to 3), the blocks on and above the diagonal row by row as the
    /// host's triangle walks them: each block is the unflagged call's result bit for bit (the shared packing
    /// of a window as `b` and as `a` is the one a call packing it alone makes). Odd row counts (a partial
    /// last block and tile row), k with a partial last step and two chunks of the `a` packing, an `x` read
    /// in place (`ld` ≤ 128), and more windows than the caches hold.
    #[test]
    fn host_mmad_shared_transposed_b_matches() {
        let mut rng = SmallRng::seed_from_u64(14);
        for (rows, k, ld, blk, kw) in [
            (70usize, 600usize, 616usize, 32usize, 600usize),
            (70, 600, 616, 32, 512),
            (48, 40, 200, 16, 40),
            (90, 64, 100, 48, 64),
            (80, 600, 4100, 16, 32),
        ] {
            let x: Vec<u16> =
                (0..rows * ld).map(|_| bf16::from_f32(rng.random_range(-1.0f32..1.0)).to_bits()).collect();
            // `square_call` flags the transposed `b` (bit 3) itself.
            let call = |i0: usize, j0: usize, bits: i64| square_call(&x, ld, rows, k, (i0, j0), blk, kw, true, bits);
            clear_b_cache();
            let mut i0 = 0;
            while i0 < rows {
                let mut j0 = i0;
                while j0 < rows {
                    let want = call(i0, j0, 8);
                    assert_eq!(call(i0, j0, 2 | 4 | 8 | 16), want, "rows {rows} k {k} ld {ld} block ({i0}, {j0})");
                    j0 += blk;
                }
                i0 += blk;
            }
            // Again, every packing now found kept.
            assert_eq!(call(blk, 0, 2 | 4 | 8 | 16), call(blk, 0, 8), "rows {rows} k {k}: a kept window");
            clear_b_cache();
        }
    }

    /// With bit 4, a transposed `b` is kept from its first use, and the `a` packing of its window is made
    /// with it and used by the call that reads the window as its `a`: after `x`'s rows change (against the
    /// contract, to see which packing a call uses), both still give the old rows' products until the
    /// caches are cleared. Without bit 4 the first use is not kept and `a` is packed from the rows it reads.
    #[test]
    fn host_mmad_shared_transposed_b_packs_a_once() {
        if !packing_path() {
            return;
        }
        let _pack = PackA::on();
        let (k, ld, blk) = (64usize, 1024usize, 16usize);
        let mut rng = SmallRng::seed_from_u64(15);
        let mut x: Vec<u16> =
            (0..2 * blk * ld).map(|_| bf16::from_f32(rng.random_range(-1.0f32..1.0)).to_bits()).collect();
        let call = |x: &[u16], i0: usize, j0: usize, bits: i64| -> Vec<f32> {
            let mut c = vec![0f32; blk * blk];
            let (b, k_, n) = (blk as i64, k as i64, blk as i64);
            // SAFETY: rows `i0..i0 + blk` and `j0..j0 + blk`, columns `0..k` of `x` lie inside it.
            unsafe {
                kc_mmad(
                    x.as_ptr().add(i0 * ld).cast(),
                    1,
                    ld as i64,
                    x.as_ptr().add(j0 * ld).cast(),
                    1,
                    ld as i64,
                    c.as_mut_ptr(),
                    n,
                    b,
                    k_,
                    n,
                    bits,
                )
            };
            c
        };
        let shared = 2 | 4 | 8 | 16;
        clear_b_cache();
        let old_01 = call(&x, 0, blk, 8);
        let old_10 = call(&x, blk, 0, 8);
        // Block (0, 1) packs rows blk..2 blk as `b`, and as the `a` of block (1, 0).
        assert_eq!(call(&x, 0, blk, shared), old_01);
        for v in &mut x[blk * ld..2 * blk * ld] {
            *v = bf16::from_f32(0.5).to_bits();
        }
        assert_eq!(call(&x, 0, blk, shared), old_01, "the transposed b is kept from its first use");
        assert_eq!(call(&x, blk, 0, shared), old_10, "the a packing made with it is used");
        clear_b_cache();
        let new_10 = call(&x, blk, 0, 8);
        assert_ne!(new_10, old_10);
        assert_eq!(call(&x, blk, 0, shared), new_10, "after clearing, the new rows");
        // Without bit 4: the first use of a transposed b is not kept, and a is packed from its own rows.
        clear_b_cache();
        let new_01 = call(&x, 0, blk, 8);
        assert_eq!(call(&x, 0, blk, 2 | 4 | 8), new_01);
        for v in &mut x[blk * ld..2 * blk * ld] {
            *v = bf16::from_f32(-0.25).to_bits();
        }
        assert_eq!(call(&x, 0, blk, 2 | 4 | 8), call(&x, 0, blk, 8), "without bit 4, a first use is not kept");
        assert_eq!(call(&x, blk, 0, 2 | 4 | 8), call(&x, blk, 0, 8), "without bit 4, a is packed from its rows");
        clear_b_cache();
    }

    /// While alive, every `a` of this thread's calls is packed ([`amx::PACK_A`]), whatever its stride: the
    /// tests of the packings' caches reach them on every path (the AVX512-BF16 path reads any `a` whose k is
    /// a multiple of 32 in place).
    struct PackA;

    impl PackA {
        fn on() -> PackA {
            amx::PACK_A.with(|p| p.set(true));
            PackA
        }
    }

    impl Drop for PackA {
        fn drop(&mut self) {
            amx::PACK_A.with(|p| p.set(false));
        }
    }

    /// One call of a block of `x·xᵀ` (`trans`: `b` is rows `j0..` of `x`, transposed) or of `s·s` (`b` is
    /// the window of `x` at rows `0..k`, columns `j0..`), `x` being `rows × ld` bf16 (`k ≤ ld`, and `k ≤ rows`
    /// for `s·s`), the block's m and n at most `blk`, k in chunks of `kw`.
    #[allow(clippy::too_many_arguments)]
    fn square_call(
        x: &[u16],
        ld: usize,
        rows: usize,
        k: usize,
        (i0, j0): (usize, usize),
        blk: usize,
        kw: usize,
        trans: bool,
        bits: i64,
    ) -> Vec<f32> {
        let (m, n) = ((rows - i0).min(blk), (rows - j0).min(blk));
        let mut c = vec![0f32; m * n];
        let mut k0 = 0;
        while k0 < k {
            let kl = (k - k0).min(kw);
            let acc = i64::from(k0 > 0);
            let b_at = if trans { j0 * ld + k0 } else { k0 * ld + j0 };
            assert!(i0 * ld + k0 + (m - 1) * ld + kl <= x.len());
            assert!(if trans { b_at + (n - 1) * ld + kl } else { b_at + (kl - 1) * ld + n } <= x.len());
            // SAFETY: the windows of `a` (`m × kl` at row `i0`, column `k0`) and `b` lie inside `x` (asserted
            // above); `c` is the vector's own.
            unsafe {
                kc_mmad(
                    x.as_ptr().add(i0 * ld + k0).cast(),
                    1,
                    ld as i64,
                    x.as_ptr().add(b_at).cast(),
                    1,
                    ld as i64,
                    c.as_mut_ptr(),
                    n as i64,
                    m as i64,
                    kl as i64,
                    n as i64,
                    bits | acc | if trans { 8 } else { 0 },
                )
            };
            k0 += kl;
        }
        c
    }

    /// With bit 5 and the launch's [`SharedPacks`], two threads running a triangle of blocks in turns (as
    /// the executor deals units) make each packing once between them — a window's `b` and `a` forms, once
    /// per k chunk — and every block has the bits of the same call without kept packings. Odd shapes:
    /// partial blocks and k chunks, `a` packed (rows more than 512 bytes apart).
    #[test]
    fn host_mmad_shared_packs_once_per_launch() {
        if !packing_path() {
            return;
        }
        let mut rng = SmallRng::seed_from_u64(16);
        for (rows, k, ld, blk, kw, trans) in [
            (150usize, 600usize, 616usize, 32usize, 512usize, true),
            (90, 64, 300, 48, 64, true),
            (300, 300, 300, 64, 256, false),
            (97, 97, 97 + 300, 32, 64, false),
        ] {
            let x: Vec<u16> =
                (0..rows * ld).map(|_| bf16::from_f32(rng.random_range(-1.0f32..1.0)).to_bits()).collect();
            let mut blocks = Vec::new();
            for i0 in (0..rows).step_by(blk) {
                for j0 in (i0..rows).step_by(blk) {
                    blocks.push((i0, j0));
                }
            }
            let want: Vec<Vec<f32>> =
                blocks.iter().map(|&ij| square_call(&x, ld, rows, k, ij, blk, kw, trans, 0)).collect();
            let shared_bits = 2 | 4 | 32 | if trans { 16 } else { 0 };
            // Rounds 0 and 1 with every `a` packed (the counts below); round 2 as the path chooses (an `a`
            // read in place makes no packing: only the bits are checked).
            for round in 0..3 {
                let pack = round < 2;
                let packs = SharedPacks::take();
                let start = std::sync::Barrier::new(2);
                let got: Vec<Vec<(usize, Vec<f32>)>> = std::thread::scope(|sc| {
                    let hs: Vec<_> = (0..2)
                        .map(|t| {
                            let (x, blocks, packs, start) = (&x, &blocks, &*packs, &start);
                            sc.spawn(move || {
                                let _pack = pack.then(PackA::on);
                                clear_b_cache();
                                start.wait();
                                with_shared(Some(packs), || {
                                    (0..blocks.len())
                                        .filter(|b| b % 2 == t)
                                        .map(|b| {
                                            (b, square_call(x, ld, rows, k, blocks[b], blk, kw, trans, shared_bits))
                                        })
                                        .collect::<Vec<_>>()
                                })
                            })
                        })
                        .collect();
                    hs.into_iter().map(|h| h.join().unwrap()).collect()
                });
                for (b, c) in got.into_iter().flatten() {
                    assert_eq!(c, want[b], "rows {rows} k {k} trans {trans} round {round} block {:?}", blocks[b]);
                }
                if !pack {
                    continue;
                }
                let windows = rows.div_ceil(blk) * k.div_ceil(kw);
                let (b_windows, a_windows) = if trans {
                    (windows, windows)
                } else {
                    // s·s: the b windows are the blocks' columns by k chunks, the a windows their rows by k chunks.
                    (rows.div_ceil(blk) * k.div_ceil(kw), rows.div_ceil(blk) * k.div_ceil(kw))
                };
                assert_eq!(packs.packings(), b_windows + a_windows, "rows {rows} k {k} trans {trans}: packed once");
            }
        }
    }

    /// The packings of a launch's [`SharedPacks`] are found by another thread of the launch (after the rows
    /// change, against the contract, to see which packing a call uses, the second thread still gets the old
    /// rows' products), and a new launch's packings (taken anew) do not keep them: the new rows' products.
    #[test]
    fn host_mmad_shared_packs_are_shared_and_reset() {
        if !packing_path() {
            return;
        }
        let _pack = PackA::on();
        let (rows, k, ld, blk, kw) = (128usize, 128usize, 512usize, 32usize, 128usize);
        let mut rng = SmallRng::seed_from_u64(17);
        let mut x: Vec<u16> =
            (0..rows * ld).map(|_| bf16::from_f32(rng.random_range(-1.0f32..1.0)).to_bits()).collect();
        for trans in [true, false] {
            let bits = 2 | 4 | 32 | if trans { 16 } else { 0 };
            let old = square_call(&x, ld, rows, k, (0, blk), blk, kw, trans, 0);
            let packs = SharedPacks::take();
            let first = std::thread::scope(|sc| {
                sc.spawn(|| {
                    let _pack = PackA::on();
                    with_shared(Some(&*packs), || square_call(&x, ld, rows, k, (0, blk), blk, kw, trans, bits))
                })
                .join()
                .unwrap()
            });
            assert_eq!(first, old);
            let made = packs.packings();
            // `b` (rows blk..2 blk), with x·xᵀ its `a` form too, and `a` (rows 0..blk).
            assert_eq!(made, if trans { 3 } else { 2 }, "trans {trans}: each window's packings once");
            for v in &mut x[..] {
                *v = bf16::from_f32(0.5).to_bits();
            }
            let second = std::thread::scope(|sc| {
                sc.spawn(|| {
                    let _pack = PackA::on();
                    with_shared(Some(&*packs), || square_call(&x, ld, rows, k, (0, blk), blk, kw, trans, bits))
                })
                .join()
                .unwrap()
            });
            assert_eq!(second, old, "trans {trans}: another thread of the launch reads the first one's packings");
            assert_eq!(packs.packings(), made);
            drop(packs);
            let new = square_call(&x, ld, rows, k, (0, blk), blk, kw, trans, 0);
            assert_ne!(new, old);
            let packs = SharedPacks::take();
            assert_eq!(packs.packings(), 0);
            let third = with_shared(Some(&*packs), || square_call(&x, ld, rows, k, (0, blk), blk, kw, trans, bits));
            assert_eq!(third, new, "trans {trans}: a new launch packs the new rows");
            // Outside `with_shared` the thread's own caches (empty after clearing) are used.
            clear_b_cache();
            assert_eq!(square_call(&x, ld, rows, k, (0, blk), blk, kw, trans, bits), new);
            clear_b_cache();
            for v in &mut x[..] {
                *v = bf16::from_f32(rng.random_range(-1.0f32..1.0)).to_bits();
            }
        }
    }

    /// The AMX path on a non-bf16 pair falls back (and still computes the contract).
    #[test]
    fn host_mmad_amx_falls_back() {
        let mut rng = SmallRng::seed_from_u64(3);
        check(Path::Amx, &mut rng, (17, 33, 40), Dtype::F16, Dtype::Bf16, 1, true);
        check(Path::Amx, &mut rng, (17, 33, 40), Dtype::F32, Dtype::F32, 0, false);
        check(Path::Avx512Bf16, &mut rng, (17, 33, 40), Dtype::F16, Dtype::Bf16, 1, true);
        check(Path::Avx512Bf16, &mut rng, (17, 33, 40), Dtype::F32, Dtype::F32, 0, false);
    }

    /// A `b` marked unchanging (bit 1 of `accumulate`) is packed once and reused while the thread's cache
    /// lives; after `clear_b_cache` new contents at the same address are seen.
    #[test]
    fn host_mmad_keeps_packed_b_until_cleared() {
        let (m, k, n) = (32usize, 64usize, 48usize);
        let a: Vec<u16> = (0..m * k).map(|i| bf16::from_f32(((i % 7) as f32) - 3.0).to_bits()).collect();
        let mut b: Vec<u16> = (0..k * n).map(|i| bf16::from_f32(((i % 5) as f32) - 2.0).to_bits()).collect();
        let reference = |b: &[u16]| -> Vec<f32> {
            let mut c = vec![0f32; m * n];
            for i in 0..m {
                for j in 0..n {
                    for p in 0..k {
                        c[i * n + j] += bf16::from_bits(a[i * k + p]).to_f32() * bf16::from_bits(b[p * n + j]).to_f32();
                    }
                }
            }
            c
        };
        let run = |b: &[u16]| -> Vec<f32> {
            let mut c = vec![0f32; m * n];
            let (mi, ki, ni) = (m as i64, k as i64, n as i64);
            // SAFETY: the three windows are the vectors' own.
            unsafe { kc_mmad(a.as_ptr().cast(), 1, ki, b.as_ptr().cast(), 1, ni, c.as_mut_ptr(), ni, mi, ki, ni, 2) };
            c
        };
        clear_b_cache();
        assert_eq!(run(&b), reference(&b));
        assert_eq!(run(&b), reference(&b), "the kept packing gives the same result");
        let old = reference(&b);
        for x in b.iter_mut() {
            *x = bf16::from_f32(1.0).to_bits();
        }
        if packing_path() {
            assert_eq!(run(&b), old, "until the cache is cleared, the packed old b is used (the contract)");
        }
        clear_b_cache();
        assert_eq!(run(&b), reference(&b), "after clearing, the new contents");
    }

    /// Calls whose kept `b` packings are used in the order they were packed (each one prefetches the next
    /// packing of the arena into L2 while it runs: a matmul launch walking its blocks along rows of C) give
    /// the same bits as the same calls with nothing kept (no prefetch): a 4 × 3 grid of 64 × 80 blocks (the
    /// last row of C partial), K = 600 in windows of 288 (two k chunks, the last partial), two passes over
    /// the rows so that the second finds every packing kept and in order, the last prefetching past the
    /// arena's last packing.
    #[test]
    fn host_mmad_prefetching_the_next_packing_changes_nothing() {
        let (m, k, n) = (250usize, 600usize, 240usize);
        let (bm, bk, bn) = (64usize, 288usize, 80usize);
        let mut rng = SmallRng::seed_from_u64(5);
        let a: Vec<u16> = (0..m * k).map(|_| bf16::from_f32(rng.random_range(-1.0f32..1.0)).to_bits()).collect();
        let b: Vec<u16> = (0..k * n).map(|_| bf16::from_f32(rng.random_range(-1.0f32..1.0)).to_bits()).collect();
        let run = |keep: i64| -> Vec<f32> {
            clear_b_cache();
            let mut c = vec![0f32; m * n];
            for _pass in 0..2 {
                for m0 in (0..m).step_by(bm) {
                    for n0 in (0..n).step_by(bn) {
                        for k0 in (0..k).step_by(bk) {
                            let (rows, kl, cols) = ((m - m0).min(bm), (k - k0).min(bk), (n - n0).min(bn));
                            let flags = i64::from(k0 > 0) | keep;
                            // SAFETY: the windows lie inside the vectors.
                            unsafe {
                                kc_mmad(
                                    a.as_ptr().add(m0 * k + k0).cast(),
                                    1,
                                    k as i64,
                                    b.as_ptr().add(k0 * n + n0).cast(),
                                    1,
                                    n as i64,
                                    c.as_mut_ptr().add(m0 * n + n0),
                                    n as i64,
                                    rows as i64,
                                    kl as i64,
                                    cols as i64,
                                    flags,
                                )
                            };
                        }
                    }
                }
            }
            clear_b_cache();
            c
        };
        let kept = run(6);
        let plain = run(0);
        assert!(kept.iter().zip(&plain).all(|(x, y)| x.to_bits() == y.to_bits()), "kept and prefetched: other bits");
        check_matmul_close(&a, &b, &plain, (m, k, n));
    }

    /// `c` (`m × n`, f32) is within f32 rounding of `a · b` (bf16, row-major).
    fn check_matmul_close(a: &[u16], b: &[u16], c: &[f32], (m, k, n): (usize, usize, usize)) {
        for i in 0..m {
            for j in 0..n {
                let (mut exact, mut mag) = (0f64, 0f64);
                for p in 0..k {
                    let x =
                        bf16::from_bits(a[i * k + p]).to_f32() as f64 * bf16::from_bits(b[p * n + j]).to_f32() as f64;
                    exact += x;
                    mag += x.abs();
                }
                let err = (c[i * n + j] as f64 - exact).abs();
                assert!(err <= 1e-5 * mag + 1e-30, "c[{i}][{j}] = {}, exact {exact}", c[i * n + j]);
            }
        }
    }

    /// The same for `a` (bit 2), packed when it is read from a wide tensor (here `lda` = 1024 elements): the
    /// kept packing gives the same result, is used until cleared, and the buffers are reused after a clear
    /// (also when more operands than the cache holds go through it).
    #[test]
    fn host_mmad_keeps_packed_a_until_cleared() {
        let _pack = PackA::on();
        let (m, k, n, lda) = (32usize, 64usize, 48usize, 1024usize);
        let mut a: Vec<u16> = (0..m * lda).map(|i| bf16::from_f32(((i % 7) as f32) - 3.0).to_bits()).collect();
        let b: Vec<u16> = (0..k * n).map(|i| bf16::from_f32(((i % 5) as f32) - 2.0).to_bits()).collect();
        let reference = |a: &[u16], off: usize| -> Vec<f32> {
            let mut c = vec![0f32; m * n];
            for i in 0..m {
                for j in 0..n {
                    for p in 0..k {
                        let x = bf16::from_bits(a[off + i * lda + p]).to_f32();
                        c[i * n + j] += x * bf16::from_bits(b[p * n + j]).to_f32();
                    }
                }
            }
            c
        };
        let run = |a: &[u16], off: usize| -> Vec<f32> {
            let mut c = vec![0f32; m * n];
            let (mi, ki, ni) = (m as i64, k as i64, n as i64);
            // SAFETY: the windows lie inside the vectors (off + (m - 1) lda + k ≤ m lda).
            unsafe {
                kc_mmad(
                    a.as_ptr().add(off).cast(),
                    1,
                    lda as i64,
                    b.as_ptr().cast(),
                    1,
                    ni,
                    c.as_mut_ptr(),
                    ni,
                    mi,
                    ki,
                    ni,
                    4,
                )
            };
            c
        };
        clear_b_cache();
        assert_eq!(run(&a, 0), reference(&a, 0));
        assert_eq!(run(&a, 0), reference(&a, 0), "the kept packing gives the same result");
        // More distinct operands than the cache holds: each still right.
        for off in (0..200).map(|i| i * 4) {
            assert_eq!(run(&a, off), reference(&a, off), "offset {off}");
        }
        let old = reference(&a, 8);
        assert_eq!(run(&a, 8), old);
        for x in a.iter_mut() {
            *x = bf16::from_f32(1.0).to_bits();
        }
        if packing_path() {
            assert_eq!(run(&a, 8), old, "until the cache is cleared, the packed old a is used (the contract)");
        }
        clear_b_cache();
        assert_eq!(run(&a, 8), reference(&a, 8), "after clearing, the new contents");
    }

    /// `kc_mmad` of the whole `m × k` `a` and `k × n` `b` (both kept: code 6) into a fresh `c`, which must
    /// be `want` to rounding (round `round` of a test's repeated calls).
    fn kept_call_matches(a: &Mat, b: &Mat, (m, k, n): (usize, usize, usize), want: &[f32], round: usize) {
        let mut c = vec![0f32; m * n];
        // SAFETY: the blocks are the vectors' whole contents.
        unsafe {
            kc_mmad(
                a.bf16s.as_ptr().cast(),
                1,
                k as i64,
                b.bf16s.as_ptr().cast(),
                1,
                n as i64,
                c.as_mut_ptr(),
                n as i64,
                m as i64,
                k as i64,
                n as i64,
                6,
            )
        };
        for (i, (&got, &w)) in c.iter().zip(want).enumerate() {
            assert!((got - w).abs() <= 1e-3 * (1.0 + w.abs()), "round {round}: c[{i}] = {got}, want {w}");
        }
    }

    /// Calls deeper than one k chunk of the AMX path (512): `a` packed chunk by chunk (a wide `a`, so not
    /// read in place), partial last chunks and k steps, partial tile rows and columns, with and without
    /// accumulation, and kept packings (`kc_mmad`'s bits 1 and 2) of such an `a` and `b`.
    #[test]
    fn host_mmad_amx_long_k() {
        let mut rng = SmallRng::seed_from_u64(13);
        for path in Path::ALL {
            if !available(path) {
                continue;
            }
            for &(m, k, n) in &[(1, 513, 16), (17, 544, 33), (40, 1000, 20), (64, 1056, 48), (33, 1100, 17)] {
                for (pad, acc) in [(0, false), (3, true)] {
                    check(path, &mut rng, (m, k, n), Dtype::Bf16, Dtype::Bf16, pad, acc);
                }
            }
        }
        // Kept packings: the same call twice in a launch (the second finds both operands packed).
        let (m, k, n) = (40usize, 1100usize, 40usize);
        let a = Mat::random(&mut rng, Dtype::Bf16, m * k);
        let b = Mat::random(&mut rng, Dtype::Bf16, k * n);
        let mut want = vec![0f32; m * n];
        mmad_with(Path::Portable, a.operand(), k, b.operand(), n, &mut want, n, (m, k, n), false);
        clear_b_cache();
        for round in 0..2 {
            kept_call_matches(&a, &b, (m, k, n), &want, round);
        }
        clear_b_cache();
    }

    /// On the AMX path a call's result does not depend on how k is split into calls: one call of k = 1024
    /// gives the bits of two of 512 or four of 256 accumulating into `c` (the accumulators go through `c`
    /// exactly, in f32, between chunks and calls). So the host tiling's k step (`matmul_bk`) changes no
    /// result bit.
    #[test]
    fn host_mmad_amx_k_split_same_bits() {
        if !available(tiled()) {
            return;
        }
        let mut rng = SmallRng::seed_from_u64(17);
        let (m, k, n) = (48usize, 1024usize, 80usize);
        let a = Mat::random(&mut rng, Dtype::Bf16, m * k);
        let b = Mat::random(&mut rng, Dtype::Bf16, k * n);
        let run = |step: usize| -> Vec<u32> {
            let mut c = vec![0f32; m * n];
            for k0 in (0..k).step_by(step) {
                let a_win = Operand::Bf16(&a.bf16s[k0..]);
                let b_win = Operand::Bf16(&b.bf16s[k0 * n..]);
                mmad_with(tiled(), a_win, k, b_win, n, &mut c, n, (m, step, n), k0 > 0);
            }
            c.iter().map(|v| v.to_bits()).collect()
        };
        let whole = run(1024);
        assert_eq!(run(512), whole, "two calls of 512");
        assert_eq!(run(256), whole, "four calls of 256");
    }

    /// The arena of kept packings: entries are 64-byte aligned, do not overlap, fill a chunk before the next
    /// one is used, an entry larger than a chunk gets a chunk of its own, and forgetting reuses the memory.
    #[test]
    fn host_mmad_pack_arena() {
        let mut arena = PackArena::default();
        let mut got: Vec<(usize, usize)> = Vec::new();
        for bytes in [100, 64, 1 << 20, 3 << 20, 5, PACK_CHUNK_BYTES + 1, 7 << 20, 64] {
            let p = arena.alloc(bytes).expect("memory") as usize;
            assert_eq!(p % 64, 0, "aligned");
            // SAFETY: the entry is `bytes` long: writing all of it must not disturb the others (checked below).
            unsafe { std::ptr::write_bytes(p as *mut u8, got.len() as u8, bytes) };
            got.push((p, bytes));
        }
        for (i, &(p, bytes)) in got.iter().enumerate() {
            for &(q, qb) in &got[i + 1..] {
                assert!(p + bytes <= q || q + qb <= p, "entries overlap");
            }
            // SAFETY: the entry's memory, written above.
            let first_last = unsafe { (*(p as *const u8), *((p + bytes - 1) as *const u8)) };
            assert_eq!(first_last, (i as u8, i as u8), "entry {i} was overwritten");
        }
        assert!(arena.chunks.iter().any(|c| c.bytes > PACK_CHUNK_BYTES), "the big entry got its own chunk");
        let chunks = arena.chunks.len();
        arena.forget();
        assert_eq!(arena.alloc(100).map(|p| p as usize), Some(got[0].0), "forgetting starts over");
        assert_eq!(arena.chunks.len(), chunks, "the chunks stay");
    }

    /// A kept `b` whose packing is larger than an arena chunk (here 2080 × 2100: 9 MiB packed), next to
    /// small ones, computes the contract, from the cache too.
    #[test]
    fn host_mmad_keeps_large_packings() {
        let (m, k, n) = (16usize, 2080usize, 2100usize);
        let mut rng = SmallRng::seed_from_u64(9);
        let a = Mat::random(&mut rng, Dtype::Bf16, m * k);
        let b = Mat::random(&mut rng, Dtype::Bf16, k * n);
        let mut want = vec![0f32; m * n];
        mmad_with(Path::Portable, a.operand(), k, b.operand(), n, &mut want, n, (m, k, n), false);
        clear_b_cache();
        for round in 0..3 {
            // A small kept operand between the large ones: the arena moves on to a new chunk and back.
            let mut small = vec![0f32; 16 * 16];
            let b_small = &b.bf16s[(round + 1) * 16..];
            unsafe {
                kc_mmad(
                    a.bf16s.as_ptr().cast(),
                    1,
                    k as i64,
                    b_small.as_ptr().cast(),
                    1,
                    n as i64,
                    small.as_mut_ptr(),
                    16,
                    16,
                    64,
                    16,
                    2,
                )
            };
            kept_call_matches(&a, &b, (m, k, n), &want, round);
        }
        clear_b_cache();
    }

    /// The JIT's entry point: codes, k = 0, and invalid arguments.
    #[test]
    fn host_mmad_entry_point() {
        let a = [bf16::from_f32(1.0), bf16::from_f32(2.0)];
        let b = [f16::from_f32(3.0), f16::from_f32(4.0)];
        let mut c = [10.0f32];
        unsafe {
            kc_mmad(a.as_ptr().cast(), 1, 2, b.as_ptr().cast(), 2, 1, c.as_mut_ptr(), 1, 1, 2, 1, 1);
        }
        assert_eq!(c, [21.0]);
        unsafe {
            kc_mmad(a.as_ptr().cast(), 1, 2, b.as_ptr().cast(), 2, 1, c.as_mut_ptr(), 1, 1, 2, 1, 0);
        }
        assert_eq!(c, [11.0]);
        // Unknown dtype codes, negative sizes: nothing happens.
        unsafe {
            kc_mmad(a.as_ptr().cast(), 3, 2, b.as_ptr().cast(), 2, 1, c.as_mut_ptr(), 1, 1, 2, 1, 0);
            kc_mmad(a.as_ptr().cast(), 1, 2, b.as_ptr().cast(), -1, 1, c.as_mut_ptr(), 1, 1, 2, 1, 0);
            kc_mmad(a.as_ptr().cast(), 1, 2, b.as_ptr().cast(), 2, 1, c.as_mut_ptr(), 1, -1, 2, 1, 0);
        }
        assert_eq!(c, [11.0]);
        // k = 0 without accumulate zeroes the block.
        let mut c = [5.0f32; 6];
        unsafe { kc_mmad(a.as_ptr().cast(), 1, 0, b.as_ptr().cast(), 2, 3, c.as_mut_ptr(), 3, 2, 0, 2, 0) };
        assert_eq!(c, [0.0, 0.0, 5.0, 0.0, 0.0, 5.0]);
    }

    /// After [`release_tiles`] the next call configures the tiles again.
    #[test]
    fn host_mmad_release_tiles() {
        let mut rng = SmallRng::seed_from_u64(5);
        for _ in 0..2 {
            check(path(), &mut rng, (33, 64, 40), Dtype::Bf16, Dtype::Bf16, 1, true);
            release_tiles();
            release_tiles();
        }
    }

    /// Two threads at once, each with its own tile configuration and scratch.
    #[test]
    fn host_mmad_two_threads() {
        let start = std::sync::Arc::new(std::sync::Barrier::new(2));
        let run = |seed: u64| {
            let start = start.clone();
            move || {
                let mut rng = SmallRng::seed_from_u64(seed);
                start.wait();
                for _ in 0..3 {
                    for &shape in &SHAPES {
                        check(path(), &mut rng, shape, Dtype::Bf16, Dtype::Bf16, 1, seed.is_multiple_of(2));
                        check(path(), &mut rng, shape, Dtype::F16, Dtype::F32, 0, true);
                    }
                }
            }
        };
        let t1 = std::thread::spawn(run(1));
        let t2 = std::thread::spawn(run(2));
        t1.join().unwrap();
        t2.join().unwrap();
    }

    #[test]
    fn host_mmad_path_is_best() {
        eprintln!("mmad path on this machine: {:?}", path());
        assert!(supported(path()));
        assert_eq!(path(), Path::ALL.into_iter().find(|&p| supported(p)).unwrap());
    }
}

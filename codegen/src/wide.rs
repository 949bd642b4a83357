//! AVX-512 machine code for the JIT's fused element loops (`lower`'s `vector_group`).
//!
//! Cranelift 0.135's x86 backend emits 128-bit vectors only. On a Zen 4 core a 128-bit division or square
//! root takes as long as a 256-bit one (`docs/perf.md`), so a run of statements with divisions (AdamW's three
//! and a square root per element) is bound by them at a quarter of the vector unit's width. On a host with
//! AVX-512F and BMI2, a fused run whose every operation has a 16-lane form here is assembled (with iced-x86)
//! into a routine for one row of the run, `extern "C" fn(args: *const u8, n: i64)`:
//!
//! - `args` holds a pointer per stream (each distinct operand window and each destination, at column 0 of
//!   the row: [`Routine::streams`]) and then an `f32` per row-invariant value the expressions use
//!   ([`Routine::scalars`]: the sub-expressions `lower` hoists out of the column loop, computed by the
//!   Cranelift code for each row, integers converted as its splats convert them);
//! - the routine walks the row's `n` columns 16 at a time, the last 1–15 columns under a lane mask (masked
//!   loads and stores touch no other element), and for each group runs the statements in order, as the
//!   128-bit loop does: each statement's operands loaded (an operand read twice loaded once, until a store
//!   that may overlap it), its value computed and stored, and a later statement's read of an earlier one's
//!   `f32` result taking the computed vector.
//!
//! Every operation is the 128-bit code's own, lane for lane, in the same order (IEEE additions,
//! multiplications, divisions and square roots; the same NaN-propagating min/max, compares, selects and
//! bf16 rounding by integer operations), so the results are the same bits, which are the interpreter's.
//! Anything else (an integer comparison of indices, `mod`, `pow`, a transcendental function, a boolean
//! row value, more live values than registers) leaves the run to the 128-bit code.

use crate::lower::{has_div, region_dtype, same_window, ty_of, var_of, Ty, Var};
use iced_x86::code_asm::*;
use iced_x86::IcedError;
use kc_ir::dtype::DType;
use kc_ir::graph::{BinOp, UnOp};
use kc_ir::tile::{Launch, Region, TileProgram, VExpr};

/// One statement of a fused run.
pub(crate) struct WStmt<'p> {
    pub dst: &'p Region,
    pub dtype: DType,
    pub expr: &'p VExpr,
    /// The result is not stored (`lower::dead_run_stores`: every read of it is forwarded).
    pub dead: bool,
}

/// A pointer the routine reads from `args`: an operand window or a destination, at column 0 of the row.
pub(crate) struct Stream<'p> {
    /// The window (for a destination, the statement's).
    pub region: &'p Region,
    /// Read at row 0 whatever the row (a `ReadCol`).
    pub col: bool,
    pub dtype: DType,
    /// The statement this is the destination of.
    pub dst: Option<usize>,
}

/// An assembled routine and what its `args` hold.
pub(crate) struct Routine<'p> {
    pub streams: Vec<Stream<'p>>,
    /// The row-invariant sub-expressions whose values follow the pointers, one `f32` each.
    pub scalars: Vec<&'p VExpr>,
    pub code: Vec<u8>,
}

impl Routine<'_> {
    /// Where scalar `j` is in `args`.
    pub fn scalar_offset(&self, j: usize) -> i32 {
        (8 * self.streams.len() + 4 * j) as i32
    }

    /// The bytes of `args`.
    pub fn args_bytes(&self) -> u32 {
        (8 * self.streams.len() + 4 * self.scalars.len()).max(8) as u32
    }
}

/// Whether this host runs the routines (AVX-512F with the OS's support for its state, and BMI2).
pub(crate) fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("bmi2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The routine for `stmts`, or `None` when some operation has no form here (the run stays 128-bit).
/// `overlaps(x, d)`: whether a read of `x` may see a store to `d`.
pub(crate) fn assemble<'p>(
    prog: &'p TileProgram,
    l: &'p Launch,
    stmts: &[WStmt<'p>],
    overlaps: &dyn Fn(&Region, &Region) -> bool,
) -> Option<Routine<'p>> {
    let mut e = Em::new(prog, l, stmts, overlaps).ok()?;
    e.routine().ok()?;
    let code = e.a.assemble(0).ok()?;
    Some(Routine { streams: e.streams, scalars: e.scalars.into_iter().map(|(x, _)| x).collect(), code })
}

/// Why a run is not assembled: an operation without a form here, too many live values, or an assembler
/// error (none is expected).
#[derive(Debug)]
struct Fail;

impl From<IcedError> for Fail {
    fn from(_: IcedError) -> Self {
        Fail
    }
}

type R<T> = Result<T, Fail>;

const Z: [AsmRegisterZmm; 32] = [
    zmm0, zmm1, zmm2, zmm3, zmm4, zmm5, zmm6, zmm7, zmm8, zmm9, zmm10, zmm11, zmm12, zmm13, zmm14, zmm15, zmm16, zmm17,
    zmm18, zmm19, zmm20, zmm21, zmm22, zmm23, zmm24, zmm25, zmm26, zmm27, zmm28, zmm29, zmm30, zmm31,
];
const KR: [AsmRegisterK; 8] = [k0, k1, k2, k3, k4, k5, k6, k7];
/// The stream pointers' registers (`rdi` holds `args`, `rsi` `n`, `rcx` the column; `r10` a pointer read
/// from `args` for the streams beyond these, `r11` the tail's count); the last six are callee-saved.
const GPRS: [AsmRegister64; 10] = [rax, rdx, r8, r9, rbx, rbp, r12, r13, r14, r15];
const CALLEE_SAVED_FROM: usize = 4;

/// `vcmpps` predicates, as Cranelift's `fcmp` condition codes (ordered, except `!=`: unordered or unequal).
const CMP_EQ_OQ: i32 = 0x00;
const CMP_UNORD_Q: i32 = 0x03;
const CMP_NEQ_UQ: i32 = 0x04;
const CMP_LT_OQ: i32 = 0x11;
const CMP_LE_OQ: i32 = 0x12;
const CMP_GE_OQ: i32 = 0x1D;
const CMP_GT_OQ: i32 = 0x1E;

/// A value of the element computation: 16 float lanes in a zmm register, or 16 booleans in a mask register;
/// `owned`: a temporary the consumer frees (not a loaded operand, a forwarded result or a row value).
#[derive(Clone, Copy)]
enum V {
    Z(u32, bool),
    K(u32, bool),
}

fn zk(z: AsmRegisterZmm, k: u32) -> AsmRegisterZmm {
    match k {
        1 => z.k1(),
        2 => z.k2(),
        3 => z.k3(),
        4 => z.k4(),
        5 => z.k5(),
        6 => z.k6(),
        _ => z.k7(),
    }
}

struct Em<'p, 'x> {
    a: CodeAssembler,
    prog: &'p TileProgram,
    l: &'p Launch,
    stmts: &'x [WStmt<'p>],
    overlaps: &'x dyn Fn(&Region, &Region) -> bool,
    streams: Vec<Stream<'p>>,
    /// Each stream's pointer register (an index into [`GPRS`]), given at its first use.
    gpr: Vec<Option<usize>>,
    gprs_used: usize,
    /// The row values and constants: broadcast into registers from the top (`zmm31` down) before the loop,
    /// kept for the routine.
    scalars: Vec<(&'p VExpr, u32)>,
    consts: Vec<(u32, u32)>,
    /// Registers below `perm_low` are temporaries; `temp_high` is one past the highest ever used.
    perm_low: u32,
    temp_high: u32,
    z_busy: u32,
    k_busy: u8,
    /// Generating the tail (loads and stores under `k1`).
    masked: bool,
    /// In a group: the loaded operands (stream, register), the `f32` results (window, value), and registers
    /// to free at the group's end.
    cache: Vec<(usize, u32)>,
    made: Vec<(&'p Region, V)>,
    dead: Vec<u32>,
}

impl<'p, 'x> Em<'p, 'x> {
    fn new(
        prog: &'p TileProgram,
        l: &'p Launch,
        stmts: &'x [WStmt<'p>],
        overlaps: &'x dyn Fn(&Region, &Region) -> bool,
    ) -> R<Self> {
        let mut streams = Vec::new();
        for (i, s) in stmts.iter().enumerate() {
            if !matches!(s.dtype, DType::F32 | DType::BF16) {
                return Err(Fail);
            }
            streams.push(Stream { region: s.dst, col: false, dtype: s.dtype, dst: Some(i) });
        }
        let gpr = vec![None; streams.len()];
        Ok(Em {
            a: CodeAssembler::new(64)?,
            prog,
            l,
            stmts,
            overlaps,
            streams,
            gpr,
            gprs_used: 0,
            scalars: Vec::new(),
            consts: Vec::new(),
            perm_low: 32,
            temp_high: 0,
            z_busy: 0,
            k_busy: 0,
            masked: false,
            cache: Vec::new(),
            made: Vec::new(),
            dead: Vec::new(),
        })
    }

    /// entry: `jmp setup`; the 16-column loop; the tail; the exit; `setup` (pushes, pointers, broadcasts: known
    /// only once the loop is generated), which jumps to the loop.
    fn routine(&mut self) -> R<()> {
        let mut top = self.a.create_label();
        let mut tail = self.a.create_label();
        let mut done = self.a.create_label();
        let mut setup = self.a.create_label();
        self.a.jmp(setup)?;
        self.a.set_label(&mut top)?;
        self.a.lea(r11, qword_ptr(rcx + 16))?;
        self.a.cmp(r11, rsi)?;
        self.a.jg(tail)?;
        self.masked = false;
        self.group()?;
        self.a.mov(rcx, r11)?;
        self.a.jmp(top)?;
        self.a.set_label(&mut tail)?;
        self.a.mov(r11, rsi)?;
        self.a.sub(r11, rcx)?;
        self.a.jle(done)?;
        self.a.mov(r10d, -1)?;
        self.a.bzhi(r10d, r10d, r11d)?;
        self.a.kmovw(k1, r10d)?;
        self.masked = true;
        self.group()?;
        self.a.set_label(&mut done)?;
        self.a.vzeroupper()?;
        let saved: Vec<AsmRegister64> = GPRS[CALLEE_SAVED_FROM..self.gprs_used.max(CALLEE_SAVED_FROM)].to_vec();
        for &g in saved.iter().rev() {
            self.a.pop(g)?;
        }
        self.a.ret()?;
        self.a.set_label(&mut setup)?;
        for &g in &saved {
            self.a.push(g)?;
        }
        for (s, g) in self.gpr.clone().into_iter().enumerate() {
            if let Some(g) = g {
                self.a.mov(GPRS[g], qword_ptr(rdi + 8 * s as i32))?;
            }
        }
        let base = 8 * self.streams.len() as i32;
        for (j, &(_, z)) in self.scalars.clone().iter().enumerate() {
            self.a.vbroadcastss(Z[z as usize], dword_ptr(rdi + (base + 4 * j as i32)))?;
        }
        for &(bits, z) in &self.consts.clone() {
            self.a.mov(r11d, bits as i32)?;
            self.a.vpbroadcastd(Z[z as usize], r11d)?;
        }
        self.a.xor(ecx, ecx)?;
        self.a.jmp(top)?;
        Ok(())
    }

    /// One group of 16 columns (masked: the tail): the statements in order.
    fn group(&mut self) -> R<()> {
        for i in 0..self.stmts.len() {
            let (dst, dtype, expr) = (self.stmts[i].dst, self.stmts[i].dtype, self.stmts[i].expr);
            let v = self.eval(expr)?;
            let V::Z(z, owned) = v else { return Err(Fail) };
            if self.stmts[i].dead && dtype != DType::F32 {
                return Err(Fail);
            }
            if !self.stmts[i].dead {
                self.store(i, z)?;
            }
            // Operands this store may change are loaded again by later statements; an earlier result at this
            // window is replaced by this one.
            let overlaps = self.overlaps;
            let streams = &self.streams;
            let dead = &mut self.dead;
            self.cache.retain(|&(s, r)| {
                let keep = !overlaps(streams[s].region, dst);
                if !keep {
                    dead.push(r);
                }
                keep
            });
            self.made.retain(|&(w, v)| {
                let keep = !overlaps(w, dst);
                if let (false, V::Z(r, true)) = (keep, v) {
                    dead.push(r);
                }
                keep
            });
            if dtype == DType::F32 {
                self.made.push((dst, V::Z(z, owned)));
            } else if owned {
                self.free_z(z);
            }
        }
        let mut regs: Vec<u32> = std::mem::take(&mut self.dead);
        regs.extend(self.cache.drain(..).map(|(_, r)| r));
        regs.extend(self.made.drain(..).filter_map(|(_, v)| match v {
            V::Z(r, true) => Some(r),
            _ => None,
        }));
        for r in regs {
            self.free_z(r);
        }
        if self.z_busy != 0 || self.k_busy != 0 {
            // Every temporary is freed by the end of a group (an internal error of this module).
            return Err(Fail);
        }
        Ok(())
    }

    // ----- registers -----

    fn temp(&mut self) -> R<u32> {
        let i = (!self.z_busy).trailing_zeros();
        if i >= self.perm_low {
            return Err(Fail);
        }
        self.z_busy |= 1 << i;
        self.temp_high = self.temp_high.max(i + 1);
        Ok(i)
    }

    fn free_z(&mut self, i: u32) {
        if i < self.perm_low {
            self.z_busy &= !(1 << i);
        }
    }

    fn perm(&mut self) -> R<u32> {
        if self.perm_low == 0 || self.perm_low - 1 < self.temp_high {
            return Err(Fail);
        }
        self.perm_low -= 1;
        Ok(self.perm_low)
    }

    fn ktemp(&mut self) -> R<u32> {
        // k0 cannot mask, k1 is the tail's mask.
        let i = (!(self.k_busy | 0b11)).trailing_zeros();
        if i >= 8 {
            return Err(Fail);
        }
        self.k_busy |= 1 << i;
        Ok(i)
    }

    fn free_k(&mut self, i: u32) {
        self.k_busy &= !(1 << i);
    }

    fn release(&mut self, v: V) {
        match v {
            V::Z(r, true) => self.free_z(r),
            V::K(k, true) => self.free_k(k),
            _ => {}
        }
    }

    /// A register holding `bits` in every lane.
    fn konst(&mut self, bits: u32) -> R<u32> {
        if let Some(&(_, z)) = self.consts.iter().find(|(b, _)| *b == bits) {
            return Ok(z);
        }
        let z = self.perm()?;
        self.consts.push((bits, z));
        Ok(z)
    }

    /// A destination for an operation on `x` and `y`: an owned operand's register, or a new one.
    fn dest(&mut self, x: V, y: Option<V>) -> R<(u32, Option<V>)> {
        if let V::Z(r, true) = x {
            return Ok((r, y));
        }
        if let Some(V::Z(r, true)) = y {
            return Ok((r, Some(x)));
        }
        Ok((self.temp()?, None))
    }

    // ----- memory -----

    fn stream_of(&mut self, r: &'p Region, col: bool, dtype: DType) -> usize {
        if let Some(i) = self
            .streams
            .iter()
            .position(|s| s.dst.is_none() && s.col == col && s.dtype == dtype && same_window(s.region, r))
        {
            return i;
        }
        self.streams.push(Stream { region: r, col, dtype, dst: None });
        self.gpr.push(None);
        self.streams.len() - 1
    }

    /// The address of the group's first element of stream `s`.
    fn mem(&mut self, s: usize) -> R<AsmMemoryOperand> {
        let scale = if self.streams[s].dtype == DType::F32 { 4 } else { 2 };
        let g = match self.gpr[s] {
            Some(g) => GPRS[g],
            None if self.gprs_used < GPRS.len() => {
                self.gpr[s] = Some(self.gprs_used);
                self.gprs_used += 1;
                GPRS[self.gprs_used - 1]
            }
            None => {
                self.a.mov(r10, qword_ptr(rdi + 8 * s as i32))?;
                r10
            }
        };
        Ok(g + rcx * scale)
    }

    fn load(&mut self, s: usize) -> R<u32> {
        let d = self.temp()?;
        let m = self.mem(s)?;
        let dz = if self.masked { Z[d as usize].k1().z() } else { Z[d as usize] };
        match self.streams[s].dtype {
            DType::F32 => self.a.vmovups(dz, zmmword_ptr(m))?,
            _ => {
                self.a.vpmovzxwd(dz, ymmword_ptr(m))?;
                self.a.vpslld(Z[d as usize], Z[d as usize], 16)?;
            }
        }
        Ok(d)
    }

    fn store(&mut self, i: usize, z: u32) -> R<()> {
        match self.stmts[i].dtype {
            DType::F32 => {
                let m = self.mem(i)?;
                let p = if self.masked { zmmword_ptr(m).k1() } else { zmmword_ptr(m) };
                self.a.vmovups(p, Z[z as usize])?;
            }
            _ => {
                let t = self.bf16_bits(z)?;
                let m = self.mem(i)?;
                let p = if self.masked { ymmword_ptr(m).k1() } else { ymmword_ptr(m) };
                self.a.vpmovdw(p, Z[t as usize])?;
                self.free_z(t);
            }
        }
        Ok(())
    }

    /// The bf16 bits of `v`'s lanes (in the low halves), rounded to nearest-even with a quiet NaN for a NaN:
    /// `bf16_bits_x4`'s integer operations.
    fn bf16_bits(&mut self, v: u32) -> R<u32> {
        let one = self.konst(1)?;
        let bias = self.konst(0x7FFF)?;
        let q = self.konst(0x40)?;
        let (t, u, k) = (self.temp()?, self.temp()?, self.ktemp()?);
        let (zv, zt, zu) = (Z[v as usize], Z[t as usize], Z[u as usize]);
        self.a.vpsrld(zt, zv, 16)?;
        self.a.vpandd(zt, zt, Z[one as usize])?;
        self.a.vpaddd(zt, zt, Z[bias as usize])?;
        self.a.vpaddd(zt, zt, zv)?;
        self.a.vpsrld(zt, zt, 16)?;
        self.a.vcmpps(KR[k as usize], zv, zv, CMP_UNORD_Q)?;
        self.a.vpsrld(zu, zv, 16)?;
        self.a.vpord(zk(zt, k), zu, Z[q as usize])?;
        self.free_z(u);
        self.free_k(k);
        Ok(t)
    }

    // ----- expressions -----

    fn ty(&self, e: &VExpr) -> R<Ty> {
        ty_of(self.prog, self.l, e).ok_or(Fail)
    }

    fn zval(&mut self, e: &'p VExpr) -> R<V> {
        match self.eval(e)? {
            v @ V::Z(..) => Ok(v),
            V::K(..) => Err(Fail),
        }
    }

    fn kval(&mut self, e: &'p VExpr) -> R<V> {
        match self.eval(e)? {
            v @ V::K(..) => Ok(v),
            V::Z(..) => Err(Fail),
        }
    }

    fn eval(&mut self, e: &'p VExpr) -> R<V> {
        if var_of(e) != Var::Elem {
            // `lower` hoists the topmost row-invariant node of each path out of the column loop unless it
            // divides; its value comes in `args`.
            if has_div(e) || !matches!(self.ty(e)?, Ty::F | Ty::I) {
                return Err(Fail);
            }
            if let Some(&(_, z)) = self.scalars.iter().find(|(x, _)| std::ptr::eq(*x, e)) {
                return Ok(V::Z(z, false));
            }
            let z = self.perm()?;
            self.scalars.push((e, z));
            return Ok(V::Z(z, false));
        }
        match e {
            VExpr::Read(r) | VExpr::ReadCol(r) => {
                if self.ty(e)? != Ty::F {
                    return Err(Fail);
                }
                let col = matches!(e, VExpr::ReadCol(_));
                if !col {
                    if let Some(&(_, v)) = self.made.iter().rev().find(|(w, _)| same_window(w, r)) {
                        let V::Z(z, _) = v else { return Err(Fail) };
                        return Ok(V::Z(z, false));
                    }
                }
                let dtype = match region_dtype(self.prog, self.l, r) {
                    Some(d @ (DType::F32 | DType::BF16)) => d,
                    _ => return Err(Fail),
                };
                let s = self.stream_of(r, col, dtype);
                if let Some(&(_, z)) = self.cache.iter().find(|(x, _)| *x == s) {
                    return Ok(V::Z(z, false));
                }
                let z = self.load(s)?;
                self.cache.push((s, z));
                Ok(V::Z(z, false))
            }
            VExpr::Unary(UnOp::Not, a) => {
                let a = self.kval(a)?;
                let (V::K(ka, _), d) = (a, self.ktemp()?) else { return Err(Fail) };
                self.a.knotw(KR[d as usize], KR[ka as usize])?;
                self.release(a);
                Ok(V::K(d, true))
            }
            VExpr::Unary(op, a) => {
                let a = self.zval(a)?;
                self.unary(*op, a)
            }
            VExpr::Binary(op, x, y) => match self.ty(x)? {
                Ty::I => Err(Fail),
                Ty::B => {
                    let (a, b) = (self.kval(x)?, self.kval(y)?);
                    let (V::K(ka, _), V::K(kb, _)) = (a, b) else { return Err(Fail) };
                    let d = self.ktemp()?;
                    let (kd, ka, kb) = (KR[d as usize], KR[ka as usize], KR[kb as usize]);
                    match op {
                        BinOp::Eq => self.a.kxnorw(kd, ka, kb)?,
                        BinOp::Ne => self.a.kxorw(kd, ka, kb)?,
                        BinOp::And => self.a.kandw(kd, ka, kb)?,
                        BinOp::Or => self.a.korw(kd, ka, kb)?,
                        _ => return Err(Fail),
                    }
                    self.release(a);
                    self.release(b);
                    Ok(V::K(d, true))
                }
                Ty::F => {
                    let (a, b) = (self.zval(x)?, self.zval(y)?);
                    self.binary(*op, a, b)
                }
            },
            VExpr::Select(c, x, y) => {
                if self.ty(x)? != Ty::F {
                    return Err(Fail);
                }
                let m = self.kval(c)?;
                let (a, b) = (self.zval(x)?, self.zval(y)?);
                let (V::K(k, _), V::Z(za, _), V::Z(zb, _)) = (m, a, b) else { return Err(Fail) };
                let d = self.temp()?;
                // `vblendmps d{k}, b, a`: a where k, else b.
                self.a.vblendmps(zk(Z[d as usize], k), Z[zb as usize], Z[za as usize])?;
                for v in [m, a, b] {
                    self.release(v);
                }
                Ok(V::Z(d, true))
            }
            VExpr::Cast(to, a) => match (to, self.ty(a)?) {
                (DType::F32, Ty::F) => self.zval(a),
                (DType::BF16, Ty::F) => {
                    let v = self.zval(a)?;
                    let V::Z(z, _) = v else { return Err(Fail) };
                    let t = self.bf16_bits(z)?;
                    self.release(v);
                    self.a.vpslld(Z[t as usize], Z[t as usize], 16)?;
                    Ok(V::Z(t, true))
                }
                (DType::F32 | DType::BF16, Ty::B) => {
                    let m = self.kval(a)?;
                    let V::K(k, _) = m else { return Err(Fail) };
                    let one = self.konst(1.0f32.to_bits())?;
                    let d = self.temp()?;
                    self.a.vmovaps(zk(Z[d as usize], k).z(), Z[one as usize])?;
                    self.release(m);
                    Ok(V::Z(d, true))
                }
                (DType::Bool, Ty::F) => {
                    let v = self.zval(a)?;
                    let V::Z(z, _) = v else { return Err(Fail) };
                    let zero = self.konst(0)?;
                    let k = self.ktemp()?;
                    self.a.vcmpps(KR[k as usize], Z[z as usize], Z[zero as usize], CMP_NEQ_UQ)?;
                    self.release(v);
                    Ok(V::K(k, true))
                }
                (DType::Bool, Ty::B) => self.kval(a),
                _ => Err(Fail),
            },
            _ => Err(Fail),
        }
    }

    fn unary(&mut self, op: UnOp, a: V) -> R<V> {
        let V::Z(za, _) = a else { return Err(Fail) };
        let xa = Z[za as usize];
        match op {
            UnOp::Neg | UnOp::Abs => {
                let c = self.konst(if op == UnOp::Neg { 0x8000_0000 } else { 0x7FFF_FFFF })?;
                let (d, _) = self.dest(a, None)?;
                if op == UnOp::Neg {
                    self.a.vpxord(Z[d as usize], xa, Z[c as usize])?;
                } else {
                    self.a.vpandd(Z[d as usize], xa, Z[c as usize])?;
                }
                Ok(V::Z(d, true))
            }
            UnOp::Sqrt => {
                let (d, _) = self.dest(a, None)?;
                self.a.vsqrtps(Z[d as usize], xa)?;
                Ok(V::Z(d, true))
            }
            UnOp::Floor | UnOp::Ceil => {
                let (d, _) = self.dest(a, None)?;
                self.a.vrndscaleps(Z[d as usize], xa, if op == UnOp::Floor { 0x09 } else { 0x0A })?;
                Ok(V::Z(d, true))
            }
            UnOp::Rsqrt => {
                // `1 / sqrt(a)`, two roundings, as the 128-bit code.
                let one = self.konst(1.0f32.to_bits())?;
                let (d, _) = self.dest(a, None)?;
                self.a.vsqrtps(Z[d as usize], xa)?;
                self.a.vdivps(Z[d as usize], Z[one as usize], Z[d as usize])?;
                Ok(V::Z(d, true))
            }
            UnOp::Relu => {
                // `a > 0 || a is NaN ? a : 0`.
                let zero = self.konst(0)?;
                let (k, kn) = (self.ktemp()?, self.ktemp()?);
                self.a.vcmpps(KR[k as usize], xa, Z[zero as usize], CMP_GT_OQ)?;
                self.a.vcmpps(KR[kn as usize], xa, xa, CMP_UNORD_Q)?;
                self.a.korw(KR[k as usize], KR[k as usize], KR[kn as usize])?;
                let (d, _) = self.dest(a, None)?;
                self.a.vmovaps(zk(Z[d as usize], k).z(), xa)?;
                self.free_k(k);
                self.free_k(kn);
                Ok(V::Z(d, true))
            }
            _ => Err(Fail),
        }
    }

    fn binary(&mut self, op: BinOp, a: V, b: V) -> R<V> {
        let (V::Z(za, _), V::Z(zb, _)) = (a, b) else { return Err(Fail) };
        let (xa, xb) = (Z[za as usize], Z[zb as usize]);
        let cmp = match op {
            BinOp::Eq => Some(CMP_EQ_OQ),
            BinOp::Ne => Some(CMP_NEQ_UQ),
            BinOp::Lt => Some(CMP_LT_OQ),
            BinOp::Le => Some(CMP_LE_OQ),
            BinOp::Gt => Some(CMP_GT_OQ),
            BinOp::Ge => Some(CMP_GE_OQ),
            _ => None,
        };
        if let Some(p) = cmp {
            let k = self.ktemp()?;
            self.a.vcmpps(KR[k as usize], xa, xb, p)?;
            self.release(a);
            self.release(b);
            return Ok(V::K(k, true));
        }
        match op {
            BinOp::Add | BinOp::Sub | BinOp::Mul | BinOp::Div => {
                let (d, other) = self.dest(a, Some(b))?;
                let xd = Z[d as usize];
                match op {
                    BinOp::Add => self.a.vaddps(xd, xa, xb)?,
                    BinOp::Sub => self.a.vsubps(xd, xa, xb)?,
                    BinOp::Mul => self.a.vmulps(xd, xa, xb)?,
                    _ => self.a.vdivps(xd, xa, xb)?,
                }
                if let Some(o) = other {
                    self.release(o);
                }
                Ok(V::Z(d, true))
            }
            BinOp::Min | BinOp::Max => {
                // `nan_min`/`nan_max`: `b < a ? b : a` (`b > a`), then `a + b` where either is NaN.
                let d = self.temp()?;
                let k = self.ktemp()?;
                let (xd, kk) = (Z[d as usize], KR[k as usize]);
                self.a.vcmpps(kk, xb, xa, if op == BinOp::Min { CMP_LT_OQ } else { CMP_GT_OQ })?;
                self.a.vblendmps(zk(xd, k), xa, xb)?;
                self.a.vcmpps(kk, xa, xb, CMP_UNORD_Q)?;
                self.a.vaddps(zk(xd, k), xa, xb)?;
                self.free_k(k);
                self.release(a);
                self.release(b);
                Ok(V::Z(d, true))
            }
            _ => Err(Fail),
        }
    }
}

/// The routine's instructions, one a line (AT&T syntax, offsets from its start), for `kc build --emit asm`.
pub(crate) fn disassemble(code: &[u8]) -> String {
    use iced_x86::{Decoder, DecoderOptions, Formatter, GasFormatter};
    let mut d = Decoder::with_ip(64, code, 0, DecoderOptions::NONE);
    let mut f = GasFormatter::new();
    let mut out = String::new();
    for ins in &mut d {
        let mut text = String::new();
        f.format(&ins, &mut text);
        out.push_str(&format!("  {:4x}: {text}\n", ins.ip()));
    }
    out
}

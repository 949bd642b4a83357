//! Calibration of the cycle model (`kc_ir::cost`) and the built-in `ascend910b` target against the
//! published 910B figures (`shared/design/npu-model.md`, "Throughput"): micro-kernels built by hand as
//! tile programs — a single mmad of several shapes, vector ops of several lengths, copies of several sizes
//! on each path — whose estimates must come within 10% of what the published numbers give.
//!
//! The published figures are written here as literals on purpose: the point is to check the target file and
//! the model against the documentation, not against themselves.
//!
//! How a single-statement program is charged: the scalar unit issues every statement, spending
//! `SCALAR_ISSUE` (1 cycle) on it, and the statement's pipe starts once it is issued. A launch of one
//! statement therefore lasts `1 + the statement's cycles`; [`measure`] checks in the recorded timeline that
//! the statement's slice spans exactly `[1, launch cycles]` and returns the statement's own cycles (the
//! launch's minus the one issue cycle), which is what the published per-instruction figures describe.

use kc_ir::cost::timeline::Timeline;
use kc_ir::cost::{estimate, Estimate};
use kc_ir::graph::{BinOp, UnOp};
use kc_ir::report::IntData;
use kc_ir::target::Target;
use kc_ir::tile::*;
use kc_ir::DType;
use std::collections::BTreeMap;

// ----- the published 910B figures (npu-model.md), as literals -----

/// Clock, GHz.
const CLOCK_GHZ: f64 = 1.85;
/// Cube peak: MACs per cycle (one 16×16×16 fractal).
const CUBE_MACS: f64 = 4096.0;
/// Vector: bytes per repeat, cycles per repeat (fast ops), slow-op factor (exp, sqrt, f32 div), start-up
/// cycles per instruction, repeats per instruction.
const REPEAT_BYTES: f64 = 256.0;
const CYCLES_PER_REPEAT: f64 = 2.0;
const SLOW_FACTOR: f64 = 2.0;
const STARTUP: f64 = 3.0;
const MAX_REPEATS: f64 = 255.0;
/// The scalar unit's issue cycle the model spends on each statement (`SCALAR_ISSUE` in cost/mod.rs).
const ISSUE: f64 = 1.0;
/// Accepted relative error.
const TOL: f64 = 0.10;

fn target() -> Target {
    Target::builtin("ascend910b").expect("the built-in 910B target parses")
}

fn c(v: i64) -> SExpr {
    SExpr::Const(v)
}

fn gm(t: u32, offset: SExpr, ld: i64) -> Region {
    Region { loc: Loc::Gm(TensorId(t)), offset, row_stride: c(ld) }
}

fn buf(b: u32, slot: i64, ld: i64) -> Region {
    Region { loc: Loc::Buf { buf: BufId(b), slot: c(slot) }, offset: c(0), row_stride: c(ld) }
}

fn buffer(name: &str, mem: Mem, dtype: DType, shape: &[u64], slots: u32, offset: u64) -> Buffer {
    let layout = match mem {
        Mem::L1 | Mem::L0C => Layout::NZ,
        Mem::L0A => Layout::ZZ,
        Mem::L0B => Layout::ZN,
        Mem::UB => Layout::ND,
    };
    Buffer { name: name.to_string(), mem, dtype, shape: shape.to_vec(), slots, layout, offset }
}

fn tensor(name: &str, dtype: DType, shape: &[u64], role: TensorRole) -> GmTensor {
    GmTensor { name: name.to_string(), dtype, shape: shape.to_vec(), role }
}

/// A program of one launch on one core of `unit` (cube: 1 cube core, vector: 1 vector core).
fn program(unit: Unit, tensors: Vec<GmTensor>, buffers: Vec<Buffer>, stmts: Vec<Stmt>) -> TileProgram {
    program_on(unit, 1, tensors, buffers, stmts, 0)
}

fn program_on(
    unit: Unit,
    cores: u32,
    tensors: Vec<GmTensor>,
    buffers: Vec<Buffer>,
    stmts: Vec<Stmt>,
    svars: usize,
) -> TileProgram {
    let cube = unit == Unit::Cube;
    let launch = Launch {
        name: "calib".to_string(),
        unit,
        cube_cores: if cube { cores } else { 0 },
        vector_cores: if cube { 0 } else { cores },
        buffers,
        svars: (0..svars).map(|i| format!("s{i}")).collect(),
        cube: if cube { stmts.clone() } else { vec![] },
        vector: if cube { vec![] } else { stmts },
    };
    TileProgram {
        kernel: "calib".to_string(),
        target: "ascend910b".to_string(),
        dims: BTreeMap::new(),
        tensors,
        launches: vec![launch],
    }
}

/// Verifies `p` and estimates it, recording the timeline.
fn run(p: &TileProgram) -> (Estimate, Timeline) {
    let t = target();
    if let Err(errs) = verify::verify(p, &t) {
        let msgs: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        panic!("the micro-kernel is not a legal tile program:\n{}", msgs.join("\n"));
    }
    let (est, tl) = estimate(p, &t, &IntData::new(), true).expect("the estimate runs");
    (est, tl.expect("recorded"))
}

/// The cycles of the one statement of a single-statement program: the launch's cycles minus the scalar
/// unit's issue cycle, checked against the statement's slice in the timeline.
fn measure(p: &TileProgram) -> f64 {
    let (est, tl) = run(p);
    let cycles = est.launches[0].cycles;
    let work: Vec<_> = tl.slices.iter().filter(|s| s.pipe != Pipe::S).collect();
    assert_eq!(work.len(), 1, "one statement, one slice: {work:?}");
    let s = work[0];
    assert!((s.start - ISSUE).abs() < 1e-9, "the statement starts once issued, at cycle {ISSUE}: {s:?}");
    assert!((s.end - cycles).abs() < 1e-9, "the launch ends with the statement: {s:?} vs {cycles}");
    cycles - ISSUE
}

fn within(measured: f64, expected: f64) -> bool {
    (measured / expected - 1.0).abs() <= TOL
}

/// One row of a calibration table: what, measured, expected (same unit).
struct Row {
    what: String,
    unit: &'static str,
    measured: f64,
    expected: f64,
}

/// Prints the table (visible with `--nocapture`) and asserts every row is within 10%.
fn check(title: &str, rows: &[Row]) {
    println!("{title}");
    println!("{:<48} {:>12} {:>12} {:>8}", "case", "measured", "published", "error");
    for r in rows {
        println!(
            "{:<48} {:>12.2} {:>12.2} {:>7.1}%  {}",
            r.what,
            r.measured,
            r.expected,
            (r.measured / r.expected - 1.0) * 100.0,
            r.unit
        );
    }
    let off: Vec<String> = rows
        .iter()
        .filter(|r| !within(r.measured, r.expected))
        .map(|r| format!("{}: {:.2} {} vs published {:.2}", r.what, r.measured, r.unit, r.expected))
        .collect();
    assert!(off.is_empty(), "off by more than 10%:\n{}", off.join("\n"));
}

// ----- 1. the cube -----

/// A single bf16 mmad `m × k × n` (L0A zZ, L0B zN, L0C NZ f32) on one cube core.
fn mmad(m: u64, k: u64, n: u64) -> TileProgram {
    let buffers = vec![
        buffer("a", Mem::L0A, DType::BF16, &[m, k], 1, 0),
        buffer("b", Mem::L0B, DType::BF16, &[k, n], 1, 0),
        buffer("c", Mem::L0C, DType::F32, &[m, n], 1, 0),
    ];
    let (mi, ki, ni) = (m as i64, k as i64, n as i64);
    let s = Stmt::Mmad {
        a: buf(0, 0, ki),
        b: buf(1, 0, ni),
        c: buf(2, 0, ni),
        m: c(mi),
        k: c(ki),
        n: c(ni),
        accumulate: false,
    };
    program(Unit::Cube, vec![], buffers, vec![s])
}

#[test]
fn mmad_throughput_matches_the_published_efficiency() {
    // (m, k, n, published efficiency at that n).
    let cases = [
        (16, 16, 16, 0.50),
        (128, 128, 128, 0.90),
        (16, 16, 640, 0.98),
        // The largest m = k that fits L0B (48·640·2 = 60 KiB ≤ 64 KiB) and L0C (48·640·4 = 120 KiB ≤ 128 KiB).
        (48, 48, 640, 0.98),
    ];
    let mut rows = Vec::new();
    for (m, k, n, eff) in cases {
        let cycles = measure(&mmad(m, k, n));
        let macs = (m * k * n) as f64;
        rows.push(Row {
            what: format!("mmad bf16 {m}x{k}x{n}: cycles"),
            unit: "cycles",
            measured: cycles,
            expected: macs / (CUBE_MACS * eff),
        });
        rows.push(Row {
            what: format!("mmad bf16 {m}x{k}x{n}: MAC/cycle"),
            unit: "MAC/cycle",
            measured: macs / cycles,
            expected: CUBE_MACS * eff,
        });
    }
    check("cube mmad (4096 MAC/cycle × efficiency at n)", &rows);
}

// ----- 2. the vector unit -----

/// `dst = a + b` (or `dst = exp(a)`) over one row of `len` elements of `dtype`, in place in `a` (the UB
/// holds two f32 operands of up to 92 KiB each: 184 KiB usable).
fn vector_op(len: u64, dtype: DType, slow: bool) -> TileProgram {
    let bytes = len * dtype.size_bytes() as u64;
    let mut buffers = vec![buffer("a", Mem::UB, dtype, &[1, len], 1, 0)];
    let a = || VExpr::Read(buf(0, 0, len as i64));
    let expr = if slow {
        VExpr::Unary(UnOp::Exp, Box::new(a()))
    } else if bytes * 2 <= 184 * 1024 {
        buffers.push(buffer("b", Mem::UB, dtype, &[1, len], 1, bytes.div_ceil(32) * 32));
        VExpr::Binary(BinOp::Add, Box::new(a()), Box::new(VExpr::Read(buf(1, 0, len as i64))))
    } else {
        // Too large for two operands: a + a.
        VExpr::Binary(BinOp::Add, Box::new(a()), Box::new(a()))
    };
    let s = Stmt::Vector { dst: buf(0, 0, len as i64), rows: c(1), cols: c(len as i64), expr };
    program(Unit::Vector, vec![], buffers, vec![s])
}

/// The published cost of one vector op over `bytes`: its 256-byte repeats at 2 cycles each (4 for a slow
/// op), plus 3 cycles of start-up for each instruction of at most 255 repeats.
fn published_vector_cycles(bytes: u64, slow: bool) -> f64 {
    let repeats = (bytes as f64 / REPEAT_BYTES).ceil();
    let instrs = (repeats / MAX_REPEATS).ceil();
    repeats * CYCLES_PER_REPEAT * if slow { SLOW_FACTOR } else { 1.0 } + STARTUP * instrs
}

#[test]
fn vector_ops_run_at_the_published_rate() {
    // f32 lengths: one full instruction (255 repeats), 256 repeats, and the largest pair of operands UB
    // holds (2 × 92 KiB); 65536 elements do not fit UB as f32 (256 KiB), so that length is run as bf16
    // (128 KiB, `a + a`): 256 B per repeat either way.
    let cases = [(64 * 255, DType::F32), (16384, DType::F32), (23552, DType::F32), (65536, DType::BF16)];
    let mut rows = Vec::new();
    for slow in [false, true] {
        let op = if slow { "exp" } else { "add" };
        for (len, dtype) in cases {
            let bytes = len * dtype.size_bytes() as u64;
            let cycles = measure(&vector_op(len, dtype, slow));
            rows.push(Row {
                what: format!("{op} {dtype:?} x{len}: cycles"),
                unit: "cycles",
                measured: cycles,
                expected: published_vector_cycles(bytes, slow),
            });
            rows.push(Row {
                what: format!("{op} {dtype:?} x{len}: B/cycle"),
                unit: "B/cycle",
                measured: bytes as f64 / cycles,
                // ≈ 128 B/cycle for add, half that for exp.
                expected: REPEAT_BYTES / CYCLES_PER_REPEAT / if slow { SLOW_FACTOR } else { 1.0 },
            });
        }
    }
    check("vector ops (256 B per repeat, 2 cycles per repeat, exp at half, 3 cycles start-up)", &rows);
}

#[test]
fn a_multiply_add_is_one_instruction() {
    use kc_ir::cost::vector_ops;
    let region = |b: u32| Region {
        loc: Loc::Buf { buf: BufId(b), slot: SExpr::Const(0) },
        offset: SExpr::Const(0),
        row_stride: SExpr::Const(64),
    };
    let tile = |b: u32| Box::new(VExpr::Read(region(b)));
    let row = |b: u32| Box::new(VExpr::ReadRow(region(b)));
    let bin = |op, a, b| Box::new(VExpr::Binary(op, a, b));
    let ops = |e: Box<VExpr>| {
        let o = vector_ops(&e);
        (o.fast, o.slow)
    };
    // x·y + z and z + x·y: one fused instruction (Ascend's FusedMulAdd / MulAddDst / Axpy).
    assert_eq!(ops(bin(BinOp::Add, bin(BinOp::Mul, tile(0), row(1)), tile(2))), (1, 0));
    assert_eq!(ops(bin(BinOp::Add, tile(2), bin(BinOp::Mul, tile(0), tile(1)))), (1, 0));
    // x·y − m with m per row: the negation of m is hoisted, one instruction; with m a tile, two.
    assert_eq!(ops(bin(BinOp::Sub, bin(BinOp::Mul, tile(0), tile(1)), row(2))), (1, 0));
    assert_eq!(ops(bin(BinOp::Sub, bin(BinOp::Mul, tile(0), tile(1)), tile(2))), (2, 0));
    // z − k·x with k per row: one; a plain difference or product: one each; exp(x − m): one plus a slow one.
    assert_eq!(ops(bin(BinOp::Sub, tile(2), bin(BinOp::Mul, row(0), tile(1)))), (1, 0));
    assert_eq!(ops(bin(BinOp::Sub, tile(0), row(1))), (1, 0));
    assert_eq!(ops(Box::new(VExpr::Unary(UnOp::Exp, bin(BinOp::Sub, tile(0), row(1))))), (1, 1));
    // Nested: (a·b + c)·d + e is two fused instructions.
    let inner = bin(BinOp::Add, bin(BinOp::Mul, tile(0), tile(1)), tile(2));
    assert_eq!(ops(bin(BinOp::Add, bin(BinOp::Mul, inner, tile(3)), tile(4))), (2, 0));
}

#[test]
fn a_256th_repeat_takes_a_second_instruction() {
    // 255 repeats are one instruction; the 256th repeat is a second one, with its own start-up.
    let r255 = measure(&vector_op(64 * 255, DType::F32, false));
    let r256 = measure(&vector_op(64 * 256, DType::F32, false));
    assert!((r255 - (255.0 * CYCLES_PER_REPEAT + STARTUP)).abs() < 1e-9, "255 repeats: {r255}");
    assert!((r256 - r255 - (CYCLES_PER_REPEAT + STARTUP)).abs() < 1e-9, "255 → 256 repeats: {r255} → {r256}");
    // Going from 254 to 255 repeats costs only the repeat.
    let r254 = measure(&vector_op(64 * 254, DType::F32, false));
    assert!((r255 - r254 - CYCLES_PER_REPEAT).abs() < 1e-9, "254 → 255 repeats: {r254} → {r255}");
}

// ----- 3. copies -----

/// One copy of a `rows × cols` tile of `dtype` from `from` to `to` (either may be GM), on `pipe`.
fn copy(from: Option<Mem>, to: Option<Mem>, pipe: Pipe, dtype: DType, rows: u64, cols: u64) -> TileProgram {
    let mem = from.or(to).expect("a copy touches a buffer");
    let unit = if mem.on_cube() { Unit::Cube } else { Unit::Vector };
    let mut buffers = Vec::new();
    let mut tensors = Vec::new();
    let mut region = |m: Option<Mem>, name: &str, role: TensorRole| match m {
        Some(m) => {
            buffers.push(buffer(name, m, dtype, &[rows, cols], 1, 0));
            buf(buffers.len() as u32 - 1, 0, cols as i64)
        }
        None => {
            tensors.push(tensor(name, dtype, &[rows, cols], role));
            gm(tensors.len() as u32 - 1, c(0), cols as i64)
        }
    };
    let src = region(from, "src", TensorRole::Param(0));
    let dst = region(to, "dst", TensorRole::Output(0));
    let s = Stmt::Copy { pipe, src, dst, rows: c(rows as i64), cols: c(cols as i64) };
    program(unit, tensors, buffers, vec![s])
}

/// GB/s of `bytes` moved in `cycles` at the published clock.
fn gb_s(bytes: u64, cycles: f64) -> f64 {
    bytes as f64 / (cycles / (CLOCK_GHZ * 1e9)) / 1e9
}

#[test]
fn copies_move_at_the_published_rates() {
    use DType::{BF16, F32};
    // (what, from, to, pipe, dtype, rows, cols, published GB/s, published peak B/cycle).
    let cases = [
        ("GM->L1 1 KiB", None, Some(Mem::L1), Pipe::Mte2, BF16, 16, 32, 10.0, 256.0),
        ("GM->L1 176 KiB", None, Some(Mem::L1), Pipe::Mte2, BF16, 176, 512, 270.0, 256.0),
        ("GM->UB 184 KiB", None, Some(Mem::UB), Pipe::Mte2, F32, 184, 256, 190.0, 128.0),
        // UB → GM: ≈ 100–110 GB/s, taken as 105.
        ("UB->GM 64 KiB", Some(Mem::UB), None, Pipe::Mte3, F32, 64, 256, 105.0, 128.0),
        ("UB->GM 184 KiB", Some(Mem::UB), None, Pipe::Mte3, F32, 184, 256, 105.0, 128.0),
        ("L1->L0A 32 KiB", Some(Mem::L1), Some(Mem::L0A), Pipe::Mte1, BF16, 128, 128, 437.0, 256.0),
        ("L1->L0B 32 KiB", Some(Mem::L1), Some(Mem::L0B), Pipe::Mte1, BF16, 128, 128, 220.0, 128.0),
        ("L0C->GM (FIX) 64 KiB", Some(Mem::L0C), None, Pipe::Fix, F32, 128, 128, 200.0, 128.0),
    ];
    let mut rows = Vec::new();
    for (what, from, to, pipe, dtype, r, cc, published, peak) in cases {
        let bytes = r * cc * dtype.size_bytes() as u64;
        let cycles = measure(&copy(from, to, pipe, dtype, r, cc));
        let got = gb_s(bytes, cycles);
        // No path beats its published peak.
        assert!(bytes as f64 / cycles <= peak + 1e-9, "{what}: {} B/cycle over the peak {peak}", bytes as f64 / cycles);
        rows.push(Row { what: what.to_string(), unit: "GB/s", measured: got, expected: published });
    }
    check("copies (one core, GB/s at 1.85 GHz)", &rows);
}

// ----- 4. flags make the waits -----

/// The MTE2 and V instructions of a timeline as (start, end), in order. A run of identical back-to-back
/// instructions is recorded as one slice of `count` instructions; the copies here are all the same size,
/// so such a run is split evenly.
fn intervals(tl: &Timeline, pipe: Pipe) -> Vec<(f64, f64)> {
    let mut out = Vec::new();
    for s in tl.slices.iter().filter(|s| s.pipe == pipe) {
        let d = (s.end - s.start) / s.count as f64;
        out.extend((0..s.count).map(|i| (s.start + d * i as f64, s.start + d * (i + 1) as f64)));
    }
    out
}

/// Two 32 KiB tiles copied GM → UB and exponentiated into `y`: double-buffered (`x` has two slots, the
/// second copy is issued before the first tile's vector op) or single-buffered (one slot: the second copy
/// waits on a V → MTE2 flag for the vector op to have read the slot).
fn two_tiles(double: bool) -> TileProgram {
    let (rows, cols) = (32i64, 256i64);
    let tile = rows * cols;
    let slots = if double { 2 } else { 1 };
    let buffers = vec![
        buffer("x", Mem::UB, DType::F32, &[32, 256], slots, 0),
        buffer("y", Mem::UB, DType::F32, &[32, 256], 2, 65536),
    ];
    let tensors = vec![tensor("in", DType::F32, &[64, 256], TensorRole::Param(0))];
    let load = |i: i64, slot: i64| Stmt::Copy {
        pipe: Pipe::Mte2,
        src: gm(0, c(i * tile), cols),
        dst: buf(0, slot, cols),
        rows: c(rows),
        cols: c(cols),
    };
    let exp = |slot: i64, out: i64| Stmt::Vector {
        dst: buf(1, out, cols),
        rows: c(rows),
        cols: c(cols),
        expr: VExpr::Unary(UnOp::Exp, Box::new(VExpr::Read(buf(0, slot, cols)))),
    };
    let set = |from, to, event| Stmt::SetFlag { from, to, event };
    let wait = |from, to, event| Stmt::WaitFlag { from, to, event };
    let stmts = if double {
        vec![
            load(0, 0),
            set(Pipe::Mte2, Pipe::V, 0),
            load(1, 1),
            set(Pipe::Mte2, Pipe::V, 1),
            wait(Pipe::Mte2, Pipe::V, 0),
            exp(0, 0),
            wait(Pipe::Mte2, Pipe::V, 1),
            exp(1, 1),
        ]
    } else {
        vec![
            load(0, 0),
            set(Pipe::Mte2, Pipe::V, 0),
            wait(Pipe::Mte2, Pipe::V, 0),
            exp(0, 0),
            set(Pipe::V, Pipe::Mte2, 0),
            wait(Pipe::V, Pipe::Mte2, 0),
            load(1, 0),
            set(Pipe::Mte2, Pipe::V, 0),
            wait(Pipe::Mte2, Pipe::V, 0),
            exp(0, 1),
        ]
    };
    program(Unit::Vector, tensors, buffers, stmts)
}

#[test]
fn double_buffering_overlaps_and_a_flag_serializes() {
    let (de, dt) = run(&two_tiles(true));
    let (copies, vecs) = (intervals(&dt, Pipe::Mte2), intervals(&dt, Pipe::V));
    assert_eq!((copies.len(), vecs.len()), (2, 2), "{dt:?}");
    // The first tile's exp waits for its copy only; the second copy runs meanwhile.
    assert!(vecs[0].0 >= copies[0].1 - 1e-9, "V starts after its tile arrived: {copies:?} {vecs:?}");
    assert!(copies[1].0 < vecs[0].1, "double-buffered: the second copy overlaps the first exp: {copies:?} {vecs:?}");
    assert!(vecs[1].0 >= copies[1].1 - 1e-9, "{copies:?} {vecs:?}");

    let (se, st) = run(&two_tiles(false));
    let (copies, vecs) = (intervals(&st, Pipe::Mte2), intervals(&st, Pipe::V));
    assert_eq!((copies.len(), vecs.len()), (2, 2), "{st:?}");
    assert!(copies[1].0 >= vecs[0].1 - 1e-9, "single-buffered: the second copy waits for the exp: {copies:?} {vecs:?}");
    assert!(vecs[1].0 >= copies[1].1 - 1e-9, "{copies:?} {vecs:?}");
    // The flags, not constants, make the difference: same work, less time when it overlaps.
    let (d, s) = (de.launches[0].cycles, se.launches[0].cycles);
    assert!(d < s, "double-buffered {d} cycles vs single-buffered {s}");
    println!("two 32 KiB tiles, copy + exp: double-buffered {d:.0} cycles, single-buffered {s:.0} cycles");
}

// ----- 5. the chip's shared GM bandwidth -----

/// `out = in` through UB on all 48 vector cores: each core streams 8 tiles of 128 KiB in and out, every
/// byte read once (so L2 does not help: 96 MiB of distinct data, each byte moved once).
fn stream_copy() -> TileProgram {
    let (cores, per_core, rows, cols) = (48i64, 8i64, 32i64, 1024i64);
    let total_rows = (cores * per_core * rows) as u64;
    let tensors = vec![
        tensor("in", DType::F32, &[total_rows, cols as u64], TensorRole::Param(0)),
        tensor("out", DType::F32, &[total_rows, cols as u64], TensorRole::Output(0)),
    ];
    let buffers = vec![buffer("x", Mem::UB, DType::F32, &[rows as u64, cols as u64], 1, 0)];
    let t = SExpr::Var(SVar(0));
    let at = SExpr::Bin(SBin::Mul, Box::new(t), Box::new(c(rows * cols)));
    let first = SExpr::Bin(SBin::Mul, Box::new(SExpr::Core), Box::new(c(per_core)));
    let body = vec![
        Stmt::Copy {
            pipe: Pipe::Mte2,
            src: gm(0, at.clone(), cols),
            dst: buf(0, 0, cols),
            rows: c(rows),
            cols: c(cols),
        },
        Stmt::SetFlag { from: Pipe::Mte2, to: Pipe::Mte3, event: 0 },
        Stmt::WaitFlag { from: Pipe::Mte2, to: Pipe::Mte3, event: 0 },
        Stmt::Copy { pipe: Pipe::Mte3, src: buf(0, 0, cols), dst: gm(1, at, cols), rows: c(rows), cols: c(cols) },
        Stmt::SetFlag { from: Pipe::Mte3, to: Pipe::Mte2, event: 0 },
        Stmt::WaitFlag { from: Pipe::Mte3, to: Pipe::Mte2, event: 0 },
    ];
    let stmts = vec![Stmt::For {
        var: SVar(0),
        lo: first.clone(),
        hi: SExpr::Bin(SBin::Add, Box::new(first), Box::new(c(per_core))),
        step: 1,
        body,
    }];
    program_on(Unit::Vector, cores as u32, tensors, buffers, stmts, 1)
}

#[test]
fn all_vector_cores_streaming_share_the_chips_gm_bandwidth() {
    // Published: HBM ≈ 1.6 TB/s for the whole chip; one core alone moves ≈ 190 GB/s in and ≈ 105 GB/s out,
    // so 48 cores would ask for far more.
    const CHIP_GB_S: f64 = 1600.0;
    let p = stream_copy();
    let (est, _) = run(&p);
    let l = &est.launches[0];
    let bytes = l.counts.gm_bytes_read + l.counts.gm_bytes_written;
    assert_eq!(bytes, 2 * 48 * 8 * 128 * 1024, "every byte read once and written once");
    // A core moves each tile in, then out: 2 bytes of GM traffic per byte of tile, at (bytes of traffic/s):
    let per_core = 2.0 / (1.0 / 190.0 + 1.0 / 105.0);
    assert!(48.0 * per_core > CHIP_GB_S, "the cores together ask for more than the chip has: {per_core} GB/s each");
    let got = est.gm_bytes_per_s() / 1e9;
    assert!(l.gm_dilation > 1.0, "the copies are slowed for the shared bandwidth: {}", l.gm_dilation);
    assert_eq!(l.bound(), "GM");
    check(
        "48 vector cores streaming GM -> UB -> GM",
        &[Row { what: "chip GM bandwidth".to_string(), unit: "GB/s", measured: got, expected: CHIP_GB_S }],
    );
    println!("gm_dilation {:.2}, {:.0} cycles", l.gm_dilation, l.cycles);
}

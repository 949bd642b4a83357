//! Target descriptions: the NPU model as plain data. A chip is a TOML file (`ir/targets/*.toml` are built
//! in); a new chip is a new file, not new code. [`Target::parse`] reads and validates one; the rest of the
//! compiler reads figures from it and never hard-codes them.

use serde::Deserialize;
use std::fmt;

/// The built-in targets, by name.
pub const BUILTIN: &[(&str, &str)] = &[
    ("ascend910b", include_str!("../targets/ascend910b.toml")),
    ("ascend950", include_str!("../targets/ascend950.toml")),
    ("host", include_str!("../targets/host.toml")),
];

/// The default target.
pub const DEFAULT: &str = "ascend910b";

/// The memories a target must describe, each per core except `gm` (global memory, shared).
pub const MEMORIES: &[&str] = &["gm", "l1", "l0a", "l0b", "l0c", "ub"];

/// The pipes (units) of a core.
pub const ENGINES: &[&str] = &["mte1", "mte2", "mte3", "fix"];

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub clock_ghz: f64,
    pub cube_cores: u32,
    pub vector_cores: u32,
    /// Global-memory bandwidth of the whole chip, shared by all cores.
    pub gm_bandwidth_gb_s: f64,
    /// The L2 cache in front of global memory, shared by all cores (bytes; 0: none). Data a launch reads
    /// again while its footprint fits here comes from L2, not HBM.
    #[serde(default)]
    pub l2_bytes: u64,
    /// The L2's bandwidth to all cores together (defaults to `gm_bandwidth_gb_s`).
    #[serde(default)]
    pub l2_bandwidth_gb_s: f64,
    /// The most candidate tilings of one matmul launch the tiler simulates (default 16). The host target
    /// spends less: its programs are compiled at run time, where compile time counts.
    #[serde(default)]
    pub tuning_simulations: Option<u32>,
    /// Elementwise launches give each core one contiguous run of chunks (core `i` takes chunks `i*k ..
    /// (i+1)*k`) instead of every `cores`-th chunk (default false). On the host a core is a thread's unit
    /// of work: a contiguous run is one sequential stream per tensor, which the CPU's prefetchers follow.
    /// The grouped matmul template does the same with its work items (a core's items are consecutive, so
    /// the n-blocks of a row tile share the packing of its rows), the matmul template with its output
    /// blocks (a core's blocks run along a row of C and share their rows of `a`), and the attention
    /// backward template with its units (a core's units share their `k`/`v` or `q`/`dout` windows).
    #[serde(default)]
    pub contiguous_chunks: bool,
    /// How many blocks ahead of its p·v products the score template's cube computes scores (the depth of
    /// its rings: one slot more; default 3). Deeper hides more of the cube-to-vector latency on an NPU;
    /// on the host every block in flight is cache footprint.
    #[serde(default)]
    pub score_lead: Option<u32>,
    /// The most rows of a grouped matmul's row tile (the grouped template, `moe_experts`; default 128; the
    /// tiler takes fewer where the tile's accumulators would not fit L0C, or their vector share UB). The
    /// row tiles of an expert share its weight tiles, so an expert with more rows than a tile streams its
    /// weights once per tile; on the host, where the experts have about 128 rows each, 128 split half of
    /// them into a full tile and a sliver.
    #[serde(default)]
    pub grouped_rows: Option<u32>,
    /// The largest square block of the attention backward template (`attention_bwd`; default 64, and 32 or
    /// 16 where 64 does not fit). Each block is a handful of `blk`-sized matmuls and a hand-off between the
    /// cube and the vector cores, so on the host, where a call and a hand-off have a fixed cost, larger
    /// blocks pay it less often.
    #[serde(default)]
    pub score_bwd_block: Option<u32>,
    /// The largest k step (`bk`) of the matmul template's base blocks (default 256; 512 is the other size
    /// tried). Each step is one mmad call on the host, whose matrix unit runs the whole step with its
    /// accumulators in tiles: a deeper step moves the f32 block of C through memory, and looks up and
    /// packs its operands, fewer times per FLOP. L0A and L0B must hold two slots of the deeper tiles.
    #[serde(default)]
    pub matmul_bk: Option<u32>,
    /// The most L0C slots the matmul template's candidates may take (default 2: the FixPipe copy of a block
    /// overlaps the next block's mmads). On the host there is no FixPipe to overlap: a second slot only
    /// doubles the accumulator block's footprint in the core's caches.
    #[serde(default)]
    pub matmul_l0c_slots: Option<u32>,
    /// The most bytes of buffers one block of the row-wise template (`rows`: softmax, normalizations) may
    /// take when it holds more than one row (default: all of UB). On the host the passes over a block read
    /// back what the pass before wrote (softmax's `exp` row, then its division), which a block of a few
    /// rows finds in L1 and L2 instead of further out.
    #[serde(default)]
    pub row_block_bytes: Option<u64>,
    /// The score template multiplies a diagonal block of the causal mask (one whose first row does not see
    /// all its columns) whole on the cube, and the vector cores mask the columns their rows do not see
    /// (default false: band by band, one band of rows per vector core, each only as wide as its rows see,
    /// which saves the NPU's cube the masked products). On the host the bands' sizes, assigned between the
    /// loads and the mmads, kept copy forwarding from reading K, V and P where they are: the whole block
    /// is one mmad that reads them in place.
    #[serde(default)]
    pub score_whole_diag: bool,
    /// The most key columns of the score template's cube tile (default 128). A block of the vector cores'
    /// columns is one or two cube tiles, each its own `q·kᵀ` and `p·v` mmads (`p·v` of the second
    /// accumulating onto the first's). On the host, whose L0 buffers are nominal (the mmads read their
    /// operands in place), one 256-column tile makes the block's `p·v` one mmad 256 deep: its f32
    /// accumulators go through memory once instead of being stored, loaded back and stored again.
    #[serde(default)]
    pub score_cube_cols: Option<u32>,
    /// The score template deals each cube core consecutive tasks (core `c` of `cubes` takes tasks `c·r ..
    /// (c+1)·r`, `r` rounds: one batch's i-blocks, then the next batch's, which shares its K and V when the
    /// heads are grouped; with the causal mask a batch's i-blocks from both ends in turn, the longest, the
    /// shortest, the next longest.., so that runs of equal length do nearly equal work) instead of every
    /// `cubes`-th task (default false: the cores at one time work on neighbouring i-blocks of the same
    /// batches, whose K and V an NPU's shared L2 holds once; with the mask the longest i-blocks first).
    /// On the host a thread runs one core's tasks after another and its mmad keeps the K and V blocks it
    /// packed (a few dozen: the blocks of one or two heads), which every `cubes`-th task would not find.
    #[serde(default)]
    pub score_blocked_tasks: bool,
    /// A matmul whose results are provably symmetric (`passes::symmetry`: `x @ transpose(x)`, `a @ a` with `a`
    /// symmetric, elementwise maps of them) computes the blocks on and above the diagonal only and writes
    /// each off-diagonal block a second time, transposed, in the mirrored place (default false: the NPU
    /// targets compute every block, their FixPipe and MTE3 copies do not transpose).
    #[serde(default)]
    pub symmetric_triangle: bool,
    pub memory: Vec<Memory>,
    pub cube: Cube,
    pub vector: Vector,
    pub path: Vec<Path>,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Memory {
    pub name: String,
    /// Bytes.
    pub capacity: u64,
    /// Bytes the runtime keeps for itself.
    #[serde(default)]
    pub reserved: u64,
    /// Address alignment in bytes (a power of two).
    pub align: u64,
}

impl Memory {
    /// The bytes a kernel may use.
    pub fn usable(&self) -> u64 {
        self.capacity - self.reserved
    }
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cube {
    /// The fractal shape of one cube instruction for 16-bit inputs.
    pub m: u32,
    pub k: u32,
    pub n: u32,
    pub macs_per_cycle: u32,
    /// (tile n, efficiency in (0, 1]) points, sorted by n, interpolated linearly, flat outside.
    pub efficiency: Vec<(f64, f64)>,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vector {
    pub repeat_bytes: u32,
    pub cycles_per_repeat: f64,
    /// How many times slower exp, sqrt and f32 division are.
    pub slow_op_factor: f64,
    pub startup_cycles: u32,
    pub max_repeats: u32,
}

/// A copy path: `engine` moves data from `from` to `to`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Path {
    pub from: String,
    pub to: String,
    pub engine: String,
    /// Peak bytes per cycle.
    pub bytes_per_cycle: u32,
    /// (bytes in one copy, GB/s per core) points, sorted by bytes, interpolated linearly, flat outside.
    pub curve: Vec<(f64, f64)>,
}

/// Why a target description is refused: the field and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetError {
    pub field: String,
    pub message: String,
}

impl fmt::Display for TargetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "`{}`: {}", self.field, self.message)
        }
    }
}

fn interp(points: &[(f64, f64)], x: f64) -> f64 {
    match points {
        [] => 0.0,
        [(_, y)] => *y,
        _ => {
            if x <= points[0].0 {
                return points[0].1;
            }
            for w in points.windows(2) {
                let ((x0, y0), (x1, y1)) = (w[0], w[1]);
                if x <= x1 {
                    return y0 + (y1 - y0) * (x - x0) / (x1 - x0);
                }
            }
            points[points.len() - 1].1
        }
    }
}

impl Target {
    /// A built-in target by name.
    pub fn builtin(name: &str) -> Option<Target> {
        BUILTIN.iter().find(|(n, _)| *n == name).and_then(|(_, text)| Target::parse(text).ok())
    }

    /// Parses and validates a target description; every problem is reported.
    pub fn parse(text: &str) -> Result<Target, Vec<TargetError>> {
        let t: Target = toml::from_str(text)
            .map_err(|e| vec![TargetError { field: String::new(), message: e.to_string().trim_end().to_string() }])?;
        let errs = t.validate();
        if errs.is_empty() {
            Ok(t)
        } else {
            Err(errs)
        }
    }

    fn validate(&self) -> Vec<TargetError> {
        let mut errs = Vec::new();
        let mut bad = |field: String, message: String| errs.push(TargetError { field, message });
        if self.name.is_empty() {
            bad("name".into(), "must not be empty".into());
        }
        if !(self.clock_ghz > 0.0 && self.clock_ghz < 100.0) {
            bad("clock_ghz".into(), format!("{} is not a plausible clock in GHz", self.clock_ghz));
        }
        if self.cube_cores == 0 || self.vector_cores == 0 {
            bad("cube_cores".into(), "a target needs at least one cube core and one vector core".into());
        }
        if !self.vector_cores.is_multiple_of(self.cube_cores.max(1)) {
            bad(
                "vector_cores".into(),
                format!("{} vector cores do not divide evenly among {} cube cores", self.vector_cores, self.cube_cores),
            );
        }
        if self.gm_bandwidth_gb_s <= 0.0 {
            bad("gm_bandwidth_gb_s".into(), "must be positive".into());
        }
        if self.l2_bandwidth_gb_s < 0.0 || !self.l2_bandwidth_gb_s.is_finite() {
            bad("l2_bandwidth_gb_s".into(), "must be a non-negative number".into());
        }
        for (i, m) in self.memory.iter().enumerate() {
            let f = |x: &str| format!("memory[{i}] ({}).{x}", m.name);
            if self.memory[..i].iter().any(|o| o.name == m.name) {
                bad(f("name"), "is described twice".into());
            }
            if m.capacity == 0 {
                bad(f("capacity"), "must be positive".into());
            }
            if m.reserved >= m.capacity {
                bad(f("reserved"), format!("{} reserved bytes leave nothing of {}", m.reserved, m.capacity));
            }
            if !m.align.is_power_of_two() {
                bad(f("align"), format!("{} is not a power of two", m.align));
            }
        }
        for name in MEMORIES {
            if !self.memory.iter().any(|m| m.name == *name) {
                bad("memory".into(), format!("the memory `{name}` is not described"));
            }
        }
        let c = &self.cube;
        if c.m == 0 || c.k == 0 || c.n == 0 || c.macs_per_cycle != c.m * c.k * c.n {
            bad("cube".into(), format!("macs_per_cycle {} must equal m*k*n = {}", c.macs_per_cycle, c.m * c.k * c.n));
        }
        check_curve(&mut errs, "cube.efficiency", &c.efficiency, Some(1.0));
        let v = &self.vector;
        if v.repeat_bytes == 0 || v.cycles_per_repeat <= 0.0 || v.slow_op_factor < 1.0 || v.max_repeats == 0 {
            errs.push(TargetError {
                field: "vector".into(),
                message: "repeat_bytes, cycles_per_repeat and max_repeats must be positive; slow_op_factor at least 1"
                    .into(),
            });
        }
        for (i, p) in self.path.iter().enumerate() {
            let f = |x: &str| format!("path[{i}] ({} -> {}).{x}", p.from, p.to);
            for (what, m) in [("from", &p.from), ("to", &p.to)] {
                if !self.memory.iter().any(|x| &x.name == m) {
                    errs.push(TargetError { field: f(what), message: format!("`{m}` is not a described memory") });
                }
            }
            if !ENGINES.contains(&p.engine.as_str()) {
                errs.push(TargetError {
                    field: f("engine"),
                    message: format!("`{}` is not an engine (one of {})", p.engine, ENGINES.join(", ")),
                });
            }
            if self.path[..i].iter().any(|o| o.from == p.from && o.to == p.to) {
                errs.push(TargetError { field: f("from"), message: "this path is described twice".into() });
            }
            if p.bytes_per_cycle == 0 {
                errs.push(TargetError { field: f("bytes_per_cycle"), message: "must be positive".into() });
            }
            let peak = p.bytes_per_cycle as f64 * self.clock_ghz;
            check_curve(&mut errs, &f("curve"), &p.curve, Some(peak * 1.0001));
        }
        // The paths every kernel needs.
        for (from, to) in [("gm", "l1"), ("gm", "ub"), ("ub", "gm"), ("l1", "l0a"), ("l1", "l0b")] {
            if self.path(from, to).is_none() {
                errs.push(TargetError {
                    field: "path".into(),
                    message: format!("there is no `{from}` -> `{to}` path"),
                });
            }
        }
        if self.path("l0c", "gm").is_none() && self.path("l0c", "ub").is_none() {
            errs.push(TargetError { field: "path".into(), message: "cube results (l0c) have no way out".into() });
        }
        errs
    }

    pub fn memory(&self, name: &str) -> Option<&Memory> {
        self.memory.iter().find(|m| m.name == name)
    }

    pub fn path(&self, from: &str, to: &str) -> Option<&Path> {
        self.path.iter().find(|p| p.from == from && p.to == to)
    }

    /// Cube efficiency for a tile whose n is `n`.
    pub fn cube_efficiency(&self, n: u64) -> f64 {
        interp(&self.cube.efficiency, n as f64)
    }

    /// Bytes per second per core for one copy of `bytes` on a path.
    pub fn copy_rate(&self, p: &Path, bytes: u64) -> f64 {
        interp(&p.curve, bytes as f64) * 1e9
    }

    pub fn cycles_per_second(&self) -> f64 {
        self.clock_ghz * 1e9
    }

    /// The chip's peak cube throughput in FLOP/s (2 per MAC).
    pub fn peak_cube_flops(&self) -> f64 {
        2.0 * self.cube.macs_per_cycle as f64 * self.cube_cores as f64 * self.cycles_per_second()
    }
}

fn check_curve(errs: &mut Vec<TargetError>, field: &str, pts: &[(f64, f64)], max: Option<f64>) {
    if pts.is_empty() {
        errs.push(TargetError { field: field.into(), message: "needs at least one point".into() });
    }
    for (i, (x, y)) in pts.iter().enumerate() {
        if !(x.is_finite() && y.is_finite() && *x > 0.0 && *y > 0.0) {
            errs.push(TargetError {
                field: format!("{field}[{i}]"),
                message: "points must be positive numbers".into(),
            });
        }
        if let Some(m) = max {
            if *y > m {
                errs.push(TargetError {
                    field: format!("{field}[{i}]"),
                    message: format!("{y} is above the peak {m:.3}"),
                });
            }
        }
        if i > 0 && pts[i - 1].0 >= *x {
            errs.push(TargetError {
                field: format!("{field}[{i}]"),
                message: "points must be sorted by their first value".into(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_parse_and_hold_the_published_figures() {
        let t = Target::builtin("ascend910b").expect("910b parses");
        assert_eq!((t.cube_cores, t.vector_cores), (24, 48));
        assert_eq!(t.memory("l0c").map(|m| m.capacity), Some(128 * 1024));
        assert_eq!(t.memory("ub").map(|m| m.usable()), Some(184 * 1024));
        assert!(t.path("l0c", "ub").is_none(), "910B cube results reach the vector cores only through GM");
        let u = Target::builtin("ascend950").expect("950 parses");
        assert_eq!(u.memory("l0c").map(|m| m.capacity), Some(256 * 1024));
        assert!(u.path("l0c", "ub").is_some());
        // 2 * 4096 * 24 * 1.85e9 = 363.7 TFLOP/s.
        assert!((t.peak_cube_flops() / 1e12 - 363.7).abs() < 0.1);
    }

    #[test]
    fn curves_interpolate() {
        let t = Target::builtin("ascend910b").expect("parses");
        assert!((t.cube_efficiency(16) - 0.5).abs() < 1e-9);
        assert!((t.cube_efficiency(72) - 0.7).abs() < 1e-9);
        assert!((t.cube_efficiency(10_000) - 0.98).abs() < 1e-9);
        let p = t.path("gm", "l1").expect("path");
        assert!((t.copy_rate(p, 1024) / 1e9 - 10.0).abs() < 1e-6);
        assert!((t.copy_rate(p, 1 << 20) / 1e9 - 270.0).abs() < 1e-6);
    }

    #[test]
    fn malformed_and_inconsistent_files_are_refused_with_the_field() {
        let bad_toml = Target::parse("name = ").unwrap_err();
        assert!(bad_toml[0].message.contains("line 1"), "{:?}", bad_toml);
        let base = BUILTIN[0].1;
        let e = Target::parse(&base.replace("align = 512", "align = 500")).unwrap_err();
        assert!(e.iter().any(|e| e.field.contains("l0a") && e.message.contains("power of two")), "{e:?}");
        let e = Target::parse(&base.replace("engine = \"mte1\"", "engine = \"warp\"")).unwrap_err();
        assert!(e.iter().any(|e| e.message.contains("`warp` is not an engine")), "{e:?}");
        let e = Target::parse(&base.replace("macs_per_cycle = 4096", "macs_per_cycle = 4000")).unwrap_err();
        assert!(e.iter().any(|e| e.field == "cube"), "{e:?}");
        let e = Target::parse(&base.replace("reserved = 8192", "reserved = 999999")).unwrap_err();
        assert!(e.iter().any(|e| e.field.contains("ub") && e.field.contains("reserved")), "{e:?}");
        let e = Target::parse(&format!("{base}\nbogus = 1\n")).unwrap_err();
        assert!(e[0].message.contains("bogus"), "{e:?}");
    }
}

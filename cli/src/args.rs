//! The command line, as clap (derive) types. Parsing only: the commands live in `commands`.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

const MAIN_EXAMPLES: &str = "\
Examples:
  kc check kernels/*.ker
  kc build kernels/rmsnorm.ker --emit graph
  kc run kernels/attention.ker --dims B=1,H=4,G=2,S=64,T=64,D=32 --random 0
  kc run kernels/rmsnorm.ker --input x=x.npy --input w=w.npy --scalar eps=1e-6 --out results/
  kc bench kernels/matmul.ker --dims M=2048,N=2048,K=2048 --threads 2

Exit status: 0 on success, 1 on an error in the input or the arguments, 2 on an internal error (a bug in kc).";

const CHECK_EXAMPLES: &str = "\
Examples:
  kc check kernels/attention.ker
  kc check kernels/*.ker --color never";

const BUILD_EXAMPLES: &str = "\
Examples:
  kc build kernels/rmsnorm.ker                      # the graph IR of every kernel
  kc build kernels/moe_route.ker --kernel moe_route
  kc build kernels/adamw.ker --emit ast
  kc build kernels/attention.ker -o attention.graph
  kc build kernels/rmsnorm.ker --emit fusion
  kc build kernels/rmsnorm.ker --emit tiled --dims T=4096,D=4096 --target ascend950
  kc build kernels/adamw.ker --emit report --dims N=1048576 --format json
  kc build kernels/matmul.ker --emit trace --dims M=1024,N=1024,K=1024 -o matmul.trace.json
  kc build kernels/matmul.ker --emit timeline --dims M=1024,N=1024,K=1024 -o matmul.html
  kc build kernels/matmul.ker --emit tuning --dims M=4096,N=4096,K=4096
  kc build kernels/softmax.ker --emit tiled --dims R=7,C=1000 --target my_npu.toml
  kc build kernels/softmax.ker --emit clif --dims R=7,C=1000
  kc build kernels/softmax.ker --emit asm --dims R=7,C=1000";

const RUN_EXAMPLES: &str = "\
Examples:
  kc run kernels/attention.ker --dims B=1,H=4,G=2,S=64,T=64,D=32 --random 0
  kc run kernels/rmsnorm.ker --input x=x.npy --input w=w.npy --scalar eps=1e-6 --out results/
  kc run kernels/moe_permute.ker --dims T=16,K=2,M=8,E=4 --random 1 --out perm/ --raw-bf16
  kc run kernels/rmsnorm.ker --dims T=7,D=1000 --random 0 --backend sim --target ascend950
  kc run kernels/matmul.ker --dims M=512,N=512,K=512 --random 0 --check --threads 2 -v

Inputs are .npy files (C order). A bf16 parameter takes a float32 array (rounded to nearest-even) or a
uint16 array of raw bf16 bits; f16 takes float16 or float32; i32 takes int32 or int64 (values must fit).
Each result is summarized on stdout; with --out DIR it is also written as DIR/NAME.npy (bf16 as float32,
or as uint16 raw bits with --raw-bf16).
--random SEED fills every input not given with seeded values: floats uniform in [-1, 1), float scalars in
(0, 1), i32 scalars in 1..=10, bools a coin flip; i32 tensors get a range that suits their use (offsets of
a segment are sorted, bincount sources are in 0..n, gather indices are in range of the axis they index).";

const BENCH_EXAMPLES: &str = "\
Examples:
  kc bench --calibrate --threads 2                  # measure this host's peaks once (per thread count)
  kc bench kernels/matmul.ker --dims M=2048,N=2048,K=2048 --threads 2
  kc bench kernels/adamw.ker --dims N=16777216 --format json
  kc bench kernels/moe_experts.ker --dims R=512,M=256,F=512,E=8 --random 3   # valid sorted offsets
  kc bench kernels/rmsnorm.ker --input x=x.npy --input w=w.npy --scalar eps=1e-6 --backend sim

The kernel is compiled once and its inputs are made once; then --warmup runs, then timed runs until both
--min-iterations and --min-time are reached (at most 10000). A timed run is one call of the backend on the
prepared inputs, including setting up global memory and building the result tensors (as a framework op
allocates its output). Printed: the median, min and max time, GFLOP/s and GB/s, and with measured peaks the
fraction of the host's roofline.
FLOP = matrix FLOPs (2 per multiply-add) plus one per vector element written, summed over the kernel's
launches (the counts of `kc build --emit report`). Bytes = every tensor argument plus every result: what the
kernel must move at least.
Inputs not given with --input/--scalar are generated from --random SEED (default 0) as in `kc run`: floats
uniform in [-1, 1), float scalars in (0, 1), i32 scalars in 1..=10; i32 tensors get values valid for their
use (the offsets of a segment, e.g. MoE expert offsets, are sorted from 0 to the segmented extent, bincount
sources are in 0..n, gather indices are in range of the axis they index). When a kernel needs index data
its signature cannot describe, give it with --input NAME=PATH.npy.
Peaks come from `kc bench --calibrate --threads N` (bf16 mmad 256x256x256 tiles on the host's matrix unit:
amx, avx512 or portable; and copy bandwidth over 256 MiB, read+write), stored per thread count in --peaks.";

#[derive(Parser, Debug)]
#[command(
    name = "kc",
    version,
    about = "kc: a kernel compiler for the .ker tensor language",
    long_about = "kc: a kernel compiler for the .ker tensor language (LLM post-training kernels: attention, MoE, \
                  optimizers), with a reference interpreter that runs kernels on .npy inputs.",
    after_help = MAIN_EXAMPLES,
    arg_required_else_help = true
)]
pub struct Cli {
    /// When to color diagnostics: auto colors them when stderr is a terminal (and NO_COLOR is unset).
    #[arg(long, global = true, value_enum, default_value_t = Color::Auto, value_name = "WHEN")]
    pub color: Color,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Color {
    Auto,
    Always,
    Never,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Compile files and report every error, without running anything.
    #[command(after_help = CHECK_EXAMPLES)]
    Check(CheckArgs),
    /// Compile a file and print what the compiler makes of it (the graph IR, or the syntax tree).
    #[command(after_help = BUILD_EXAMPLES)]
    Build(BuildArgs),
    /// Run a kernel (compiled to host machine code, or interpreted) on .npy inputs or seeded random ones.
    #[command(after_help = RUN_EXAMPLES)]
    Run(RunArgs),
    /// Time a kernel on the host (compiled once, warmed up, timed for a stable median) against the host's
    /// measured peaks; or measure those peaks with --calibrate.
    #[command(after_help = BENCH_EXAMPLES)]
    Bench(BenchArgs),
}

#[derive(Args, Debug)]
pub struct CheckArgs {
    /// The .ker files to check.
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Emit {
    /// The syntax tree of the file, as parsed (before name resolution).
    Ast,
    /// The graph IR: typed tensor dataflow, one graph per kernel.
    Graph,
    /// The fusion groups of each kernel (cube or vector), what each reads and writes, and why every
    /// producer and consumer left apart were not fused.
    Fusion,
    /// The tile IR of each kernel for the target at the given --dims: per-core programs, buffer maps.
    Tiled,
    /// A static report of each kernel at the given --dims: groups, grids, tiles, buffers, traffic, work,
    /// and the cost model's estimate (cycles, time, pipe busy fractions, the bound).
    Report,
    /// The cost model's timeline of one kernel as a Chrome trace-event JSON file (open it in Perfetto or
    /// chrome://tracing): one process per core, one thread per pipe, flags as flow events.
    Trace,
    /// The same timeline as a self-contained HTML page (inline SVG) for a quick look in a browser.
    Timeline,
    /// The candidate tilings the tiler weighed for each launch, with the cycles the model estimates.
    Tuning,
    /// The Cranelift IR of each core program as the JIT compiles it for the host (at the given --dims).
    Clif,
    /// The host machine code of each core program (Cranelift's disassembly, at the given --dims), then of each
    /// fused loop assembled for AVX-512 on this host.
    Asm,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Text,
    Json,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Backend {
    /// Host machine code compiled by Cranelift from the tile IR, run on --threads threads.
    Jit,
    /// The reference interpreter (the graph IR, op by op).
    Interp,
    /// The functional simulator of the tile IR (per-core programs for the target, run on the host).
    Sim,
}

#[derive(Args, Debug)]
pub struct BuildArgs {
    /// The .ker file to compile.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// Print only this kernel (graph IR only).
    #[arg(long, short = 'k', value_name = "NAME")]
    pub kernel: Option<String>,
    /// What to print.
    #[arg(long, value_enum, default_value_t = Emit::Graph, value_name = "STAGE")]
    pub emit: Emit,
    /// Write to this file (atomically) instead of stdout.
    #[arg(long = "output", short = 'o', value_name = "PATH")]
    pub output: Option<PathBuf>,
    /// The target: a built-in name (ascend910b, ascend950, host) or the path of a target TOML file.
    #[arg(long, default_value = "ascend910b", value_name = "NAME|PATH")]
    pub target: String,
    /// Dim values to specialize to (needed by --emit tiled, report, trace, timeline and tuning): `B=1,H=8`
    /// (repeatable).
    #[arg(long, short = 'd', value_name = "NAME=N,...", value_delimiter = ',', value_parser = parse_dim)]
    pub dims: Vec<(String, i64)>,
    /// The format of --emit report and --emit tuning.
    #[arg(long, value_enum, default_value_t = Format::Text, value_name = "FORMAT")]
    pub format: Format,
}

/// The inputs of a launch, as `kc run` and `kc bench` take them.
#[derive(Args, Debug)]
pub struct InputArgs {
    /// A tensor (or scalar) parameter from a .npy file; repeat for each input.
    #[arg(long, short = 'i', value_name = "NAME=PATH", value_parser = parse_key_value)]
    pub input: Vec<(String, String)>,
    /// A scalar parameter: a float (`inf`, `-inf` allowed), an integer, or true/false, by the parameter's type.
    #[arg(long, short = 's', value_name = "NAME=VALUE", value_parser = parse_key_value, allow_hyphen_values = true)]
    pub scalar: Vec<(String, String)>,
    /// Dim values, for `dim` parameters and for the shapes of random inputs: `B=1,H=8` (repeatable).
    #[arg(long, short = 'd', value_name = "NAME=N,...", value_delimiter = ',', value_parser = parse_dim)]
    pub dims: Vec<(String, i64)>,
    /// The most memory a launch may take for its tensors and buffers, in bytes or with a K, M, G or T
    /// suffix (powers of 1024): a launch that needs more is refused before anything is allocated (E0808).
    /// Default: 90% of the memory the system has available when kc starts (8G if it cannot tell).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub max_memory: Option<u64>,
}

impl InputArgs {
    /// The launch limits: `--max-memory`, or 90% of the memory available now.
    pub fn limits(&self) -> kc_ir::interp::Limits {
        let max_bytes = self.max_memory.or_else(|| available_memory().map(|m| m / 10 * 9)).unwrap_or(8 << 30);
        kc_ir::interp::Limits { max_bytes, ..kc_ir::interp::Limits::default() }
    }
}

/// `MemAvailable` of `/proc/meminfo`, in bytes (Linux), or `None`.
fn available_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kb.checked_mul(1024)
}

/// A size: bytes, or a number with a K, M, G or T suffix (binary; `B`, `iB` and lowercase accepted).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let t = t.strip_suffix(['b', 'B']).unwrap_or(t);
    let t = t.strip_suffix('i').unwrap_or(t);
    let (num, shift) = match t.chars().last().map(|c| c.to_ascii_uppercase()) {
        Some('K') => (&t[..t.len() - 1], 10),
        Some('M') => (&t[..t.len() - 1], 20),
        Some('G') => (&t[..t.len() - 1], 30),
        Some('T') => (&t[..t.len() - 1], 40),
        _ => (t, 0),
    };
    let n: f64 = num.trim().parse().map_err(|_| format!("`{s}` is not a size (say 512M, 16G or a number of bytes)"))?;
    let bytes = n * (1u64 << shift) as f64;
    if !bytes.is_finite() || bytes < 1.0 || bytes >= u64::MAX as f64 {
        return Err(format!("`{s}` is not a usable size: give at least one byte"));
    }
    Ok(bytes as u64)
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// The .ker file that holds the kernel.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// The kernel to run (needed only when the file defines several).
    #[arg(long, short = 'k', value_name = "NAME")]
    pub kernel: Option<String>,
    #[command(flatten)]
    pub inputs: InputArgs,
    /// Fill every input not given with values from this seed (deterministic).
    #[arg(long, value_name = "SEED")]
    pub random: Option<u64>,
    /// Write each result as DIR/NAME.npy (DIR is created if its parent exists).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Write bf16 results as uint16 raw bits instead of float32.
    #[arg(long)]
    pub raw_bf16: bool,
    /// What runs the kernel: machine code from the JIT, the reference interpreter, or the tile IR's
    /// simulator, both tiled for --target.
    #[arg(long, value_enum, default_value_t = Backend::Jit, value_name = "BACKEND")]
    pub backend: Backend,
    /// The target the kernel is tiled for: a built-in name (ascend910b, ascend950, host) or a target TOML
    /// file. Default: `host` for --backend jit (tiles sized for the host's caches), ascend910b for sim.
    #[arg(long, value_name = "NAME|PATH")]
    pub target: Option<String>,
    /// Host threads for --backend jit (default: every core of the host).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub threads: Option<u32>,
    /// Also run the reference interpreter and print the largest absolute and relative error of each
    /// result; fail if one is beyond its dtype's tolerance.
    #[arg(long)]
    pub check: bool,
    /// Print the time each stage took (parse and lower, fuse and tile, code generation, run) to stderr.
    #[arg(long, short = 'v')]
    pub verbose: bool,
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// The .ker file that holds the kernel (not with --calibrate).
    #[arg(value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// The kernel to time (needed only when the file defines several).
    #[arg(long, short = 'k', value_name = "NAME")]
    pub kernel: Option<String>,
    #[command(flatten)]
    pub inputs: InputArgs,
    /// The seed of the inputs not given with --input or --scalar.
    #[arg(long, value_name = "SEED", default_value_t = 0)]
    pub random: u64,
    /// Host threads for --backend jit and --calibrate (default: every core of the host).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub threads: Option<u32>,
    /// The target the kernel is tiled for: a built-in name (ascend910b, ascend950, host) or a target TOML
    /// file. Default: `host` for --backend jit, ascend910b otherwise.
    #[arg(long, value_name = "NAME|PATH")]
    pub target: Option<String>,
    /// What runs the kernel: machine code from the JIT, the reference interpreter, or the tile IR's simulator.
    #[arg(long, value_enum, default_value_t = Backend::Jit, value_name = "BACKEND")]
    pub backend: Backend,
    /// The format of the result: a line of text, or a JSON object.
    #[arg(long, value_enum, default_value_t = Format::Text, value_name = "FORMAT")]
    pub format: Format,
    /// Untimed runs before the timed ones.
    #[arg(long, value_name = "N", default_value_t = 2)]
    pub warmup: u32,
    /// Time at least this many runs.
    #[arg(long, value_name = "N", default_value_t = 5)]
    pub min_iterations: u32,
    /// Keep timing runs until this many seconds have passed (and --min-iterations are done; at most 10000 runs).
    #[arg(long, value_name = "SECONDS", default_value_t = 1.0, value_parser = parse_seconds)]
    pub min_time: f64,
    /// Drop each call's results instead of giving them back to the compiled program: every call writes its
    /// outputs into fresh memory (by default a call may write them into the previous call's results when it
    /// provably writes them whole, as a caller that keeps its output buffers from step to step).
    #[arg(long)]
    pub fresh_outputs: bool,
    /// The file of the host's measured peaks (read by a bench, written by --calibrate).
    #[arg(long, value_name = "FILE", default_value = ".kc-peaks.json")]
    pub peaks: PathBuf,
    /// Measure the host's peaks (matrix FLOP/s, memory bandwidth) on --threads threads and store them in --peaks.
    #[arg(long)]
    pub calibrate: bool,
    /// Seconds each calibration measurement runs (for tests).
    #[arg(long, hide = true, value_name = "SECONDS", default_value_t = 0.5, value_parser = parse_seconds)]
    pub calibrate_seconds: f64,
}

/// A non-negative, finite number of seconds.
fn parse_seconds(s: &str) -> Result<f64, String> {
    let x: f64 = s.trim().parse().map_err(|_| format!("`{s}` is not a number of seconds"))?;
    if !x.is_finite() || x < 0.0 {
        return Err(format!("`{s}` is not a non-negative number of seconds"));
    }
    Ok(x)
}

/// `NAME=VALUE`, split at the first `=`.
fn parse_key_value(s: &str) -> Result<(String, String), String> {
    let (k, v) = s.split_once('=').ok_or_else(|| format!("`{s}` is not of the form NAME=VALUE"))?;
    let k = k.trim();
    if k.is_empty() {
        return Err(format!("`{s}` has no name before `=`"));
    }
    Ok((k.to_string(), v.to_string()))
}

/// `NAME=N` with `N` a non-negative integer.
fn parse_dim(s: &str) -> Result<(String, i64), String> {
    let (k, v) = parse_key_value(s)?;
    let n: i64 = v.trim().parse().map_err(|_| format!("in `{s}`: `{v}` is not an integer"))?;
    if n < 0 {
        return Err(format!("in `{s}`: a dim cannot be negative"));
    }
    Ok((k, n))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn clap_definition_is_valid() {
        Cli::command().debug_assert();
    }

    #[test]
    fn dims_split_on_commas_and_repeat() {
        let cli = Cli::try_parse_from(["kc", "run", "f.ker", "--dims", "B=1,H=8", "-d", "S=3", "--scalar", "x=-inf"])
            .unwrap();
        let Command::Run(r) = cli.command else { panic!() };
        assert_eq!(r.inputs.dims, vec![("B".into(), 1), ("H".into(), 8), ("S".into(), 3)]);
        assert_eq!(r.inputs.scalar, vec![("x".into(), "-inf".into())]);
        assert!(Cli::try_parse_from(["kc", "run", "f.ker", "--dims", "B=x"]).is_err());
        assert!(Cli::try_parse_from(["kc", "run", "f.ker", "--input", "novalue"]).is_err());
    }
}

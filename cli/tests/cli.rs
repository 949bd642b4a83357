//! End-to-end tests of the `kc` binary: exit statuses, messages, and files written.

use kc_ir::{DType, Tensor};
use kc_runtime::npy::{read_npy, write_npy};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

/// A fresh, empty folder for one test, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("kc-cli-test-{}-{n}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    fn write(&self, name: &str, bytes: impl AsRef<[u8]>) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn kc(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kc")).current_dir(dir).args(args).output().unwrap()
}

fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn read(path: PathBuf) -> Tensor {
    read_npy(&std::fs::read(&path).unwrap()).unwrap()
}

const AXPY: &str = "kernel axpy(a: f32, x: f32[N], y: f32[N]) -> z: f32[N] { z = a * x + y; }\n";

#[test]
fn help_texts_have_examples() {
    let d = TempDir::new("help");
    for args in [
        &["--help"][..],
        &["-h"][..],
        &["check", "--help"][..],
        &["build", "--help"][..],
        &["run", "--help"][..],
        &["help", "run"][..],
        &["bench", "--help"][..],
    ] {
        let o = kc(&d.0, args);
        assert_eq!(code(&o), 0, "{args:?}: {}", stderr(&o));
        assert!(stdout(&o).contains("Example"), "{args:?}: {}", stdout(&o));
    }
    let o = kc(&d.0, &["--version"]);
    assert_eq!(code(&o), 0);
    assert!(stdout(&o).starts_with("kc "));
}

#[test]
fn usage_errors_exit_1() {
    let d = TempDir::new("usage");
    for args in [
        &["frobnicate"][..],
        &["check", "--no-such-flag", "x.ker"][..],
        &["run"][..],
        &["check"][..],
        &["run", "x.ker", "--dims", "B=minus"][..],
        &["run", "x.ker", "--color", "sometimes"][..],
        &[][..],
    ] {
        let o = kc(&d.0, args);
        assert_eq!(code(&o), 1, "{args:?}: {}", stderr(&o));
        assert!(!stderr(&o).is_empty(), "{args:?}");
    }
}

#[test]
fn check_reports_a_syntax_error() {
    let d = TempDir::new("syntax");
    d.write("bad.ker", "kernel k(x: f32[N]) -> y: f32[N] { y = x +; }\n");
    let o = kc(&d.0, &["check", "bad.ker", "--color", "never"]);
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    assert!(stderr(&o).contains("error[E0"), "{}", stderr(&o));
    assert!(!stderr(&o).contains("internal error"), "{}", stderr(&o));
}

#[test]
fn missing_file_is_a_clear_error() {
    let d = TempDir::new("missing");
    for sub in ["check", "build", "run"] {
        let o = kc(&d.0, &[sub, "no/such/file.ker"]);
        assert_eq!(code(&o), 1, "{sub}: {}", stderr(&o));
        assert!(stderr(&o).contains("no/such/file.ker"), "{sub}: {}", stderr(&o));
    }
}

#[test]
fn non_utf8_file_is_a_clear_error() {
    let d = TempDir::new("utf8");
    d.write("latin1.ker", b"// caf\xe9\nkernel k() {}\n");
    let o = kc(&d.0, &["check", "latin1.ker"]);
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    let e = stderr(&o);
    assert!(e.contains("latin1.ker") && e.contains("UTF-8") && e.contains("offset 6"), "{e}");
    assert!(!e.contains("internal error"), "{e}");
}

#[test]
fn output_paths_in_missing_folders_are_errors() {
    let d = TempDir::new("paths");
    d.write("axpy.ker", AXPY);
    let o = kc(&d.0, &["build", "axpy.ker", "-o", "nowhere/out.txt"]);
    assert_eq!(code(&o), 1);
    assert!(stderr(&o).contains("nowhere"), "{}", stderr(&o));
    let o = kc(&d.0, &["run", "axpy.ker", "--dims", "N=4", "--random", "0", "--out", "nowhere/deeper"]);
    assert_eq!(code(&o), 1);
    assert!(stderr(&o).contains("nowhere"), "{}", stderr(&o));
}

// The tests below need the lowering and the interpreter.

#[test]
fn run_axpy_from_npy_files() {
    let d = TempDir::new("axpy");
    d.write("axpy.ker", AXPY);
    let x = Tensor::from_f32(vec![4], vec![1.0, 2.0, -3.0, 0.5]).unwrap();
    let y = Tensor::from_f32(vec![4], vec![10.0, 20.0, 30.0, 40.0]).unwrap();
    d.write("x.npy", write_npy(&x, false));
    d.write("y.npy", write_npy(&y, false));
    let o = kc(&d.0, &["run", "axpy.ker", "--input", "x=x.npy", "-i", "y=y.npy", "--scalar", "a=2", "--out", "res"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(stdout(&o).starts_with("z: f32[4] sum=101"), "{}", stdout(&o));
    let z = read(d.path("res/z.npy"));
    assert_eq!(z, Tensor::from_f32(vec![4], vec![12.0, 24.0, 24.0, 41.0]).unwrap());
    // No temporary file is left behind.
    let names: Vec<String> = std::fs::read_dir(d.path("res"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec!["z.npy".to_string()]);

    // A wrong dtype names both; a missing input is E0800.
    let xi = Tensor::from_i32(vec![4], vec![1, 2, 3, 4]).unwrap();
    d.write("xi.npy", write_npy(&xi, false));
    let o = kc(&d.0, &["run", "axpy.ker", "-i", "x=xi.npy", "-i", "y=y.npy", "-s", "a=2"]);
    assert_eq!(code(&o), 1);
    assert!(stderr(&o).contains("f32") && stderr(&o).contains("i32"), "{}", stderr(&o));
    let o = kc(&d.0, &["run", "axpy.ker", "-i", "x=x.npy", "-s", "a=2", "--color", "never"]);
    assert_eq!(code(&o), 1);
    assert!(stderr(&o).contains("E0800"), "{}", stderr(&o));
}

#[test]
fn random_runs_are_reproducible() {
    let d = TempDir::new("random");
    d.write("axpy.ker", AXPY);
    for out in ["r1", "r2", "r3"] {
        let seed = if out == "r3" { "8" } else { "7" };
        let o = kc(&d.0, &["run", "axpy.ker", "--dims", "N=33", "--random", seed, "--out", out]);
        assert_eq!(code(&o), 0, "{}", stderr(&o));
    }
    let r1 = std::fs::read(d.path("r1/z.npy")).unwrap();
    let r2 = std::fs::read(d.path("r2/z.npy")).unwrap();
    let r3 = std::fs::read(d.path("r3/z.npy")).unwrap();
    assert_eq!(r1, r2);
    assert_ne!(r1, r3);
    assert_eq!(read(d.path("r1/z.npy")).shape, vec![33]);
}

#[test]
fn broken_where_constraint_is_e0802() {
    let d = TempDir::new("where");
    d.write("k.ker", "kernel k(x: f32[N]) -> y: f32[N] where N % 4 == 0 { y = x; }\n");
    let o = kc(&d.0, &["run", "k.ker", "--dims", "N=6", "--random", "0", "--color", "never"]);
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    assert!(stderr(&o).contains("E0802"), "{}", stderr(&o));
}

#[test]
fn bf16_outputs_as_f32_or_raw_bits() {
    let d = TempDir::new("bf16");
    d.write("half.ker", "kernel half(x: f32[N]) -> y: bf16[N] { y = x * 0.5; }\n");
    let x = Tensor::from_f32(vec![3], vec![1.0, 3.0, 1.0 / 3.0]).unwrap();
    d.write("x.npy", write_npy(&x, false));
    let expect = Tensor::from_f32_as(DType::BF16, vec![3], &[0.5, 1.5, 1.0 / 6.0]).unwrap();

    let o = kc(&d.0, &["run", "half.ker", "-i", "x=x.npy", "--out", "f"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(stdout(&o).starts_with("y: bf16[3]"), "{}", stdout(&o));
    let y = read(d.path("f/y.npy"));
    assert_eq!(y.dtype(), DType::F32);
    assert_eq!(y.to_f64_vec(), expect.to_f64_vec());

    let o = kc(&d.0, &["run", "half.ker", "-i", "x=x.npy", "--out", "r", "--raw-bf16"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let bytes = std::fs::read(d.path("r/y.npy")).unwrap();
    assert!(String::from_utf8_lossy(&bytes[..64]).contains("<u2"));
    assert_eq!(read(d.path("r/y.npy")), expect);
}

#[test]
fn kernel_choice_and_build() {
    let d = TempDir::new("choice");
    let two = format!("{AXPY}kernel copy(x: f32[N]) -> y: f32[N] {{ y = x; }}\n");
    d.write("two.ker", two);
    let o = kc(&d.0, &["run", "two.ker", "--dims", "N=2", "--random", "0"]);
    assert_eq!(code(&o), 1);
    assert!(stderr(&o).contains("axpy") && stderr(&o).contains("copy"), "{}", stderr(&o));
    let o = kc(&d.0, &["run", "two.ker", "--kernel", "copy", "--dims", "N=2", "--random", "0"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let o = kc(&d.0, &["build", "two.ker", "--kernel", "nope"]);
    assert_eq!(code(&o), 1);
    assert!(stderr(&o).contains("axpy") && stderr(&o).contains("copy"), "{}", stderr(&o));
    let o = kc(&d.0, &["build", "two.ker", "--kernel", "copy", "-o", "copy.txt"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let text = std::fs::read_to_string(d.path("copy.txt")).unwrap();
    assert!(text.contains("copy") && !text.contains("axpy"), "{text}");
    let o = kc(&d.0, &["build", "two.ker"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(stdout(&o).contains("axpy") && stdout(&o).contains("copy"));
    let o = kc(&d.0, &["check", "two.ker"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
}

#[test]
fn use_lines_resolve_relative_to_the_using_file() {
    let d = TempDir::new("use");
    std::fs::create_dir_all(d.path("lib")).unwrap();
    d.write("lib/helpers.ker", "fn twice(x) { return 2.0 * x; }\n");
    d.write("main.ker", "use \"lib/helpers.ker\";\nkernel k(x: f32[N]) -> y: f32[N] { y = twice(x); }\n");
    let o = kc(&d.0, &["check", "main.ker"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let x = Tensor::from_f32(vec![2], vec![1.5, -1.0]).unwrap();
    d.write("x.npy", write_npy(&x, false));
    let o = kc(&d.0, &["run", "main.ker", "-i", "x=x.npy", "--out", "."]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(read(d.path("y.npy")), Tensor::from_f32(vec![2], vec![3.0, -2.0]).unwrap());
}

#[test]
fn emit_ast_prints_the_parsed_file() {
    let d = TempDir::new("ast");
    d.write("axpy.ker", AXPY);
    let o = kc(&d.0, &["build", "axpy.ker", "--emit", "ast"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(stdout(&o).contains("axpy"), "{}", stdout(&o));
}

/// `kc build --emit fusion` honours `#[unfused]` written in the source, and `--emit graph` prints the hints.
#[test]
fn build_emit_fusion_honours_schedule_hints() {
    let d = TempDir::new("hints");
    d.write(
        "hints.ker",
        "kernel k(x: f32[N]) -> y: f32[N] {\n    #[unfused] let e = exp(x);\n    #[tile(N: 256)] y = e * 2.0;\n}\n",
    );
    let o = kc(&d.0, &["build", "hints.ker", "--emit", "fusion"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let text = stdout(&o);
    assert!(text.contains("2 groups"), "{text}");
    assert!(text.contains("%1 e -> %2 y: a schedule hint keeps them apart"), "{text}");
    let o = kc(&d.0, &["build", "hints.ker"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let text = stdout(&o);
    assert!(text.contains("= compute [n] exp(%0[n])  #[unfused]\n"), "{text}");
    assert!(text.contains("  #[tile(N: 256)]\n"), "{text}");
}

/// `kc build --emit tiled|report` need dims; they take a built-in target or a target file, and a broken
/// target file is a clear error naming the field.
#[test]
fn build_tiled_and_report() {
    let d = TempDir::new("tiled");
    d.write("axpy.ker", AXPY);
    let o = kc(&d.0, &["build", "axpy.ker", "--emit", "tiled", "--dims", "N=1000"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(stdout(&o).contains("kernel axpy  target ascend910b  dims N = 1000"), "{}", stdout(&o));
    let o = kc(&d.0, &["build", "axpy.ker", "--emit", "tiled", "--dims", "N=1000", "--target", "ascend950"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(stdout(&o).contains("target ascend950"), "{}", stdout(&o));
    // Without the dims: the missing dim is named.
    let o = kc(&d.0, &["build", "axpy.ker", "--emit", "tiled"]);
    assert_eq!(code(&o), 1);
    assert!(stderr(&o).contains("`N`"), "{}", stderr(&o));
    // A dim the kernel does not have.
    let o = kc(&d.0, &["build", "axpy.ker", "--emit", "tiled", "--dims", "N=4,Q=3"]);
    assert_eq!(code(&o), 1);
    assert!(stderr(&o).contains("`Q`"), "{}", stderr(&o));
    // Targets: an unknown name, a file that is not TOML, a file with a bad field.
    let o = kc(&d.0, &["build", "axpy.ker", "--emit", "tiled", "--dims", "N=4", "--target", "ascend9000"]);
    assert_eq!(code(&o), 1);
    assert!(stderr(&o).contains("no built-in target `ascend9000`"), "{}", stderr(&o));
    d.write("bad.toml", "name = 3\n");
    let o = kc(&d.0, &["build", "axpy.ker", "--emit", "tiled", "--dims", "N=4", "--target", "bad.toml"]);
    assert_eq!(code(&o), 1);
    assert!(stderr(&o).contains("bad.toml") && stderr(&o).contains("not valid"), "{}", stderr(&o));
    let good = include_str!("../../ir/targets/ascend910b.toml");
    d.write("tiny.toml", good.replace("name = \"ascend910b\"", "name = \"tiny\""));
    let o = kc(&d.0, &["build", "axpy.ker", "--emit", "tiled", "--dims", "N=4", "--target", "tiny.toml"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(stdout(&o).contains("target tiny"), "{}", stdout(&o));
    // The report, as text and as JSON with the documented fields.
    let o = kc(&d.0, &["build", "axpy.ker", "--emit", "report", "--dims", "N=1000"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(stdout(&o).contains("gm_bytes_read       8000"), "{}", stdout(&o));
    let o = kc(&d.0, &["build", "axpy.ker", "--emit", "report", "--dims", "N=1000", "--format", "json"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("valid JSON");
    let k = &v["kernels"][0];
    assert_eq!(k["name"], "axpy");
    assert_eq!(k["target"], "ascend910b");
    assert_eq!(k["dims"]["N"], 1000);
    assert_eq!(k["gm_bytes_read"], 8000);
    assert_eq!(k["gm_bytes_written"], 4000);
    assert_eq!(k["cube_flops"], 0);
    assert_eq!(k["vector_elements"], 1000);
    assert_eq!(k["gm_workspace_bytes"], 0);
    assert_eq!(k["gm_intermediates"], serde_json::json!([]));
    assert_eq!(k["groups"].as_array().map(|g| g.len()), Some(1));
    // The cost model's fields: cycles and time agree with the clock, busy fractions are fractions, the
    // bound is a pipe (or GM), the peaks are the target's.
    let cycles = k["cycles"].as_f64().expect("cycles");
    let time_us = k["time_us"].as_f64().expect("time_us");
    assert!(cycles > 0.0 && (time_us - cycles / 1850.0).abs() < 1e-6 * time_us.max(1.0), "{k}");
    let busy = k["pipe_busy"].as_object().expect("pipe_busy");
    assert!(busy.contains_key("V") && busy.contains_key("MTE2"), "{k}");
    assert!(busy.values().all(|f| f.as_f64().is_some_and(|f| (0.0..=1.0 + 1e-9).contains(&f))), "{k}");
    let bound = k["bound"].as_str().expect("bound");
    assert!(["S", "MTE2", "MTE1", "MTE3", "FIX", "M", "V", "GM"].contains(&bound), "{bound}");
    assert!((k["peak_cube_flops_per_s"].as_f64().expect("peak") / 1e12 - 363.72).abs() < 0.01);
    assert_eq!(k["peak_gm_bytes_per_s"].as_f64(), Some(1.6e12));
    let l = &k["groups"][0]["launches"][0]["estimate"];
    assert_eq!(l["cycles"].as_f64(), Some(cycles), "one launch: its cycles are the kernel's");
}

/// `kc build --emit trace` writes a Chrome trace-event file, `--emit timeline` an HTML page, `--emit
/// tuning` the candidates the tiler weighed; trace and timeline draw one kernel.
#[test]
fn build_trace_timeline_and_tuning() {
    let d = TempDir::new("trace");
    d.write("axpy.ker", AXPY);
    let o = kc(&d.0, &["build", "axpy.ker", "--emit", "trace", "--dims", "N=100000", "-o", "axpy.json"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.path("axpy.json")).expect("read")).expect("a JSON trace");
    let events = v["traceEvents"].as_array().expect("traceEvents");
    let slices: Vec<&serde_json::Value> = events.iter().filter(|e| e["ph"] == "X").collect();
    assert!(slices.iter().any(|e| e["cat"] == "MTE2") && slices.iter().any(|e| e["cat"] == "V"), "{v}");
    assert!(events.iter().any(|e| e["ph"] == "M" && e["args"]["name"] == "vector 0"), "one process per core");
    assert!(events.iter().any(|e| e["ph"] == "s") && events.iter().any(|e| e["ph"] == "f"), "flags as flows");
    assert_eq!(v["otherData"]["kernel"], "axpy");
    let o = kc(&d.0, &["build", "axpy.ker", "--emit", "timeline", "--dims", "N=100000", "-o", "axpy.html"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let html = String::from_utf8(std::fs::read(d.path("axpy.html")).expect("read")).expect("utf-8");
    assert!(html.starts_with("<!DOCTYPE html>") && html.contains("<svg") && html.contains("axpy"), "{html}");
    // Tuning: a matmul weighs candidates and marks the one it kept.
    d.write("mm.ker", "kernel mm(a: bf16[M, K], b: bf16[K, N]) -> c: bf16[M, N] {\n    c = a @ b;\n}\n");
    let o = kc(&d.0, &["build", "mm.ker", "--emit", "tuning", "--dims", "M=512,N=512,K=512"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let text = stdout(&o);
    assert!(text.contains("launch mm.g0:") && text.contains("candidates"), "{text}");
    assert_eq!(text.lines().filter(|l| l.trim_start().starts_with('*')).count(), 1, "{text}");
    let o = kc(&d.0, &["build", "mm.ker", "--emit", "tuning", "--dims", "M=512,N=512,K=512", "--format", "json"]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("JSON");
    let cands = v["kernels"][0]["launches"][0]["candidates"].as_array().expect("candidates");
    assert!(cands.len() > 10 && cands[0]["chosen"] == true, "fastest first, and kept: {v}");
    // Two kernels in a file: trace needs --kernel.
    d.write("two.ker", format!("{AXPY}\nkernel neg(x: f32[N]) -> y: f32[N] {{\n    y = -x;\n}}\n"));
    let o = kc(&d.0, &["build", "two.ker", "--emit", "trace", "--dims", "N=10"]);
    assert_eq!(code(&o), 1);
    assert!(stderr(&o).contains("--kernel"), "{}", stderr(&o));
    let o = kc(&d.0, &["build", "two.ker", "--emit", "trace", "--dims", "N=10", "--kernel", "neg"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
}

/// `kc run --backend sim` runs the tile program and gives the interpreter's results.
#[test]
fn run_backend_sim_matches_interp() {
    let d = TempDir::new("sim");
    d.write("axpy.ker", AXPY);
    let a = kc(&d.0, &["run", "axpy.ker", "--dims", "N=1001", "--random", "3", "--out", "interp"]);
    assert_eq!(code(&a), 0, "{}", stderr(&a));
    for t in ["ascend910b", "ascend950"] {
        let out = format!("sim_{t}");
        let b = kc(
            &d.0,
            &["run", "axpy.ker", "--dims", "N=1001", "--random", "3", "--backend", "sim", "--target", t, "--out", &out],
        );
        assert_eq!(code(&b), 0, "{}", stderr(&b));
        assert_eq!(stdout(&a), stdout(&b));
        assert_eq!(read(d.path("interp/z.npy")), read(d.path(&format!("{out}/z.npy"))));
    }
}

fn kernel_file(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../kernels").join(name).display().to_string()
}

fn json_of(o: &Output) -> serde_json::Value {
    serde_json::from_str(&stdout(o)).unwrap_or_else(|e| panic!("not JSON ({e}): {}", stdout(o)))
}

#[test]
fn bench_times_a_kernel_as_json() {
    let d = TempDir::new("bench");
    let adamw = kernel_file("adamw.ker");
    let peaks = d.path("peaks.json").display().to_string();
    let base = [
        "bench",
        &adamw,
        "--dims",
        "N=1000",
        "--min-time",
        "0",
        "--min-iterations",
        "3",
        "--threads",
        "1",
        "--peaks",
        &peaks,
    ];
    let o = kc(&d.0, &[&base[..], &["--format", "json"]].concat());
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let v = json_of(&o);
    for field in ["median_s", "min_s", "max_s", "iterations", "gflops", "gbps"] {
        assert!(v.get(field).is_some_and(|x| x.is_number()), "{field} in {v}");
    }
    assert!(v["iterations"].as_u64().unwrap() >= 3);
    let (min, med, max) = (v["min_s"].as_f64().unwrap(), v["median_s"].as_f64().unwrap(), v["max_s"].as_f64().unwrap());
    assert!(0.0 < min && min <= med && med <= max, "{v}");
    assert!(v["gflops"].as_f64().unwrap() > 0.0 && v["gbps"].as_f64().unwrap() > 0.0);
    assert!(v["matrix_fraction"].is_null());
    assert!(stderr(&o).contains("kc bench --calibrate --threads 1"), "{}", stderr(&o));
    assert_eq!(v["fresh_outputs"], false, "{v}");
    // Softmax with its outputs in fresh memory on every call, as the JSON says.
    let softmax = kernel_file("softmax.ker");
    let fresh = [
        "bench",
        &softmax,
        "--dims",
        "N=7,D=300",
        "--min-time",
        "0",
        "--min-iterations",
        "3",
        "--threads",
        "1",
        "--peaks",
        &peaks,
        "--format",
        "json",
        "--fresh-outputs",
    ];
    let o = kc(&d.0, &fresh);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(json_of(&o)["fresh_outputs"], true);

    // Calibrate (briefly), then the same bench reports the fractions of the roofline.
    let o = kc(&d.0, &["bench", "--calibrate", "--threads", "1", "--peaks", &peaks, "--calibrate-seconds", "0.05"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let file: serde_json::Value = serde_json::from_slice(&std::fs::read(&peaks).unwrap()).unwrap();
    let p = &file["peaks"]["1"];
    assert_eq!(p["threads"], 1);
    assert!(p["matrix_gflops"].as_f64().unwrap() > 0.0, "{file}");
    assert!(p["memory_gbps"].as_f64().unwrap() > 0.0, "{file}");
    assert!(["amx", "avx512-bf16", "avx512", "portable"].contains(&p["matrix_unit"].as_str().unwrap()), "{file}");
    let o = kc(&d.0, &base);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(stdout(&o).contains("% of matrix peak") && stdout(&o).contains("% of memory bandwidth"), "{}", stdout(&o));
    let o = kc(&d.0, &[&base[..], &["--format", "json"]].concat());
    let v = json_of(&o);
    assert!(v["matrix_fraction"].as_f64().unwrap() > 0.0 && v["memory_fraction"].as_f64().unwrap() > 0.0, "{v}");
}

#[test]
fn bench_argument_errors() {
    let d = TempDir::new("bench-errors");
    let o = kc(&d.0, &["bench"]);
    assert_eq!(code(&o), 1);
    assert!(stderr(&o).contains("needs the FILE"), "{}", stderr(&o));
    let o = kc(&d.0, &["bench", "--min-time", "-1", "f.ker"]);
    assert_eq!(code(&o), 1);
    let o = kc(&d.0, &["bench", "--calibrate", "f.ker"]);
    assert_eq!(code(&o), 1);
    assert!(stderr(&o).contains("takes no FILE"), "{}", stderr(&o));
}

/// A launch that needs more memory than `--max-memory` is refused with E0808 before anything runs, with
/// a note on where the limit comes from; nothing is written.
#[test]
fn launches_over_the_memory_limit_are_refused() {
    let d = TempDir::new("maxmem");
    d.write("big.ker", "kernel big(x: f32[N, N]) -> y: f32[N, N] { y = x * 2.0 + 1.0; }\n");
    for backend in ["jit", "sim", "interp"] {
        let out = format!("out-{backend}");
        let o = kc(
            &d.0,
            &[
                "run",
                "big.ker",
                "--dims",
                "N=4096",
                "--random",
                "1",
                "--max-memory",
                "16M",
                "--backend",
                backend,
                "--out",
                &out,
            ],
        );
        assert_eq!(code(&o), 1, "{backend}: {}", stderr(&o));
        let e = stderr(&o);
        assert!(e.contains("error[E0808]") && e.contains("more than the limit of 16777216 bytes"), "{backend}: {e}");
        assert!(e.contains("--max-memory"), "{backend}: {e}");
        assert!(!d.path(&out).exists(), "{backend}: an output folder was made");
        // Within the limit it runs.
        let o = kc(
            &d.0,
            &["run", "big.ker", "--dims", "N=64", "--random", "1", "--max-memory", "16M", "--backend", backend],
        );
        assert_eq!(code(&o), 0, "{backend}: {}", stderr(&o));
    }
    let o = kc(&d.0, &["run", "big.ker", "--dims", "N=4", "--random", "1", "--max-memory", "lots"]);
    assert_eq!(code(&o), 1);
    assert!(stderr(&o).contains("is not a size"), "{}", stderr(&o));
}

/// A run that fails part way (an index out of range, found while running) leaves the output files of an
/// earlier run exactly as they were, and no temporary files beside them.
#[test]
fn a_failing_run_leaves_earlier_outputs_whole() {
    let d = TempDir::new("nolost");
    d.write(
        "pick.ker",
        "kernel pick(x: f32[N], t: i32[K]) -> (y: f32[K], z: f32[N]) { y[k] = x[t[k]]; z = x * 2.0; }\n",
    );
    let x = Tensor::from_f32(vec![4], vec![1.0, 2.0, 3.0, 4.0]).unwrap();
    d.write("x.npy", write_npy(&x, false));
    d.write("good.npy", write_npy(&Tensor::from_i32(vec![2], vec![3, 0]).unwrap(), false));
    d.write("bad.npy", write_npy(&Tensor::from_i32(vec![2], vec![1, 9]).unwrap(), false));
    let o = kc(&d.0, &["run", "pick.ker", "-i", "x=x.npy", "-i", "t=good.npy", "--out", "o"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let before: Vec<_> = ["o/y.npy", "o/z.npy"].iter().map(|p| std::fs::read(d.path(p)).unwrap()).collect();
    for backend in ["jit", "sim", "interp"] {
        let o = kc(&d.0, &["run", "pick.ker", "-i", "x=x.npy", "-i", "t=bad.npy", "--out", "o", "--backend", backend]);
        assert_eq!(code(&o), 1, "{backend}: {}", stderr(&o));
        assert!(stderr(&o).contains("error[E0803]"), "{backend}: {}", stderr(&o));
        let after: Vec<_> = ["o/y.npy", "o/z.npy"].iter().map(|p| std::fs::read(d.path(p)).unwrap()).collect();
        assert_eq!(before, after, "{backend}: outputs changed");
        let names: Vec<_> = std::fs::read_dir(d.path("o")).unwrap().flatten().map(|e| e.file_name()).collect();
        assert_eq!(names.len(), 2, "{backend}: {names:?}");
    }
}

/// A run killed at any moment leaves no half-written `.npy`: each output file either is not there or is
/// whole (outputs are written to temporary files, then renamed). The kills land at several points of a
/// run that writes 64 MiB.
#[test]
fn a_killed_run_leaves_no_half_written_output() {
    let d = TempDir::new("killed");
    d.write("big.ker", "kernel big(x: f32[N, N]) -> y: f32[N, N] { y = x * 2.0 + 1.0; }\n");
    for (i, ms) in [0u64, 20, 60, 120, 250, 500, 1000, 2000].iter().enumerate() {
        let out = format!("o{i}");
        let mut child = Command::new(env!("CARGO_BIN_EXE_kc"))
            .current_dir(&d.0)
            .args(["run", "big.ker", "--dims", "N=4096", "--random", "1", "--out", &out])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(*ms));
        let _ = child.kill();
        let _ = child.wait();
        let y = d.path(&format!("{out}/y.npy"));
        if y.exists() {
            let t = read(y);
            assert_eq!(t.shape, vec![4096, 4096], "killed after {ms} ms");
        }
    }
    // And a run left alone writes the whole output.
    let o = kc(&d.0, &["run", "big.ker", "--dims", "N=4096", "--random", "1", "--out", "last"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(read(d.path("last/y.npy")).shape, vec![4096, 4096]);
}

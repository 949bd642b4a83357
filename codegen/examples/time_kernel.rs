//! Times the stages of one kernel in process, for profiling the JIT (`perf record` on it sees the compiled
//! code as `[JIT]` frames and the host routines by name):
//!
//! ```sh
//! cargo build --release --example time_kernel -p kc-codegen
//! KC_TARGET=host KC_TIME=1 ./target/release/examples/time_kernel kernels/matmul.ker M=2048,N=2048,K=2048 1 5
//! ```
//!
//! Arguments: the `.ker` file (its first kernel), the dims, the threads (1), the runs (5). It prints the
//! tiling and code-generation times, then each run's time. `KC_TARGET` picks the target (ascend910b),
//! `KC_DUMP=1` prints the tile program after copy forwarding, `KC_TIME=1` splits each run into global-memory
//! setup, launches and results. Inputs are seeded random values (`kc run --random 0`'s).
use std::collections::BTreeMap;
fn main() {
    let a: Vec<String> = std::env::args().collect();
    if a.len() < 3 {
        eprintln!("usage: time_kernel FILE.ker NAME=N,... [THREADS] [RUNS]");
        std::process::exit(2);
    }
    let file = &a[1];
    let dims: BTreeMap<String, i64> = a[2]
        .split(',')
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap();
            (k.to_string(), v.parse().unwrap())
        })
        .collect();
    let threads: usize = a.get(3).map(|s| s.parse().unwrap()).unwrap_or(1);
    let reps: usize = a.get(4).map(|s| s.parse().unwrap()).unwrap_or(5);
    let src = std::fs::read_to_string(file).unwrap();
    let mut sm = kc_frontend::SourceMap::new();
    let id = sm.add(file.clone(), src.clone());
    let (prog, diags) = kc_frontend::compile(&mut sm, id, &kc_frontend::NoLoader);
    assert!(diags.iter().all(|d| !d.is_error()), "{diags:?}");
    let g = &prog.kernels[0];
    let given = kc_ir::launch::Args { tensors: BTreeMap::new(), dims };
    let args = kc_runtime::random::random_args(g, &given, 0).unwrap();
    let target = kc_ir::target::Target::builtin(&std::env::var("KC_TARGET").unwrap_or("ascend910b".into())).unwrap();
    let b = kc_ir::launch::bind(g, &args).unwrap();
    let t0 = std::time::Instant::now();
    let (_, tp, _, _) = kc_ir::passes::tile::fuse_and_tile(g, &b, &target).unwrap();
    let t1 = std::time::Instant::now();
    if std::env::var("KC_DUMP").is_ok() {
        dump(&tp);
    }
    let c = kc_codegen::compile(&tp, &Default::default()).unwrap();
    let t2 = std::time::Instant::now();
    eprintln!("tile {:?} codegen {:?}", t1 - t0, t2 - t1);
    for _ in 0..reps {
        let t = std::time::Instant::now();
        let r = c.run(&tp, g, &args, threads, &Default::default()).unwrap();
        eprintln!("run {:?}", t.elapsed());
        drop(r);
    }
}
#[allow(dead_code)]
fn dump(tp: &kc_ir::tile::TileProgram) {
    let mut t = tp.clone();
    for l in t.launches.iter_mut() {
        let c = kc_codegen::forward::forward(tp, l, &l.cube);
        let v = kc_codegen::forward::forward(tp, l, &l.vector);
        l.cube = c;
        l.vector = v;
    }
    eprintln!("{}", kc_ir::tile::print::print_program(&t));
}

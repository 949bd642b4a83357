//! Inputs that compile without a diagnostic go further: every kernel is launched in the interpreter on
//! random arguments with every free dim 3, under small limits, and, when its dims bind, fused and tiled for
//! ascend910b. Errors are fine; panics, hangs and overflows are bugs.
#![no_main]

use kc_ir::interp::Limits;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(program) = kc_fuzz::clean_program(data) else { return };
    let limits = Limits { max_bytes: 64 << 20, max_work: 10_000_000 };
    let target = kc_ir::target::Target::builtin("ascend910b").expect("the built-in target");
    for g in &program.kernels {
        let Some(given) = kc_fuzz::small_dims(g, 3) else { continue };
        let Ok(args) = kc_runtime::random::random_args(g, &given, 1) else { continue };
        let _ = kc_ir::interp::run_with(g, &args, &limits);
        if let Ok(b) = kc_ir::launch::bind(g, &args) {
            let _ = kc_ir::passes::tile::fuse_and_tile(g, &b, &target);
        }
    }
});

//! Generates the parser from `src/grammar.lalrpop` into `$OUT_DIR/grammar.rs`.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if let Err(e) = lalrpop::Configuration::new().use_cargo_dir_conventions().emit_rerun_directives(true).process() {
        eprintln!("lalrpop failed: {e}");
        std::process::exit(1);
    }
}

//! Developer tool: prints the graph IR (or the rendered diagnostics) of .ker files.
//! `cargo run -p kc-frontend --example lower_dump -- FILE...`
use kc_frontend::{compile, render, Loader, SourceMap};

struct Fs;
impl Loader for Fs {
    fn load(&self, from: &str, path: &str) -> Result<(String, String), String> {
        let p = std::path::Path::new(from).parent().unwrap_or(std::path::Path::new(".")).join(path);
        let name = p.to_string_lossy().to_string();
        std::fs::read_to_string(&p).map(|t| (name.clone(), t)).map_err(|e| format!("cannot read `{name}`: {e}"))
    }
}

fn main() {
    for f in std::env::args().skip(1) {
        let text = std::fs::read_to_string(&f).unwrap_or_default();
        let mut sm = SourceMap::new();
        let id = sm.add(f.clone(), text);
        let (prog, diags) = compile(&mut sm, id, &Fs);
        print!("{}", render(&diags, &sm, false));
        print!("{}", kc_ir::print::print_program(&prog));
    }
}

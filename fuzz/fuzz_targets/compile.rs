//! Arbitrary bytes through the whole frontend (lex, parse, `use` through a fixed in-memory loader, lower,
//! type and shape checks, the IR verifier), then the diagnostics rendered, plain and colored.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut sources = kc_frontend::SourceMap::new();
    let root = sources.add("fuzz.ker", kc_fuzz::text(data));
    let (_program, diags) = kc_frontend::compile(&mut sources, root, &kc_fuzz::MapLoader);
    let _ = kc_frontend::render(&diags, &sources, false);
    let _ = kc_frontend::render(&diags, &sources, true);
});

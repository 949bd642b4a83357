//! Arbitrary bytes through the lexer and the parser only (and the AST printer).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let src = kc_fuzz::text(data);
    let file = kc_ir::FileId(0);
    let (tokens, _) = kc_frontend::lexer::lex(file, &src);
    for &(l, _, r) in &tokens {
        assert!(l <= r && r <= src.len() && src.is_char_boundary(l) && src.is_char_boundary(r), "token span {l}..{r}");
    }
    let (module, diags) = kc_frontend::parser::parse(file, &src);
    for d in &diags {
        let s = d.primary.span;
        assert!(
            s.start <= s.end && s.end as usize <= src.len(),
            "diagnostic span {}..{} of {}",
            s.start,
            s.end,
            src.len()
        );
    }
    let _ = kc_frontend::ast_print::print_module(&module);
});

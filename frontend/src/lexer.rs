//! The `.ker` lexer (logos): source text to a vector of `(start, Token, end)` byte-offset triples.
//!
//! Never fails: a character that is not part of the language becomes an [`Token::Error`] token (adjacent
//! bad characters are merged into one) and an `E0001` diagnostic, so the parser can go on. Comments and
//! whitespace are skipped. `///` doc comments directly followed (possibly after more doc lines) by `kernel`
//! or `fn` are merged into one [`Token::DocComment`]; any other doc comment is dropped.

use kc_ir::{Code, Diagnostic, FileId, Span};
use logos::Logos;

/// A token of `.ker`.
#[derive(Clone, Debug, PartialEq)]
pub enum Token {
    /// `[A-Za-z_][A-Za-z0-9_]*` that is not a keyword (element types such as `f32` and `_` included).
    Ident(String),
    /// A decimal integer literal that fits in `i64`.
    Int(i64),
    /// A float literal: `0.5`, `1e-6`, `1.5e3`.
    Float(f64),
    /// A string literal, without its quotes.
    Str(String),
    /// The text of one or more `///` lines (each without `///` and one following space), joined by `\n`.
    DocComment(String),
    // Keywords.
    Kernel,
    Fn,
    Let,
    For,
    In,
    Return,
    Use,
    Where,
    Inout,
    Dim,
    True,
    False,
    Inf,
    // Punctuation.
    LParen,
    RParen,
    LBracket,
    RBracket,
    LBrace,
    RBrace,
    Comma,
    Semi,
    Colon,
    Arrow,
    DotDot,
    Assign,
    Plus,
    Minus,
    Star,
    Slash,
    Percent,
    At,
    EqEq,
    NotEq,
    Lt,
    Le,
    Gt,
    Ge,
    AndAnd,
    OrOr,
    Bang,
    /// `#`, which starts an attribute: `#[unfused]`.
    Hash,
    /// Text the lexer could not read (already reported); the parser treats it as a broken expression.
    Error,
}

impl Token {
    /// How the token is written, for messages (`kernel`, `(`, `an identifier`...).
    pub fn describe(&self) -> String {
        match self {
            Token::Ident(s) => format!("`{s}`"),
            Token::Int(v) => format!("`{v}`"),
            Token::Float(v) => format!("`{v:?}`"),
            Token::Str(s) => format!("string literal `\"{s}\"`"),
            Token::DocComment(_) => "a doc comment".to_string(),
            Token::Error => "an invalid token".to_string(),
            other => format!("`{}`", other.text()),
        }
    }

    /// The fixed text of a keyword or punctuation token (empty for tokens that carry a value).
    pub fn text(&self) -> &'static str {
        match self {
            Token::Kernel => "kernel",
            Token::Fn => "fn",
            Token::Let => "let",
            Token::For => "for",
            Token::In => "in",
            Token::Return => "return",
            Token::Use => "use",
            Token::Where => "where",
            Token::Inout => "inout",
            Token::Dim => "dim",
            Token::True => "true",
            Token::False => "false",
            Token::Inf => "inf",
            Token::LParen => "(",
            Token::RParen => ")",
            Token::LBracket => "[",
            Token::RBracket => "]",
            Token::LBrace => "{",
            Token::RBrace => "}",
            Token::Comma => ",",
            Token::Semi => ";",
            Token::Colon => ":",
            Token::Arrow => "->",
            Token::DotDot => "..",
            Token::Assign => "=",
            Token::Plus => "+",
            Token::Minus => "-",
            Token::Star => "*",
            Token::Slash => "/",
            Token::Percent => "%",
            Token::At => "@",
            Token::EqEq => "==",
            Token::NotEq => "!=",
            Token::Lt => "<",
            Token::Le => "<=",
            Token::Gt => ">",
            Token::Ge => ">=",
            Token::AndAnd => "&&",
            Token::OrOr => "||",
            Token::Bang => "!",
            Token::Hash => "#",
            Token::Ident(_) | Token::Int(_) | Token::Float(_) | Token::Str(_) | Token::DocComment(_) | Token::Error => {
                ""
            }
        }
    }
}

/// The raw logos token kinds; values are read from the slice afterwards so that errors can be reported.
#[derive(Logos, Clone, Copy, Debug, PartialEq)]
enum Raw {
    #[regex(r"[ \t\r\n\f\u{FEFF}]+")]
    Whitespace,
    // `////...` is longer as a comment than as a doc comment, so it stays an ordinary comment.
    #[regex(r"//[^\n]*", allow_greedy = true)]
    Comment,
    #[regex(r"///([^/\n][^\n]*)?", priority = 20, allow_greedy = true)]
    Doc,
    #[regex(r"[A-Za-z_][A-Za-z0-9_]*")]
    Ident,
    #[regex(r"[0-9]+")]
    Int,
    #[regex(r"[0-9]+\.[0-9]+([eE][+-]?[0-9]+)?")]
    #[regex(r"[0-9]+[eE][+-]?[0-9]+")]
    Float,
    #[regex(r#""[^"\n]*""#)]
    Str,
    #[regex(r#""[^"\n]*"#)]
    UnterminatedStr,
    #[token("kernel")]
    Kernel,
    #[token("fn")]
    Fn,
    #[token("let")]
    Let,
    #[token("for")]
    For,
    #[token("in")]
    In,
    #[token("return")]
    Return,
    #[token("use")]
    Use,
    #[token("where")]
    Where,
    #[token("inout")]
    Inout,
    #[token("dim")]
    Dim,
    #[token("true")]
    True,
    #[token("false")]
    False,
    #[token("inf")]
    Inf,
    #[token("(")]
    LParen,
    #[token(")")]
    RParen,
    #[token("[")]
    LBracket,
    #[token("]")]
    RBracket,
    #[token("{")]
    LBrace,
    #[token("}")]
    RBrace,
    #[token(",")]
    Comma,
    #[token(";")]
    Semi,
    #[token(":")]
    Colon,
    #[token("->")]
    Arrow,
    #[token("..")]
    DotDot,
    #[token("=")]
    Assign,
    #[token("+")]
    Plus,
    #[token("-")]
    Minus,
    #[token("*")]
    Star,
    #[token("/")]
    Slash,
    #[token("%")]
    Percent,
    #[token("@")]
    At,
    #[token("==")]
    EqEq,
    #[token("!=")]
    NotEq,
    #[token("<")]
    Lt,
    #[token("<=")]
    Le,
    #[token(">")]
    Gt,
    #[token(">=")]
    Ge,
    #[token("&&")]
    AndAnd,
    #[token("||")]
    OrOr,
    #[token("!")]
    Bang,
    #[token("#")]
    Hash,
}

fn fixed(raw: Raw) -> Option<Token> {
    Some(match raw {
        Raw::Kernel => Token::Kernel,
        Raw::Fn => Token::Fn,
        Raw::Let => Token::Let,
        Raw::For => Token::For,
        Raw::In => Token::In,
        Raw::Return => Token::Return,
        Raw::Use => Token::Use,
        Raw::Where => Token::Where,
        Raw::Inout => Token::Inout,
        Raw::Dim => Token::Dim,
        Raw::True => Token::True,
        Raw::False => Token::False,
        Raw::Inf => Token::Inf,
        Raw::LParen => Token::LParen,
        Raw::RParen => Token::RParen,
        Raw::LBracket => Token::LBracket,
        Raw::RBracket => Token::RBracket,
        Raw::LBrace => Token::LBrace,
        Raw::RBrace => Token::RBrace,
        Raw::Comma => Token::Comma,
        Raw::Semi => Token::Semi,
        Raw::Colon => Token::Colon,
        Raw::Arrow => Token::Arrow,
        Raw::DotDot => Token::DotDot,
        Raw::Assign => Token::Assign,
        Raw::Plus => Token::Plus,
        Raw::Minus => Token::Minus,
        Raw::Star => Token::Star,
        Raw::Slash => Token::Slash,
        Raw::Percent => Token::Percent,
        Raw::At => Token::At,
        Raw::EqEq => Token::EqEq,
        Raw::NotEq => Token::NotEq,
        Raw::Lt => Token::Lt,
        Raw::Le => Token::Le,
        Raw::Gt => Token::Gt,
        Raw::Ge => Token::Ge,
        Raw::AndAnd => Token::AndAnd,
        Raw::OrOr => Token::OrOr,
        Raw::Bang => Token::Bang,
        Raw::Hash => Token::Hash,
        Raw::Whitespace
        | Raw::Comment
        | Raw::Doc
        | Raw::Ident
        | Raw::Int
        | Raw::Float
        | Raw::Str
        | Raw::UnterminatedStr => return None,
    })
}

/// Moves `i` forward to the next char boundary of `s` (or its end).
fn ceil_boundary(s: &str, mut i: usize) -> usize {
    if i >= s.len() {
        return s.len();
    }
    while !s.is_char_boundary(i) {
        i += 1;
    }
    i
}

/// A short, printable form of a source slice for messages.
fn shown(text: &str) -> String {
    let mut out: String = text.chars().take(24).flat_map(char::escape_default).collect();
    if text.chars().count() > 24 {
        out.push('…');
    }
    out
}

fn invalid_token(file: FileId, src: &str, start: usize, end: usize) -> Diagnostic {
    let text = src.get(start..end).unwrap_or("");
    let d =
        Diagnostic::error(Code::InvalidToken, Span::new(file, start, end), format!("invalid token `{}`", shown(text)))
            .with_label("not part of the language");
    match text {
        "&" => d.with_help("the logical and is `&&`"),
        "|" => d.with_help("the logical or is `||`"),
        "." => d.with_help("a range is written `LO..HI`; a float literal needs digits on both sides of `.`"),
        "'" => d.with_help("string literals use double quotes"),
        _ => d,
    }
}

/// Lexes `src`. Returns the tokens (with byte offsets) and the lexical errors (`E0001`..`E0003`).
pub fn lex(file: FileId, src: &str) -> (Vec<(usize, Token, usize)>, Vec<Diagnostic>) {
    let mut toks: Vec<(usize, Token, usize)> = Vec::new();
    let mut diags: Vec<Diagnostic> = Vec::new();
    // Index into `diags` of the E0001 for the last token if that token is a merged invalid run.
    let mut open_error: Option<usize> = None;
    let mut lexer = Raw::lexer(src);
    while let Some(res) = lexer.next() {
        let span = lexer.span();
        let (start, mut end) = (span.start.min(src.len()), span.end.min(src.len()));
        let raw = match res {
            Ok(raw) => raw,
            Err(()) => {
                // Cover whole characters; if logos stopped inside one, skip the rest of it.
                let fixed_end = ceil_boundary(src, end.max(start + 1));
                if fixed_end > end {
                    lexer.bump(fixed_end - end);
                    end = fixed_end;
                }
                match (open_error, toks.last_mut()) {
                    (Some(di), Some(last)) if last.1 == Token::Error && last.2 == start => {
                        last.2 = end;
                        let s = last.0;
                        diags[di] = invalid_token(file, src, s, end);
                    }
                    _ => {
                        toks.push((start, Token::Error, end));
                        diags.push(invalid_token(file, src, start, end));
                        open_error = Some(diags.len() - 1);
                    }
                }
                continue;
            }
        };
        let slice = src.get(start..end).unwrap_or("");
        let tok = match raw {
            Raw::Whitespace | Raw::Comment => continue,
            Raw::Doc => {
                let text = slice.strip_prefix("///").unwrap_or("");
                let text = text.strip_prefix(' ').unwrap_or(text);
                let text = text.strip_suffix('\r').unwrap_or(text);
                Token::DocComment(text.to_string())
            }
            Raw::Ident => Token::Ident(slice.to_string()),
            Raw::Int => match slice.parse::<i64>() {
                Ok(v) => Token::Int(v),
                Err(_) => {
                    diags.push(
                        Diagnostic::error(
                            Code::BadNumber,
                            Span::new(file, start, end),
                            format!("integer literal `{}` does not fit in 64 bits", shown(slice)),
                        )
                        .with_label("out of range"),
                    );
                    Token::Error
                }
            },
            Raw::Float => match slice.parse::<f64>() {
                Ok(v) if v.is_finite() => Token::Float(v),
                _ => {
                    diags.push(
                        Diagnostic::error(
                            Code::BadNumber,
                            Span::new(file, start, end),
                            format!("float literal `{}` is out of range", shown(slice)),
                        )
                        .with_label("too large for a 64-bit float")
                        .with_help("write `inf` for infinity"),
                    );
                    Token::Error
                }
            },
            Raw::Str => {
                let inner = slice.get(1..slice.len().saturating_sub(1)).unwrap_or("");
                Token::Str(inner.to_string())
            }
            Raw::UnterminatedStr => {
                diags.push(
                    Diagnostic::error(
                        Code::UnterminatedString,
                        Span::new(file, start, end),
                        "unterminated string literal",
                    )
                    .with_label("this string has no closing `\"`")
                    .with_help("a string literal ends with `\"` on the same line"),
                );
                Token::Error
            }
            other => match fixed(other) {
                Some(t) => t,
                None => Token::Error,
            },
        };
        open_error = None;
        toks.push((start, tok, end));
    }
    (attach_docs(toks), diags)
}

/// Merges runs of doc-comment tokens that directly precede `kernel` or `fn`; drops the others.
fn attach_docs(toks: Vec<(usize, Token, usize)>) -> Vec<(usize, Token, usize)> {
    let mut out = Vec::with_capacity(toks.len());
    let mut run: Vec<(usize, String, usize)> = Vec::new();
    for (s, t, e) in toks {
        match t {
            Token::DocComment(text) => run.push((s, text, e)),
            other => {
                if !run.is_empty() {
                    if matches!(other, Token::Kernel | Token::Fn) {
                        let start = run.first().map(|r| r.0).unwrap_or(s);
                        let end = run.last().map(|r| r.2).unwrap_or(s);
                        let text: Vec<String> = run.drain(..).map(|r| r.1).collect();
                        out.push((start, Token::DocComment(text.join("\n")), end));
                    } else {
                        run.clear();
                    }
                }
                out.push((s, other, e));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(src: &str) -> Vec<Token> {
        lex(FileId(0), src).0.into_iter().map(|t| t.1).collect()
    }

    #[test]
    fn ranges_and_floats() {
        assert_eq!(kinds("0..N"), vec![Token::Int(0), Token::DotDot, Token::Ident("N".into())]);
        assert_eq!(
            kinds("0.5 1e-6 2.0315 1.5e3 3E+2 2e"),
            vec![
                Token::Float(0.5),
                Token::Float(1e-6),
                Token::Float(2.0315),
                Token::Float(1.5e3),
                Token::Float(3e2),
                Token::Int(2),
                Token::Ident("e".into())
            ]
        );
        assert_eq!(kinds("1..2"), vec![Token::Int(1), Token::DotDot, Token::Int(2)]);
    }

    #[test]
    fn keywords_and_idents() {
        assert_eq!(
            kinds("kernel kernels _ f32 where inf"),
            vec![
                Token::Kernel,
                Token::Ident("kernels".into()),
                Token::Ident("_".into()),
                Token::Ident("f32".into()),
                Token::Where,
                Token::Inf
            ]
        );
        assert_eq!(
            kinds("-> .. <= >= == != && || ! = < > -"),
            vec![
                Token::Arrow,
                Token::DotDot,
                Token::Le,
                Token::Ge,
                Token::EqEq,
                Token::NotEq,
                Token::AndAnd,
                Token::OrOr,
                Token::Bang,
                Token::Assign,
                Token::Lt,
                Token::Gt,
                Token::Minus
            ]
        );
    }

    #[test]
    fn attributes() {
        assert_eq!(
            kinds("#[tile(t: 64)]"),
            vec![
                Token::Hash,
                Token::LBracket,
                Token::Ident("tile".into()),
                Token::LParen,
                Token::Ident("t".into()),
                Token::Colon,
                Token::Int(64),
                Token::RParen,
                Token::RBracket
            ]
        );
        let (_, d) = lex(FileId(0), "# [unfused]");
        assert!(d.is_empty());
    }

    #[test]
    fn comments_and_docs() {
        assert_eq!(kinds("\u{feff}a"), vec![Token::Ident("a".into())]);
        assert_eq!(kinds("a // b\nc"), vec![Token::Ident("a".into()), Token::Ident("c".into())]);
        assert_eq!(kinds("/// one\n///two\nkernel"), vec![Token::DocComment("one\ntwo".into()), Token::Kernel]);
        assert_eq!(kinds("//// not a doc\nfn"), vec![Token::Fn]);
        assert_eq!(kinds("/// dropped\nlet"), vec![Token::Let]);
        assert_eq!(kinds("///\nfn"), vec![Token::DocComment(String::new()), Token::Fn]);
    }

    #[test]
    fn errors() {
        let (t, d) = lex(FileId(0), "a $$ é b");
        assert_eq!(t.len(), 4);
        assert_eq!(d.len(), 2);
        assert!(d.iter().all(|d| d.code == Code::InvalidToken));
        let (_, d) = lex(FileId(0), "99999999999999999999999");
        assert_eq!(d[0].code, Code::BadNumber);
        let (_, d) = lex(FileId(0), "use \"abc;\nx");
        assert_eq!(d[0].code, Code::UnterminatedString);
        let (t, _) = lex(FileId(0), "use \"a/b.ker\";");
        assert_eq!(t[1].1, Token::Str("a/b.ker".into()));
    }
}

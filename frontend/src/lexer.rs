//! lexer (being written)

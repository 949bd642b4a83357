//! parser (being written)

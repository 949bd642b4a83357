//! The tile IR verifier (being written).

//! The graph IR verifier (being written).

//! The tile IR simulator (being written).

//! The tile IR printer (being written).

//! The graph IR printer (being written).

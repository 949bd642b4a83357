//! Passes over the graph IR. Each is a function of its input and a config; none keeps hidden state.

pub mod copies;
pub mod empty;
pub mod fuse;
pub mod symmetry;
pub mod tile;

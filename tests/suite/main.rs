//! kc's data-driven test suite: one test binary.

mod common;
mod kernels;
mod props;
mod reference;
mod robustness;
mod snapshots;

//! kc's data-driven test suite: one test binary.

mod common;
mod cost;
mod differential;
mod estimate;
mod fusion;
mod hints;
mod huge;
mod inplace;
mod jit;
mod kernels;
mod props;
mod reference;
mod reuse;
mod robustness;
mod snapshots;
mod tiled;
mod tiling;
mod tiling_cube;
mod tiling_gather;
mod tiling_grouped;
mod tiling_lib;
mod tiling_reduce;
mod tiling_rows;
mod tiling_score;
mod tiling_score_bwd;
mod tiling_wide;

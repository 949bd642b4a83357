//! `kc-runtime`: what runs around a kernel on the host: tensors on disk ([`npy`]), seeded random inputs for
//! a kernel's signature ([`random`]), one-line summaries of results ([`summary`]) and comparisons with the
//! interpreter ([`compare`]); global memory for the executors of tile programs ([`gm`]); the functional
//! simulator ([`sim`]); and for compiled programs the core ABI, the executor ([`native`]) and the host
//! routines that stand for the NPU's units ([`host`]).
//!
//! Like every crate but the CLI, it does no IO of its own: it turns bytes into tensors and back.

pub mod alloc;
pub mod compare;
pub mod gm;
pub mod host;
pub mod inplace;
pub mod native;
pub mod npy;
pub mod random;
pub mod reuse;
pub mod sim;
pub mod summary;

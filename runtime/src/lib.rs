//! `kc-runtime`: what runs around a kernel on the host: tensors on disk ([`npy`]), seeded random inputs for
//! a kernel's signature ([`random`]), and one-line summaries of results ([`summary`]).
//!
//! Like every crate but the CLI, it does no IO of its own: it turns bytes into tensors and back.

pub mod host;
pub mod npy;
pub mod random;
pub mod sim;
pub mod summary;

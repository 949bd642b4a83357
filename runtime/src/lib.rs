//! kc-runtime

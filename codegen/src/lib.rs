//! kc-codegen

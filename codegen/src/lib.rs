//! kc-codegen

pub mod math;

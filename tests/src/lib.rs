//! kc's test support: the random kernel generator and the differential runner (the suite lives in suite/).

pub mod diff;
pub mod gen;

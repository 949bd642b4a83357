//! The static report of a tiled kernel (`kc build --emit report`).

use crate::graph::Graph;
use crate::passes::fuse::Fusion;
use crate::target::Target;
use crate::tile::TileProgram;

pub struct Report {
    pub name: String,
}

impl Report {
    pub fn text(&self) -> String {
        format!("kernel {}\n", self.name)
    }
}

pub fn report(g: &Graph, _f: &Fusion, _tp: &TileProgram, _target: &Target) -> Report {
    Report { name: g.name.clone() }
}

pub fn json(r: &[Report]) -> String {
    format!("{{\"kernels\": {}}}\n", r.len())
}

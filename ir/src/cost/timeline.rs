//! The timeline the cycle model records (for `--emit trace` and `--emit timeline`): what each pipe of each
//! core did when, and the flags that ordered them. Times are in cycles of the target's clock, counted from
//! the start of the kernel (launches run one after another).

use crate::tile::Pipe;

/// A core of a launch: a cube core or a vector core, by its index among the launch's cores of that kind.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CoreRef {
    pub cube: bool,
    pub index: u32,
}

impl CoreRef {
    /// `cube 3` / `vector 7`.
    pub fn name(self) -> String {
        format!("{} {}", if self.cube { "cube" } else { "vector" }, self.index)
    }
}

/// One instruction, or a run of identical back-to-back instructions (`count` of them), on one pipe.
#[derive(Clone, Debug, PartialEq)]
pub struct Slice {
    /// Index into [`Timeline::launches`].
    pub launch: u32,
    pub core: CoreRef,
    pub pipe: Pipe,
    pub start: f64,
    pub end: f64,
    /// What ran: `copy gm->l1`, `mmad`, `vector`, `reduce`, `library`, `gather`, ...
    pub name: String,
    /// How many instructions the slice stands for (1 unless coalesced).
    pub count: u32,
    /// Bytes moved (copies) or elements computed (vector) or flops (mmad), summed over the run.
    pub amount: u64,
}

/// A flag that ordered two pipes: set on `from` at `set_at`, consumed by `to` at `wait_at` (the moment
/// the waiting pipe could go on). `cross` flags go between cores (`from.0 != to.0`).
#[derive(Clone, Debug, PartialEq)]
pub struct Flow {
    pub launch: u32,
    pub from: (CoreRef, Pipe),
    pub to: (CoreRef, Pipe),
    pub set_at: f64,
    pub wait_at: f64,
    pub cross: bool,
    /// `MTE2->V #0`, `cross #3`.
    pub label: String,
}

/// One launch's span on the chip.
#[derive(Clone, Debug, PartialEq)]
pub struct LaunchSpan {
    pub name: String,
    pub start: f64,
    pub end: f64,
    pub cube_cores: u32,
    pub vector_cores: u32,
}

/// Everything the model recorded for one kernel.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Timeline {
    pub kernel: String,
    pub target: String,
    pub clock_ghz: f64,
    pub launches: Vec<LaunchSpan>,
    pub slices: Vec<Slice>,
    pub flows: Vec<Flow>,
    /// Whether recording stopped early because the timeline grew past its limit (slices and flows after
    /// that point are missing; the estimate itself is complete).
    pub truncated: bool,
}

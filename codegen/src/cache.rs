//! The process's cache of compiled kernels, keyed by what determines the machine code: the kernel's source
//! text and name, the dims it is specialized to and the target it is tiled for.
//!
//! [`get_or_compile`] returns the cached tile program and machine code for a key, or builds them once with
//! the caller's closure (tiling and [`crate::compile`]) and keeps them for the life of the process. Failed
//! builds are not cached. The cache holds at most [`MAX_ENTRIES`] kernels; when full, it is emptied
//! (entries still in use live on through their `Arc`s).

use crate::lower::Compiled;
use kc_ir::diag::Diagnostic;
use kc_ir::tile::TileProgram;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

/// The most kernels kept.
pub const MAX_ENTRIES: usize = 256;

/// What a compiled kernel is specialized to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Key {
    /// The source text of the file that defines the kernel (with the files it `use`s, if the caller has
    /// them: anything that changes the kernel).
    pub source: String,
    pub kernel: String,
    pub dims: BTreeMap<String, i64>,
    /// The target's whole description (a target file may change under the same name).
    pub target: String,
}

/// A compiled kernel: its tile program and the machine code.
pub struct Kernel {
    pub program: TileProgram,
    pub code: Compiled,
}

static CACHE: Mutex<Option<HashMap<Key, Arc<Kernel>>>> = Mutex::new(None);

/// The kernel for `key`: from the cache, or built by `build` (and then cached). Whether it was cached.
pub fn get_or_compile(
    key: Key,
    build: impl FnOnce() -> Result<Kernel, Vec<Diagnostic>>,
) -> Result<(Arc<Kernel>, bool), Vec<Diagnostic>> {
    if let Some(k) = CACHE.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert_with(HashMap::new).get(&key) {
        return Ok((k.clone(), true));
    }
    // Built outside the lock: another thread may build the same kernel meanwhile; the first one kept wins.
    let built = Arc::new(build()?);
    let mut guard = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    let map = guard.get_or_insert_with(HashMap::new);
    if map.len() >= MAX_ENTRIES {
        map.clear();
    }
    Ok((map.entry(key).or_insert(built).clone(), false))
}

/// How many kernels the cache holds.
pub fn len() -> usize {
    CACHE.lock().unwrap_or_else(|e| e.into_inner()).as_ref().map_or(0, HashMap::len)
}

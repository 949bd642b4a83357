//! The source map: every file the frontend has read (the standard library, the root file, its `use`s),
//! numbered by [`FileId`]. Only the CLI reads files; the frontend asks a [`Loader`] for `use`d ones.

use kc_ir::FileId;

#[derive(Clone, Debug)]
pub struct SourceFile {
    /// The name shown in diagnostics (a path as given, or `<std>`).
    pub name: String,
    pub text: String,
}

#[derive(Clone, Debug, Default)]
pub struct SourceMap {
    files: Vec<SourceFile>,
}

impl SourceMap {
    pub fn new() -> SourceMap {
        SourceMap::default()
    }

    pub fn add(&mut self, name: impl Into<String>, text: impl Into<String>) -> FileId {
        self.files.push(SourceFile { name: name.into(), text: text.into() });
        FileId(self.files.len() as u32 - 1)
    }

    pub fn get(&self, id: FileId) -> Option<&SourceFile> {
        self.files.get(id.0 as usize)
    }

    pub fn files(&self) -> impl Iterator<Item = (FileId, &SourceFile)> {
        self.files.iter().enumerate().map(|(i, f)| (FileId(i as u32), f))
    }

    /// The id of a file already in the map, by name.
    pub fn find(&self, name: &str) -> Option<FileId> {
        self.files.iter().position(|f| f.name == name).map(|i| FileId(i as u32))
    }
}

/// Reads the files that `use` lines name. `from` is the name of the file that holds the `use`, `path` the
/// string it names; the loader resolves it (relative to `from`'s folder) and returns the resolved name and
/// the text, or a message saying why it cannot.
pub trait Loader {
    fn load(&self, from: &str, path: &str) -> Result<(String, String), String>;
}

/// A loader that refuses every `use` (for sources given as a string).
pub struct NoLoader;

impl Loader for NoLoader {
    fn load(&self, _from: &str, path: &str) -> Result<(String, String), String> {
        Err(format!("cannot read `{path}`: this source was given without a file system"))
    }
}

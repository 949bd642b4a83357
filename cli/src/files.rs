//! Everything `kc` does with the file system: reading sources (the root file and the ones `use` names),
//! reading `.npy` inputs, and writing outputs atomically (a temporary file in the same folder, then a rename).

use kc_frontend::Loader;
use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};

/// A lexically normalized path: `.` components dropped, `..` folded into the folder before it where there
/// is one. Used for the names of sources, so that a file reached two ways has one name.
pub fn normalize(p: &Path) -> PathBuf {
    let mut out: Vec<Component<'_>> = Vec::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => match out.last() {
                Some(Component::Normal(_)) => {
                    out.pop();
                }
                Some(Component::RootDir | Component::Prefix(_)) => {}
                _ => out.push(c),
            },
            c => out.push(c),
        }
    }
    if out.is_empty() {
        return PathBuf::from(".");
    }
    out.iter().collect()
}

fn io_reason(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::NotFound => "no such file".to_string(),
        io::ErrorKind::PermissionDenied => "permission denied".to_string(),
        io::ErrorKind::IsADirectory => "it is a folder".to_string(),
        _ => e.to_string(),
    }
}

/// Reads a whole file, with an error message that names it.
pub fn read_bytes(path: &Path) -> Result<Vec<u8>, String> {
    if path.is_dir() {
        return Err(format!("cannot read `{}`: it is a folder", path.display()));
    }
    fs::read(path).map_err(|e| format!("cannot read `{}`: {}", path.display(), io_reason(&e)))
}

/// Reads a source file: it must be UTF-8.
pub fn read_source(path: &Path) -> Result<String, String> {
    let bytes = read_bytes(path)?;
    String::from_utf8(bytes).map_err(|e| {
        format!(
            "`{}` is not valid UTF-8: the byte at offset {} (0x{:02x}) does not start a character; .ker files are UTF-8 text",
            path.display(),
            e.utf8_error().valid_up_to(),
            e.as_bytes().get(e.utf8_error().valid_up_to()).copied().unwrap_or(0)
        )
    })
}

/// Loads `use`d files from the file system, relative to the folder of the file that holds the `use`.
pub struct FsLoader;

impl Loader for FsLoader {
    fn load(&self, from: &str, path: &str) -> Result<(String, String), String> {
        let base = Path::new(from).parent().unwrap_or(Path::new(""));
        let resolved = normalize(&base.join(path));
        let text = read_source(&resolved)?;
        Ok((resolved.display().to_string(), text))
    }
}

/// The folder a path would be written into (`.` for a bare file name).
fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Checks that `path` can be created: its folder exists.
pub fn check_parent(path: &Path) -> Result<(), String> {
    let dir = parent_dir(path);
    if !dir.is_dir() {
        return Err(format!("cannot write `{}`: the folder `{}` does not exist", path.display(), dir.display()));
    }
    Ok(())
}

/// A temporary name next to `path` (same folder, so that a rename is atomic).
fn temp_path(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "out".to_string());
    parent_dir(path).join(format!(".{name}.kc-tmp-{}", std::process::id()))
}

/// Writes several files so that none is ever half-written: every file goes to a temporary name first, and
/// only when all are written is each renamed into place. On an error the temporary files are removed.
pub fn write_all_atomic(files: &[(PathBuf, Vec<u8>)]) -> Result<(), String> {
    for (path, _) in files {
        check_parent(path)?;
        if path.is_dir() {
            return Err(format!("cannot write `{}`: it is a folder", path.display()));
        }
    }
    let mut temps: Vec<PathBuf> = Vec::with_capacity(files.len());
    let cleanup = |temps: &[PathBuf]| {
        for t in temps {
            let _ = fs::remove_file(t);
        }
    };
    for (path, bytes) in files {
        let tmp = temp_path(path);
        if let Err(e) = fs::write(&tmp, bytes) {
            let _ = fs::remove_file(&tmp);
            cleanup(&temps);
            return Err(format!("cannot write `{}`: {}", path.display(), io_reason(&e)));
        }
        temps.push(tmp);
    }
    for (i, (path, _)) in files.iter().enumerate() {
        if let Err(e) = fs::rename(&temps[i], path) {
            cleanup(&temps[i..]);
            return Err(format!("cannot write `{}`: {}", path.display(), io_reason(&e)));
        }
    }
    Ok(())
}

/// Makes the output folder: it may exist already; if not, its parent must.
pub fn ensure_out_dir(dir: &Path) -> Result<(), String> {
    check_out_dir(dir)?;
    if dir.is_dir() {
        return Ok(());
    }
    fs::create_dir(dir).map_err(|e| format!("cannot create the folder `{}`: {}", dir.display(), io_reason(&e)))
}

/// Checks, before any work, that `--out DIR` will be possible.
pub fn check_out_dir(dir: &Path) -> Result<(), String> {
    if dir.is_dir() {
        return Ok(());
    }
    if dir.exists() {
        return Err(format!("cannot write into `{}`: it is not a folder", dir.display()));
    }
    let parent = parent_dir(dir);
    if !parent.is_dir() {
        return Err(format!(
            "cannot create the folder `{}`: its parent `{}` does not exist",
            dir.display(),
            parent.display()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_lexically() {
        assert_eq!(normalize(Path::new("./a/b/../c.ker")), PathBuf::from("a/c.ker"));
        assert_eq!(normalize(Path::new("../x/./y.ker")), PathBuf::from("../x/y.ker"));
        assert_eq!(normalize(Path::new("/a/../../b")), PathBuf::from("/b"));
        assert_eq!(normalize(Path::new("a/..")), PathBuf::from("."));
    }
}

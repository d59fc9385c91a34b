//! The memory directory (`DATA_DIR/memory/`, PROTOCOL.md §11.2): the only place
//! `memory.persist` writes and `memory.load` reads.
//!
//! The lexical rules (empty, NUL, `..`, absolute outside, the directory itself) are the
//! core's [`resolve_memory_path`]; this module adds what needs the file system: every
//! existing component of the path is looked at without following it (`symlink_metadata`),
//! and a symlink is followed only to check that its real target stays inside the real
//! (canonical) memory directory. Persist creates missing sub-directories one at a time
//! (0700), never through a symlink leading out, and writes through a temporary file in
//! the same directory, renamed over the target (0600, synced), so a reader never sees half
//! a snapshot. Everything here blocks: callers run it on `spawn_blocking`.
//!
//! The checks and the open are not atomic: a process that can write inside the memory
//! directory (0700: only the daemon's own user) could swap a component for a symlink
//! between them. That user can read and write the data directory anyway.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use car_projections::memory::{PathRejection, resolve_memory_path};

/// Why a path in the memory directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SandboxError {
    /// The path leads outside the memory directory (or is the directory itself).
    #[error("rejected: {0}")]
    Rejected(PathRejection),
    /// Nothing there (load only; persist creates it).
    #[error("no such file")]
    NoSuchFile,
    /// A directory (or another non-file) where a file must be.
    #[error("not a regular file")]
    NotAFile,
    /// A component before the last one is a file.
    #[error("a parent is not a directory")]
    NotADirectory,
    /// The file system failed.
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// A file in the memory directory, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    /// The real path of the file (its directory is canonical and inside the memory dir).
    pub(crate) path: PathBuf,
    /// The same, relative to the memory directory (what events carry).
    pub(crate) relative: String,
}

/// Creates the memory directory if needed (0700) and returns its canonical path.
fn memory_root(memory_dir: &Path) -> io::Result<PathBuf> {
    if !memory_dir.is_dir() {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(memory_dir)?;
    }
    fs::canonicalize(memory_dir)
}

/// Resolves `requested` (as the client gave it) to a file inside `memory_dir`: relative
/// paths land inside it, absolute ones must lie inside it (as spelled with the configured
/// directory, or with its real path). With `create_dirs` (persist), missing directories
/// on the way are created; otherwise (load) they mean [`SandboxError::NoSuchFile`].
pub(crate) fn resolve(
    memory_dir: &Path,
    requested: &str,
    create_dirs: bool,
) -> Result<Target, SandboxError> {
    let root = memory_root(memory_dir)?;
    let spelled = std::path::absolute(memory_dir)?;
    let relative = match resolve_memory_path(&spelled, requested) {
        // Whatever the spelling matched, the relative path is joined to the real root.
        Err(PathRejection::Outside) if spelled != root => resolve_memory_path(&root, requested),
        other => other,
    }
    .map_err(SandboxError::Rejected)?;
    let parts: Vec<_> = relative.components().collect();
    let Some((last, parents)) = parts.split_last() else {
        return Err(SandboxError::Rejected(PathRejection::TheDirectory));
    };
    let inside = |real: &Path| real.starts_with(&root);
    let mut dir = root.clone();
    for part in parents {
        let next = dir.join(part);
        match fs::symlink_metadata(&next) {
            Ok(meta) if meta.file_type().is_symlink() => match fs::canonicalize(&next) {
                Ok(real) if !inside(&real) => {
                    return Err(SandboxError::Rejected(PathRejection::Outside));
                }
                Ok(real) if real.is_dir() => dir = real,
                Ok(_) => return Err(SandboxError::NotADirectory),
                // A dangling link: where it would lead cannot be checked.
                Err(err) if err.kind() == io::ErrorKind::NotFound => {
                    return Err(if create_dirs {
                        SandboxError::Rejected(PathRejection::Outside)
                    } else {
                        SandboxError::NoSuchFile
                    });
                }
                Err(err) => return Err(err.into()),
            },
            Ok(meta) if meta.is_dir() => dir = next,
            Ok(_) => return Err(SandboxError::NotADirectory),
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                if !create_dirs {
                    return Err(SandboxError::NoSuchFile);
                }
                match DirBuilder::new().mode(0o700).create(&next) {
                    Ok(()) => dir = next,
                    Err(err) if err.kind() == io::ErrorKind::AlreadyExists => dir = next,
                    Err(err) => return Err(err.into()),
                }
            }
            Err(err) => return Err(err.into()),
        }
    }
    let mut path = dir.join(last);
    match fs::symlink_metadata(&path) {
        Ok(meta) if meta.file_type().is_symlink() => match fs::canonicalize(&path) {
            Ok(real) if real == root => {
                return Err(SandboxError::Rejected(PathRejection::TheDirectory));
            }
            Ok(real) if !inside(&real) => {
                return Err(SandboxError::Rejected(PathRejection::Outside));
            }
            Ok(real) if real.is_dir() => return Err(SandboxError::NotAFile),
            Ok(real) => path = real,
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                return Err(if create_dirs {
                    SandboxError::Rejected(PathRejection::Outside)
                } else {
                    SandboxError::NoSuchFile
                });
            }
            Err(err) => return Err(err.into()),
        },
        Ok(meta) if !meta.is_file() => return Err(SandboxError::NotAFile),
        Ok(_) => {}
        Err(err) if err.kind() == io::ErrorKind::NotFound => {}
        Err(err) => return Err(err.into()),
    }
    let relative = path
        .strip_prefix(&root)
        .map_err(|_| SandboxError::Rejected(PathRejection::Outside))?
        .to_string_lossy()
        .into_owned();
    Ok(Target { path, relative })
}

/// Writes `bytes` to `target` atomically: a temporary file (0600) in the same directory,
/// synced, renamed over the target, the directory synced.
pub(crate) fn write_atomic(target: &Target, bytes: &[u8]) -> io::Result<()> {
    let dir = target
        .path
        .parent()
        .ok_or_else(|| io::Error::other("the target has no directory"))?;
    let tmp = dir.join(format!(
        ".car-persist-{}.tmp",
        uuid::Uuid::new_v4().simple()
    ));
    let written = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, &target.path)
    })();
    if let Err(err) = written {
        let _ = fs::remove_file(&tmp);
        return Err(err);
    }
    File::open(dir)?.sync_all()
}

/// Reads `target`, at most `max` bytes plus one (so that a larger file is seen as larger
/// without reading it whole).
pub(crate) fn read_bounded(target: &Target, max: usize) -> Result<Vec<u8>, SandboxError> {
    let file = match File::open(&target.path) {
        Ok(file) => file,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Err(SandboxError::NoSuchFile),
        Err(err) => return Err(err.into()),
    };
    if !file.metadata()?.is_file() {
        return Err(SandboxError::NotAFile);
    }
    let mut bytes = Vec::new();
    file.take(max as u64 + 1).read_to_end(&mut bytes)?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{PermissionsExt, symlink};

    use super::*;

    fn dirs() -> (tempfile::TempDir, PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        let memory = tmp.path().join("data").join("memory");
        (tmp, memory)
    }

    #[test]
    fn relative_and_absolute_inside_paths_resolve() {
        let (_tmp, memory) = dirs();
        let t = resolve(&memory, "a.json", true).unwrap();
        assert_eq!(t.relative, "a.json");
        let abs = memory.join("b.json");
        assert_eq!(
            resolve(&memory, abs.to_str().unwrap(), true)
                .unwrap()
                .relative,
            "b.json"
        );
        let t = resolve(&memory, "sub/dir/c.json", true).unwrap();
        assert_eq!(t.relative, "sub/dir/c.json");
        let mode = fs::metadata(memory.join("sub"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o700);
        assert!(matches!(
            resolve(&memory, "missing/c.json", false),
            Err(SandboxError::NoSuchFile)
        ));
    }

    #[test]
    fn symlinks_leading_out_are_rejected_and_links_inside_followed() {
        let (tmp, memory) = dirs();
        fs::create_dir_all(&memory).unwrap();
        let outside = tmp.path().join("outside");
        fs::create_dir_all(&outside).unwrap();
        fs::write(outside.join("secret.json"), "[]").unwrap();
        symlink(&outside, memory.join("out")).unwrap();
        symlink(outside.join("secret.json"), memory.join("secret.json")).unwrap();
        symlink(outside.join("nothing.json"), memory.join("dangling.json")).unwrap();
        for (path, create) in [
            ("out/secret.json", false),
            ("out/new.json", true),
            ("secret.json", false),
            ("secret.json", true),
            ("dangling.json", true),
        ] {
            assert!(
                matches!(
                    resolve(&memory, path, create),
                    Err(SandboxError::Rejected(_))
                ),
                "{path}"
            );
        }
        assert!(!outside.join("new.json").exists());
        fs::write(memory.join("real.json"), "[]").unwrap();
        symlink("real.json", memory.join("alias.json")).unwrap();
        symlink(".", memory.join("here")).unwrap();
        assert_eq!(
            resolve(&memory, "alias.json", false).unwrap().relative,
            "real.json"
        );
        assert!(matches!(
            resolve(&memory, "here", false),
            Err(SandboxError::Rejected(PathRejection::TheDirectory))
        ));
        assert!(matches!(
            resolve(&memory, "dangling.json", false),
            Err(SandboxError::NoSuchFile)
        ));
    }

    #[test]
    fn writes_are_atomic_and_owner_only() {
        let (_tmp, memory) = dirs();
        let target = resolve(&memory, "snap.json", true).unwrap();
        write_atomic(&target, b"[1]").unwrap();
        write_atomic(&target, b"[2]").unwrap();
        assert_eq!(fs::read(&target.path).unwrap(), b"[2]");
        let mode = fs::metadata(&target.path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let names: Vec<_> = fs::read_dir(&memory).unwrap().collect();
        assert_eq!(names.len(), 1, "no temporary file is left behind");
        assert_eq!(read_bounded(&target, 2).unwrap(), b"[2]");
        assert_eq!(read_bounded(&target, 1).unwrap().len(), 2);
    }
}

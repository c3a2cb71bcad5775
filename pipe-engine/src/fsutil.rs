//! Crash-safe file writes: the one atomic-write rule every crate uses.

use std::fs;
use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};

/// Writes `bytes` to `path` atomically: see [`write_atomic_with`].
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_with(path, |file| file.write_all(bytes).map_err(Into::into))
}

/// Serializes `value` as pretty JSON, ending in a newline, to `path` atomically.
pub fn write_json_atomic<T: serde::Serialize + ?Sized>(path: &Path, value: &T) -> Result<()> {
    let mut bytes =
        serde_json::to_vec_pretty(value).with_context(|| format!("encoding {}", path.display()))?;
    bytes.push(b'\n');
    write_atomic(path, &bytes)
}

/// Lets `write` fill a sibling temp file, fsyncs it, renames it over `path` and fsyncs
/// the directory, so that after a crash a reader sees the old file or the whole new one,
/// never half of one, and a completed rename survives a power loss.
pub fn write_atomic_with(path: &Path, write: impl FnOnce(&mut fs::File) -> Result<()>) -> Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        path.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    let written = fs::File::create(&tmp)
        .map_err(anyhow::Error::from)
        .and_then(|mut file| {
            write(&mut file)?;
            file.sync_all()?;
            Ok(())
        })
        .with_context(|| format!("writing {}", tmp.display()));
    if let Err(err) = written {
        let _ = fs::remove_file(&tmp);
        return Err(err);
    }
    fs::rename(&tmp, path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    sync_dir(dir)
}

/// fsyncs a directory, so that renames into it are durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    fs::File::open(dir).and_then(|d| d.sync_all()).with_context(|| format!("syncing {}", dir.display()))
}

/// Removes a file or directory tree if it exists.
pub fn remove_path(path: &Path) -> Result<()> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(err),
    }
    .with_context(|| format!("removing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_writes_replace_whole_files_and_leave_no_temp_on_failure() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/a.json");
        write_json_atomic(&path, &serde_json::json!({"x": 1})).unwrap();
        write_atomic(&path, b"second").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"second");
        let err = write_atomic_with(&path, |_| anyhow::bail!("disk full")).unwrap_err();
        assert!(format!("{err:#}").contains("disk full"), "{err:#}");
        assert_eq!(fs::read(&path).unwrap(), b"second", "a failed write keeps the old file");
        let names: Vec<_> =
            fs::read_dir(dir.path().join("sub")).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["a.json"], "no temp file is left behind");
    }
}

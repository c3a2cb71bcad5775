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
    crate::failpoint::point("atomic-write:before-rename");
    fs::rename(&tmp, path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    crate::failpoint::point("atomic-write:after-rename");
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

/// Removes what a process that died mid-write left in `dir` (and, with `recursive`, below
/// it): the `.NAME.PID.tmp` files of [`write_atomic_with`] and of view updates, whose
/// process no longer runs. A live process's temp files are left alone. Returns how many
/// were removed.
pub fn remove_stale_temps(dir: &Path, recursive: bool) -> Result<usize> {
    let Ok(entries) = fs::read_dir(dir) else { return Ok(0) };
    let mut removed = 0;
    for entry in entries {
        let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
        let path = entry.path();
        match temp_owner(&entry.file_name().to_string_lossy()) {
            Some(pid) if !process_runs(pid) => {
                remove_path(&path)?;
                removed += 1;
            }
            _ if recursive && entry.file_type().is_ok_and(|t| t.is_dir()) => {
                removed += remove_stale_temps(&path, true)?;
            }
            _ => {}
        }
    }
    Ok(removed)
}

/// The pid in a temp file name `.NAME.PID.tmp`.
fn temp_owner(name: &str) -> Option<i32> {
    let (_, pid) = name.strip_prefix('.')?.strip_suffix(".tmp")?.rsplit_once('.')?;
    pid.parse().ok().filter(|&pid| pid > 0)
}

fn process_runs(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists; no pointers.
    let alive = unsafe { libc::kill(pid, 0) } == 0;
    alive || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_temps_of_dead_processes_are_removed_and_live_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let dead = std::process::Command::new("true").spawn().unwrap();
        let dead_pid = dead.id();
        let mut dead = dead;
        dead.wait().unwrap();
        fs::create_dir_all(dir.path().join("sub")).unwrap();
        let stale = [format!(".pipe.lock.{dead_pid}.tmp"), format!("sub/.part-3.arrow.{dead_pid}.tmp")];
        let live = format!(".pipe.lock.{}.tmp", std::process::id());
        for name in stale.iter().chain([&live, &".hidden.tmp".to_string(), &"data.tmp".to_string()]) {
            fs::write(dir.path().join(name), "x").unwrap();
        }
        assert_eq!(remove_stale_temps(dir.path(), false).unwrap(), 1);
        assert_eq!(remove_stale_temps(dir.path(), true).unwrap(), 1);
        assert!(stale.iter().all(|name| !dir.path().join(name).exists()));
        for kept in [live.as_str(), ".hidden.tmp", "data.tmp"] {
            assert!(dir.path().join(kept).exists(), "{kept}");
        }
    }

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

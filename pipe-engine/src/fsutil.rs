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
    let tmp = dir.join(temp_name(&path.file_name().unwrap_or_default().to_string_lossy()));
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

/// The temp file this process writes before renaming it to `name`: `.NAME.HOST_PID.tmp`,
/// HOST a short hash of the machine's name. On a filesystem that several machines share (a
/// cluster's), PIDs repeat across machines: the host says whose process to ask about.
pub fn temp_name(name: &str) -> String {
    format!(".{name}.{}_{}.tmp", host_tag(), std::process::id())
}

/// 8 hex digits of blake3 over this machine's host name.
fn host_tag() -> &'static str {
    static TAG: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TAG.get_or_init(|| {
        let host = fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        blake3::hash(host.trim().as_bytes()).to_hex()[..8].to_string()
    })
}

/// Another machine's temp files are removed only when this old: their process cannot be
/// asked about from here, and no single write of pipe's takes a day.
const STALE_ELSEWHERE: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// Removes what a process that died mid-write left in `dir` (and, with `recursive`, below
/// it): the temp files of [`write_atomic_with`] and of view updates ([`temp_name`]) whose
/// process no longer runs on this machine, or, written on another machine, that are over
/// a day old. A live process's temp files are left alone. Returns how many were removed.
pub fn remove_stale_temps(dir: &Path, recursive: bool) -> Result<usize> {
    let Ok(entries) = fs::read_dir(dir) else { return Ok(0) };
    let mut removed = 0;
    for entry in entries {
        let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
        let path = entry.path();
        let stale = match temp_owner(&entry.file_name().to_string_lossy()) {
            Some(TempOwner { host: None, pid }) => !process_runs(pid),
            Some(TempOwner { host: Some(host), pid }) if host == host_tag() => !process_runs(pid),
            Some(_) => entry
                .metadata()
                .and_then(|meta| meta.modified())
                .is_ok_and(|written| written.elapsed().is_ok_and(|age| age > STALE_ELSEWHERE)),
            None => false,
        };
        if stale {
            remove_path(&path)?;
            removed += 1;
        } else if recursive && entry.file_type().is_ok_and(|t| t.is_dir()) {
            removed += remove_stale_temps(&path, true)?;
        }
    }
    Ok(removed)
}

/// Who wrote a temp file.
struct TempOwner<'a> {
    /// None in names of builds before the host was recorded (`.NAME.PID.tmp`).
    host: Option<&'a str>,
    pid: i32,
}

/// The owner in a temp file name `.NAME.HOST_PID.tmp` (or `.NAME.PID.tmp`).
fn temp_owner(name: &str) -> Option<TempOwner<'_>> {
    let (_, owner) = name.strip_prefix('.')?.strip_suffix(".tmp")?.rsplit_once('.')?;
    let (host, pid) = match owner.split_once('_') {
        Some((host, pid)) if host.len() == 8 && host.bytes().all(|b| b.is_ascii_hexdigit()) => {
            (Some(host), pid)
        }
        Some(_) => return None,
        None => (None, owner),
    };
    let pid = pid.parse().ok().filter(|&pid| pid > 0)?;
    Some(TempOwner { host, pid })
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
        let here = host_tag();
        fs::create_dir_all(dir.path().join("sub")).unwrap();
        let stale = [
            format!(".pipe.lock.{here}_{dead_pid}.tmp"),
            format!("sub/.part-3.arrow.{here}_{dead_pid}.tmp"),
            format!(".old-build.json.{dead_pid}.tmp"),
            ".elsewhere-long-ago.json.0badc0de_1.tmp".to_string(),
        ];
        let live = temp_name("pipe.lock");
        // Another machine's process: pid 1 runs here too, but that says nothing about it.
        let elsewhere = ".elsewhere.json.0badc0de_1.tmp".to_string();
        let kept = [live.as_str(), elsewhere.as_str(), ".hidden.tmp", "data.tmp", ".x.zz_12.tmp"];
        for name in stale.iter().map(String::as_str).chain(kept) {
            fs::write(dir.path().join(name), "x").unwrap();
        }
        let two_days_ago = std::time::SystemTime::now() - 2 * STALE_ELSEWHERE;
        fs::File::options()
            .write(true)
            .open(dir.path().join(&stale[3]))
            .unwrap()
            .set_modified(two_days_ago)
            .unwrap();
        assert_eq!(remove_stale_temps(dir.path(), false).unwrap(), 3);
        assert_eq!(remove_stale_temps(dir.path(), true).unwrap(), 1);
        assert!(stale.iter().all(|name| !dir.path().join(name).exists()));
        for name in kept {
            assert!(dir.path().join(name).exists(), "{name}");
        }
        assert!(live.ends_with(&format!(".{here}_{}.tmp", std::process::id())), "{live}");
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

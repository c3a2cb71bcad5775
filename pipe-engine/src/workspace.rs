//! Where a project keeps things, and the lock that serializes runs on it.

use std::fs::{self, File, TryLockError};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use thiserror::Error;

use crate::reporter::Reporter;

pub struct Workspace {
    pub root: PathBuf,
    /// The pipeline file, relative to `root`.
    pub pipeline_file: PathBuf,
}

#[derive(Debug, Error)]
#[error("another `pipe` process is working in this workspace (lock {path}{}); retry later, or run without --no-wait to wait for it", if holder.is_empty() { String::new() } else { format!(", held by pid {holder}") })]
pub struct WorkspaceBusy {
    pub path: String,
    pub holder: String,
}

/// A held lock (workspace, artifact or lock-file edit); released when dropped (or the process dies).
pub struct RunLock {
    _file: File,
}

impl From<File> for RunLock {
    fn from(file: File) -> Self {
        Self { _file: file }
    }
}

impl Workspace {
    pub fn new(root: PathBuf, pipeline_file: PathBuf) -> Self {
        Self { root, pipeline_file }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.root.join("data")
    }

    pub fn store_dir(&self) -> PathBuf {
        self.data_dir().join("store")
    }

    /// A persistent cache private to one stage kind.
    pub fn kind_cache_dir(&self, kind: &str) -> PathBuf {
        self.data_dir().join("cache").join(kind)
    }

    /// pipe's own state: the run lock, the stat cache, the experiment log, executors' records.
    pub fn state_dir(&self) -> PathBuf {
        self.data_dir().join(".pipe")
    }

    /// The experiment log (`pipe exp show`).
    pub fn experiments_path(&self) -> PathBuf {
        self.state_dir().join("experiments.jsonl")
    }

    pub fn stat_cache_path(&self) -> PathBuf {
        self.state_dir().join("stat-cache.bin")
    }

    /// The name that tells pipelines apart: `pipeline` for `pipeline.yaml`.
    fn pipeline_stem(&self) -> String {
        self.pipeline_file.file_stem().unwrap_or_default().to_string_lossy().into_owned()
    }

    fn is_default_pipeline(&self) -> bool {
        self.pipeline_file == Path::new("pipeline.yaml")
    }

    /// `pipe.lock` for the root `pipeline.yaml`; `NAME.lock` beside any other pipeline file.
    pub fn lock_file_path(&self) -> PathBuf {
        if self.is_default_pipeline() {
            self.root.join("pipe.lock")
        } else {
            self.root.join(self.pipeline_file.with_extension("lock"))
        }
    }

    /// `data/out/<stage>` links to each stage's current artifact (`data/out/<pipeline>/…`
    /// for pipelines other than the default).
    pub fn views_dir(&self) -> PathBuf {
        let out = self.data_dir().join("out");
        if self.is_default_pipeline() {
            out
        } else {
            out.join(self.pipeline_stem())
        }
    }

    /// Points `data/out/<stage>` at an artifact's output directory (relative link, swapped atomically).
    pub fn update_view(&self, stage: &str, output_dir: &Path) -> Result<()> {
        let views = self.views_dir();
        // pipelines/NAME.yaml's views go to data/out/NAME/; if a stage of pipeline.yaml is
        // called NAME, that path is its view, a link into the store: never write through it.
        if fs::symlink_metadata(&views).is_ok_and(|meta| meta.file_type().is_symlink()) {
            anyhow::bail!(
                "{} is the view of a stage of another pipeline, named like this pipeline file; rename the stage or the file",
                views.strip_prefix(&self.root).unwrap_or(&views).display()
            );
        }
        fs::create_dir_all(&views).with_context(|| format!("creating {}", views.display()))?;
        let depth = views.strip_prefix(&self.root).map(|p| p.components().count()).unwrap_or(2);
        let relative_store = output_dir.strip_prefix(&self.root).unwrap_or(output_dir);
        let mut target = PathBuf::new();
        for _ in 0..depth {
            target.push("..");
        }
        target.push(relative_store);
        let link = views.join(stage);
        if fs::read_link(&link).is_ok_and(|current| current == target) {
            return Ok(());
        }
        let tmp = views.join(crate::fsutil::temp_name(stage));
        let _ = fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&target, &tmp).with_context(|| format!("linking {}", tmp.display()))?;
        crate::failpoint::point("view:before-rename");
        fs::rename(&tmp, &link).with_context(|| format!("updating {}", link.display()))
    }

    /// Removes the temp files that killed processes left in the workspace's own folders
    /// (beside the lock file, among the views, in the run state). Call it holding the lock.
    pub fn remove_stale_temps(&self) -> Result<usize> {
        let lock_dir =
            self.lock_file_path().parent().map(Path::to_path_buf).unwrap_or_else(|| self.root.clone());
        let mut removed = 0;
        for dir in [lock_dir, self.views_dir(), self.state_dir()] {
            removed += crate::fsutil::remove_stale_temps(&dir, false)?;
        }
        Ok(removed)
    }

    /// Takes the workspace lock, waiting for its holders unless `wait` is false. Runs
    /// share it (each stage they compute has a lock of its own, see
    /// [`crate::store::Store::lock_entry`]); gc and verify --remove hold it alone.
    pub fn lock(&self, mode: LockMode, wait: bool, reporter: &Reporter) -> Result<RunLock> {
        fs::create_dir_all(self.state_dir())
            .with_context(|| format!("creating {}", self.state_dir().display()))?;
        let path = self.state_dir().join("run.lock");
        let file = take_lock(&path, mode, wait, |holder| {
            let who = if holder.is_empty() {
                "other `pipe` runs".to_string()
            } else {
                format!("`pipe` (pid {holder})")
            };
            reporter.println(&format!("waiting: {who} holds {}", path.display()));
        })?;
        Ok(RunLock { _file: file })
    }

    /// Serializes edits of this pipeline's lock file between concurrent runs: each
    /// rereads the file under it and adds its own stages, so none is lost.
    pub fn lock_file_guard(&self) -> Result<RunLock> {
        let name = self.lock_file_path().file_name().unwrap_or_default().to_os_string();
        edit_lock(&self.state_dir().join(name))
    }
}

/// Waits for and takes the lock under which one process at a time rewrites `file`
/// (`FILE.edit` beside it; the directory is created if need be).
pub(crate) fn edit_lock(file: &Path) -> Result<RunLock> {
    let dir = file.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut name = file.file_name().unwrap_or_default().to_os_string();
    name.push(".edit");
    Ok(RunLock { _file: take_lock(&dir.join(name), LockMode::Exclusive, true, |_| {})? })
}

/// How a lock is held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    /// With other shared holders (runs).
    Shared,
    /// Alone (gc, verify --remove, the computation of one artifact).
    Exclusive,
}

/// Takes an advisory lock on `path` (created if missing), waiting unless `wait` is false
/// (then [`WorkspaceBusy`]); `on_wait` hears the pid of the exclusive holder, if known.
/// Exclusive holders write their pid into the file for the messages of those who wait.
pub(crate) fn take_lock(path: &Path, mode: LockMode, wait: bool, on_wait: impl FnOnce(&str)) -> Result<File> {
    let mut file = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    let tried = match mode {
        LockMode::Shared => file.try_lock_shared(),
        LockMode::Exclusive => file.try_lock(),
    };
    match tried {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let holder = fs::read_to_string(path).unwrap_or_default().trim().to_string();
            if !wait {
                return Err(WorkspaceBusy { path: path.display().to_string(), holder }.into());
            }
            on_wait(&holder);
            match mode {
                LockMode::Shared => file.lock_shared(),
                LockMode::Exclusive => file.lock(),
            }
            .with_context(|| format!("locking {}", path.display()))?;
        }
        Err(TryLockError::Error(err)) => {
            return Err(err).with_context(|| format!("locking {}", path.display()))
        }
    }
    if mode == LockMode::Exclusive {
        file.set_len(0)?;
        write!(file, "{}", std::process::id())?;
    }
    Ok(file)
}

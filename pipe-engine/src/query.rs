//! Questions about a pipeline's results, answered from its lock file and store without
//! running anything: "the current output of stage S", "the path input I of stage S reads".
//! CLI commands that use a stage's results (`pipe caption`) resolve them here, so they
//! read exactly what `pipe run` wrote and recorded.

use std::path::PathBuf;

use anyhow::{anyhow, bail, Context, Result};

use crate::lockfile::LockFile;
use crate::reporter::Reporter;
use crate::spec::{DepSource, Pipeline, StageSpec};
use crate::store::Store;
use crate::workspace::Workspace;

/// The recorded results of one pipeline.
pub struct Results<'a> {
    workspace: &'a Workspace,
    pipeline: &'a Pipeline,
    lock: LockFile,
    store: Store,
}

impl<'a> Results<'a> {
    pub fn open(workspace: &'a Workspace, pipeline: &'a Pipeline, reporter: Reporter) -> Result<Self> {
        Ok(Self {
            workspace,
            pipeline,
            lock: LockFile::load(&workspace.lock_file_path())?,
            store: Store::new(workspace.store_dir(), reporter),
        })
    }

    /// The results an earlier run recorded (an experiment's lock entries), read from the
    /// same store.
    pub fn with_lock(
        workspace: &'a Workspace,
        pipeline: &'a Pipeline,
        lock: LockFile,
        reporter: Reporter,
    ) -> Self {
        Self { workspace, pipeline, lock, store: Store::new(workspace.store_dir(), reporter) }
    }

    pub fn stage(&self, name: &str) -> Result<&'a StageSpec> {
        self.pipeline.stage(name).ok_or_else(|| {
            let names: Vec<&str> = self.pipeline.stages.iter().map(|s| s.name.as_str()).collect();
            anyhow!("{} has no stage `{name}` (stages: {})", self.pipeline.file.display(), names.join(", "))
        })
    }

    /// The output directory of the artifact the lock file records for `stage`.
    pub fn stage_output(&self, stage: &str) -> Result<PathBuf> {
        let locked = self
            .lock
            .stages
            .get(stage)
            .ok_or_else(|| anyhow!("stage {stage} has not run yet: run `pipe run {stage}`"))?;
        let dir = self.store.output_dir(&locked.fingerprint);
        if self.store.manifest(&locked.fingerprint).is_none() {
            bail!("stage {stage}: its artifact is not in the store (removed by gc?): run `pipe run {stage}`");
        }
        Ok(dir)
    }

    /// The fingerprint recorded for `stage`, if it has run.
    pub fn fingerprint(&self, stage: &str) -> Option<&str> {
        self.lock.stages.get(stage).map(|locked| locked.fingerprint.as_str())
    }

    /// What input `input` of `stage` reads: a workspace path, or a path in the current
    /// output of the stage it names.
    pub fn input_path(&self, stage: &StageSpec, input: &str) -> Result<PathBuf> {
        let dep = stage.dep(input).ok_or_else(|| anyhow!("stage {} has no `{input}` dep", stage.name))?;
        match &dep.source {
            DepSource::Workspace(path) => Ok(self.workspace.root.join(path)),
            DepSource::Stage { stage: upstream, path } => {
                let dir = self.stage_output(upstream).with_context(|| format!("resolving {}", dep.source))?;
                Ok(path.as_ref().map(|p| dir.join(p)).unwrap_or(dir))
            }
        }
    }

    /// The stage that produces input `input` of `stage`, if a stage does.
    pub fn input_stage(&self, stage: &StageSpec, input: &str) -> Option<&'a StageSpec> {
        match &stage.dep(input)?.source {
            DepSource::Stage { stage: upstream, .. } => self.pipeline.stage(upstream),
            DepSource::Workspace(_) => None,
        }
    }
}

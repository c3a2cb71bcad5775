//! `pipe caption IMAGE...`: caption a few images with the pipeline's trained model.
//!
//! The model is the current artifact of the pipeline's `train` stage (per the lock file),
//! with the vocabulary that stage trained on and the backbone of the `features` stage
//! that fed it, so the captions match what `pipe run` would produce.
//!
//! The front end resolves those paths from the lock file and store; the decoding runs in
//! the libtorch worker (`pipe-torch caption`).

use std::path::PathBuf;
use std::process::Command;

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;

use crate::engine::lockfile::LockFile;
use crate::engine::spec::{DepSource, Pipeline, StageSpec};
use crate::engine::store::Store;
use crate::engine::worker::worker_program;
use crate::engine::workspace::Workspace;
use crate::stages::device::DeviceChoice;
use crate::stages::TORCH_WORKER;

#[derive(Args)]
pub struct CaptionArgs {
    /// Image files to caption.
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
    /// The train stage whose model to use (default: the pipeline's only `train` stage).
    #[arg(long, value_name = "STAGE")]
    pub model: Option<String>,
    /// Beam width; 1 decodes greedily.
    #[arg(long, default_value_t = 5)]
    pub beam: usize,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: DeviceChoice,
}

pub fn run(workspace: &Workspace, pipeline: &Pipeline, args: &CaptionArgs) -> Result<u8> {
    let lock = LockFile::load(&workspace.lock_file_path())?;
    let store = Store::new(workspace.store_dir());
    let train = train_stage(pipeline, args.model.as_deref())?;
    let resolve = |stage: &StageSpec, input: &str| -> Result<PathBuf> {
        let dep = stage
            .deps
            .iter()
            .find(|dep| dep.name == input)
            .ok_or_else(|| anyhow!("stage {} has no `{input}` dep", stage.name))?;
        resolve_dep(workspace, &lock, &store, &dep.source)
    };
    let model_dir = resolve_stage_output(&lock, &store, &train.name)?;
    let vocab = resolve(train, "vocab")?;
    let features_stage = match &train.deps.iter().find(|d| d.name == "features").map(|d| &d.source) {
        Some(DepSource::Stage { stage, .. }) => pipeline.stage(stage).expect("validated"),
        _ => bail!(
            "stage {}: its `features` dep is not a features stage, so the backbone is unknown",
            train.name
        ),
    };
    let backbone = resolve(features_stage, "backbone")?;

    let program = worker_program(TORCH_WORKER)?;
    let status = Command::new(&program)
        .arg("caption")
        .arg("--model-dir")
        .arg(&model_dir)
        .arg("--vocab")
        .arg(&vocab)
        .arg("--backbone")
        .arg(&backbone)
        .arg("--beam")
        .arg(args.beam.to_string())
        .arg("--device")
        .arg(args.device.to_string())
        .arg("--")
        .args(&args.images)
        .status()
        .with_context(|| format!("starting {}", program.display()))?;
    // The worker has printed its own error; pass its exit code on.
    Ok(status.code().and_then(|code| u8::try_from(code).ok()).unwrap_or(1))
}

fn train_stage<'a>(pipeline: &'a Pipeline, name: Option<&str>) -> Result<&'a StageSpec> {
    if let Some(name) = name {
        return pipeline.stage(name).ok_or_else(|| anyhow!("no stage named `{name}`"));
    }
    let mut trains = pipeline.stages.iter().filter(|stage| stage.kind.name() == "train");
    match (trains.next(), trains.next()) {
        (Some(stage), None) => Ok(stage),
        (None, _) => bail!("{} has no `train` stage", pipeline.file.display()),
        (Some(_), Some(_)) => {
            bail!("{} has several train stages: pick one with --model", pipeline.file.display())
        }
    }
}

fn resolve_stage_output(lock: &LockFile, store: &Store, stage: &str) -> Result<PathBuf> {
    let locked = lock
        .stages
        .get(stage)
        .ok_or_else(|| anyhow!("stage {stage} has not run yet: run `pipe run {stage}`"))?;
    let dir = store.output_dir(&locked.fingerprint);
    if !dir.exists() {
        bail!("stage {stage}: its artifact is not in the store (removed by gc?): run `pipe run {stage}`");
    }
    Ok(dir)
}

fn resolve_dep(workspace: &Workspace, lock: &LockFile, store: &Store, source: &DepSource) -> Result<PathBuf> {
    match source {
        DepSource::Workspace(path) => Ok(workspace.root.join(path)),
        DepSource::Stage { stage, path } => {
            let dir =
                resolve_stage_output(lock, store, stage).with_context(|| format!("resolving {source}"))?;
            Ok(path.as_ref().map(|p| dir.join(p)).unwrap_or(dir))
        }
    }
}

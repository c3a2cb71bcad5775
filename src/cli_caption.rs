//! `pipe caption IMAGE...`: caption a few images exactly as the pipeline's `caption`
//! stage would: its model, vocabulary and decode params, and the backbone and precision
//! of the features stage that fed the model.
//!
//! Every path comes from the engine's record of the last run ([`Results`]); the decoding
//! runs in the libtorch worker (`pipe-torch caption`).

use std::path::PathBuf;
use std::process::Command;

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use pipe_engine::query::Results;
use pipe_engine::spec::{Pipeline, StageSpec};
use pipe_engine::stage::parse_params;
use pipe_engine::worker::worker_program;

use crate::contract::device::{DeviceChoice, Precision};
use crate::stages::caption::{CaptionParams, DecoderKind, Rerank, MODEL_INPUTS};
use crate::stages::features::FeaturesParams;
use crate::stages::{caption, TORCH_WORKER};

#[derive(Args)]
pub struct CaptionArgs {
    /// Image files to caption.
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
    /// The caption stage whose model and settings to use (default: the pipeline's first).
    #[arg(long, value_name = "STAGE")]
    pub stage: Option<String>,
    /// Beam width, overriding the stage's; 1 decodes greedily.
    #[arg(long)]
    pub beam: Option<usize>,
    /// auto, cpu, cuda or cuda:N (default: the stage's).
    #[arg(long)]
    pub device: Option<DeviceChoice>,
}

/// What the worker needs, resolved from the lock file and store.
pub(crate) struct Resolved {
    /// One, or an ensemble's members in order.
    pub model_dirs: Vec<PathBuf>,
    pub vocab: PathBuf,
    pub backbone: PathBuf,
    pub precision: Precision,
    pub params: CaptionParams,
}

pub fn run(results: &Results, pipeline: &Pipeline, args: &CaptionArgs) -> Result<u8> {
    let stage = caption_stage(results, pipeline, args.stage.as_deref())?;
    let mut resolved = resolve(results, stage)?;
    if let Some(beam) = args.beam {
        resolved.params.decoder = if beam <= 1 { DecoderKind::Greedy } else { DecoderKind::Beam };
        resolved.params.beam_width = beam.max(1);
    }
    if let Some(device) = args.device {
        resolved.params.device = device;
    }
    if resolved.params.rerank != Rerank::None {
        // Consensus needs a split's train captions; a photo gets the beam's most probable one.
        eprintln!(
            "note: stage {} re-ranks its beam by consensus, which is for split mode; these \
             captions are the beam's most probable",
            stage.name
        );
        (resolved.params.rerank, resolved.params.rerank_samples) = (Rerank::None, 0);
    }
    let program = worker_program(TORCH_WORKER)?;
    let mut command = Command::new(&program);
    command.arg("caption");
    for dir in &resolved.model_dirs {
        command.arg("--model-dir").arg(dir);
    }
    let status = command
        .arg("--vocab")
        .arg(&resolved.vocab)
        .arg("--backbone")
        .arg(&resolved.backbone)
        .arg("--precision")
        .arg(resolved.precision.as_str())
        .arg("--params")
        .arg(serde_json::to_string(&resolved.params)?)
        .arg("--")
        .args(&args.images)
        .status()
        .with_context(|| format!("starting {}", program.display()))?;
    // The worker has printed its own error; pass its exit code on.
    Ok(status.code().and_then(|code| u8::try_from(code).ok()).unwrap_or(1))
}

fn caption_stage<'a>(
    results: &Results<'a>,
    pipeline: &'a Pipeline,
    name: Option<&str>,
) -> Result<&'a StageSpec> {
    if let Some(name) = name {
        let stage = results.stage(name)?;
        if stage.kind.name() != caption::KIND {
            bail!("stage {name} is a `{}` stage, not a `{}` stage", stage.kind.name(), caption::KIND);
        }
        return Ok(stage);
    }
    pipeline
        .stages_of_kind(caption::KIND)
        .next()
        .ok_or_else(|| anyhow!("{} has no `{}` stage", pipeline.file.display(), caption::KIND))
}

pub(crate) fn resolve(results: &Results, stage: &StageSpec) -> Result<Resolved> {
    let params: CaptionParams =
        parse_params(&stage.params).with_context(|| format!("stage {}", stage.name))?;
    let model_dirs = MODEL_INPUTS
        .iter()
        .filter(|name| **name == "model" || stage.dep(name).is_some())
        .map(|name| results.input_path(stage, name))
        .collect::<Result<Vec<_>>>()?;
    let vocab = results.input_path(stage, "vocab")?;
    // Archive mode names its backbone; split mode reads features made by a features stage.
    let (backbone, precision) = if stage.dep("backbone").is_some() {
        (results.input_path(stage, "backbone")?, Precision::default())
    } else {
        let features = results.input_stage(stage, "features").ok_or_else(|| {
            anyhow!(
                "stage {}: its `features` input is not a features stage, so the backbone is unknown",
                stage.name
            )
        })?;
        let features_params: FeaturesParams =
            parse_params(&features.params).with_context(|| format!("stage {}", features.name))?;
        (results.input_path(features, "backbone")?, features_params.precision)
    };
    Ok(Resolved { model_dirs, vocab, backbone, precision, params })
}

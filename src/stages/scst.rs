//! `scst`: self-critical sequence training (Rennie et al. 2017). Fine-tunes a trained
//! caption model (a `train` stage's output) to maximise the CIDEr-D of its own sampled
//! captions against the train references, and keeps the epoch with the best dev CIDEr-D.
//!
//! Inputs: `model` (a train or scst output directory), `vocab`, `features`, `tokens` (the
//! split of every image), `references` (ingest's `captions.parquet`: the raw captions the
//! reward compares with, tokenized as the `score` kind's coco convention does).
//! Outputs: the three files of a `train` stage (`model.safetensors`, `model.json`,
//! `history.json`), so a `caption` stage takes either; the history lists per epoch the mean
//! sample reward and the dev CIDEr-D of greedy captions. A model with a fine-tuned backbone
//! head keeps it: `head.pt` and `head.json` are copied, or trained further at `head_lr`.
//!
//! The training runs in the libtorch worker (`pipe-torch/src/scst.rs`).

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::contract::device::DeviceChoice;
use crate::contract::files::MODEL_FILES;
use crate::stages::TORCH_WORKER;
use pipe_engine::stage::{normalize_typed, parse_params, Execution, InputSpec, Inputs, StageKind};

/// What each sample's reward is compared with.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Baseline {
    /// The mean reward of the image's other samples (Luo 2020): no extra decoding.
    #[default]
    Mean,
    /// The reward of the image's greedy caption (Rennie 2017).
    Greedy,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScstParams {
    /// Adam learning rate (much lower than cross-entropy training's).
    pub lr: f64,
    pub epochs: usize,
    /// Epochs without a better dev CIDEr-D before stopping.
    pub patience: usize,
    /// Images per step; each gets `samples` sampled captions.
    pub batch_images: usize,
    pub samples: usize,
    pub baseline: Baseline,
    /// Most tokens sampled per caption (endseq included); default the model's max_len − 1.
    pub max_len: Option<usize>,
    pub seed: u64,
    pub device: DeviceChoice,
    pub train_split: String,
    pub dev_split: String,
    /// For a model with a fine-tuned backbone head (`train`'s `head_lr`): keeps training
    /// the head at this learning rate. Unset, the head stays as it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub head_lr: Option<f64>,
}

impl Default for ScstParams {
    fn default() -> Self {
        Self {
            lr: 5e-5,
            epochs: 10,
            patience: 2,
            batch_images: 50,
            samples: 5,
            baseline: Baseline::Mean,
            max_len: None,
            seed: 0,
            device: DeviceChoice::Auto,
            train_split: "train".into(),
            dev_split: "dev".into(),
            head_lr: None,
        }
    }
}

impl ScstParams {
    pub fn validate(&self) -> Result<()> {
        if self.lr.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater) || !self.lr.is_finite() {
            bail!("lr must be a positive number, got {}", self.lr);
        }
        if self.epochs == 0 || self.patience == 0 || self.batch_images == 0 {
            bail!("epochs, patience and batch_images must be positive");
        }
        if self.samples < 2 && self.baseline == Baseline::Mean {
            bail!("baseline `mean` compares an image's samples with each other: samples must be at least 2");
        }
        if self.samples == 0 {
            bail!("samples must be positive");
        }
        if self.max_len.is_some_and(|n| n < 1) {
            bail!("max_len must be at least 1");
        }
        if self
            .head_lr
            .is_some_and(|lr| lr.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater) || !lr.is_finite())
        {
            bail!("head_lr must be a positive number");
        }
        Ok(())
    }
}

/// The kind's `kind:` name, which the worker's registry is keyed by.
pub const KIND: &str = "scst";

pub struct Scst;

impl StageKind for Scst {
    fn name(&self) -> &'static str {
        KIND
    }

    /// 2: a merge model's sampling and greedy steps compute as the caption kind's version 3
    /// does (the same words, log-probabilities that differ in the last bits).
    fn version(&self) -> u32 {
        3 // 3: the CIDEr-D reward sums in a fixed order; epoch timings left history.json for the run record
    }

    fn normalize_params(&self, params: &Value) -> Result<Value> {
        parse_params::<ScstParams>(params)?.validate()?;
        normalize_typed::<ScstParams>(params)
    }

    fn inputs(&self) -> Inputs {
        const INPUTS: &[InputSpec] = &[
            InputSpec::required("model"),
            InputSpec::required("vocab"),
            InputSpec::required("features"),
            InputSpec::required("tokens"),
            InputSpec::required("references"),
        ];
        Inputs::Named(INPUTS)
    }

    fn outputs(&self, _params: &Value) -> Vec<String> {
        MODEL_FILES.map(String::from).to_vec()
    }

    fn execution(&self) -> Execution {
        Execution::Worker(TORCH_WORKER)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_have_defaults_and_are_checked() {
        let v = Scst.normalize_params(&serde_json::json!({"epochs": 3})).unwrap();
        assert_eq!((v["epochs"].as_u64(), v["baseline"].as_str()), (Some(3), Some("mean")));
        assert!(Scst.normalize_params(&serde_json::json!({"samples": 1})).is_err());
        assert!(Scst.normalize_params(&serde_json::json!({"samples": 1, "baseline": "greedy"})).is_ok());
        assert!(Scst.normalize_params(&serde_json::json!({"lr": 0})).is_err());
        assert!(Scst.normalize_params(&serde_json::json!({"reward": "bleu"})).is_err());
    }
}

//! `train`: fits a caption decoder (`decoder: merge`, the default, or `cnn` on pooled
//! features; `attention` or `transformer` on grid features) on the train split's captions
//! and image features,
//! early-stopping on the dev split, and writes the best epoch's weights.
//!
//! Inputs: `tokens` (tokens.parquet), `vocab` (vocab.json), `features` (features.arrow),
//! optionally `embeddings` (a GloVe/fastText text file, hashed like any input; the
//! `glove` param is the unhashed alternative). Each input may be the file or the
//! upstream stage's whole output directory.
//! Optionally `head`: a backbone folder from `scripts/export_backbone.py --output trunk`,
//! whose `head.pt` (the backbone's last blocks) is fine-tuned with the decoder at `head_lr`.
//! Outputs: `model.safetensors`, `model.json` (the decoder config), `history.json`
//! (per-epoch losses, learning rate and seconds: the benchmark figure), and with `head_lr`
//! the fine-tuned `head.pt` and its `head.json`.
//!
//! The training itself runs in the libtorch worker (`pipe-torch/src/train.rs`).

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::contract::device::DeviceChoice;
use crate::contract::files::{HEAD_FILES, MODEL_FILES};
use crate::stages::TORCH_WORKER;
use pipe_engine::stage::{normalize_typed, parse_params, Execution, InputSpec, Inputs, StageKind};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainParams {
    /// Which decoder: `merge` (the tutorial model and the peer's), `attention`,
    /// `transformer` or `cnn`.
    #[serde(skip_serializing_if = "Decoder::is_merge")]
    pub decoder: Decoder,
    pub embed: i64,
    /// The LSTM's width (merge, attention), the model width (transformer) or the number of
    /// convolution filters (cnn).
    pub hidden: i64,
    /// The Dense layer before the vocabulary layer (merge, cnn).
    pub dense: i64,
    pub dropout: f64,
    pub lr: f64,
    pub batch_size: usize,
    /// Most epochs; early stopping usually ends sooner.
    pub epochs: usize,
    /// Epochs without a better dev loss before stopping.
    pub patience: usize,
    /// ReduceLROnPlateau factor (1.0 turns it off) and patience.
    pub lr_factor: f64,
    pub lr_patience: usize,
    pub label_smoothing: f64,
    /// Batches per length-sorted chunk of the shuffled captions. 1 keeps every batch a
    /// random draw (as the peer does); larger pads less, so trains faster, but fitted worse
    /// on Flickr8k (docs/BENCHMARKS.md, "Session 3").
    pub bucket_batches: usize,
    pub seed: u64,
    pub device: DeviceChoice,
    /// Split names in tokens.parquet.
    pub train_split: String,
    pub dev_split: String,
    /// Captions longer than this (tokens, start and end included) are cut; default
    /// vocab.json's max_len, which is the longest train caption.
    pub max_len: Option<usize>,
    /// Word vectors file, relative to the project root (prefer the `embeddings` input).
    pub glove: Option<String>,
    /// Keep pretrained word vectors fixed during training.
    pub freeze_embeddings: bool,
    /// `attention` only: width of the attention MLP.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attention_dim: Option<i64>,
    /// `attention` only: weight of the doubly stochastic attention penalty.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alpha_c: Option<f64>,
    /// `transformer` only: decoder layers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layers: Option<i64>,
    /// `transformer` only: attention heads (`hidden` must be a multiple of them).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heads: Option<i64>,
    /// Fine-tunes the backbone's last blocks at this learning rate: needs the `head` input
    /// (a backbone exported with `scripts/export_backbone.py --output trunk`, whose trunk
    /// the features stage ran), and adds `head.pt` and `head.json` to the outputs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub head_lr: Option<f64>,
}

/// The decoders the train kind fits (`pipe-torch/src/model/decoder/`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decoder {
    /// LSTM language model merged with the pooled image vector (Tanti et al.; the 2017 tutorial).
    #[default]
    Merge,
    /// Soft attention over a feature grid (Show, Attend and Tell).
    Attention,
    /// A pre-norm transformer decoder with cross-attention to the grid cells.
    Transformer,
    /// A 1-D convolution over the word prefix, merged with the pooled image vector (the
    /// Flask captioning apps' Flickr30k model).
    Cnn,
}

impl Decoder {
    pub fn is_merge(&self) -> bool {
        *self == Self::Merge
    }

    /// Decoders that read grid features; their batches hold whole images.
    pub fn reads_grid(&self) -> bool {
        matches!(self, Self::Attention | Self::Transformer)
    }
}

/// Defaults of the attention-only params.
pub const DEFAULT_ATTENTION_DIM: i64 = 256;
pub const DEFAULT_ALPHA_C: f64 = 1.0;
/// Defaults of the transformer-only params.
pub const DEFAULT_LAYERS: i64 = 3;
pub const DEFAULT_HEADS: i64 = 8;

impl Default for TrainParams {
    fn default() -> Self {
        Self {
            decoder: Decoder::Merge,
            embed: 256,
            hidden: 256,
            dense: 128,
            dropout: 0.5,
            lr: 1e-3,
            batch_size: 64,
            epochs: 20,
            patience: 3,
            lr_factor: 0.5,
            lr_patience: 1,
            label_smoothing: 0.0,
            bucket_batches: 1,
            seed: 0,
            device: DeviceChoice::Auto,
            train_split: "train".into(),
            dev_split: "dev".into(),
            max_len: None,
            glove: None,
            freeze_embeddings: false,
            attention_dim: None,
            alpha_c: None,
            layers: None,
            heads: None,
            head_lr: None,
        }
    }
}

impl TrainParams {
    pub fn validate(&self) -> Result<()> {
        for (name, v) in [("embed", self.embed), ("hidden", self.hidden), ("dense", self.dense)] {
            if v <= 0 {
                bail!("{name} must be positive, got {v}");
            }
        }
        if !(0.0..1.0).contains(&self.dropout) {
            bail!("dropout must be in [0, 1), got {}", self.dropout);
        }
        // `lr > 0.0` is false for NaN too, which must also be refused.
        if self.lr.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater)
            || self.batch_size == 0
            || self.epochs == 0
            || self.patience == 0
            || self.bucket_batches == 0
        {
            bail!("lr, batch_size, epochs, patience and bucket_batches must be positive");
        }
        if !(self.lr_factor > 0.0 && self.lr_factor <= 1.0) {
            bail!("lr_factor must be in (0, 1], got {}", self.lr_factor);
        }
        if !(0.0..1.0).contains(&self.label_smoothing) {
            bail!("label_smoothing must be in [0, 1), got {}", self.label_smoothing);
        }
        if self.decoder != Decoder::Attention && (self.attention_dim.is_some() || self.alpha_c.is_some()) {
            bail!("attention_dim and alpha_c are params of `decoder: attention`");
        }
        if self.decoder != Decoder::Transformer && (self.layers.is_some() || self.heads.is_some()) {
            bail!("layers and heads are params of `decoder: transformer`");
        }
        if self.layers.is_some_and(|n| n <= 0) || self.heads.is_some_and(|n| n <= 0) {
            bail!("layers and heads must be positive");
        }
        if self.decoder == Decoder::Transformer {
            let heads = self.heads.unwrap_or(DEFAULT_HEADS);
            if self.hidden % heads != 0 {
                bail!("hidden ({}) must be a multiple of heads ({heads})", self.hidden);
            }
        }
        if self.attention_dim.is_some_and(|a| a <= 0) {
            bail!("attention_dim must be positive");
        }
        if self.alpha_c.is_some_and(|a| !(a >= 0.0 && a.is_finite())) {
            bail!("alpha_c must be a finite number ≥ 0");
        }
        if self.max_len.is_some_and(|n| n < 2) {
            bail!("max_len must be at least 2 (startseq and endseq)");
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
pub const KIND: &str = "train";

pub struct Train;

impl StageKind for Train {
    fn name(&self) -> &'static str {
        KIND
    }

    fn version(&self) -> u32 {
        2 // 2: history.json without epoch timings (they are in the run record)
    }

    fn normalize_params(&self, params: &Value) -> Result<Value> {
        parse_params::<TrainParams>(params)?.validate()?;
        normalize_typed::<TrainParams>(params)
    }

    fn inputs(&self) -> Inputs {
        const INPUTS: &[InputSpec] = &[
            InputSpec::required("tokens"),
            InputSpec::required("vocab"),
            InputSpec::required("features"),
            InputSpec::optional("embeddings"),
            InputSpec::optional("head"),
        ];
        Inputs::Named(INPUTS)
    }

    fn outputs(&self, params: &Value) -> Vec<String> {
        let mut outputs = MODEL_FILES.map(String::from).to_vec();
        if params.get("head_lr").is_some_and(|lr| !lr.is_null()) {
            outputs.extend(HEAD_FILES.map(String::from));
        }
        outputs
    }

    fn execution(&self) -> Execution {
        Execution::Worker(TORCH_WORKER)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_have_defaults_and_reject_unknown_keys() {
        let v = Train.normalize_params(&serde_json::json!({"epochs": 5})).unwrap();
        assert_eq!(v["epochs"], 5);
        assert_eq!(v["embed"], 256);
        assert_eq!(v["device"], "auto");
        assert!(Train.normalize_params(&serde_json::json!({"epoch": 5})).is_err());
        assert!(Train.normalize_params(&serde_json::json!({"dropout": 1.5})).is_err());
        assert!(v.get("decoder").is_none(), "a merge stage keeps its old fingerprint");
        let a = Train.normalize_params(&serde_json::json!({"decoder": "attention", "alpha_c": 0.5})).unwrap();
        assert_eq!((a["decoder"].as_str(), a["alpha_c"].as_f64()), (Some("attention"), Some(0.5)));
        assert!(Train.normalize_params(&serde_json::json!({"alpha_c": 0.5})).is_err());
        assert!(Train.normalize_params(&serde_json::json!({"decoder": "gru"})).is_err());
        let t = Train.normalize_params(&serde_json::json!({"decoder": "transformer", "layers": 2})).unwrap();
        assert_eq!((t["decoder"].as_str(), t["layers"].as_i64()), (Some("transformer"), Some(2)));
        assert!(Train.normalize_params(&serde_json::json!({"decoder": "attention", "layers": 2})).is_err());
        let odd = serde_json::json!({"decoder": "transformer", "hidden": 100, "heads": 8});
        assert!(Train.normalize_params(&odd).unwrap_err().to_string().contains("multiple of heads"));
        assert!(Train.normalize_params(&serde_json::json!({"decoder": "cnn", "alpha_c": 1.0})).is_err());
        assert!(v.get("head_lr").is_none(), "stages without a head keep their fingerprints");
        let headed = Train.normalize_params(&serde_json::json!({"head_lr": 1e-4})).unwrap();
        assert_eq!(headed["head_lr"], 1e-4);
        assert!(Train.outputs(&headed).contains(&"head.pt".to_string()));
        assert!(!Train.outputs(&v).contains(&"head.pt".to_string()));
        for bad in [0.0, -1e-4] {
            assert!(Train.normalize_params(&serde_json::json!({"head_lr": bad})).is_err(), "{bad}");
        }
    }
}

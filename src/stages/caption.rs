//! `caption`: writes a caption for many images with a trained decoder.
//!
//! Two modes, chosen by params:
//! - **split mode** (no `folder`): inputs `model`, `vocab`, `features` and optionally
//!   `tokens`; captions every image of `params.split` (every image of `features` when no
//!   `tokens` is given) from the cached features.
//! - **archive mode** (`folder` set): inputs `model`, `vocab`, `backbone`, and the same folder
//!   as the optional `images` dep so that its content is hashed; walks the folder
//!   (recursively, any size), runs images through the backbone in chunks of `chunk_size`,
//!   and writes each chunk to `parts/part-NNNNN.parquet` (temp name, then rename). The kind
//!   is resumable: an interrupted run gets its out dir back and skips finished parts. At
//!   the end the parts are merged into `captions.parquet`, and unreadable files are listed
//!   in `skipped.json`. Memory stays bounded by one chunk.
//!
//! Output `captions.parquet`: `image` (split mode: the image name; archive mode: the path
//! relative to `folder`), `caption` (words, no startseq/endseq), `log_prob` (Float64).
//!
//! Decoding runs in the libtorch worker (`pipe-torch/src/caption.rs`).

use anyhow::{ensure, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::contract::device::DeviceChoice;
use crate::contract::files::{ATTENTION_FILE, GENERATED_CAPTIONS_FILE, SKIPPED_FILE};
use crate::stages::TORCH_WORKER;
use pipe_engine::stage::{normalize_typed, parse_params, Execution, InputSpec, Inputs, StageKind};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DecoderKind {
    Greedy,
    Beam,
}

/// How the caption is picked from the beam's finished hypotheses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Rerank {
    /// The most probable (length-normalised when `length_norm`).
    #[default]
    None,
    /// The one with the highest CIDEr-D against the others (minimum Bayes risk decoding
    /// with a CIDEr-D utility; document frequencies of the train split's captions).
    Consensus,
}

impl Rerank {
    fn is_none(&self) -> bool {
        *self == Self::None
    }
}

/// The split whose captions give consensus re-ranking its document frequencies.
pub const RERANK_IDF_SPLIT: &str = "train";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CaptionParams {
    /// Split mode: the split of tokens.parquet to caption.
    pub split: String,
    /// Archive mode: a folder of images, relative to the project root (or absolute).
    pub folder: Option<String>,
    pub decoder: DecoderKind,
    pub beam_width: usize,
    /// Pick the beam's hypothesis by log-prob / tokens (the peer's better-scoring choice).
    pub length_norm: bool,
    /// Most tokens generated per image, endseq included; default the model's max_len − 1.
    pub max_len: Option<usize>,
    /// Never repeat an n-gram of this many words in a caption (0 = off, as in the peer).
    pub block_repeats: usize,
    /// Archive mode: images per part file (and per backbone pass).
    pub chunk_size: usize,
    /// Images decoded together (each is `beam_width` LSTM rows).
    pub batch_size: usize,
    /// Archive mode: images per backbone forward pass. 16 by default: on a 2-core CPU it
    /// halves peak memory against 32 (0.54 against 0.92 GiB at 20,000 images) for 1–3% of
    /// throughput (docs/BENCHMARKS.md, "Session 12"); a GPU wants more.
    pub backbone_batch: usize,
    pub device: DeviceChoice,
    /// Split mode, attention models: also write `attention.json`, where the model looked
    /// for each word (the report draws it). Left out of the normalized params when false.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub attention_maps: bool,
    /// Split mode, beam search: re-rank the beam's hypotheses (`consensus`). Left out of
    /// the normalized params when `none`, so stages that do not use it keep their hashes.
    #[serde(skip_serializing_if = "Rerank::is_none")]
    pub rerank: Rerank,
    /// `rerank: consensus`: also compare the beam's hypotheses with this many captions
    /// sampled from the model per image (seeded; 0 = the beam's hypotheses alone). Left out
    /// of the normalized params when 0.
    #[serde(skip_serializing_if = "is_zero")]
    pub rerank_samples: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl Default for CaptionParams {
    fn default() -> Self {
        Self {
            split: "dev".into(),
            folder: None,
            decoder: DecoderKind::Beam,
            beam_width: 5,
            length_norm: true,
            max_len: None,
            block_repeats: 0,
            chunk_size: 1024,
            batch_size: 512,
            backbone_batch: 16,
            device: DeviceChoice::Auto,
            attention_maps: false,
            rerank: Rerank::None,
            rerank_samples: 0,
        }
    }
}

impl CaptionParams {
    pub fn validate(&self) -> Result<()> {
        ensure!(self.beam_width >= 1, "beam_width must be at least 1");
        ensure!(
            self.chunk_size >= 1 && self.batch_size >= 1 && self.backbone_batch >= 1,
            "sizes must be positive"
        );
        ensure!(self.max_len.is_none_or(|n| n >= 1), "max_len must be at least 1");
        ensure!(
            !(self.attention_maps && self.folder.is_some()),
            "attention_maps is for split mode (archive mode writes none)"
        );
        if self.rerank == Rerank::Consensus {
            ensure!(
                self.decoder == DecoderKind::Beam && self.beam_width >= 2,
                "rerank: consensus picks among a beam's hypotheses: it needs `decoder: beam` and \
                 beam_width ≥ 2"
            );
            ensure!(
                self.folder.is_none(),
                "rerank: consensus is for split mode (it needs the `tokens` input's train captions)"
            );
        }
        ensure!(
            self.rerank_samples == 0 || self.rerank == Rerank::Consensus,
            "rerank_samples is for `rerank: consensus`"
        );
        Ok(())
    }
}

/// The kind's `kind:` name, which the worker's registry is keyed by.
pub const KIND: &str = "caption";

pub struct Caption;

/// The inputs that name the trained models of a caption stage, in ensemble order: `model`,
/// then `model_2` … `model_8`.
pub const MODEL_INPUTS: [&str; 8] =
    ["model", "model_2", "model_3", "model_4", "model_5", "model_6", "model_7", "model_8"];

impl StageKind for Caption {
    fn name(&self) -> &'static str {
        KIND
    }

    /// 2: archive mode takes every file that looks like an image (`data::manifest::
    /// IMAGE_EXTENSIONS`, one list for all kinds) and reports the ones it cannot decode in
    /// `skipped.json`; version 1 silently passed over all but .jpg/.jpeg/.png.
    /// 3: a merge decoder's step gathers each token's input gates from a table instead of
    /// running the fused LSTM kernel: the same captions on Flickr8k dev, log-probabilities
    /// that differ in the last bits.
    fn version(&self) -> u32 {
        4 // 4: the worker pins MKL to its AVX2 path in strict reproducible mode
    }

    fn normalize_params(&self, params: &Value) -> Result<Value> {
        parse_params::<CaptionParams>(params)?.validate()?;
        normalize_typed::<CaptionParams>(params)
    }

    fn inputs(&self) -> Inputs {
        const INPUTS: &[InputSpec] = &[
            InputSpec::required("model"),
            InputSpec::required("vocab"),
            InputSpec::optional("features"),
            InputSpec::optional("tokens"),
            InputSpec::optional("backbone"),
            InputSpec::optional("images"),
            // An ensemble: more trained models whose log-probabilities are averaged with `model`'s.
            InputSpec::optional("model_2"),
            InputSpec::optional("model_3"),
            InputSpec::optional("model_4"),
            InputSpec::optional("model_5"),
            InputSpec::optional("model_6"),
            InputSpec::optional("model_7"),
            InputSpec::optional("model_8"),
        ];
        Inputs::Named(INPUTS)
    }

    fn outputs(&self, params: &Value) -> Vec<String> {
        match (params.get("folder"), params.get("attention_maps")) {
            (Some(Value::String(_)), _) => vec![GENERATED_CAPTIONS_FILE.into(), SKIPPED_FILE.into()],
            (_, Some(Value::Bool(true))) => vec![GENERATED_CAPTIONS_FILE.into(), ATTENTION_FILE.into()],
            _ => vec![GENERATED_CAPTIONS_FILE.into()],
        }
    }

    /// Archive mode: a shard captions a contiguous range of the folder's chunks into part
    /// files in the kind's cache; the stage's own run merges them.
    fn shardable(&self, params: &Value) -> bool {
        matches!(params.get("folder"), Some(Value::String(_)))
    }

    /// Archive mode keeps finished parts across an interruption (split mode simply
    /// overwrites its one output).
    fn resumable(&self) -> bool {
        true
    }

    fn execution(&self) -> Execution {
        Execution::Worker(TORCH_WORKER)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_default_to_beam_five_length_normalised() {
        let v = Caption.normalize_params(&Value::Null).unwrap();
        assert_eq!(
            (v["decoder"].as_str(), v["beam_width"].as_u64(), v["length_norm"].as_bool()),
            (Some("beam"), Some(5), Some(true))
        );
        assert!(Caption.normalize_params(&serde_json::json!({"beam": 3})).is_err());
        assert_eq!(Caption.outputs(&serde_json::json!({"folder": "x"})).len(), 2);
        assert!(Caption.resumable());
    }

    #[test]
    fn consensus_reranking_is_a_split_mode_beam_option_that_old_stages_never_see() {
        let plain = Caption.normalize_params(&Value::Null).unwrap();
        assert!(plain.get("rerank").is_none(), "{plain}");
        let explicit_none = Caption.normalize_params(&serde_json::json!({"rerank": "none"})).unwrap();
        assert_eq!(explicit_none, plain);
        let consensus = Caption.normalize_params(&serde_json::json!({"rerank": "consensus"})).unwrap();
        assert_eq!(consensus["rerank"], "consensus");
        assert!(consensus.get("rerank_samples").is_none(), "{consensus}");
        let sampled = Caption
            .normalize_params(&serde_json::json!({"rerank": "consensus", "rerank_samples": 10}))
            .unwrap();
        assert_eq!(sampled["rerank_samples"], 10);
        assert!(Caption.normalize_params(&serde_json::json!({"rerank_samples": 10})).is_err());
        for bad in [
            serde_json::json!({"rerank": "consensus", "decoder": "greedy"}),
            serde_json::json!({"rerank": "consensus", "beam_width": 1}),
            serde_json::json!({"rerank": "consensus", "folder": "photos"}),
            serde_json::json!({"rerank": "mbr"}),
        ] {
            assert!(Caption.normalize_params(&bad).is_err(), "{bad}");
        }
    }
}

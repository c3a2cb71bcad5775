//! The `features` kind: one pooled feature vector per image, from a frozen backbone.
//!
//! Inputs: `images` (dir), `manifest` (ingest's `images.parquet`: `image`, `path`,
//! `content_hash`), `backbone` (dir with `model.pt` + `backbone.json`, see
//! `pipe-torch/src/model/backbone.rs`). Outputs: `features.arrow` (`image: Utf8`,
//! `content_hash: Utf8`, `features: FixedSizeList<Float32, D>`, in manifest order) and
//! `features.json` (backbone, counts, skipped images with reasons, timings).
//!
//! ## The feature cache
//! A feature vector depends only on the backbone and the image bytes, so vectors outlive
//! any one run: adding 100 photos to a folder of 7000 computes 100 forward passes.
//!
//! | key part | why |
//! |---|---|
//! | backbone hash (blake3 of `model.pt` + `backbone.json`) | another model, other features |
//! | precision (`fp32`, `fp16`, `bf16`) | reduced precision changes the numbers visibly |
//! | image content hash (from the manifest) | not the name: renames and copies hit the cache |
//!
//! Deliberately not in the key: the device (CPU and CUDA fp32 agree to ~1e-3 relative), the
//! batch size and thread counts, file names and paths.
//!
//! Entries live in `<cache_dir>/<backbone hash>-<precision>/shard-<id>.arrow` (Arrow IPC:
//! `content_hash`, `features`). A shard is written under a temporary name and renamed, so a
//! killed run never leaves a half-written one; new vectors are flushed every
//! [`SHARD_ROWS`], so a killed run keeps most of its work. An unreadable shard is
//! reported, deleted and recomputed, never trusted. Past [`MAX_SHARDS`] shards they are
//! merged into one.
//!
//! The computation runs in the libtorch worker (`pipe-torch/src/features.rs`).

use anyhow::{ensure, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::engine::stage::{normalize_typed, InputSpec, StageContext, StageKind};
use crate::engine::worker::run_in_worker;
use crate::stages::device::{DeviceChoice, Precision};
use crate::stages::TORCH_WORKER;

/// New vectors are written to a shard at least this often, so a killed run loses little.
pub const SHARD_ROWS: usize = 2048;
/// More shards than this are merged into one at the end of a run.
pub const MAX_SHARDS: usize = 16;

/// The `features` stage kind.
pub struct Features;

/// `params:` of a features stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FeaturesParams {
    /// Images per forward pass.
    pub batch_size: usize,
    /// `auto` (CUDA when present), `cpu`, `cuda` or `cuda:N`.
    pub device: DeviceChoice,
    /// `fp32`, `fp16` (CUDA only) or `bf16`.
    pub precision: Precision,
    /// CPU threads for torch and decoding; 0 = all cores.
    pub threads: usize,
}

impl Default for FeaturesParams {
    fn default() -> Self {
        Self { batch_size: 32, device: DeviceChoice::Auto, precision: Precision::Fp32, threads: 0 }
    }
}

const INPUTS: &[InputSpec] =
    &[InputSpec::required("images"), InputSpec::required("manifest"), InputSpec::required("backbone")];

impl StageKind for Features {
    fn name(&self) -> &'static str {
        "features"
    }

    fn version(&self) -> u32 {
        1
    }

    fn normalize_params(&self, params: &Value) -> Result<Value> {
        let value = normalize_typed::<FeaturesParams>(params)?;
        let typed: FeaturesParams = serde_json::from_value(value.clone())?;
        ensure!(
            (1..=4096).contains(&typed.batch_size),
            "batch_size must be 1..=4096, not {}",
            typed.batch_size
        );
        Ok(value)
    }

    fn inputs(&self) -> Option<&'static [InputSpec]> {
        Some(INPUTS)
    }

    fn outputs(&self, _params: &Value) -> Vec<String> {
        vec!["features.arrow".into(), "features.json".into()]
    }

    fn run(&self, ctx: &StageContext) -> Result<()> {
        run_in_worker(TORCH_WORKER, self.name(), ctx)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn params_have_defaults_and_reject_unknown_keys() {
        let normalized = Features.normalize_params(&Value::Null).unwrap();
        assert_eq!(
            normalized,
            json!({"batch_size": 32, "device": "auto", "precision": "fp32", "threads": 0})
        );
        let err = Features.normalize_params(&json!({"batchsize": 8})).unwrap_err();
        assert!(format!("{err:#}").contains("batchsize"), "{err:#}");
        assert!(Features.normalize_params(&json!({"device": "tpu"})).is_err());
        assert!(Features.normalize_params(&json!({"batch_size": 0})).is_err());
        let cuda = Features.normalize_params(&json!({"device": "cuda", "precision": "fp16"})).unwrap();
        assert_eq!(cuda["device"], "cuda:0");
    }
}

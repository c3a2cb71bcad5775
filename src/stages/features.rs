//! The `features` kind: one pooled feature vector, or a spatial grid of them, per image,
//! from a frozen backbone.
//!
//! Inputs: `images` (dir), `manifest` (ingest's `images.parquet`: `image`, `path`,
//! `content_hash`), `backbone` (dir with `model.pt` + `backbone.json`, see
//! `pipe-torch/src/model/backbone.rs`). Outputs: `features.arrow` (`image: Utf8`,
//! `content_hash: Utf8`, `features: FixedSizeList<Float32, D>`, or with `output: grid`
//! `FixedSizeList<Float16, H·W·D>` whose field metadata `pipe.grid` is `HxW`; in manifest
//! order) and
//! `features.json` (backbone, counts, skipped images with reasons, timings).
//!
//! Features are cached per image across runs (keyed by backbone, precision and image
//! content); the cache's rules are in `pipe-torch/src/features/cache.rs`.
//!
//! The computation runs in the libtorch worker (`pipe-torch/src/features.rs`).

use anyhow::{ensure, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::contract::device::{DeviceChoice, Precision};
use crate::contract::files::{FEATURES_FILE, FEATURES_SUMMARY_FILE};
use crate::stages::TORCH_WORKER;
use pipe_engine::stage::{normalize_typed, Execution, InputSpec, Inputs, StageKind};

/// The `features` stage kind.
/// The kind's `kind:` name, which the worker's registry is keyed by.
pub const KIND: &str = "features";

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
    /// `pooled` (one D-vector per image) or `grid` (the backbone's spatial map, H·W cells
    /// of D values, stored as Float16; needs a backbone exported with `--output grid`).
    /// Left out of the normalized params when `pooled`, so pipelines that predate it keep
    /// their fingerprints.
    #[serde(skip_serializing_if = "FeatureOutput::is_pooled")]
    pub output: FeatureOutput,
}

/// What a features stage stores per image.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FeatureOutput {
    /// One D-vector (a grid backbone's cells are averaged).
    #[default]
    Pooled,
    /// Every cell of the spatial map, Float16.
    Grid,
}

impl FeatureOutput {
    pub fn is_pooled(&self) -> bool {
        *self == Self::Pooled
    }
}

impl Default for FeaturesParams {
    fn default() -> Self {
        Self {
            batch_size: 32,
            device: DeviceChoice::Auto,
            precision: Precision::Fp32,
            threads: 0,
            output: FeatureOutput::Pooled,
        }
    }
}

const INPUTS: &[InputSpec] =
    &[InputSpec::required("images"), InputSpec::required("manifest"), InputSpec::required("backbone")];

impl StageKind for Features {
    fn name(&self) -> &'static str {
        KIND
    }

    fn version(&self) -> u32 {
        2 // 2: features.json keeps only what the inputs determine (timings and cache counts moved to the run record)
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

    fn inputs(&self) -> Inputs {
        Inputs::Named(INPUTS)
    }

    fn outputs(&self, _params: &Value) -> Vec<String> {
        vec![FEATURES_FILE.into(), FEATURES_SUMMARY_FILE.into()]
    }

    fn execution(&self) -> Execution {
        Execution::Worker(TORCH_WORKER)
    }

    /// A shard computes its slice of the distinct images into the feature cache.
    fn shardable(&self, _params: &Value) -> bool {
        true
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
        let grid = Features.normalize_params(&json!({"output": "grid"})).unwrap();
        assert_eq!(grid["output"], "grid");
        assert!(Features.normalize_params(&json!({"output": "map"})).is_err());
        let cuda = Features.normalize_params(&json!({"device": "cuda", "precision": "fp16"})).unwrap();
        assert_eq!(cuda["device"], "cuda:0");
    }
}

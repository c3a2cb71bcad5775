//! A backbone directory: the TorchScript file, its `backbone.json` sidecar, and the
//! content hash that identifies the features it makes.

use std::fs;
use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};

/// The TorchScript file inside a backbone directory.
pub const MODEL_FILE: &str = "model.pt";
/// The preprocessing sidecar inside a backbone directory.
pub const SIDECAR_FILE: &str = "backbone.json";

/// `backbone.json`: how the model expects its input, and what it returns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackboneSpec {
    /// Architecture name, e.g. `efficientnet_lite0`.
    pub name: String,
    /// Side S of the square input.
    pub input_size: u32,
    /// How images reach S×S. Only `stretch` (ignore aspect ratio, as the peer does) exists.
    #[serde(default = "default_resize")]
    pub resize: String,
    /// Per-channel (RGB) mean, in the units of `value_range`.
    pub mean: [f32; 3],
    /// Per-channel (RGB) standard deviation, in the units of `value_range`.
    pub std: [f32; 3],
    /// Feature dimension D.
    pub dim: usize,
    /// Tensor layout of the input. Only `NCHW`.
    #[serde(default = "default_layout")]
    pub layout: String,
    /// The value a white pixel has before normalization: 1.0 or 255.
    #[serde(default = "default_value_range")]
    pub value_range: f32,
    /// What `model.pt` returns: `pooled` ([N, D]) or `grid` (a spatial map: [N, H·W, D]
    /// cells in row-major order, or [N, D, H, W] as convolutions leave it).
    #[serde(default, skip_serializing_if = "BackboneOutput::is_pooled")]
    pub output: BackboneOutput,
    /// [H, W] of a grid backbone's map (7×7 for EfficientNet-Lite0 at 224 px; 14×14 for a
    /// ViT-B/16's patch tokens). Required when `output` is `grid`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grid: Option<[u32; 2]>,
}

/// The kind of tensor a backbone returns per image.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackboneOutput {
    /// One D-wide vector.
    #[default]
    Pooled,
    /// H·W cells of D values each.
    Grid,
}

impl BackboneOutput {
    pub fn is_pooled(&self) -> bool {
        *self == Self::Pooled
    }
}

pub(super) fn default_resize() -> String {
    "stretch".into()
}
pub(super) fn default_layout() -> String {
    "NCHW".into()
}
fn default_value_range() -> f32 {
    1.0
}

impl BackboneSpec {
    /// Reads and validates `<dir>/backbone.json`.
    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join(SIDECAR_FILE);
        let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let spec: Self =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        spec.validate().with_context(|| format!("{}", path.display()))?;
        Ok(spec)
    }

    fn validate(&self) -> Result<()> {
        ensure!(self.layout == "NCHW", "layout `{}` is not supported (only NCHW)", self.layout);
        ensure!(self.resize == "stretch", "resize `{}` is not supported (only stretch)", self.resize);
        ensure!((1..=4096).contains(&self.input_size), "input_size {} out of range", self.input_size);
        ensure!((1..=1 << 20).contains(&self.dim), "dim {} out of range (1 to 1048576)", self.dim);
        ensure!(self.std.iter().all(|s| *s > 0.0), "std must be positive: {:?}", self.std);
        ensure!(self.mean.iter().chain(&self.std).all(|v| v.is_finite()), "mean and std must be finite");
        ensure!(
            self.value_range == 1.0 || self.value_range == 255.0,
            "value_range must be 1.0 or 255, not {}",
            self.value_range
        );
        match (self.output, self.grid) {
            (BackboneOutput::Grid, None) => bail!("output `grid` needs `grid: [H, W]`"),
            (BackboneOutput::Grid, Some([h, w])) => {
                let cells = h.saturating_mul(w); // 65536 x 65536 must not wrap to 0
                ensure!(h > 0 && w > 0 && cells <= 4096, "grid {h}x{w} out of range")
            }
            (BackboneOutput::Pooled, Some(_)) => bail!("`grid` is set but output is `pooled`"),
            (BackboneOutput::Pooled, None) => {}
        }
        Ok(())
    }

    /// Cells per image: H·W for a grid backbone, 1 for a pooled one.
    pub fn cells(&self) -> usize {
        self.grid.map_or(1, |[h, w]| (h * w) as usize)
    }

    /// Floats the model returns per image: cells × D.
    pub fn row_len(&self) -> usize {
        self.cells() * self.dim
    }

    /// Floats in one prepared image: 3 × S × S.
    pub fn image_len(&self) -> usize {
        3 * (self.input_size as usize).pow(2)
    }
}

/// blake3 over `model.pt` and `backbone.json`: the identity of a backbone's outputs.
pub fn content_hash(dir: &Path) -> Result<String> {
    let mut hasher = blake3::Hasher::new();
    for name in [MODEL_FILE, SIDECAR_FILE] {
        let path = dir.join(name);
        let bytes = fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        // Name and length prefixes keep the two files from running into each other.
        hasher.update(name.as_bytes());
        hasher.update(&(bytes.len() as u64).to_le_bytes());
        hasher.update(&bytes);
    }
    Ok(hasher.finalize().to_hex().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(extra: &str) -> Result<BackboneSpec> {
        let dir = tempfile::tempdir().unwrap();
        let json = format!(
            r#"{{"name": "b", "input_size": 224, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "dim": 8{extra}}}"#
        );
        fs::write(dir.path().join(SIDECAR_FILE), json).unwrap();
        BackboneSpec::read(dir.path())
    }

    #[test]
    fn sizes_that_overflow_or_cannot_be_allocated_are_refused() {
        assert!(spec(r#", "output": "grid", "grid": [7, 7]"#).is_ok());
        // 65536 × 65536 cells wrapped to 0 in u32 and passed the 4096-cell limit.
        let err = spec(r#", "output": "grid", "grid": [65536, 65536]"#).unwrap_err();
        assert!(format!("{err:#}").contains("out of range"), "{err:#}");
        let dir = tempfile::tempdir().unwrap();
        let huge = r#"{"name": "b", "input_size": 224, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "dim": 99999999999}"#;
        fs::write(dir.path().join(SIDECAR_FILE), huge).unwrap();
        let err = BackboneSpec::read(dir.path()).unwrap_err();
        assert!(format!("{err:#}").contains("dim 99999999999 out of range"), "{err:#}");
    }
}

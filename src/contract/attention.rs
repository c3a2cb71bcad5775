//! `attention.json`, written by a `caption` stage with `attention_maps: true` and drawn by
//! `report`: where an attention model looked for each word it wrote.

use std::path::Path;

use anyhow::{ensure, Context, Result};
use serde::{Deserialize, Serialize};

/// Every captioned image's per-word attention over the feature grid.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttentionMaps {
    /// [H, W] of the grid; each weight list has H·W values, row-major.
    pub grid: [u32; 2],
    pub images: Vec<ImageAttention>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageAttention {
    pub image: String,
    /// The caption's words, in order.
    pub words: Vec<String>,
    /// For each word, the attention weights (summing to 1) of the step that wrote it.
    pub weights: Vec<Vec<f32>>,
}

impl AttentionMaps {
    /// Reads and checks `attention.json`: every image has one weight list per word, each
    /// of H·W values.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let maps: Self =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        let cells = (maps.grid[0] * maps.grid[1]) as usize;
        for item in &maps.images {
            ensure!(
                item.weights.len() == item.words.len() && item.weights.iter().all(|w| w.len() == cells),
                "{}: image {}: expected one list of {cells} weights per word",
                path.display(),
                item.image
            );
        }
        Ok(maps)
    }
}

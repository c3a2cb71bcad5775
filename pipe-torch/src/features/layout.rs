//! How one image's features are stored, in `features.arrow` and in the feature cache:
//! a pooled D-vector as Float32, or a grid of H·W cells × D as Float16 (half the disk and
//! memory; the decoders compute in f32 after reading).

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use arrow_array::{Array, ArrayRef, FixedSizeListArray, Float16Array, Float32Array};
use arrow_schema::{DataType, Field};
use half::f16;

use crate::model::backbone::{BackboneOutput, BackboneSpec};
use pipe::stages::features::FeatureOutput;

/// Field metadata of a grid `features` column: `HxW`, e.g. `7x7`.
pub const GRID_METADATA_KEY: &str = "pipe.grid";

/// The stored shape of one image's features.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeatureLayout {
    /// Values per cell.
    pub dim: usize,
    /// [H, W] when every cell is kept; None for a pooled vector.
    pub grid: Option<[u32; 2]>,
}

impl FeatureLayout {
    /// What a features stage with `output` stores from `backbone`.
    pub fn for_stage(backbone: &BackboneSpec, output: FeatureOutput) -> Result<Self> {
        let grid = match (output, backbone.output) {
            (FeatureOutput::Pooled, _) => None,
            (FeatureOutput::Grid, BackboneOutput::Grid) => backbone.grid,
            (FeatureOutput::Grid, BackboneOutput::Pooled) => bail!(
                "`output: grid` needs a backbone that returns a spatial grid, but backbone `{}` returns \
                 pooled vectors; export one with `scripts/export_backbone.py --output grid`",
                backbone.name
            ),
        };
        Ok(Self { dim: backbone.dim, grid })
    }

    pub fn cells(&self) -> usize {
        self.grid.map_or(1, |[h, w]| (h * w) as usize)
    }

    /// Values per image.
    pub fn row_len(&self) -> usize {
        self.cells() * self.dim
    }

    /// Grids are stored as Float16.
    pub fn is_half(&self) -> bool {
        self.grid.is_some()
    }

    /// The feature cache keeps pooled and grid entries of one backbone apart.
    pub fn cache_suffix(&self) -> &'static str {
        if self.grid.is_some() {
            "-grid"
        } else {
            ""
        }
    }

    /// `features: FixedSizeList<Float32 | Float16, row_len>` with non-null items; a grid
    /// names its shape in the field's metadata.
    pub fn field(&self) -> Field {
        let item_type = if self.is_half() { DataType::Float16 } else { DataType::Float32 };
        let item = Arc::new(Field::new("item", item_type, false));
        let field = Field::new("features", DataType::FixedSizeList(item, self.row_len() as i32), false);
        match self.grid {
            Some([h, w]) => {
                field.with_metadata(HashMap::from([(GRID_METADATA_KEY.into(), format!("{h}x{w}"))]))
            }
            None => field,
        }
    }

    /// `values` (rows of `row_len`, already rounded by [`Self::store`] for a grid) as the column.
    pub fn array(&self, values: Vec<f32>) -> Result<ArrayRef> {
        let DataType::FixedSizeList(item, len) = self.field().data_type().clone() else { unreachable!() };
        let values: ArrayRef = if self.is_half() {
            Arc::new(Float16Array::from(values.into_iter().map(f16::from_f32).collect::<Vec<_>>()))
        } else {
            Arc::new(Float32Array::from(values))
        };
        Ok(Arc::new(FixedSizeListArray::try_new(item, len, values, None)?))
    }

    /// One backbone output row (its `cells` × D values) → the stored row: the cells'
    /// mean for a pooled layout (a pooled backbone's row as it is), every cell rounded to
    /// f16 for a grid, so a cached row and a fresh one are the same values.
    pub fn store(&self, row: &[f32], backbone_cells: usize) -> Vec<f32> {
        match self.grid {
            Some(_) => row.iter().map(|&x| f16::from_f32(x).to_f32()).collect(),
            None if backbone_cells == 1 => row.to_vec(),
            None => {
                let mut mean = vec![0f32; self.dim];
                for cell in row.chunks_exact(self.dim) {
                    mean.iter_mut().zip(cell).for_each(|(m, x)| *m += x);
                }
                mean.iter_mut().for_each(|m| *m /= backbone_cells as f32);
                mean
            }
        }
    }
}

/// The values of a `features` column's rows, as f32 (Float16 widened).
pub fn column_values(list: &FixedSizeListArray) -> Result<Vec<f32>> {
    let len = list.value_length() as usize;
    let (start, end) = (list.offset() * len, (list.offset() + list.len()) * len);
    let values = list.values();
    if let Some(v) = values.as_any().downcast_ref::<Float32Array>() {
        return Ok(v.values()[start..end].to_vec());
    }
    let v = values
        .as_any()
        .downcast_ref::<Float16Array>()
        .with_context(|| format!("features hold {}, expected Float32 or Float16", list.value_type()))?;
    Ok(v.values()[start..end].iter().map(|x| x.to_f32()).collect())
}

/// The grid shape named by a `features` field's metadata, if any.
pub fn grid_of(field: &Field) -> Result<Option<[u32; 2]>> {
    let Some(text) = field.metadata().get(GRID_METADATA_KEY) else { return Ok(None) };
    let parse = || -> Option<[u32; 2]> {
        let (h, w) = text.split_once('x')?;
        Some([h.parse().ok()?, w.parse().ok()?])
    };
    match parse() {
        Some(grid) if grid[0] > 0 && grid[1] > 0 => Ok(Some(grid)),
        _ => bail!("field `features`: metadata {GRID_METADATA_KEY}=`{text}` is not HxW"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pooled_rows_average_cells_and_grid_rows_are_half_precision() {
        let pooled = FeatureLayout { dim: 2, grid: None };
        assert_eq!(pooled.store(&[1.0, 2.0, 3.0, 6.0], 2), [2.0, 4.0]);
        let grid = FeatureLayout { dim: 2, grid: Some([1, 2]) };
        let stored = grid.store(&[0.1, 2.0, 3.0, 1e-3], 2);
        assert_eq!(stored[1], 2.0);
        assert_ne!(stored[0], 0.1);
        assert_eq!(f16::from_f32(stored[0]).to_f32(), stored[0]);
        let array = grid.array(stored.clone()).unwrap();
        let list = array.as_any().downcast_ref::<FixedSizeListArray>().unwrap();
        assert_eq!(column_values(list).unwrap(), stored);
        assert_eq!(grid_of(&grid.field()).unwrap(), Some([1, 2]));
        assert_eq!(grid_of(&pooled.field()).unwrap(), None);
    }
}

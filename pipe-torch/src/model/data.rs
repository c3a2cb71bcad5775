//! Reading the declared artifacts the decoder needs (`vocab.json`, `features.arrow`,
//! `tokens.parquet`, an optional word-vector text file) into tensors. Only the columns
//! named in docs/CONTRACTS.md are read; `captions.parquet` is `pipe::contract::tables`'.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;

use anyhow::{anyhow, bail, ensure, Context, Result};
use arrow_array::{
    Array, FixedSizeListArray, Float16Array, Float32Array, LargeStringArray, RecordBatch, StringArray,
};
use arrow_ipc::reader::FileReader;
use tch::Tensor;

use super::train::CaptionSet;
use crate::features::layout::grid_of;
use pipe::contract::tables::token_columns;
use pipe::data::table;

/// `vocab.json`, read by the tokenize kind's own type so both sides agree on it.
pub use pipe::data::vocab::Vocab;

/// Word ids (no start/end) → a caption string.
pub fn caption_text(vocab: &Vocab, ids: &[i64]) -> String {
    let ids: Vec<u32> = ids.iter().map(|&i| i as u32).collect();
    vocab.decode(&ids)
}

/// `features.arrow`: one row per image.
pub struct FeatureTable {
    pub images: Vec<String>,
    /// (M, F) row i belongs to `images[i]`: Float for pooled vectors (F = D), Half for
    /// grids (F = H·W·D, cells-major).
    pub matrix: Tensor,
    /// [H, W] of grid features (the column's `pipe.grid` metadata); None when pooled.
    pub grid: Option<[u32; 2]>,
}

impl FeatureTable {
    pub fn load(path: &Path) -> Result<Self> {
        Self::read(path).with_context(|| format!("reading features {}", path.display()))
    }

    fn read(path: &Path) -> Result<Self> {
        let file = File::open(path)?;
        let reader = FileReader::try_new(BufReader::new(file), None).context("not an Arrow IPC file")?;
        let field = reader.schema().field_with_name("features").cloned().context("no column `features`")?;
        let grid = grid_of(&field)?;
        let (mut images, mut single, mut half, mut width) = (Vec::new(), Vec::<f32>::new(), Vec::new(), None);
        for batch in reader {
            let batch = batch?;
            images.extend(string_column(&batch, "image")?);
            let list = feature_list(&batch)?;
            let w = list.value_length() as usize;
            if width.replace(w).is_some_and(|old| old != w) {
                bail!("feature width changes between batches");
            }
            let (start, end) = (list.offset() * w, (list.offset() + list.len()) * w);
            let values = list.values().as_any();
            if let Some(v) = values.downcast_ref::<Float32Array>() {
                single.extend_from_slice(&v.values()[start..end]);
            } else if let Some(v) = values.downcast_ref::<Float16Array>() {
                half.extend_from_slice(&v.values()[start..end]);
            } else {
                bail!("column `features` holds {}, expected Float32 or Float16", list.value_type());
            }
        }
        let width = width.ok_or_else(|| anyhow!("no record batches"))? as i64;
        let rows = images.len() as i64;
        let matrix = match (single.is_empty(), half.is_empty()) {
            (_, true) => Tensor::from_slice(&single).view([rows, width]),
            (true, false) => Tensor::from_slice(&half).view([rows, width]),
            (false, false) => bail!("column `features` mixes Float32 and Float16 batches"),
        };
        if let Some([h, w]) = grid {
            let cells = (h * w) as i64;
            ensure!(width % cells == 0, "{width} values per row do not split into a {h}x{w} grid");
        }
        Ok(Self { images, matrix, grid })
    }

    /// Values per cell: D (the whole row when pooled).
    pub fn dim(&self) -> i64 {
        self.matrix.size()[1] / self.cells()
    }

    /// Cells per image (1 when pooled).
    pub fn cells(&self) -> i64 {
        self.grid.map_or(1, |[h, w]| (h * w) as i64)
    }

    /// Row of each image name.
    pub fn index(&self) -> HashMap<&str, i64> {
        self.images.iter().enumerate().map(|(i, n)| (n.as_str(), i as i64)).collect()
    }
}

fn string_column(batch: &RecordBatch, name: &str) -> Result<Vec<String>> {
    let col = batch.column_by_name(name).ok_or_else(|| anyhow!("no column `{name}`"))?;
    if let Some(a) = col.as_any().downcast_ref::<StringArray>() {
        return Ok(a.iter().map(|s| s.unwrap_or_default().to_string()).collect());
    }
    if let Some(a) = col.as_any().downcast_ref::<LargeStringArray>() {
        return Ok(a.iter().map(|s| s.unwrap_or_default().to_string()).collect());
    }
    bail!("column `{name}` is {}, expected Utf8", col.data_type())
}

/// The batch's `features` column.
fn feature_list(batch: &RecordBatch) -> Result<&FixedSizeListArray> {
    let col = batch.column_by_name("features").ok_or_else(|| anyhow!("no column `features`"))?;
    col.as_any().downcast_ref::<FixedSizeListArray>().ok_or_else(|| {
        anyhow!("column `features` is {}, expected FixedSizeList<Float32 or Float16>", col.data_type())
    })
}

/// `tokens.parquet` rows.
pub struct TokenTable {
    pub images: Vec<String>,
    pub splits: Vec<String>,
    /// Token ids, startseq … endseq.
    pub tokens: Vec<Vec<i64>>,
}

impl TokenTable {
    pub fn load(path: &Path) -> Result<Self> {
        let df = table::read_parquet(path)?;
        table::require_columns(&df, path, &token_columns())?;
        let owned = |name| -> Result<Vec<String>> {
            Ok(table::str_values(&df, name)?.into_iter().map(str::to_string).collect())
        };
        let tokens = table::u32_list_values(&df, "tokens")
            .with_context(|| format!("{}: column `tokens`", path.display()))?
            .into_iter()
            .map(|row| row.into_iter().map(i64::from).collect())
            .collect();
        Ok(Self { images: owned("image")?, splits: owned("split")?, tokens })
    }

    /// The distinct images of `split`, in first-seen order.
    pub fn split_images(&self, split: &str) -> Vec<String> {
        let mut seen = std::collections::HashSet::new();
        self.images
            .iter()
            .zip(&self.splits)
            .filter(|(img, s)| s.as_str() == split && seen.insert(img.as_str()))
            .map(|(img, _)| img.clone())
            .collect()
    }

    /// The captions of `split` as a [`CaptionSet`] over `features`' rows. Captions longer
    /// than `max_len` are cut (keeping endseq), so one odd caption cannot blow up T.
    pub fn caption_set(
        &self,
        split: &str,
        features: &FeatureTable,
        max_len: usize,
        pad_id: i64,
    ) -> Result<CaptionSet> {
        let index = features.index();
        let (mut captions, mut rows) = (Vec::new(), Vec::new());
        for ((image, s), tokens) in self.images.iter().zip(&self.splits).zip(&self.tokens) {
            if s != split {
                continue;
            }
            let row = *index
                .get(image.as_str())
                .ok_or_else(|| anyhow!("image `{image}` ({split}) has no features"))?;
            if tokens.len() < 2 {
                bail!("image `{image}`: a caption has {} tokens, expected startseq … endseq", tokens.len());
            }
            let mut t = tokens.clone();
            if t.len() > max_len {
                let end = *t.last().unwrap();
                t.truncate(max_len - 1);
                t.push(end);
            }
            captions.push(t);
            rows.push(row);
        }
        Ok(CaptionSet::from_lists(&captions, &rows, pad_id))
    }
}

/// Word vectors from a GloVe/fastText text file (`word v1 … vE` per line; a fastText
/// header line `count dim` is skipped) for the vocabulary's words. Returns the (V, E)
/// matrix with `fallback`'s rows where a word is missing, and how many words were found.
pub fn load_word_vectors(path: &Path, vocab: &Vocab, fallback: &Tensor) -> Result<(Tensor, usize)> {
    let dim = fallback.size()[1] as usize;
    let ids: HashMap<&str, usize> =
        vocab.file.tokens.iter().enumerate().map(|(i, w)| (w.as_str(), i)).collect();
    let mut matrix = Vec::<f32>::try_from(fallback.to_device(tch::Device::Cpu).reshape([-1]))?;
    let file = File::open(path).with_context(|| format!("opening word vectors {}", path.display()))?;
    let mut found = vec![false; vocab.len()];
    for (n, line) in BufReader::new(file).lines().enumerate() {
        let line = line.with_context(|| format!("{}:{}", path.display(), n + 1))?;
        let mut parts = line.split(' ');
        let Some(&id) = parts.next().and_then(|w| ids.get(w)) else { continue };
        let values: Vec<f32> = parts
            .filter(|p| !p.is_empty())
            .map(str::parse)
            .collect::<Result<_, _>>()
            .with_context(|| format!("{}:{}: not a number", path.display(), n + 1))?;
        if values.len() != dim {
            bail!("{}:{}: {} values, but the embedding width is {dim}", path.display(), n + 1, values.len());
        }
        if !found[id] {
            matrix[id * dim..(id + 1) * dim].copy_from_slice(&values);
            found[id] = true;
        }
    }
    let hits = found.iter().filter(|&&f| f).count();
    Ok((Tensor::from_slice(&matrix).view([vocab.len() as i64, dim as i64]), hits))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::Arc;

    use arrow_array::types::Float32Type;
    use arrow_ipc::writer::FileWriter;
    use arrow_schema::{DataType, Field, Schema};

    /// Writes a features.arrow with `names` and rows of `dim` values (row i is all i).
    pub(crate) fn write_features(path: &Path, names: &[&str], dim: i32) {
        let values = names.iter().enumerate().map(|(i, _)| Some(vec![Some(i as f32); dim as usize]));
        let list = FixedSizeListArray::from_iter_primitive::<Float32Type, _, _>(values, dim);
        let hashes = StringArray::from(names.iter().map(|n| format!("h-{n}")).collect::<Vec<_>>());
        let schema = Arc::new(Schema::new(vec![
            Field::new("image", DataType::Utf8, false),
            Field::new("content_hash", DataType::Utf8, false),
            Field::new("features", list.data_type().clone(), false),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(StringArray::from(names.to_vec())), Arc::new(hashes), Arc::new(list)],
        )
        .unwrap();
        let mut writer = FileWriter::try_new(File::create(path).unwrap(), &schema).unwrap();
        writer.write(&batch).unwrap();
        writer.finish().unwrap();
    }

    /// A vocabulary of `words` plus pad, unk, startseq and endseq (sorted after pad/unk).
    pub(crate) fn vocab_of(words: &[&str]) -> Vocab {
        let mut counts = pipe::data::vocab::WordCounts::default();
        counts.add(&words.join(" "));
        Vocab::build(&counts, 1, &pipe::data::clean::Cleaning::default()).unwrap()
    }

    #[test]
    fn features_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("features.arrow");
        write_features(&path, &["a.jpg", "b.jpg", "c.jpg"], 4);
        let table = FeatureTable::load(&path).unwrap();
        assert_eq!(table.images, ["a.jpg", "b.jpg", "c.jpg"]);
        assert_eq!(table.matrix.size(), [3, 4]);
        assert_eq!(table.matrix.double_value(&[2, 3]), 2.0);
    }

    #[test]
    fn word_vectors_replace_known_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("glove.txt");
        std::fs::write(&path, "2 2\ndog 1 2\ncat 3 4\nzebra 5 6\n").unwrap();
        let vocab = vocab_of(&["dog", "cat"]); // <pad> <unk> cat dog endseq startseq
        let (m, hits) =
            load_word_vectors(&path, &vocab, &Tensor::zeros([6, 2], (tch::Kind::Float, tch::Device::Cpu)))
                .unwrap();
        assert_eq!(hits, 2);
        assert_eq!(m.double_value(&[2, 1]), 4.0);
        assert_eq!(m.double_value(&[4, 0]), 0.0);
    }
}

//! The feature cache: feature vectors kept across runs, per backbone and precision.
//!
//! A feature vector depends only on the backbone and the image bytes, so vectors outlive
//! any one run: adding 100 photos to a folder of 7000 computes 100 forward passes.
//!
//! | key part | why |
//! |---|---|
//! | backbone hash (blake3 of `model.pt` + `backbone.json`) | another model, other features |
//! | precision (`fp32`, `fp16`, `bf16`) | reduced precision changes the numbers visibly |
//! | layout (pooled or grid) | a grid entry holds every cell, a pooled one their mean |
//! | image content hash (from the manifest) | not the name: renames and copies hit the cache |
//!
//! Deliberately not in the key: the device (CPU and CUDA fp32 agree to ~1e-3 relative), the
//! batch size and thread counts (on a CPU an image gets the same bits in any batch at any
//! thread count: short batches are padded, see `model::cpu_batch`), file names and paths.
//!
//! Entries live in `<cache_dir>/<backbone hash>-<precision>[-grid]/shard-<id>.arrow` (Arrow IPC:
//! `content_hash`, `features`). A shard is written under a temporary name and renamed, so a
//! killed run never leaves a half-written one; new vectors are flushed every
//! [`SHARD_ROWS`], so a killed run keeps most of its work. An unreadable shard is
//! reported, deleted and recomputed, never trusted. Past [`MAX_SHARDS`] shards they are
//! merged into one.
//!

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{ensure, Context, Result};
use arrow_array::{Array, FixedSizeListArray, RecordBatch, StringArray};
use arrow_ipc::reader::FileReader;
use arrow_ipc::writer::FileWriter;
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use pipe_engine::fsutil::{remove_stale_temps, write_atomic_with};

use super::layout::{column_values, FeatureLayout};
use crate::model::backbone::Precision;

/// New vectors are written to a shard at least this often, so a killed run loses little.
pub const SHARD_ROWS: usize = 2048;
/// More shards than this are merged into one at the end of a run.
pub const MAX_SHARDS: usize = 16;

/// Schema of a cache shard.
fn shard_schema(layout: &FeatureLayout) -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new("content_hash", DataType::Utf8, false), layout.field()]))
}

/// Vectors computed in this run and not yet written to a shard.
#[derive(Default)]
pub(super) struct ShardBuffer {
    hashes: Vec<String>,
    values: Vec<f32>,
}

impl ShardBuffer {
    pub(super) fn push(&mut self, hash: &str, vector: &[f32]) {
        self.hashes.push(hash.to_owned());
        self.values.extend_from_slice(vector);
    }
    pub(super) fn len(&self) -> usize {
        self.hashes.len()
    }
}

/// The persistent per-(backbone, precision) store of feature vectors (see the module doc).
pub struct FeatureCache {
    dir: PathBuf,
    layout: FeatureLayout,
}

impl FeatureCache {
    /// Opens (creating) `<cache_dir>/<backbone_hash>-<precision>[-grid]/`.
    pub fn open(
        cache_dir: &Path,
        backbone_hash: &str,
        precision: Precision,
        layout: FeatureLayout,
    ) -> Result<Self> {
        let name = format!("{backbone_hash}-{}{}", precision.as_str(), layout.cache_suffix());
        let dir = cache_dir.join(name);
        fs::create_dir_all(&dir).with_context(|| format!("creating feature cache {}", dir.display()))?;
        // A shard whose writer was killed before its rename is never read; drop the file.
        remove_stale_temps(&dir, false)?;
        Ok(Self { dir, layout })
    }

    /// The shard files, sorted by name.
    pub(super) fn shards(&self) -> Result<Vec<PathBuf>> {
        let mut shards = Vec::new();
        for entry in fs::read_dir(&self.dir).with_context(|| format!("listing {}", self.dir.display()))? {
            let path = entry?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            if name.starts_with("shard-") && name.ends_with(".arrow") {
                shards.push(path);
            }
        }
        shards.sort();
        Ok(shards)
    }

    /// Vectors for every hash in `wanted` that some shard holds. A shard that cannot be read
    /// is reported through `warn` and deleted.
    pub fn lookup(&self, wanted: &HashSet<&str>, warn: impl Fn(String)) -> Result<HashMap<String, Vec<f32>>> {
        let mut found = HashMap::new();
        for shard in self.shards()? {
            let read = self.read_shard(&shard, &mut |hash, vector| {
                if wanted.contains(hash) && !found.contains_key(hash) {
                    found.insert(hash.to_owned(), vector.to_vec());
                }
            });
            if let Err(err) = read {
                warn(format!("ignoring unreadable feature cache shard {}: {err:#}", shard.display()));
                let _ = fs::remove_file(&shard);
            }
        }
        Ok(found)
    }

    /// Calls `each(hash, vector)` for every row of one shard, after checking its schema.
    fn read_shard(&self, path: &Path, each: &mut dyn FnMut(&str, &[f32])) -> Result<()> {
        let file = File::open(path)?;
        let reader = FileReader::try_new_buffered(file, None)?;
        ensure!(reader.schema() == shard_schema(&self.layout), "unexpected schema {:?}", reader.schema());
        let dim = self.layout.row_len();
        for batch in reader {
            let batch = batch?;
            let hashes =
                batch.column(0).as_any().downcast_ref::<StringArray>().context("content_hash column")?;
            let lists =
                batch.column(1).as_any().downcast_ref::<FixedSizeListArray>().context("features column")?;
            let values = column_values(lists)?;
            for row in 0..batch.num_rows() {
                each(hashes.value(row), &values[row * dim..(row + 1) * dim]);
            }
        }
        Ok(())
    }

    /// Writes and empties `pending` as one shard named after its contents; returns its path
    /// (None when there was nothing to write).
    pub(super) fn write_shard(&self, pending: &mut ShardBuffer) -> Result<Option<PathBuf>> {
        if pending.len() == 0 {
            return Ok(None);
        }
        let mut id = blake3::Hasher::new();
        for h in &pending.hashes {
            id.update(h.as_bytes());
        }
        let name = format!("shard-{}.arrow", &id.finalize().to_hex()[..32]);
        let hashes = StringArray::from_iter_values(pending.hashes.iter());
        let values = self.layout.array(std::mem::take(&mut pending.values))?;
        let batch = RecordBatch::try_new(shard_schema(&self.layout), vec![Arc::new(hashes), values])?;
        pending.hashes.clear();
        self.write_atomic(&name, batch)?;
        Ok(Some(self.dir.join(name)))
    }

    /// Writes a record batch to `<dir>/<name>` atomically (a hidden temp file, which
    /// [`Self::shards`] never lists, then a rename).
    fn write_atomic(&self, name: &str, batch: RecordBatch) -> Result<()> {
        write_atomic_with(&self.dir.join(name), |file| {
            let mut writer = FileWriter::try_new(BufWriter::new(file), &shard_schema(&self.layout))?;
            writer.write(&batch)?;
            writer.finish()?;
            writer.into_inner()?.flush()?;
            Ok(())
        })
        .with_context(|| format!("writing feature cache shard {}/{name}", self.dir.display()))
    }

    /// Merges all shards into one when there are more than [`MAX_SHARDS`], so lookups stay
    /// fast after many small incremental runs. Duplicate hashes keep their first vector.
    pub fn compact_if_needed(&self, warn: impl Fn(String)) -> Result<()> {
        let shards = self.shards()?;
        if shards.len() <= MAX_SHARDS {
            return Ok(());
        }
        let mut merged = ShardBuffer::default();
        let mut seen = HashSet::new();
        for shard in &shards {
            let read = self.read_shard(shard, &mut |hash, vector| {
                if seen.insert(hash.to_owned()) {
                    merged.push(hash, vector);
                }
            });
            if let Err(err) = read {
                warn(format!("dropping unreadable feature cache shard {}: {err:#}", shard.display()));
            }
        }
        let merged = self.write_shard(&mut merged)?;
        for shard in shards.iter().filter(|s| Some(*s) != merged.as_ref()) {
            fs::remove_file(shard).with_context(|| format!("removing merged shard {}", shard.display()))?;
        }
        Ok(())
    }
}

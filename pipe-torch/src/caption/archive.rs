//! Archive mode of the `caption` kind: a folder of any size captioned chunk by chunk
//! into resumable part files, then merged. The parts live in the kind's cache, keyed by the
//! stage's fingerprint, so that shards (each a contiguous range of chunks, possibly on other
//! machines) and the stage's own run, which merges, share them.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{ensure, Context, Result};
use serde::{Deserialize, Serialize};
use tch::Tensor;

use super::captioner::{CaptionModel, DecodeSettings};
use crate::model::backbone::{Backbone, ExtractOptions};
use pipe::contract::files::{GENERATED_CAPTIONS_FILE, SKIPPED_FILE};
use pipe::contract::tables::{
    read_generated_captions, write_generated_captions, GeneratedCaption, SkippedImage,
};
use pipe::data::manifest::{list_image_files, ImageRoot};
use pipe_engine::fsutil::{remove_stale_temps, write_json_atomic};
use pipe_engine::stage::Shard;

pub(super) const PARTS_DIR: &str = "parts";
const LISTING_FILE: &str = "listing.json";

/// Which chunks a run computes.
#[derive(Debug, Clone, Copy)]
pub enum Chunks {
    /// Every chunk not already done, then the merge into the outputs.
    All,
    /// One shard's contiguous range of chunks, and no merge: the stage's own run merges.
    Shard(Shard),
    /// Stop after this many new parts, as an interrupted run would (tests).
    StopAfter(usize),
}

/// Archive mode: a folder captioned chunk by chunk into resumable parts.
pub struct Archive {
    pub folder: PathBuf,
    pub chunk_size: usize,
    pub extract: ExtractOptions,
    pub settings: DecodeSettings,
}

/// What an archive run did.
#[derive(Debug, Clone, Default)]
pub struct ArchiveReport {
    pub files: usize,
    pub captioned: usize,
    pub skipped: usize,
    /// Parts found finished (by an earlier, interrupted run, or by shards).
    pub resumed_parts: usize,
    /// Parts this run computed.
    pub new_parts: usize,
    /// False when the run did not merge (a shard, or a run stopped early).
    pub complete: bool,
    pub seconds: f64,
}

impl ArchiveReport {
    pub fn summary(&self) -> String {
        format!(
            "{} files: {} captioned, {} skipped, {} parts resumed; {:.1} s ({:.1} captions/s)",
            self.files,
            self.captioned,
            self.skipped,
            self.resumed_parts,
            self.seconds,
            self.captioned as f64 / self.seconds.max(1e-9)
        )
    }
}

/// `parts/listing.json`: parts are reused only if the folder listing and chunking match.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Listing {
    files: usize,
    chunk_size: usize,
    /// blake3 of the sorted relative paths.
    hash: String,
}

impl Archive {
    /// Captions the folder's `chunks` into part files in `parts`, then (for all of them)
    /// merges the parts into `out_dir` and removes them. `progress(done, total)` is told
    /// per part.
    #[allow(clippy::too_many_arguments)]
    pub fn run(
        &self,
        model: &CaptionModel,
        backbone: &Backbone,
        parts: &Path,
        out_dir: &Path,
        chunks: Chunks,
        progress: &mut dyn FnMut(usize, usize) -> Result<()>,
        log: &dyn Fn(String),
    ) -> Result<ArchiveReport> {
        let started = Instant::now();
        let files = list_image_files(&self.folder)?;
        ensure!(!files.is_empty(), "{}: no image files", self.folder.display());
        let root = ImageRoot::new(&self.folder)?;
        let reused = self.prepare_parts(parts, &files, log)?;
        let mut report = ArchiveReport { files: files.len(), ..Default::default() };
        let count = files.len().div_ceil(self.chunk_size);
        let wanted = match chunks {
            Chunks::Shard(shard) => shard.range(count),
            Chunks::All | Chunks::StopAfter(_) => 0..count,
        };
        let mut written = 0;
        for (i, chunk) in files.chunks(self.chunk_size).enumerate() {
            if !wanted.contains(&i) {
                continue;
            }
            let part = part_path(parts, i);
            if reused && part.exists() {
                report.resumed_parts += 1;
            } else {
                if matches!(chunks, Chunks::StopAfter(n) if written >= n) {
                    report.seconds = started.elapsed().as_secs_f64();
                    return Ok(report);
                }
                self.caption_chunk(model, backbone, &root, chunk, &part)?;
                crate::memory::release_free_memory(); // bounds how peak memory grows with chunks
                written += 1;
                report.new_parts += 1;
            }
            progress(((i + 1) * self.chunk_size).min(files.len()), files.len())?;
        }
        if let Chunks::Shard(_) = chunks {
            report.seconds = started.elapsed().as_secs_f64();
            return Ok(report);
        }
        let (captioned, skipped) = merge_parts(parts, count, out_dir)?;
        (report.captioned, report.skipped, report.complete) = (captioned, skipped, true);
        report.seconds = started.elapsed().as_secs_f64();
        Ok(report)
    }

    /// Creates `parts/` with its listing, or checks that an existing one matches. Returns
    /// whether existing parts may be reused.
    fn prepare_parts(&self, parts: &Path, files: &[String], log: &dyn Fn(String)) -> Result<bool> {
        let listing = Listing { files: files.len(), chunk_size: self.chunk_size, hash: listing_hash(files) };
        let path = parts.join(LISTING_FILE);
        if let Ok(text) = std::fs::read_to_string(&path) {
            if serde_json::from_str::<Listing>(&text).ok().as_ref() == Some(&listing) {
                // What a killed writer left; parts are renamed into place whole.
                remove_stale_temps(parts, false)?;
                return Ok(true);
            }
            log(format!(
                "{}: the folder or chunk_size changed since the interrupted run; starting over",
                path.display()
            ));
            std::fs::remove_dir_all(parts).with_context(|| format!("removing {}", parts.display()))?;
        }
        std::fs::create_dir_all(parts).with_context(|| format!("creating {}", parts.display()))?;
        write_json_atomic(&path, &listing)?;
        Ok(false)
    }

    /// Backbone + decoder over one chunk; writes its skipped list, then its part (renamed
    /// into place last, so a part that exists is complete).
    fn caption_chunk(
        &self,
        model: &CaptionModel,
        backbone: &Backbone,
        root: &ImageRoot,
        chunk: &[String],
        part: &Path,
    ) -> Result<()> {
        // Files that resolve outside the folder are refused, not read; `kept[i]` is the
        // chunk position of the i-th path handed to the backbone.
        let (mut kept, mut paths, mut skipped) = (Vec::new(), Vec::<PathBuf>::new(), Vec::new());
        for (i, rel) in chunk.iter().enumerate() {
            match root.resolve(rel) {
                Ok(path) => {
                    kept.push(i);
                    paths.push(path);
                }
                Err(err) => skipped.push((i, format!("{err:#}"))),
            }
        }
        let (mut indices, mut values) = (Vec::new(), Vec::<f32>::new());
        backbone.extract(&paths, &self.extract, |batch| {
            indices.extend(batch.indices.iter().map(|&i| kept[i]));
            values.extend_from_slice(batch.features);
            skipped.extend(batch.skipped.into_iter().map(|s| (kept[s.index], s.reason)));
            Ok(())
        })?;
        let mut rows = Vec::with_capacity(indices.len());
        if !indices.is_empty() {
            let features =
                Tensor::from_slice(&values).view([indices.len() as i64, backbone.row_len() as i64]);
            let captions = model.caption(&features, &self.settings)?;
            rows.extend(indices.iter().zip(captions).map(|(&i, (caption, log_prob))| GeneratedCaption {
                image: chunk[i].clone(),
                caption,
                log_prob,
            }));
        }
        // In folder order, whether refused before decoding or by the decoder.
        skipped.sort_by_key(|(i, _)| *i);
        let skipped: Vec<SkippedImage> =
            skipped.into_iter().map(|(i, reason)| SkippedImage { image: chunk[i].clone(), reason }).collect();
        write_json_atomic(&part.with_extension("skipped.json"), &skipped)?;
        write_generated_captions(part, &rows)
    }
}

fn listing_hash(files: &[String]) -> String {
    let mut hasher = blake3::Hasher::new();
    for f in files {
        hasher.update(f.as_bytes());
        hasher.update(b"\n");
    }
    hasher.finalize().to_hex().to_string()
}

pub(super) fn part_path(parts: &Path, i: usize) -> PathBuf {
    parts.join(format!("part-{i:05}.parquet"))
}

/// Concatenates the parts into `captions.parquet` and `skipped.json`, then removes `parts/`.
fn merge_parts(parts: &Path, count: usize, out_dir: &Path) -> Result<(usize, usize)> {
    let (mut rows, mut skipped) = (Vec::new(), Vec::<SkippedImage>::new());
    for i in 0..count {
        let part = part_path(parts, i);
        rows.extend(read_generated_captions(&part)?);
        let list = part.with_extension("skipped.json");
        let text = std::fs::read_to_string(&list).with_context(|| format!("reading {}", list.display()))?;
        skipped.extend(
            serde_json::from_str::<Vec<SkippedImage>>(&text)
                .with_context(|| format!("parsing {}", list.display()))?,
        );
    }
    write_generated_captions(&out_dir.join(GENERATED_CAPTIONS_FILE), &rows)?;
    write_json_atomic(&out_dir.join(SKIPPED_FILE), &skipped)?;
    std::fs::remove_dir_all(parts).with_context(|| format!("removing {}", parts.display()))?;
    Ok((rows.len(), skipped.len()))
}

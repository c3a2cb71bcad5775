//! The threaded extract pipeline: a decode pool feeding the forward pass through a
//! bounded channel, batch by batch (the diagram is in the module doc of [`super`]).

use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::thread;
use std::time::Instant;

use anyhow::{anyhow, ensure, Context, Result};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::preprocess::Preprocess;
use super::Backbone;

/// An image that was not used, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Skipped {
    /// Position in the list given to [`Backbone::extract`].
    pub index: usize,
    pub reason: String,
}

/// One batch of results handed to the sink of [`Backbone::extract`].
#[derive(Debug)]
pub struct FeatureBatch<'a> {
    /// Positions (in the input list) of the images that have features, in order.
    pub indices: Vec<usize>,
    /// Row-major `[indices.len(), row_len]` (see [`Backbone::row_len`]); the buffer is
    /// reused for the next batch, so a sink copies what it keeps.
    pub features: &'a [f32],
    /// Images of this batch that were skipped.
    pub skipped: Vec<Skipped>,
}

/// Knobs of [`Backbone::extract`].
#[derive(Debug, Clone, Copy)]
pub struct ExtractOptions {
    pub batch_size: usize,
    pub decode_threads: usize,
    /// Decoded batches that may wait for the forward pass. Two keep the model busy while
    /// bounding memory (one batch of 32 at 224 px is 19 MB).
    pub queue_depth: usize,
}

impl Default for ExtractOptions {
    fn default() -> Self {
        Self { batch_size: 32, decode_threads: 1, queue_depth: 2 }
    }
}

/// Batches timed apart as warm-up in [`ExtractTimings`].
pub const WARMUP_BATCHES: usize = 2;

/// Where the time of an [`Backbone::extract`] call went.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct ExtractTimings {
    /// Images that got features.
    pub computed: usize,
    pub skipped: usize,
    /// Seconds the forward loop waited for decoded batches (0 when decoding is hidden).
    pub wait_s: f64,
    /// Seconds in forward passes, including host/device copies.
    pub forward_s: f64,
    /// The first batches' shares of `forward_s`, and their images: TorchScript's executor
    /// profiles the graph on the first call and optimizes it on the second (and on a GPU
    /// they also allocate and pick kernels), so the batches after them give the steady rate.
    pub warmup_batch_s: [f64; WARMUP_BATCHES],
    pub warmup_images: usize,
    pub total_s: f64,
}

impl ExtractTimings {
    pub fn images_per_s(&self) -> f64 {
        if self.total_s > 0.0 {
            self.computed as f64 / self.total_s
        } else {
            0.0
        }
    }

    /// Forward-pass throughput after the warm-up batches (0 when there were no more).
    pub fn steady_forward_images_per_s(&self) -> f64 {
        let warmup_s: f64 = self.warmup_batch_s.iter().sum();
        let (images, secs) = (self.computed - self.warmup_images, self.forward_s - warmup_s);
        if images > 0 && secs > 0.0 {
            images as f64 / secs
        } else {
            0.0
        }
    }
}

/// Decoded pixels of one batch (HWC `u8`, image after image), on their way to the forward pass.
struct DecodedBatch {
    indices: Vec<usize>,
    pixels: Vec<u8>,
    skipped: Vec<Skipped>,
}

/// What [`Backbone::extract_all`] returns: a vector per path (`None` when skipped), and the skips.
pub type ExtractedAll = (Vec<Option<Vec<f32>>>, Vec<Skipped>);

impl Backbone {
    /// Features of every file in `paths`, in batches, decoding on `opts.decode_threads`
    /// threads while the model runs. Each finished batch goes to `sink`; an error from the
    /// sink stops the run. Unreadable images go to the batch's `skipped` list.
    pub fn extract<F>(&self, paths: &[PathBuf], opts: &ExtractOptions, mut sink: F) -> Result<ExtractTimings>
    where
        F: FnMut(FeatureBatch<'_>) -> Result<()>,
    {
        ensure!(opts.batch_size > 0, "batch_size must be positive");
        let start = Instant::now();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(opts.decode_threads.max(1))
            .thread_name(|i| format!("decode-{i}"))
            .build()
            .context("starting decode threads")?;
        let (tx, rx) = sync_channel::<DecodedBatch>(opts.queue_depth.max(1));
        let mut timings = thread::scope(|scope| {
            let prep = &self.prep;
            let producer = scope.spawn(move || decode_batches(paths, prep, opts.batch_size, &pool, tx));
            let result = self.consume(rx, &mut sink);
            // With the receiver gone, the producer stops at its next send.
            producer.join().map_err(|_| anyhow!("decode thread panicked"))?;
            result
        })?;
        timings.total_s = start.elapsed().as_secs_f64();
        Ok(timings)
    }

    /// The forward loop: takes decoded batches off the channel until it closes.
    fn consume<F>(&self, rx: Receiver<DecodedBatch>, sink: &mut F) -> Result<ExtractTimings>
    where
        F: FnMut(FeatureBatch<'_>) -> Result<()>,
    {
        let mut t = ExtractTimings::default();
        let mut rows = Vec::new();
        for batch_no in 0.. {
            let waited = Instant::now();
            let Ok(batch) = rx.recv() else { break };
            t.wait_s += waited.elapsed().as_secs_f64();
            let ran = Instant::now();
            let n = batch.indices.len();
            if n > 0 {
                self.forward_pixels_into(&batch.pixels, n, &mut rows)?;
            }
            let secs = ran.elapsed().as_secs_f64();
            if let Some(warmup) = t.warmup_batch_s.get_mut(batch_no) {
                (*warmup, t.warmup_images) = (secs, t.warmup_images + n);
            }
            t.forward_s += secs;
            t.computed += n;
            t.skipped += batch.skipped.len();
            let features = &rows[..n * self.row_len()];
            sink(FeatureBatch { indices: batch.indices, features, skipped: batch.skipped })?;
        }
        Ok(t)
    }

    /// Convenience over [`Self::extract`]: one `Option<Vec<f32>>` per path (None = skipped).
    pub fn extract_all(&self, paths: &[PathBuf], opts: &ExtractOptions) -> Result<ExtractedAll> {
        let mut out = vec![None; paths.len()];
        let mut skipped = Vec::new();
        let dim = self.row_len();
        self.extract(paths, opts, |batch| {
            for (row, &i) in batch.indices.iter().enumerate() {
                out[i] = Some(batch.features[row * dim..(row + 1) * dim].to_vec());
            }
            skipped.extend(batch.skipped);
            Ok(())
        })?;
        Ok((out, skipped))
    }
}

/// The producer: decodes `paths` batch by batch on `pool` and sends each batch in order.
fn decode_batches(
    paths: &[PathBuf],
    prep: &Preprocess,
    batch_size: usize,
    pool: &rayon::ThreadPool,
    tx: SyncSender<DecodedBatch>,
) {
    for (b, chunk) in paths.chunks(batch_size).enumerate() {
        let batch = pool.install(|| decode_batch(chunk, b * batch_size, prep));
        if tx.send(batch).is_err() {
            return; // the consumer stopped (an error); nothing left to do
        }
    }
}

/// Decodes one chunk in parallel straight into a contiguous batch buffer, then closes the
/// gaps left by images that failed.
fn decode_batch(chunk: &[PathBuf], first: usize, prep: &Preprocess) -> DecodedBatch {
    let len = prep.image_len;
    let mut pixels = vec![0u8; chunk.len() * len];
    let results: Vec<Result<()>> = pixels
        .par_chunks_mut(len)
        .zip(chunk.par_iter())
        .map(|(dst, path)| prep.file_into(path, dst))
        .collect();
    let (mut indices, mut skipped, mut kept) = (Vec::new(), Vec::new(), 0);
    for (i, result) in results.into_iter().enumerate() {
        match result {
            Ok(()) => {
                if kept != i {
                    pixels.copy_within(i * len..(i + 1) * len, kept * len);
                }
                kept += 1;
                indices.push(first + i);
            }
            Err(err) => skipped.push(Skipped { index: first + i, reason: format!("{err:#}") }),
        }
    }
    pixels.truncate(kept * len);
    DecodedBatch { indices, pixels, skipped }
}

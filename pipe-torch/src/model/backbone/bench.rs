//! A throughput harness for `pipe-torch/benches/features.rs` and scripts/gpu/bench.sh.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use serde::Serialize;
use tch::{Device, Kind, Tensor};

use super::{Backbone, ExtractOptions, ThreadPlan};

/// Throughput figures of [`bench`].
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub images: usize,
    pub batch_size: usize,
    pub device: String,
    pub precision: &'static str,
    pub threads: ThreadPlan,
    /// Decode + forward through [`Backbone::extract`].
    pub end_to_end_img_s: f64,
    /// The end-to-end run's forward passes after its warm-up batches.
    pub steady_forward_img_s: f64,
    /// Forward passes alone (upload, normalize, model, download) on random pixel tensors of
    /// the same batch size.
    pub forward_only_img_s: f64,
    pub wait_s: f64,
    pub skipped: usize,
}

/// Measures end-to-end and forward-only throughput on `paths` (a warm-up batch first).
pub fn bench(
    backbone: &Backbone,
    paths: &[PathBuf],
    batch_size: usize,
    threads: ThreadPlan,
) -> Result<BenchReport> {
    tch::set_num_threads(threads.torch as i32);
    let s = backbone.spec().input_size as i64;
    let random =
        Tensor::randint(256, [batch_size as i64, s, s, 3], (Kind::Uint8, Device::Cpu)).permute([0, 3, 1, 2]);
    let _ = backbone.forward_bytes(&random)?; // warm-up: the first calls profile the graph and allocate
    let opts = ExtractOptions { batch_size, decode_threads: threads.decode, ..Default::default() };
    let e2e = backbone.extract(paths, &opts, |_| Ok(()))?;
    let batches = paths.len().div_ceil(batch_size).max(1);
    let start = Instant::now();
    for _ in 0..batches {
        let _ = backbone.forward_bytes(&random)?;
    }
    let forward_only = (batches * batch_size) as f64 / start.elapsed().as_secs_f64();
    Ok(BenchReport {
        images: paths.len(),
        batch_size,
        device: format!("{:?}", backbone.device()),
        precision: backbone.precision().as_str(),
        threads,
        end_to_end_img_s: e2e.images_per_s(),
        steady_forward_img_s: e2e.steady_forward_images_per_s(),
        forward_only_img_s: forward_only,
        wait_s: e2e.wait_s,
        skipped: e2e.skipped,
    })
}

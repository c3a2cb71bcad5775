//! Features benchmark: backbone throughput in images/s, end to end and forward-only.
//!
//! ```text
//! cargo bench --bench features -- [IMAGES_DIR] [--limit N] [--batch 32] [--device cpu]
//!     [--precision fp32] [--torch-threads N] [--decode-threads N] [--backbone DIR]
//! ```
//! IMAGES_DIR (default ../shared/flickr8k/images beside the repository) holds JPEG/PNG files;
//! BACKBONE defaults to data/models/efficientnet_lite0 (run scripts/export_backbone.py).
//! End to end = read + decode + resize + normalize + forward through `Backbone::extract`,
//! with decoding on its own threads. Forward-only = the same number of batches of random
//! tensors, so the ratio of the two says how well decoding is hidden. Figures go in
//! docs/BENCHMARKS.md; nothing here asserts a time.

use std::path::PathBuf;

use anyhow::{Context, Result};
use pipe::data::manifest::list_image_files;
use pipe_torch::model::backbone::{bench, Backbone, DeviceChoice, Precision, ThreadPlan, WARMUP_BATCHES};

fn main() -> Result<()> {
    pipe_torch::numerics::reproducible_cpu_maths(); // as in the worker
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let images = positional(&args).map_or_else(|| root.join("../shared/flickr8k/images"), PathBuf::from);
    let backbone =
        flag(&args, "--backbone").map_or_else(|| root.join("data/models/efficientnet_lite0"), PathBuf::from);
    let device: DeviceChoice = flag(&args, "--device").unwrap_or("cpu").parse()?;
    let precision: Precision = serde_json::from_value(flag(&args, "--precision").unwrap_or("fp32").into())?;
    let batch = number(&args, "--batch")?.unwrap_or(32);

    let mut paths: Vec<_> = list_image_files(&images)?.iter().map(|f| images.join(f)).collect();
    paths.truncate(number(&args, "--limit")?.unwrap_or(usize::MAX));
    let model = Backbone::load(&backbone, device, precision)?;
    let auto = ThreadPlan::new(0, model.device());
    let threads = ThreadPlan {
        torch: number(&args, "--torch-threads")?.unwrap_or(auto.torch),
        decode: number(&args, "--decode-threads")?.unwrap_or(auto.decode),
    };
    println!("{} images from {}, backbone {}", paths.len(), images.display(), model.spec().name);
    let r = bench(&model, &paths, batch, threads)?;
    println!(
        "device {} {} batch {} threads torch {} decode {}",
        r.device, r.precision, r.batch_size, r.threads.torch, r.threads.decode
    );
    println!(
        "end to end:   {:7.1} img/s ({} skipped, forward waited {:.2} s for decoding)",
        r.end_to_end_img_s, r.skipped, r.wait_s
    );
    println!(
        "  its forward passes after {WARMUP_BATCHES} warm-up batches: {:7.1} img/s",
        r.steady_forward_img_s
    );
    println!("forward only: {:7.1} img/s", r.forward_only_img_s);
    println!("ratio:        {:7.3}", r.end_to_end_img_s / r.forward_only_img_s);
    Ok(())
}

/// The first argument that is neither a flag nor a flag's value.
fn positional(args: &[String]) -> Option<&str> {
    let mut skip = false;
    for a in args {
        if std::mem::take(&mut skip) {
            continue;
        }
        if a.starts_with("--") {
            skip = true;
        } else {
            return Some(a);
        }
    }
    None
}

fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).map(String::as_str)
}

fn number(args: &[String], name: &str) -> Result<Option<usize>> {
    flag(args, name).map(|v| v.parse().with_context(|| format!("{name} {v}: not a number"))).transpose()
}

//! The compute of the `features` kind (its params, inputs and outputs are declared in
//! `pipe::stages::features`): manifest → feature cache ([`cache`]) → backbone for the rest
//! → `features.arrow` in manifest order.

mod cache;
pub mod layout;

use std::collections::{HashMap, HashSet};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use arrow_array::{ArrayRef, RecordBatch, StringArray};
use arrow_ipc::writer::FileWriter;
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use serde::Serialize;
use serde_json::json;

pub use cache::{FeatureCache, MAX_SHARDS, SHARD_ROWS};
pub use layout::FeatureLayout;

use crate::model::backbone::{Backbone, ExtractOptions, ExtractTimings, FeatureBatch, ThreadPlan};
use cache::ShardBuffer;
use pipe::contract::files::{FEATURES_FILE, FEATURES_SUMMARY_FILE};
use pipe::contract::tables::{read_image_manifest, ImageManifestRow, SkippedImage};
use pipe::data::manifest::ImageRoot;
use pipe::stages::features::FeaturesParams;
use pipe_engine::fsutil::{write_atomic_with, write_json_atomic};
use pipe_engine::stage::StageContext;

/// Rows per record batch in `features.arrow`.
const OUTPUT_BATCH_ROWS: usize = 1024;

/// Runs a `features` stage.
pub fn run(ctx: &StageContext) -> Result<()> {
    let params: FeaturesParams = ctx.params()?;
    if ctx.shard.is_some() {
        return run_shard(ctx, &params);
    }
    let summary = run_features(ctx, &params)?;
    ctx.log(format!(
        "{} images: {} computed, {} reused from cache, {} skipped ({:.1} img/s)",
        summary.count,
        summary.computed,
        summary.reused,
        summary.skipped.len(),
        summary.images_per_s
    ));
    Ok(())
}

/// What one run did: `features.json` gets the count and the skipped images, the run
/// record the rest.
#[derive(Debug, Clone, Serialize)]
pub struct FeaturesSummary {
    /// Rows in `features.arrow`.
    pub count: usize,
    /// Distinct images run through the backbone in this run.
    pub computed: usize,
    /// Distinct images whose features came from the cache.
    pub reused: usize,
    pub skipped: Vec<SkippedImage>,
    pub images_per_s: f64,
}

/// The whole stage: manifest → cache lookup → extraction of the rest → outputs.
pub fn run_features(ctx: &StageContext, params: &FeaturesParams) -> Result<FeaturesSummary> {
    let started = Instant::now();
    let manifest = read_image_manifest(ctx.input("manifest")?)?;
    let images_dir = ctx.input("images")?;
    let backbone_dir = ctx.input("backbone")?;
    let backbone = Backbone::load(backbone_dir, params.device, params.precision)?;
    let threads = ThreadPlan::new(params.threads, backbone.device());
    tch::set_num_threads(threads.torch as i32);
    let load_s = started.elapsed().as_secs_f64();

    let t = Instant::now();
    let layout = FeatureLayout::for_stage(backbone.spec(), params.output)
        .with_context(|| format!("backbone {}", backbone_dir.display()))?;
    let cache = FeatureCache::open(&ctx.cache_dir, backbone.hash(), params.precision, layout)?;
    let wanted: HashSet<&str> = manifest.iter().map(|r| r.content_hash.as_str()).collect();
    let mut found = cache.lookup(&wanted, |m| ctx.log(m))?;
    let reused = found.len();
    let cache_s = t.elapsed().as_secs_f64();

    let (todo, refused) = missing(&manifest, &found, &ImageRoot::new(images_dir)?);
    ctx.log(format!(
        "{} distinct images: {reused} cached, {} to compute on {:?} ({}, {} torch + {} decode threads)",
        wanted.len(),
        todo.len(),
        backbone.device(),
        params.precision.as_str(),
        threads.torch,
        threads.decode
    ));
    let t = Instant::now();
    let (timings, mut failures) =
        compute(ctx, &backbone, &cache, layout, &todo, params, threads, &mut found)?;
    failures.extend(refused);
    let extract_s = t.elapsed().as_secs_f64();
    cache.compact_if_needed(|m| ctx.log(m))?;

    let t = Instant::now();
    let (count, skipped) = write_features(&ctx.output(FEATURES_FILE), &manifest, &found, &failures, layout)?;
    let write_s = t.elapsed().as_secs_f64();

    let summary = FeaturesSummary {
        count,
        computed: timings.computed,
        reused,
        skipped,
        images_per_s: if extract_s > 0.0 { timings.computed as f64 / extract_s } else { 0.0 },
    };
    // features.json holds only what the inputs and params determine; what depends on the
    // cache's state, the machine or the clock goes to the run record.
    let report = json!({
        "backbone": {"name": backbone.spec().name, "hash": backbone.hash(), "dim": backbone.dim()},
        "dim": backbone.dim(),
        "grid": layout.grid,
        "count": summary.count,
        "skipped": summary.skipped,
        "device": format!("{:?}", backbone.device()),
        "precision": params.precision.as_str(),
        "batch_size": params.batch_size,
    });
    write_json_atomic(&ctx.output(FEATURES_SUMMARY_FILE), &report)?;
    ctx.record_run(&json!({
        "computed": summary.computed,
        "reused": summary.reused,
        "threads": threads,
        "timings": {
            "load_s": load_s, "cache_s": cache_s, "extract_s": extract_s, "write_s": write_s,
            "decode_wait_s": timings.wait_s, "forward_s": timings.forward_s,
            "warmup_batch_s": timings.warmup_batch_s,
            "total_s": started.elapsed().as_secs_f64(),
        },
        "steady_forward_images_per_s": timings.steady_forward_images_per_s(),
        "images_per_s": summary.images_per_s,
    }))?;
    Ok(summary)
}

/// One shard of the stage: the backbone over this shard's slice of the distinct images,
/// into the feature cache; no outputs. The slice is cut from the manifest alone, so every
/// shard agrees on it whatever the cache holds, and the stage's normal run, later, finds
/// every vector cached and writes the same bytes as a run that computed them itself.
fn run_shard(ctx: &StageContext, params: &FeaturesParams) -> Result<()> {
    let shard = ctx.shard.context("run_shard needs a shard")?;
    let manifest = read_image_manifest(ctx.input("manifest")?)?;
    let mut distinct = HashSet::new();
    let rows: Vec<&ImageManifestRow> =
        manifest.iter().filter(|row| distinct.insert(row.content_hash.as_str())).collect();
    let slice = &rows[shard.range(rows.len())];
    let backbone = Backbone::load(ctx.input("backbone")?, params.device, params.precision)?;
    let threads = ThreadPlan::new(params.threads, backbone.device());
    tch::set_num_threads(threads.torch as i32);
    let layout = FeatureLayout::for_stage(backbone.spec(), params.output)?;
    let cache = FeatureCache::open(&ctx.cache_dir, backbone.hash(), params.precision, layout)?;
    let wanted: HashSet<&str> = slice.iter().map(|row| row.content_hash.as_str()).collect();
    let mut found = cache.lookup(&wanted, |m| ctx.log(m))?;
    let reused = found.len();
    let slice_rows: Vec<ImageManifestRow> = slice.iter().map(|row| (*row).clone()).collect();
    let (todo, refused) = missing(&slice_rows, &found, &ImageRoot::new(ctx.input("images")?)?);
    let t = Instant::now();
    let (timings, failures) = compute(ctx, &backbone, &cache, layout, &todo, params, threads, &mut found)?;
    let extract_s = t.elapsed().as_secs_f64();
    // No compaction here: other shards may be reading the cache; the merging run compacts.
    ctx.log(format!(
        "shard {shard}: {} of {} distinct images: {} computed, {reused} reused from cache, {} skipped ({:.1} img/s)",
        slice.len(),
        rows.len(),
        timings.computed,
        failures.len() + refused.len(),
        if extract_s > 0.0 { timings.computed as f64 / extract_s } else { 0.0 }
    ));
    Ok(())
}

/// One image to run through the backbone: its content hash and where its bytes are.
struct Todo {
    content_hash: String,
    path: PathBuf,
}

/// Distinct content hashes not in `found`, each with the first file that has them.
/// Also returns the reason for each content hash whose file resolves outside the image
/// folder (a symlink to elsewhere), which is refused rather than read.
fn missing(
    manifest: &[ImageManifestRow],
    found: &HashMap<String, Vec<f32>>,
    images: &ImageRoot,
) -> (Vec<Todo>, HashMap<String, String>) {
    let mut seen = HashSet::new();
    let (mut todo, mut refused) = (Vec::new(), HashMap::new());
    for row in manifest {
        if found.contains_key(&row.content_hash) || !seen.insert(row.content_hash.as_str()) {
            continue;
        }
        match images.resolve(&row.path) {
            Ok(path) => todo.push(Todo { content_hash: row.content_hash.clone(), path }),
            Err(err) => {
                refused.insert(row.content_hash.clone(), format!("{err:#}"));
            }
        }
    }
    (todo, refused)
}

/// Runs `todo` through the backbone, saving vectors to the cache as it goes. Returns the
/// timings and the failure reason of each content hash that could not be decoded.
#[allow(clippy::too_many_arguments)]
fn compute(
    ctx: &StageContext,
    backbone: &Backbone,
    cache: &FeatureCache,
    layout: FeatureLayout,
    todo: &[Todo],
    params: &FeaturesParams,
    threads: ThreadPlan,
    found: &mut HashMap<String, Vec<f32>>,
) -> Result<(ExtractTimings, HashMap<String, String>)> {
    let paths: Vec<PathBuf> = todo.iter().map(|t| t.path.clone()).collect();
    let opts = ExtractOptions {
        batch_size: params.batch_size,
        decode_threads: threads.decode,
        ..Default::default()
    };
    let bar = ctx.progress_bar(todo.len() as u64, "features");
    let (row_len, cells) = (backbone.row_len(), backbone.spec().cells());
    let mut pending = ShardBuffer::default();
    let mut failures = HashMap::new();
    let result = backbone.extract(&paths, &opts, |batch: FeatureBatch| {
        bar.inc((batch.indices.len() + batch.skipped.len()) as u64);
        for skip in batch.skipped {
            failures.insert(todo[skip.index].content_hash.clone(), skip.reason);
        }
        for (row, &i) in batch.indices.iter().enumerate() {
            let vector = layout.store(&batch.features[row * row_len..(row + 1) * row_len], cells);
            pending.push(&todo[i].content_hash, &vector);
            found.insert(todo[i].content_hash.clone(), vector);
        }
        if pending.len() >= SHARD_ROWS {
            cache.write_shard(&mut pending)?;
        }
        Ok(())
    });
    bar.finish_and_clear();
    // Whatever was computed is kept, even when the run failed part-way.
    cache.write_shard(&mut pending)?;
    Ok((result?, failures))
}

/// Writes `features.arrow` in manifest order; returns the row count and the skipped images.
fn write_features(
    path: &Path,
    manifest: &[ImageManifestRow],
    found: &HashMap<String, Vec<f32>>,
    failures: &HashMap<String, String>,
    layout: FeatureLayout,
) -> Result<(usize, Vec<SkippedImage>)> {
    let schema = output_schema(&layout);
    let mut skipped = Vec::new();
    let mut count = 0;
    let rows: Vec<(&ImageManifestRow, &Vec<f32>)> = manifest
        .iter()
        .filter_map(|r| match found.get(&r.content_hash) {
            Some(v) => Some((r, v)),
            None => {
                let reason = failures.get(&r.content_hash).cloned().unwrap_or_else(|| "no features".into());
                skipped.push(SkippedImage { image: r.image.clone(), reason });
                None
            }
        })
        .collect();
    write_atomic_with(path, |file| {
        let mut writer = FileWriter::try_new(BufWriter::new(file), &schema)?;
        for chunk in rows.chunks(OUTPUT_BATCH_ROWS) {
            let images = StringArray::from_iter_values(chunk.iter().map(|(r, _)| r.image.as_str()));
            let hashes = StringArray::from_iter_values(chunk.iter().map(|(r, _)| r.content_hash.as_str()));
            let values: Vec<f32> = chunk.iter().flat_map(|(_, v)| v.iter().copied()).collect();
            let columns: Vec<ArrayRef> = vec![Arc::new(images), Arc::new(hashes), layout.array(values)?];
            writer.write(&RecordBatch::try_new(schema.clone(), columns)?)?;
            count += chunk.len();
        }
        writer.finish()?;
        writer.into_inner()?.flush()?;
        Ok(())
    })
    .with_context(|| format!("writing {}", path.display()))?;
    Ok((count, skipped))
}

/// Schema of `features.arrow`.
pub fn output_schema(layout: &FeatureLayout) -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("image", DataType::Utf8, false),
        Field::new("content_hash", DataType::Utf8, false),
        layout.field(),
    ]))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::fs::{self, File};

    use super::*;
    use crate::model::backbone::{DeviceChoice, Precision};
    use arrow_array::cast::AsArray;
    use arrow_ipc::reader::FileReader;
    use pipe::stages::features::FeatureOutput;
    use polars::prelude::{df, ParquetWriter};

    /// The repository root (this crate is `pipe-torch/` inside it).
    fn repo_root() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
    }

    fn photo(name: &str) -> PathBuf {
        repo_root().join("tests/fixtures/photos").join(name)
    }

    /// A workspace with an image folder, a manifest of `names` and a cache dir.
    struct Workspace {
        root: tempfile::TempDir,
    }

    impl Workspace {
        fn new() -> Self {
            let ws = Self { root: tempfile::tempdir().unwrap() };
            fs::create_dir_all(ws.images()).unwrap();
            ws
        }
        fn images(&self) -> PathBuf {
            self.root.path().join("images")
        }
        fn add(&self, name: &str, bytes: &[u8]) {
            fs::write(self.images().join(name), bytes).unwrap();
        }
        fn add_photo(&self, name: &str, fixture: &str) {
            self.add(name, &fs::read(photo(fixture)).unwrap());
        }
        /// Writes images.parquet listing every file in the folder, as ingest would.
        fn write_manifest(&self) -> PathBuf {
            let mut names: Vec<String> = fs::read_dir(self.images())
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            let hashes: Vec<String> = names
                .iter()
                .map(|n| blake3::hash(&fs::read(self.images().join(n)).unwrap()).to_hex().to_string())
                .collect();
            let mut frame = df!("image" => &names, "path" => &names, "content_hash" => &hashes).unwrap();
            let path = self.root.path().join("images.parquet");
            ParquetWriter::new(File::create(&path).unwrap()).finish(&mut frame).unwrap();
            path
        }
        /// Runs the stage into a fresh output dir and returns (summary, out dir).
        fn run(&self, run: usize) -> (FeaturesSummary, PathBuf) {
            let params =
                FeaturesParams { batch_size: 2, device: DeviceChoice::Cpu, threads: 2, ..Default::default() };
            self.run_with(run, &repo_root().join("data/models/efficientnet_lite0"), &params).unwrap()
        }
        /// [`Self::run`] with another backbone and params.
        fn run_with(
            &self,
            run: usize,
            backbone: &Path,
            params: &FeaturesParams,
        ) -> Result<(FeaturesSummary, PathBuf)> {
            let ctx = self.context(run, backbone, params);
            crate::features::run(&ctx)?;
            Ok((run_summary(&ctx.out_dir), ctx.out_dir))
        }
        /// The context of run `run` (its output folder `out{run}`).
        fn context(&self, run: usize, backbone: &Path, params: &FeaturesParams) -> StageContext {
            let out = self.root.path().join(format!("out{run}"));
            fs::create_dir_all(&out).unwrap();
            let inputs = BTreeMap::from([
                ("images".to_string(), self.images()),
                ("manifest".to_string(), self.write_manifest()),
                ("backbone".to_string(), backbone.to_path_buf()),
            ]);
            StageContext {
                stage: "features".into(),
                params: serde_json::to_value(params).unwrap(),
                inputs,
                out_dir: out.clone(),
                cache_dir: self.cache(),
                workspace: self.root.path().to_path_buf(),
                lineage: vec![],
                run_record: run_record(&out),
                fingerprint: String::new(),
                shard: None,
                reporter: pipe_engine::reporter::Reporter::hidden(),
            }
        }
        fn cache(&self) -> PathBuf {
            self.root.path().join("cache")
        }
    }

    fn run_record(out: &Path) -> PathBuf {
        out.with_extension("run.json")
    }

    /// The counts from features.json and the run record.
    fn run_summary(out: &Path) -> FeaturesSummary {
        let read = |path: PathBuf| -> serde_json::Value {
            serde_json::from_str(&fs::read_to_string(path).unwrap()).unwrap()
        };
        let (v, run) = (read(out.join("features.json")), read(run_record(out)));
        FeaturesSummary {
            count: v["count"].as_u64().unwrap() as usize,
            computed: run["computed"].as_u64().unwrap() as usize,
            reused: run["reused"].as_u64().unwrap() as usize,
            skipped: serde_json::from_value(v["skipped"].clone()).unwrap(),
            images_per_s: run["images_per_s"].as_f64().unwrap(),
        }
    }

    /// features.arrow as image -> vector.
    fn read_output(out: &Path) -> BTreeMap<String, Vec<f32>> {
        read_output_as(out, FeatureLayout { dim: 1280, grid: None })
    }

    fn read_output_as(out: &Path, layout: FeatureLayout) -> BTreeMap<String, Vec<f32>> {
        let reader = FileReader::try_new(File::open(out.join("features.arrow")).unwrap(), None).unwrap();
        assert_eq!(reader.schema(), output_schema(&layout));
        let mut rows = BTreeMap::new();
        for batch in reader {
            let batch = batch.unwrap();
            let images = batch.column(0).as_string::<i32>();
            let lists = batch.column(2).as_fixed_size_list();
            for row in 0..batch.num_rows() {
                let v = lists.value(row);
                let values = match layout.grid {
                    None => v.as_primitive::<arrow_array::types::Float32Type>().values().to_vec(),
                    Some(_) => {
                        let half = v.as_primitive::<arrow_array::types::Float16Type>();
                        half.values().iter().map(|x| x.to_f32()).collect()
                    }
                };
                rows.insert(images.value(row).to_string(), values);
            }
        }
        rows
    }

    #[test]
    fn incremental_run_computes_only_new_images() {
        let ws = Workspace::new();
        ws.add_photo("cat.png", "chelsea.png");
        ws.add_photo("cup.png", "coffee.png");
        ws.add_photo("cat-copy.jpg", "chelsea.jpg");
        let (first, out1) = ws.run(1);
        assert_eq!((first.count, first.computed, first.reused), (3, 3, 0));

        ws.add_photo("rocket.png", "rocket.png");
        ws.add_photo("same-cat.png", "chelsea.png"); // same bytes as cat.png: a cache hit
        let (second, out2) = ws.run(2);
        assert_eq!((second.count, second.computed, second.reused), (5, 1, 3));

        let (a, b) = (read_output(&out1), read_output(&out2));
        assert_eq!(a["cat.png"], b["cat.png"]);
        assert_eq!(b["cat.png"], b["same-cat.png"]);
        assert_eq!(
            b.keys().cloned().collect::<Vec<_>>(),
            ["cat-copy.jpg", "cat.png", "cup.png", "rocket.png", "same-cat.png"]
        );
    }

    /// Shards fill the cache with their slices and write no outputs; the run after them
    /// computes nothing and writes the bytes of a run that computed everything itself.
    #[test]
    fn shards_compute_their_slices_and_the_merge_writes_the_same_bytes() {
        let fixtures = ["chelsea.png", "coffee.png", "chelsea.jpg", "rocket.png"];
        let add_all = |ws: &Workspace| {
            for (i, fixture) in fixtures.iter().enumerate() {
                ws.add_photo(&format!("{i}-{fixture}"), fixture);
            }
        };
        let sharded = Workspace::new();
        add_all(&sharded);
        let params =
            FeaturesParams { batch_size: 2, device: DeviceChoice::Cpu, threads: 2, ..Default::default() };
        let backbone = repo_root().join("data/models/efficientnet_lite0");
        for index in 0..3 {
            let mut ctx = sharded.context(10 + index, &backbone, &params);
            ctx.shard = Some(pipe_engine::stage::Shard { index, count: 3 });
            crate::features::run(&ctx).unwrap();
            assert_eq!(fs::read_dir(&ctx.out_dir).unwrap().count(), 0, "a shard writes no outputs");
        }
        let (merged, merged_out) = sharded.run(1);
        assert_eq!((merged.count, merged.computed, merged.reused), (4, 0, 4));

        let single = Workspace::new();
        add_all(&single);
        let (fresh, fresh_out) = single.run(1);
        assert_eq!(fresh.computed, 4);
        let bytes = |out: &Path| fs::read(out.join("features.arrow")).unwrap();
        assert!(bytes(&merged_out) == bytes(&fresh_out), "sharded and single runs write the same bytes");
    }

    #[test]
    fn runs_are_deterministic() {
        let (ws1, ws2) = (Workspace::new(), Workspace::new());
        for ws in [&ws1, &ws2] {
            ws.add_photo("cat.jpg", "chelsea.jpg");
            ws.add_photo("cup.png", "coffee.png");
        }
        let (_, out1) = ws1.run(1);
        let (_, out2) = ws2.run(1);
        ws2.add_photo("rocket.png", "rocket.png");
        let (_, out3) = ws2.run(2); // two images from the cache, one computed
        fs::remove_file(ws2.images().join("rocket.png")).unwrap();
        let (from_cache, out4) = ws2.run(3);
        assert_eq!((from_cache.computed, from_cache.reused), (0, 2));
        assert_eq!(read_output(&out1), read_output(&out2));
        assert_eq!(read_output(&out3).len(), 3);
        // Every output is a pure function of the inputs: computed or cached, here or there.
        for file in ["features.arrow", "features.json"] {
            let bytes = fs::read(out1.join(file)).unwrap();
            assert_eq!(bytes, fs::read(out2.join(file)).unwrap(), "{file}");
            assert_eq!(bytes, fs::read(out4.join(file)).unwrap(), "{file} from the cache");
        }
    }

    #[test]
    fn corrupt_and_truncated_images_are_skipped_with_reasons() {
        let ws = Workspace::new();
        ws.add_photo("cat.jpg", "chelsea.jpg");
        let jpeg = fs::read(photo("chelsea.jpg")).unwrap();
        ws.add("cut.jpg", &jpeg[..jpeg.len() / 2]);
        ws.add("junk.png", b"\x89PNG\r\n\x1a\nnot really");
        let (summary, out) = ws.run(1);
        assert_eq!((summary.count, summary.computed), (1, 1));
        let skipped: Vec<&str> = summary.skipped.iter().map(|s| s.image.as_str()).collect();
        assert_eq!(skipped, ["cut.jpg", "junk.png"]);
        assert!(summary.skipped[0].reason.contains("truncated"), "{}", summary.skipped[0].reason);
        assert_eq!(read_output(&out).len(), 1);
    }

    #[test]
    fn unreadable_cache_shards_are_ignored_and_recomputed() {
        let ws = Workspace::new();
        ws.add_photo("cat.png", "chelsea.png");
        let (_, out1) = ws.run(1);
        let shard_dir = fs::read_dir(ws.cache()).unwrap().next().unwrap().unwrap().path();
        for shard in fs::read_dir(&shard_dir).unwrap() {
            let shard = shard.unwrap().path();
            let bytes = fs::read(&shard).unwrap();
            fs::write(&shard, &bytes[..bytes.len() / 2]).unwrap(); // a torn write
        }
        let (second, out2) = ws.run(2);
        assert_eq!((second.computed, second.reused), (1, 0));
        assert_eq!(read_output(&out1), read_output(&out2));
    }

    #[test]
    fn many_shards_are_merged() {
        let dir = tempfile::tempdir().unwrap();
        let cache =
            FeatureCache::open(dir.path(), "h", Precision::Fp32, FeatureLayout { dim: 2, grid: None })
                .unwrap();
        for i in 0..=MAX_SHARDS {
            let mut pending = ShardBuffer::default();
            pending.push(&format!("hash{i}"), &[i as f32, 1.0]);
            cache.write_shard(&mut pending).unwrap();
        }
        assert_eq!(cache.shards().unwrap().len(), MAX_SHARDS + 1);
        cache.compact_if_needed(|m| panic!("{m}")).unwrap();
        assert_eq!(cache.shards().unwrap().len(), 1);
        let wanted: HashSet<&str> = ["hash0", "hash16"].into();
        let found = cache.lookup(&wanted, |m| panic!("{m}")).unwrap();
        assert_eq!(found["hash16"], [16.0, 1.0]);
        assert_eq!(found.len(), 2);
    }

    /// A tiny TorchScript grid backbone: 8×8 input, 2×2 average-pooled map of its 3
    /// channels times 2 → `[N, 3, 2, 2]` (D = 3), with a sidecar declaring the grid.
    fn write_grid_backbone(dir: &Path) {
        fs::create_dir_all(dir).unwrap();
        let input = tch::Tensor::zeros([1, 3, 8, 8], (tch::Kind::Float, tch::Device::Cpu));
        let module = tch::CModule::create_by_tracing("Grid", "forward", &[input], &mut |xs| {
            vec![xs[0].adaptive_avg_pool2d([2, 2]) * 2.0]
        })
        .unwrap();
        module.save(dir.join("model.pt")).unwrap();
        let spec = serde_json::json!({
            "name": "tiny-grid", "input_size": 8, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25],
            "dim": 3, "output": "grid", "grid": [2, 2]
        });
        fs::write(dir.join("backbone.json"), spec.to_string()).unwrap();
    }

    #[test]
    fn grid_features_are_half_precision_cells_cached_apart_from_pooled_ones() {
        let ws = Workspace::new();
        ws.add_photo("cat.png", "chelsea.png");
        ws.add_photo("cup.png", "coffee.png");
        let backbone = ws.root.path().join("grid-backbone");
        write_grid_backbone(&backbone);
        let grid_params = FeaturesParams {
            batch_size: 2,
            device: DeviceChoice::Cpu,
            threads: 1,
            output: FeatureOutput::Grid,
            ..Default::default()
        };
        let layout = FeatureLayout { dim: 3, grid: Some([2, 2]) };
        let (first, out1) = ws.run_with(1, &backbone, &grid_params).unwrap();
        assert_eq!((first.count, first.computed), (2, 2));
        let grids = read_output_as(&out1, layout);
        assert_eq!(grids["cat.png"].len(), 12);

        ws.add_photo("rocket.png", "rocket.png");
        let (second, out2) = ws.run_with(2, &backbone, &grid_params).unwrap();
        assert_eq!((second.computed, second.reused), (1, 2));
        assert_eq!(read_output_as(&out2, layout)["cat.png"], grids["cat.png"]);

        // Pooled features of the same backbone: the cells' mean, from their own cache entries.
        let pooled_params = FeaturesParams { output: FeatureOutput::Pooled, ..grid_params.clone() };
        let (third, out3) = ws.run_with(3, &backbone, &pooled_params).unwrap();
        assert_eq!((third.computed, third.reused), (3, 0));
        let pooled = read_output_as(&out3, FeatureLayout { dim: 3, grid: None });
        for (image, cells) in &grids {
            for d in 0..3 {
                let mean = (0..4).map(|c| cells[c * 3 + d]).sum::<f32>() / 4.0;
                assert!(
                    (mean - pooled[image][d]).abs() < 1e-2,
                    "{image} {d}: {mean} vs {}",
                    pooled[image][d]
                );
            }
        }
    }

    #[test]
    fn grid_output_needs_a_grid_backbone() {
        let ws = Workspace::new();
        ws.add_photo("cat.png", "chelsea.png");
        let params = FeaturesParams { output: FeatureOutput::Grid, threads: 1, ..Default::default() };
        let err = ws.run_with(1, &repo_root().join("data/models/efficientnet_lite0"), &params).unwrap_err();
        assert!(format!("{err:#}").contains("--output grid"), "{err:#}");
    }
}

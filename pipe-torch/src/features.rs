//! The computation behind the `features` kind (its params, inputs, outputs and the
//! feature cache's rules are documented in `pipe::stages::features`).

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use arrow_array::{Array, ArrayRef, FixedSizeListArray, Float32Array, RecordBatch, StringArray};
use arrow_ipc::reader::FileReader;
use arrow_ipc::writer::FileWriter;
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use polars::prelude::{ParquetReader, SerReader};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::model::backbone::{Backbone, ExtractOptions, ExtractTimings, FeatureBatch, Precision, ThreadPlan};
use pipe::engine::stage::StageContext;
use pipe::stages::features::{FeaturesParams, MAX_SHARDS, SHARD_ROWS};

/// Rows per record batch in `features.arrow`.
const OUTPUT_BATCH_ROWS: usize = 1024;

/// Runs a `features` stage.
pub fn run(ctx: &StageContext) -> Result<()> {
    let params: FeaturesParams = ctx.params()?;
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

/// One row of `images.parquet` that this kind uses.
#[derive(Debug, Clone)]
pub struct ManifestRow {
    pub image: String,
    pub path: String,
    pub content_hash: String,
}

/// Reads `image`, `path` and `content_hash` from ingest's `images.parquet`.
pub fn read_manifest(path: &Path) -> Result<Vec<ManifestRow>> {
    let file = File::open(path).with_context(|| format!("opening manifest {}", path.display()))?;
    let columns = ["image", "path", "content_hash"].map(String::from).to_vec();
    let df = ParquetReader::new(file)
        .with_columns(Some(columns))
        .finish()
        .with_context(|| format!("reading manifest {}", path.display()))?;
    let column = |name: &str| -> Result<Vec<Option<String>>> {
        let col = df.column(name).with_context(|| format!("{}: column `{name}`", path.display()))?;
        let strings =
            col.str().with_context(|| format!("{}: column `{name}` must be Utf8", path.display()))?;
        Ok(strings.iter().map(|s| s.map(str::to_owned)).collect())
    };
    let (images, paths, hashes) = (column("image")?, column("path")?, column("content_hash")?);
    let mut rows = Vec::with_capacity(images.len());
    for (i, ((image, rel), hash)) in images.into_iter().zip(paths).zip(hashes).enumerate() {
        match (image, rel, hash) {
            (Some(image), Some(path), Some(content_hash)) => {
                rows.push(ManifestRow { image, path, content_hash })
            }
            _ => bail!("{}: row {i} has a null image, path or content_hash", path.display()),
        }
    }
    Ok(rows)
}

/// What one run did, also written to `features.json`.
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

/// An image left out of `features.arrow`, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkippedImage {
    pub image: String,
    pub reason: String,
}

/// The whole stage: manifest → cache lookup → extraction of the rest → outputs.
pub fn run_features(ctx: &StageContext, params: &FeaturesParams) -> Result<FeaturesSummary> {
    let started = Instant::now();
    let manifest = read_manifest(ctx.input("manifest")?)?;
    let images_dir = ctx.input("images")?;
    let backbone_dir = ctx.input("backbone")?;
    let backbone = Backbone::load(backbone_dir, params.device, params.precision)?;
    let threads = ThreadPlan::new(params.threads, backbone.device());
    tch::set_num_threads(threads.torch as i32);
    let load_s = started.elapsed().as_secs_f64();

    let t = Instant::now();
    let cache = FeatureCache::open(&ctx.cache_dir, backbone.hash(), params.precision, backbone.dim())?;
    let wanted: HashSet<&str> = manifest.iter().map(|r| r.content_hash.as_str()).collect();
    let mut found = cache.lookup(&wanted, |m| ctx.log(m))?;
    let reused = found.len();
    let cache_s = t.elapsed().as_secs_f64();

    let todo = missing(&manifest, &found, images_dir);
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
    let (timings, failures) = compute(ctx, &backbone, &cache, &todo, params, threads, &mut found)?;
    let extract_s = t.elapsed().as_secs_f64();
    cache.compact_if_needed(|m| ctx.log(m))?;

    let t = Instant::now();
    let (count, skipped) =
        write_features(&ctx.output("features.arrow"), &manifest, &found, &failures, backbone.dim())?;
    let write_s = t.elapsed().as_secs_f64();

    let summary = FeaturesSummary {
        count,
        computed: timings.computed,
        reused,
        skipped,
        images_per_s: if extract_s > 0.0 { timings.computed as f64 / extract_s } else { 0.0 },
    };
    let report = json!({
        "backbone": {"name": backbone.spec().name, "hash": backbone.hash(), "dim": backbone.dim()},
        "dim": backbone.dim(),
        "count": summary.count,
        "computed": summary.computed,
        "reused": summary.reused,
        "skipped": summary.skipped,
        "device": format!("{:?}", backbone.device()),
        "precision": params.precision.as_str(),
        "batch_size": params.batch_size,
        "threads": threads,
        "timings": {
            "load_s": load_s, "cache_s": cache_s, "extract_s": extract_s, "write_s": write_s,
            "decode_wait_s": timings.wait_s, "forward_s": timings.forward_s,
            "total_s": started.elapsed().as_secs_f64(),
        },
        "images_per_s": summary.images_per_s,
    });
    let json_path = ctx.output("features.json");
    fs::write(&json_path, serde_json::to_string_pretty(&report)? + "\n")
        .with_context(|| format!("writing {}", json_path.display()))?;
    Ok(summary)
}

/// One image to run through the backbone: its content hash and where its bytes are.
struct Todo {
    content_hash: String,
    path: PathBuf,
}

/// Distinct content hashes not in `found`, each with the first file that has them.
fn missing(manifest: &[ManifestRow], found: &HashMap<String, Vec<f32>>, images_dir: &Path) -> Vec<Todo> {
    let mut seen = HashSet::new();
    manifest
        .iter()
        .filter(|r| !found.contains_key(&r.content_hash) && seen.insert(r.content_hash.as_str()))
        .map(|r| Todo { content_hash: r.content_hash.clone(), path: images_dir.join(&r.path) })
        .collect()
}

/// Runs `todo` through the backbone, saving vectors to the cache as it goes. Returns the
/// timings and the failure reason of each content hash that could not be decoded.
fn compute(
    ctx: &StageContext,
    backbone: &Backbone,
    cache: &FeatureCache,
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
    let dim = backbone.dim();
    let mut pending = ShardBuffer::default();
    let mut failures = HashMap::new();
    let result = backbone.extract(&paths, &opts, |batch: FeatureBatch| {
        bar.inc((batch.indices.len() + batch.skipped.len()) as u64);
        for skip in batch.skipped {
            failures.insert(todo[skip.index].content_hash.clone(), skip.reason);
        }
        for (row, &i) in batch.indices.iter().enumerate() {
            let vector = batch.features[row * dim..(row + 1) * dim].to_vec();
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
    manifest: &[ManifestRow],
    found: &HashMap<String, Vec<f32>>,
    failures: &HashMap<String, String>,
    dim: usize,
) -> Result<(usize, Vec<SkippedImage>)> {
    let schema = output_schema(dim);
    let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut writer = FileWriter::try_new(BufWriter::new(file), &schema)?;
    let mut skipped = Vec::new();
    let mut count = 0;
    let rows: Vec<(&ManifestRow, &Vec<f32>)> = manifest
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
    for chunk in rows.chunks(OUTPUT_BATCH_ROWS) {
        let images = StringArray::from_iter_values(chunk.iter().map(|(r, _)| r.image.as_str()));
        let hashes = StringArray::from_iter_values(chunk.iter().map(|(r, _)| r.content_hash.as_str()));
        let values: Vec<f32> = chunk.iter().flat_map(|(_, v)| v.iter().copied()).collect();
        let columns: Vec<ArrayRef> = vec![Arc::new(images), Arc::new(hashes), feature_array(values, dim)?];
        writer.write(&RecordBatch::try_new(schema.clone(), columns)?)?;
        count += chunk.len();
    }
    writer.finish().with_context(|| format!("writing {}", path.display()))?;
    Ok((count, skipped))
}

/// `features: FixedSizeList<Float32, D>` with non-null items.
fn features_field(dim: usize) -> Field {
    let item = Arc::new(Field::new("item", DataType::Float32, false));
    Field::new("features", DataType::FixedSizeList(item, dim as i32), false)
}

/// Schema of `features.arrow`.
pub fn output_schema(dim: usize) -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("image", DataType::Utf8, false),
        Field::new("content_hash", DataType::Utf8, false),
        features_field(dim),
    ]))
}

/// Schema of a cache shard.
fn shard_schema(dim: usize) -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new("content_hash", DataType::Utf8, false), features_field(dim)]))
}

fn feature_array(values: Vec<f32>, dim: usize) -> Result<ArrayRef> {
    let item = Arc::new(Field::new("item", DataType::Float32, false));
    Ok(Arc::new(FixedSizeListArray::try_new(item, dim as i32, Arc::new(Float32Array::from(values)), None)?))
}

/// Vectors computed in this run and not yet written to a shard.
#[derive(Default)]
struct ShardBuffer {
    hashes: Vec<String>,
    values: Vec<f32>,
}

impl ShardBuffer {
    fn push(&mut self, hash: &str, vector: &[f32]) {
        self.hashes.push(hash.to_owned());
        self.values.extend_from_slice(vector);
    }
    fn len(&self) -> usize {
        self.hashes.len()
    }
}

/// The persistent per-(backbone, precision) store of feature vectors (see the module doc).
pub struct FeatureCache {
    dir: PathBuf,
    dim: usize,
}

impl FeatureCache {
    /// Opens (creating) `<cache_dir>/<backbone_hash>-<precision>/`.
    pub fn open(cache_dir: &Path, backbone_hash: &str, precision: Precision, dim: usize) -> Result<Self> {
        let dir = cache_dir.join(format!("{backbone_hash}-{}", precision.as_str()));
        fs::create_dir_all(&dir).with_context(|| format!("creating feature cache {}", dir.display()))?;
        Ok(Self { dir, dim })
    }

    /// The shard files, sorted by name.
    fn shards(&self) -> Result<Vec<PathBuf>> {
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
        ensure!(reader.schema() == shard_schema(self.dim), "unexpected schema {:?}", reader.schema());
        for batch in reader {
            let batch = batch?;
            let hashes =
                batch.column(0).as_any().downcast_ref::<StringArray>().context("content_hash column")?;
            let lists =
                batch.column(1).as_any().downcast_ref::<FixedSizeListArray>().context("features column")?;
            let values = lists.values().as_any().downcast_ref::<Float32Array>().context("features values")?;
            let values = values.values(); // already sliced to this array's rows
            for row in 0..batch.num_rows() {
                each(hashes.value(row), &values[row * self.dim..(row + 1) * self.dim]);
            }
        }
        Ok(())
    }

    /// Writes and empties `pending` as one shard named after its contents; returns its path
    /// (None when there was nothing to write).
    fn write_shard(&self, pending: &mut ShardBuffer) -> Result<Option<PathBuf>> {
        if pending.len() == 0 {
            return Ok(None);
        }
        let mut id = blake3::Hasher::new();
        for h in &pending.hashes {
            id.update(h.as_bytes());
        }
        let name = format!("shard-{}.arrow", &id.finalize().to_hex()[..32]);
        let hashes = StringArray::from_iter_values(pending.hashes.iter());
        let values = feature_array(std::mem::take(&mut pending.values), self.dim)?;
        let batch = RecordBatch::try_new(shard_schema(self.dim), vec![Arc::new(hashes), values])?;
        pending.hashes.clear();
        self.write_atomic(&name, batch)?;
        Ok(Some(self.dir.join(name)))
    }

    /// Writes a record batch to `<dir>/<name>` through a temporary file and a rename.
    fn write_atomic(&self, name: &str, batch: RecordBatch) -> Result<()> {
        let tmp = self.dir.join(format!(".tmp-{}-{name}", std::process::id()));
        let result = (|| -> Result<()> {
            let file = File::create(&tmp)?;
            let mut writer = FileWriter::try_new(BufWriter::new(file), &shard_schema(self.dim))?;
            writer.write(&batch)?;
            writer.into_inner()?.into_inner().map_err(|e| e.into_error())?.sync_all()?;
            fs::rename(&tmp, self.dir.join(name))?;
            Ok(())
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result.with_context(|| format!("writing feature cache shard {}/{name}", self.dir.display()))
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::model::backbone::DeviceChoice;
    use arrow_array::cast::AsArray;
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
            let out = self.root.path().join(format!("out{run}"));
            fs::create_dir_all(&out).unwrap();
            let inputs = BTreeMap::from([
                ("images".to_string(), self.images()),
                ("manifest".to_string(), self.write_manifest()),
                ("backbone".to_string(), repo_root().join("data/models/efficientnet_lite0")),
            ]);
            let params =
                FeaturesParams { batch_size: 2, device: DeviceChoice::Cpu, threads: 2, ..Default::default() };
            let ctx = StageContext {
                stage: "features".into(),
                params: serde_json::to_value(&params).unwrap(),
                inputs,
                out_dir: out.clone(),
                cache_dir: self.cache(),
                workspace: self.root.path().to_path_buf(),
                lineage: vec![],
                progress: pipe::engine::stage::Progress::hidden(),
            };
            crate::features::run(&ctx).unwrap();
            (run_summary(&out), out)
        }
        fn cache(&self) -> PathBuf {
            self.root.path().join("cache")
        }
    }

    /// The counts from features.json.
    fn run_summary(out: &Path) -> FeaturesSummary {
        let v: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(out.join("features.json")).unwrap()).unwrap();
        FeaturesSummary {
            count: v["count"].as_u64().unwrap() as usize,
            computed: v["computed"].as_u64().unwrap() as usize,
            reused: v["reused"].as_u64().unwrap() as usize,
            skipped: serde_json::from_value(v["skipped"].clone()).unwrap(),
            images_per_s: v["images_per_s"].as_f64().unwrap(),
        }
    }

    /// features.arrow as image -> vector.
    fn read_output(out: &Path) -> BTreeMap<String, Vec<f32>> {
        let reader = FileReader::try_new(File::open(out.join("features.arrow")).unwrap(), None).unwrap();
        assert_eq!(reader.schema(), output_schema(1280));
        let mut rows = BTreeMap::new();
        for batch in reader {
            let batch = batch.unwrap();
            let images = batch.column(0).as_string::<i32>();
            let lists = batch.column(2).as_fixed_size_list();
            for row in 0..batch.num_rows() {
                let v = lists.value(row);
                rows.insert(
                    images.value(row).to_string(),
                    v.as_primitive::<arrow_array::types::Float32Type>().values().to_vec(),
                );
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

    #[test]
    fn runs_are_deterministic() {
        let (ws1, ws2) = (Workspace::new(), Workspace::new());
        for ws in [&ws1, &ws2] {
            ws.add_photo("cat.jpg", "chelsea.jpg");
            ws.add_photo("cup.png", "coffee.png");
        }
        let (_, out1) = ws1.run(1);
        let (_, out2) = ws2.run(1);
        assert_eq!(read_output(&out1), read_output(&out2));
        assert_eq!(
            fs::read(out1.join("features.arrow")).unwrap(),
            fs::read(out2.join("features.arrow")).unwrap()
        );
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
        let cache = FeatureCache::open(dir.path(), "h", Precision::Fp32, 2).unwrap();
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
}

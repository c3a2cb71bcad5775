//! `ingest`: reads a caption file in any supported format (see [`crate::data::readers`])
//! and an image folder, and writes the normalized caption table, the image manifest and a
//! report of everything that did not fit.
//!
//! What is fatal and what is only reported:
//! - an image name that is absolute or climbs out of the image root: fatal, always;
//! - a malformed line or non-UTF-8 bytes: fatal (file and line named), unless
//!   `skip_bad_lines: true`, which counts and lists them in the report;
//! - a caption whose image is not in the folder: dropped and listed;
//! - an image whose header does not decode: left out of the manifest, its captions dropped,
//!   listed;
//! - nothing left at the end: fatal.
//!
//! Splits, in order of preference under `split_mode: auto`: those carried by a Karpathy
//! JSON; the official Flickr8k split files in the `splits` input (or next to the caption
//! file); a hash of each image name with `split_ratios`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use anyhow::{bail, Context, Result};
use polars::prelude::{Column, DataFrame};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::data::captions::{BadLine, ParsedCaptions};
use crate::data::fxhash::FxHashMap;
use crate::data::manifest::{is_image_name, list_files, probe_images, ImageEntry, Undecodable};
use crate::data::readers::{parse_captions, CaptionFormat};
use crate::data::split::{hash_split, read_split_files, Split, SplitRatios};
use crate::data::table::write_parquet;
use pipe_engine::stage::{normalize_typed, parse_params, InputSpec, Inputs, StageContext, StageKind};

use crate::contract::files::{IMAGES_FILE, INGEST_REPORT_FILE, REFERENCE_CAPTIONS_FILE};
use pipe_engine::fsutil::write_json_atomic;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestParams {
    pub format: CaptionFormat,
    /// Count and list malformed lines instead of failing on the first one.
    pub skip_bad_lines: bool,
    pub split_mode: SplitMode,
    /// Used when splitting by hash.
    pub split_ratios: SplitRatios,
}

impl Default for IngestParams {
    fn default() -> Self {
        Self {
            format: CaptionFormat::Auto,
            skip_bad_lines: false,
            split_mode: SplitMode::Auto,
            split_ratios: SplitRatios::default(),
        }
    }
}

/// Where splits come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SplitMode {
    /// Karpathy splits, else split files, else hash.
    Auto,
    /// Karpathy splits or split files; an error when there are none.
    Files,
    /// Always the hash of the image name, even when split files exist.
    Hash,
}

/// Paths of the inputs.
#[derive(Debug, Clone, Copy)]
pub struct IngestInputs<'a> {
    pub captions: &'a Path,
    pub images: &'a Path,
    /// Folder with split files; defaults to the caption file's folder.
    pub splits: Option<&'a Path>,
}

/// `ingest_report.json`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct IngestReport {
    pub format: &'static str,
    /// The caption file's name (never its full path, which depends on the store).
    pub captions_file: String,
    /// `karpathy`, `files` or `hash`.
    pub split_source: &'static str,
    pub counts: Counts,
    /// Per split: images and captions written.
    pub splits: BTreeMap<String, SplitCount>,
    pub missing_images: Vec<MissingImage>,
    pub undecodable_images: Vec<Undecodable>,
    pub images_without_captions: Vec<String>,
    pub bad_lines: Vec<BadLine>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Counts {
    pub captions_read: usize,
    pub captions_written: usize,
    pub captions_missing_image: usize,
    pub captions_undecodable_image: usize,
    pub bad_lines: usize,
    pub images_named: usize,
    pub images_written: usize,
    pub images_missing: usize,
    pub images_undecodable: usize,
    pub images_in_folder: usize,
    pub images_without_captions: usize,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct SplitCount {
    pub images: usize,
    pub captions: usize,
}

/// A caption file names this image, but the folder lacks it.
#[derive(Debug, Clone, Serialize)]
pub struct MissingImage {
    pub image: String,
    pub captions: usize,
    /// Where it is first named (`line 12`).
    pub first_seen: String,
}

pub struct Ingest;

impl StageKind for Ingest {
    fn name(&self) -> &'static str {
        "ingest"
    }

    /// 2: image files that resolve outside the image folder, headers over the image limits
    /// (`data::manifest::check_image_size`) and CSV captions with line breaks (an
    /// unterminated quote) are reported instead of ingested.
    fn version(&self) -> u32 {
        2
    }

    fn normalize_params(&self, params: &Value) -> Result<Value> {
        parse_params::<IngestParams>(params)?.split_ratios.validate().context("split_ratios")?;
        normalize_typed::<IngestParams>(params)
    }

    fn inputs(&self) -> Inputs {
        const INPUTS: [InputSpec; 3] =
            [InputSpec::required("captions"), InputSpec::required("images"), InputSpec::optional("splits")];
        Inputs::Named(&INPUTS)
    }

    fn outputs(&self, _params: &Value) -> Vec<String> {
        [REFERENCE_CAPTIONS_FILE, IMAGES_FILE, INGEST_REPORT_FILE].map(String::from).to_vec()
    }

    fn run(&self, ctx: &StageContext) -> Result<()> {
        let params: IngestParams = ctx.params()?;
        let inputs = IngestInputs {
            captions: ctx.input("captions")?,
            images: ctx.input("images")?,
            splits: ctx.optional_input("splits"),
        };
        let bar = ctx.progress_bar(0, "reading images");
        let report = ingest(&inputs, &params, &ctx.out_dir, &|| bar.inc(1), &|n| bar.set_length(n as u64))?;
        bar.finish_and_clear();
        ctx.log(summary(&report));
        Ok(())
    }
}

fn summary(report: &IngestReport) -> String {
    let c = &report.counts;
    let splits: Vec<String> = report.splits.iter().map(|(s, n)| format!("{s} {}", n.images)).collect();
    format!(
        "{} captions of {} images ({}; splits from {}: {}); dropped: {} captions without image, {} undecodable images, {} bad lines",
        c.captions_written,
        c.images_written,
        report.format,
        report.split_source,
        splits.join(", "),
        c.captions_missing_image,
        c.images_undecodable,
        c.bad_lines
    )
}

/// Runs the whole stage: parse, split, check images, write the three outputs.
/// `on_image` ticks once per image probed, after `on_total` announced how many.
pub fn ingest(
    inputs: &IngestInputs,
    params: &IngestParams,
    out_dir: &Path,
    on_image: &(dyn Fn() + Sync),
    on_total: &dyn Fn(usize),
) -> Result<IngestReport> {
    let bytes =
        std::fs::read(inputs.captions).with_context(|| format!("reading {}", inputs.captions.display()))?;
    let (format, parsed) = parse_captions(&bytes, params.format, inputs.captions, params.skip_bad_lines)?;
    let splits = SplitLookup::resolve(&parsed, inputs, params)?;
    let named = NamedImages::collect(&parsed);
    let folder = list_files(inputs.images)?;
    let (present, missing) = named.partition_present(&folder);
    on_total(present.len());
    let (manifest, undecodable) = split_probes(probe_images(inputs.images, &present, on_image));

    let usable: HashSet<&str> = manifest.iter().map(|e| e.image.as_str()).collect();
    let image_splits: Vec<Split> = named.names.iter().map(|name| splits.get(name)).collect();
    let kept = named.kept_rows(&usable);
    if kept.is_empty() {
        bail!(
            "{}: no captions left: {} read, {} of them name a missing image, {} images do not decode",
            inputs.captions.display(),
            parsed.records.len(),
            missing.iter().map(|&i| named.caption_counts[i]).sum::<usize>(),
            undecodable.len()
        );
    }
    write_parquet(
        &mut caption_frame(&parsed, &named, &kept, &image_splits)?,
        &out_dir.join(REFERENCE_CAPTIONS_FILE),
    )?;
    write_parquet(&mut manifest_frame(&manifest)?, &out_dir.join(IMAGES_FILE))?;

    let mut report = IngestReport {
        format: format.as_str(),
        captions_file: file_name(inputs.captions),
        split_source: splits.source(),
        ..Default::default()
    };
    let outcome =
        Outcome { missing, kept, image_splits, folder, images_written: manifest.len(), undecodable };
    fill_report(&mut report, &parsed, &named, outcome);
    write_json_atomic(&out_dir.join(INGEST_REPORT_FILE), &report)?;
    Ok(report)
}

fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned())
}

/// Where each image's split comes from.
enum SplitLookup {
    Karpathy(HashMap<String, Split>),
    Files(HashMap<String, Split>),
    Hash(SplitRatios),
}

impl SplitLookup {
    fn resolve(parsed: &ParsedCaptions, inputs: &IngestInputs, params: &IngestParams) -> Result<SplitLookup> {
        if params.split_mode == SplitMode::Hash {
            return Ok(SplitLookup::Hash(params.split_ratios));
        }
        if let Some(map) = &parsed.splits {
            return Ok(SplitLookup::Karpathy(map.clone()));
        }
        let dir = match inputs.splits {
            Some(dir) => dir.to_path_buf(),
            None => inputs.captions.parent().unwrap_or(Path::new(".")).to_path_buf(),
        };
        match (read_split_files(&dir)?, params.split_mode) {
            (Some(map), _) => Ok(SplitLookup::Files(map)),
            (None, SplitMode::Files) => {
                bail!("split_mode is `files` but {} has no Flickr_8k.*Images.txt", dir.display())
            }
            (None, _) => Ok(SplitLookup::Hash(params.split_ratios)),
        }
    }

    fn get(&self, image: &str) -> Split {
        match self {
            SplitLookup::Karpathy(map) | SplitLookup::Files(map) => {
                map.get(image).copied().unwrap_or(Split::None)
            }
            SplitLookup::Hash(ratios) => hash_split(image, ratios),
        }
    }

    fn source(&self) -> &'static str {
        match self {
            SplitLookup::Karpathy(_) => "karpathy",
            SplitLookup::Files(_) => "files",
            SplitLookup::Hash(_) => "hash",
        }
    }
}

/// The distinct images the captions name, with one hash lookup per caption: every later
/// per-caption question is answered through `record_ids`.
struct NamedImages<'p> {
    /// Distinct names, in order of first appearance.
    names: Vec<&'p str>,
    ids: FxHashMap<&'p str, usize>,
    /// For each record, the index of its image in `names`.
    record_ids: Vec<u32>,
    caption_counts: Vec<usize>,
    /// For each image, the record that first names it.
    first_record: Vec<usize>,
}

impl<'p> NamedImages<'p> {
    fn collect(parsed: &'p ParsedCaptions) -> Self {
        let mut named = NamedImages {
            names: Vec::new(),
            ids: FxHashMap::default(),
            record_ids: Vec::with_capacity(parsed.records.len()),
            caption_counts: Vec::new(),
            first_record: Vec::new(),
        };
        for (row, record) in parsed.records.iter().enumerate() {
            let name: &'p str = record.image.as_ref();
            let next = named.names.len();
            let id = *named.ids.entry(name).or_insert(next);
            if id == next {
                named.names.push(name);
                named.caption_counts.push(0);
                named.first_record.push(row);
            }
            named.caption_counts[id] += 1;
            named.record_ids.push(id as u32);
        }
        named
    }

    /// The names present in the folder (sorted, for a stable manifest) and the ids of the
    /// missing ones.
    fn partition_present(&self, folder: &HashSet<String>) -> (Vec<&'p str>, Vec<usize>) {
        let (mut present, mut missing) = (Vec::new(), Vec::new());
        for (id, name) in self.names.iter().enumerate() {
            if folder.contains(*name) {
                present.push(*name);
            } else {
                missing.push(id);
            }
        }
        present.sort_unstable();
        (present, missing)
    }

    /// Rows whose image made it into the manifest, in file order.
    fn kept_rows(&self, usable: &HashSet<&str>) -> Vec<usize> {
        let keep: Vec<bool> = self.names.iter().map(|name| usable.contains(name)).collect();
        (0..self.record_ids.len()).filter(|&row| keep[self.record_ids[row] as usize]).collect()
    }
}

fn split_probes(results: Vec<Result<ImageEntry, Undecodable>>) -> (Vec<ImageEntry>, Vec<Undecodable>) {
    let (mut ok, mut bad) = (Vec::new(), Vec::new());
    for result in results {
        match result {
            Ok(entry) => ok.push(entry),
            Err(err) => bad.push(err),
        }
    }
    (ok, bad)
}

/// `captions.parquet`: image, caption_index, caption, split, in file order.
fn caption_frame(
    parsed: &ParsedCaptions,
    named: &NamedImages,
    kept: &[usize],
    splits: &[Split],
) -> Result<DataFrame> {
    let records = &parsed.records;
    let image: Vec<&str> = kept.iter().map(|&r| records[r].image.as_ref()).collect();
    let index: Vec<u32> = kept.iter().map(|&r| records[r].index).collect();
    let caption: Vec<&str> = kept.iter().map(|&r| -> &str { &records[r].caption }).collect();
    let split: Vec<&str> = kept.iter().map(|&r| splits[named.record_ids[r] as usize].as_str()).collect();
    Ok(DataFrame::new_infer_height(vec![
        Column::new("image".into(), image),
        Column::new("caption_index".into(), index),
        Column::new("caption".into(), caption),
        Column::new("split".into(), split),
    ])?)
}

/// `images.parquet`: one row per usable image, sorted by name.
fn manifest_frame(entries: &[ImageEntry]) -> Result<DataFrame> {
    let strings = |f: fn(&ImageEntry) -> &str| entries.iter().map(f).collect::<Vec<&str>>();
    Ok(DataFrame::new_infer_height(vec![
        Column::new("image".into(), strings(|e| &e.image)),
        Column::new("path".into(), strings(|e| &e.path)),
        Column::new("content_hash".into(), strings(|e| &e.content_hash)),
        Column::new("bytes".into(), entries.iter().map(|e| e.bytes).collect::<Vec<u64>>()),
        Column::new("width".into(), entries.iter().map(|e| e.width).collect::<Vec<u32>>()),
        Column::new("height".into(), entries.iter().map(|e| e.height).collect::<Vec<u32>>()),
    ])?)
}

/// What ingest found, beyond the parsed captions, for the report.
struct Outcome {
    /// Ids (in `NamedImages`) of images not in the folder.
    missing: Vec<usize>,
    kept: Vec<usize>,
    image_splits: Vec<Split>,
    folder: HashSet<String>,
    images_written: usize,
    undecodable: Vec<Undecodable>,
}

fn fill_report(report: &mut IngestReport, parsed: &ParsedCaptions, named: &NamedImages, outcome: Outcome) {
    let counts = &mut report.counts;
    counts.captions_read = parsed.records.len();
    counts.captions_written = outcome.kept.len();
    counts.bad_lines = parsed.bad_lines.len();
    counts.images_named = named.names.len();
    counts.images_written = outcome.images_written;
    counts.images_missing = outcome.missing.len();
    counts.captions_missing_image = outcome.missing.iter().map(|&id| named.caption_counts[id]).sum();
    counts.images_undecodable = outcome.undecodable.len();
    counts.captions_undecodable_image =
        outcome.undecodable.iter().map(|u| named.caption_counts[named.ids[u.image.as_str()]]).sum();
    report.missing_images = outcome
        .missing
        .iter()
        .map(|&id| MissingImage {
            image: named.names[id].to_string(),
            captions: named.caption_counts[id],
            first_seen: parsed.describe_pos(parsed.records[named.first_record[id]].pos),
        })
        .collect();
    let images_in_folder: Vec<&String> = outcome.folder.iter().filter(|f| is_image_name(f)).collect();
    let mut without: Vec<String> = images_in_folder
        .iter()
        .filter(|f| !named.ids.contains_key(f.as_str()))
        .map(|f| f.to_string())
        .collect();
    without.sort_unstable();
    counts.images_in_folder = images_in_folder.len();
    counts.images_without_captions = without.len();
    report.images_without_captions = without;
    report.bad_lines = parsed.bad_lines.clone();
    report.splits = split_counts(named, &outcome.kept, &outcome.image_splits);
    report.undecodable_images = outcome.undecodable;
}

fn split_counts(named: &NamedImages, kept: &[usize], splits: &[Split]) -> BTreeMap<String, SplitCount> {
    let mut counts: BTreeMap<String, SplitCount> = BTreeMap::new();
    let mut seen = vec![false; named.names.len()];
    for &row in kept {
        let id = named.record_ids[row] as usize;
        let entry = counts.entry(splits[id].as_str().to_string()).or_default();
        entry.captions += 1;
        if !std::mem::replace(&mut seen[id], true) {
            entry.images += 1;
        }
    }
    counts
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::BTreeMap;
    use std::path::PathBuf;

    use serde_json::json;

    use super::*;
    use crate::data::table::{read_parquet, require_columns, str_values, u32_values};

    /// A context for running a kind directly, without a runner.
    pub(crate) fn context(params: Value, inputs: &[(&str, PathBuf)], out_dir: &Path) -> StageContext {
        StageContext {
            stage: "test".into(),
            params,
            inputs: inputs.iter().map(|(n, p)| (n.to_string(), p.clone())).collect::<BTreeMap<_, _>>(),
            out_dir: out_dir.to_path_buf(),
            cache_dir: out_dir.join(".cache"),
            workspace: out_dir.to_path_buf(),
            lineage: Vec::new(),
            run_record: out_dir.with_extension("run.json"),
            fingerprint: String::new(),
            shard: None,
            reporter: pipe_engine::reporter::Reporter::hidden(),
        }
    }

    /// A folder with images `a.png` (4x3), `b.png`, `c.png` and `extra.png`, and `corrupt.jpg`.
    fn image_dir(root: &Path) -> PathBuf {
        let dir = root.join("images");
        std::fs::create_dir_all(&dir).unwrap();
        for name in ["a.png", "b.png", "c.png", "extra.png"] {
            image::RgbImage::new(4, 3).save(dir.join(name)).unwrap();
        }
        std::fs::write(dir.join("corrupt.jpg"), b"\xff\xd8 this is not a jpeg").unwrap();
        dir
    }

    /// Writes the caption file and images under `root`, runs the kind, returns its out dir.
    fn run(root: &Path, captions: (&str, &[u8]), params: Value) -> Result<PathBuf> {
        let images = image_dir(root);
        let captions_path = root.join(captions.0);
        std::fs::write(&captions_path, captions.1).unwrap();
        let out = root.join("out");
        std::fs::create_dir_all(&out).unwrap();
        let params = Ingest.normalize_params(&params)?;
        let ctx = context(params, &[("captions", captions_path), ("images", images)], &out);
        Ingest.run(&ctx)?;
        Ok(out)
    }

    fn report_json(out: &Path) -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(out.join(INGEST_REPORT_FILE)).unwrap()).unwrap()
    }

    const TOKEN: &[u8] =
        b"a.png#0\tA dog .\na.png#1\tA brown dog .\nb.png#0\tTwo cats .\nc.png#0\tA bird .\n";

    #[test]
    fn token_file_to_parquet_with_split_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("Flickr_8k.trainImages.txt"), "a.png\nb.png\n").unwrap();
        std::fs::write(dir.path().join("Flickr_8k.devImages.txt"), "c.png\n").unwrap();
        let out = run(dir.path(), ("Flickr8k.token.txt", TOKEN), json!({})).unwrap();
        let path = out.join(REFERENCE_CAPTIONS_FILE);
        let frame = read_parquet(&path).unwrap();
        require_columns(&frame, &path, &crate::contract::tables::REFERENCE_CAPTION_COLUMNS).unwrap();
        assert_eq!(str_values(&frame, "image").unwrap(), ["a.png", "a.png", "b.png", "c.png"]);
        assert_eq!(u32_values(&frame, "caption_index").unwrap(), [0, 1, 0, 0]);
        assert_eq!(str_values(&frame, "caption").unwrap()[1], "A brown dog .");
        assert_eq!(str_values(&frame, "split").unwrap(), ["train", "train", "train", "dev"]);

        let manifest_path = out.join(IMAGES_FILE);
        let manifest = read_parquet(&manifest_path).unwrap();
        require_columns(&manifest, &manifest_path, &crate::contract::tables::IMAGE_MANIFEST_COLUMNS).unwrap();
        assert_eq!(str_values(&manifest, "image").unwrap(), ["a.png", "b.png", "c.png"]);
        assert_eq!(u32_values(&manifest, "width").unwrap(), [4, 4, 4]);
        let hash =
            blake3::hash(&std::fs::read(dir.path().join("images/a.png")).unwrap()).to_hex().to_string();
        assert_eq!(str_values(&manifest, "content_hash").unwrap()[0], hash);

        let report = report_json(&out);
        assert_eq!(report["split_source"], "files");
        assert_eq!(report["format"], "flickr8k");
        assert_eq!(report["images_without_captions"], json!(["corrupt.jpg", "extra.png"]));
        assert_eq!(report["splits"]["train"], json!({"images": 2, "captions": 3}));
    }

    #[test]
    fn every_format_ingests() {
        let cases: [(&str, &[u8]); 5] = [
            ("tokens.txt", TOKEN),
            ("captions.txt", b"image,caption\na.png,A dog .\na.png,\"A dog, brown .\"\nb.png,Two cats .\n"),
            ("results.csv", b"image_name| comment_number| comment\na.png| 0| A dog .\nb.png| 0| Cats .\n"),
            (
                "captions_val.json",
                br#"{"images": [{"id": 1, "file_name": "a.png"}], "annotations": [{"image_id": 1, "caption": "A dog"}]}"#,
            ),
            (
                "dataset_x.json",
                br#"{"images": [{"filename": "a.png", "split": "test", "sentences": [{"raw": "A dog"}]}]}"#,
            ),
        ];
        let formats = ["flickr8k", "csv", "flickr30k", "coco", "karpathy"];
        for ((name, text), format) in cases.into_iter().zip(formats) {
            let dir = tempfile::tempdir().unwrap();
            let out = run(dir.path(), (name, text), json!({})).unwrap();
            let report = report_json(&out);
            assert_eq!(report["format"], format);
            let frame = read_parquet(&out.join(REFERENCE_CAPTIONS_FILE)).unwrap();
            assert_eq!(str_values(&frame, "image").unwrap()[0], "a.png", "{format}");
        }
    }

    #[test]
    fn karpathy_splits_and_hash_splits() {
        let dir = tempfile::tempdir().unwrap();
        let karpathy =
            br#"{"images": [{"filename": "a.png", "split": "val", "sentences": [{"raw": "A dog"}]}]}"#;
        let out = run(dir.path(), ("dataset.json", karpathy), json!({})).unwrap();
        assert_eq!(report_json(&out)["split_source"], "karpathy");
        assert_eq!(
            str_values(&read_parquet(&out.join(REFERENCE_CAPTIONS_FILE)).unwrap(), "split").unwrap(),
            ["dev"]
        );

        let dir = tempfile::tempdir().unwrap();
        let params = json!({"split_ratios": {"train": 0.0, "dev": 0.0, "test": 1.0}});
        let out = run(dir.path(), ("t.txt", TOKEN), params).unwrap();
        assert_eq!(report_json(&out)["split_source"], "hash");
        let splits = str_values(&read_parquet(&out.join(REFERENCE_CAPTIONS_FILE)).unwrap(), "split")
            .unwrap()
            .join(",");
        assert_eq!(splits, "test,test,test,test");

        let dir = tempfile::tempdir().unwrap();
        let err = run(dir.path(), ("t.txt", TOKEN), json!({"split_mode": "files"})).unwrap_err();
        assert!(err.to_string().contains("no Flickr_8k"), "{err}");
    }

    #[test]
    fn missing_and_undecodable_images_are_dropped_and_listed() {
        let dir = tempfile::tempdir().unwrap();
        let text = b"a.png#0\tA dog .\nghost.jpg#0\tNothing .\nghost.jpg#1\tStill nothing .\ncorrupt.jpg#0\tBroken .\n";
        let out = run(dir.path(), ("t.txt", text), json!({})).unwrap();
        let report = report_json(&out);
        assert_eq!(
            report["missing_images"],
            json!([{"image": "ghost.jpg", "captions": 2, "first_seen": "line 2"}])
        );
        assert_eq!(report["undecodable_images"][0]["image"], "corrupt.jpg");
        assert_eq!(report["counts"]["captions_missing_image"], 2);
        assert_eq!(report["counts"]["captions_undecodable_image"], 1);
        assert_eq!(
            str_values(&read_parquet(&out.join(REFERENCE_CAPTIONS_FILE)).unwrap(), "image").unwrap(),
            ["a.png"]
        );
        assert_eq!(str_values(&read_parquet(&out.join(IMAGES_FILE)).unwrap(), "image").unwrap(), ["a.png"]);
    }

    #[test]
    fn escaping_names_fail_naming_file_and_line() {
        for name in ["../secret.png", "/etc/passwd"] {
            let dir = tempfile::tempdir().unwrap();
            let text = format!("a.png#0\tA dog .\n{name}#0\tSneaky .\n");
            let err =
                run(dir.path(), ("t.txt", text.as_bytes()), json!({"skip_bad_lines": true})).unwrap_err();
            let message = format!("{err:#}");
            assert!(message.contains("t.txt: line 2: refused image name"), "{message}");
        }
    }

    #[test]
    fn bad_lines_fail_unless_skipped() {
        let text = b"a.png#0\tA dog .\nthis line has no tab\nb.png#0\tcaf\xe9 .\nc.png#0\tfine\n";
        let dir = tempfile::tempdir().unwrap();
        let message = format!("{:#}", run(dir.path(), ("t.txt", text), json!({})).unwrap_err());
        assert!(message.contains("t.txt: line 2"), "{message}");
        let dir = tempfile::tempdir().unwrap();
        let out = run(dir.path(), ("t.txt", text), json!({"skip_bad_lines": true})).unwrap();
        let report = report_json(&out);
        assert_eq!(report["counts"]["bad_lines"], 2);
        assert_eq!(report["bad_lines"][1]["location"], "line 3");
        assert_eq!(report["counts"]["captions_written"], 2);
    }

    #[test]
    fn empty_result_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let message =
            format!("{:#}", run(dir.path(), ("t.txt", b"ghost.png#0\tNo image .\n"), json!({})).unwrap_err());
        assert!(message.contains("no captions left"), "{message}");
        let dir = tempfile::tempdir().unwrap();
        assert!(run(dir.path(), ("t.txt", b"\n\n"), json!({})).is_err());
    }

    #[test]
    fn params_are_typed() {
        let normalized = Ingest.normalize_params(&json!({})).unwrap();
        assert_eq!(normalized["format"], "auto");
        assert_eq!(normalized["split_mode"], "auto");
        assert!(Ingest.normalize_params(&json!({"format": "xml"})).is_err());
        assert!(Ingest.normalize_params(&json!({"skip": true})).is_err());
    }

    /// Runs `tests/py/check_parquet.py` (real pyarrow) on `paths`. Skips, saying so, when
    /// the project's venv or pyarrow is missing, so `cargo test` works on a bare machine.
    pub(crate) fn check_with_pyarrow(paths: &[PathBuf]) {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let (python, script) = (root.join(".venv/bin/python"), root.join("tests/py/check_parquet.py"));
        if !python.exists() {
            eprintln!("skipping the pyarrow check: no {}", python.display());
            return;
        }
        let output = std::process::Command::new(&python).arg(&script).args(paths).output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        if stderr.contains("No module named 'pyarrow'") {
            eprintln!("skipping the pyarrow check: pyarrow is not installed");
            return;
        }
        assert!(output.status.success(), "{}\n{stderr}", String::from_utf8_lossy(&output.stdout));
    }

    #[test]
    fn pyarrow_reads_the_outputs() {
        let dir = tempfile::tempdir().unwrap();
        let out = run(dir.path(), ("t.txt", TOKEN), json!({})).unwrap();
        check_with_pyarrow(&[out.join(REFERENCE_CAPTIONS_FILE), out.join(IMAGES_FILE)]);
    }
}

//! Decoding behind the `caption` kind (modes, params, inputs and outputs: `pipe::stages::caption`).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};
use tch::{nn, Device, Tensor};

use crate::model::backbone::{Backbone, DeviceChoice, ExtractOptions, Precision, ResolveDevice, ThreadPlan};
use crate::model::data::{
    caption_text, read_captions, write_captions, CaptionRow, FeatureTable, TokenTable, Vocab,
};
use crate::model::decode::{beam_search, greedy, DecodeOptions, Hypothesis};
use crate::model::decoder::{DecoderConfig, MergeDecoder};
use crate::train::{artifact, write_json};
use pipe::engine::stage::StageContext;
use pipe::stages::caption::{CaptionParams, DecodeSettings, DecoderKind, CAPTIONS_FILE, SKIPPED_FILE};
use pipe::stages::train::{CONFIG_FILE, WEIGHTS_FILE};

const PARTS_DIR: &str = "parts";
const LISTING_FILE: &str = "listing.json";
/// File extensions archive mode picks up (the backbone decodes JPEG and PNG).
const IMAGE_EXTENSIONS: [&str; 3] = ["jpg", "jpeg", "png"];

/// Runs a `caption` stage.
pub fn run(ctx: &StageContext) -> Result<()> {
    let params: CaptionParams = ctx.params()?;
    let device = params.device.resolve()?;
    let threads = ThreadPlan::new(0, device);
    tch::set_num_threads(threads.torch as i32);
    let model =
        CaptionModel::load(ctx.input("model")?, &artifact(ctx.input("vocab")?, "vocab.json"), device)?;
    let Some(folder) = &params.folder else {
        return run_split(ctx, &model, &params);
    };
    let backbone_dir =
        ctx.input("backbone").context("archive mode (params.folder) needs input `backbone`")?;
    let backbone = Backbone::load(backbone_dir, params.device, Precision::Fp32)?;
    // Listing the folder as the `images` dep makes its content part of the fingerprint,
    // so adding images to the archive reruns the stage.
    let folder = ctx.workspace.join(folder);
    if let Some(dep) = ctx.optional_input("images") {
        ensure!(
            dep.canonicalize().ok() == folder.canonicalize().ok(),
            "params.folder ({}) and the `images` dep ({}) must name the same folder",
            folder.display(),
            dep.display()
        );
    }
    let archive = Archive {
        folder,
        chunk_size: params.chunk_size,
        extract: ExtractOptions {
            batch_size: params.backbone_batch,
            decode_threads: threads.decode,
            ..Default::default()
        },
        settings: params.settings(),
    };
    let bar = ctx.progress_bar(0, "captioning");
    let report = archive.run(
        &model,
        &backbone,
        &ctx.out_dir,
        None,
        &mut |n, total| {
            bar.set_length(total as u64);
            bar.set_position(n as u64);
            Ok(())
        },
        &|line| ctx.log(line),
    )?;
    bar.finish_and_clear();
    ctx.log(report.summary());
    Ok(())
}

/// A trained decoder with its vocabulary, ready to caption features.
pub struct CaptionModel {
    vs: nn::VarStore,
    pub decoder: MergeDecoder,
    pub vocab: Vocab,
}

impl CaptionModel {
    /// Loads `model_dir/{model.json, model.safetensors}` and the vocabulary onto `device`.
    pub fn load(model_dir: &Path, vocab_path: &Path, device: Device) -> Result<Self> {
        let config_path = model_dir.join(CONFIG_FILE);
        let text = std::fs::read_to_string(&config_path)
            .with_context(|| format!("reading {}", config_path.display()))?;
        let cfg: DecoderConfig =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", config_path.display()))?;
        let vocab = Vocab::load(vocab_path)?;
        if vocab.len() as i64 != cfg.vocab_size {
            bail!(
                "{} has {} tokens but the model was trained on {}",
                vocab_path.display(),
                vocab.len(),
                cfg.vocab_size
            );
        }
        let mut vs = nn::VarStore::new(device);
        let decoder = MergeDecoder::new(&cfg, vs.root());
        let weights = model_dir.join(WEIGHTS_FILE);
        vs.load(&weights).with_context(|| format!("loading {}", weights.display()))?;
        Ok(Self { vs, decoder, vocab })
    }

    pub fn device(&self) -> Device {
        self.vs.device()
    }

    fn options(&self, settings: &DecodeSettings) -> DecodeOptions {
        let f = &self.vocab.file;
        let default_steps = (self.decoder.cfg.max_len - 1).max(1) as usize;
        DecodeOptions {
            start_id: f.start_id as i64,
            end_id: f.end_id as i64,
            banned: vec![f.pad_id as i64, f.unk_id as i64, f.start_id as i64],
            max_steps: settings.max_len.unwrap_or(default_steps),
            block_repeats: settings.block_repeats,
        }
    }

    /// Captions for features (N, D), decoded `settings.batch_size` images at a time.
    pub fn caption(&self, features: &Tensor, settings: &DecodeSettings) -> Result<Vec<(String, f64)>> {
        let opts = self.options(settings);
        let n = features.size()[0];
        let mut out = Vec::with_capacity(n as usize);
        for start in (0..n).step_by(settings.batch_size.max(1)) {
            let batch = features
                .narrow(0, start, (settings.batch_size as i64).min(n - start))
                .to_device(self.device());
            let hyps: Vec<Hypothesis> = match settings.decoder {
                DecoderKind::Greedy => greedy(&self.decoder, &batch, &opts)?,
                DecoderKind::Beam => {
                    beam_search(&self.decoder, &batch, &opts, settings.beam_width, settings.length_norm)?
                }
            };
            out.extend(hyps.into_iter().map(|h| (caption_text(&self.vocab, &h.tokens), h.log_prob)));
        }
        Ok(out)
    }
}

/// Split mode: captions the images of `params.split` from cached features.
fn run_split(ctx: &StageContext, model: &CaptionModel, params: &CaptionParams) -> Result<()> {
    let features_path =
        artifact(ctx.input("features").context("split mode needs input `features`")?, "features.arrow");
    let tokens_path = ctx.optional_input("tokens").map(|p| artifact(p, "tokens.parquet"));
    let started = Instant::now();
    let rows =
        caption_split(model, &features_path, tokens_path.as_deref(), &params.split, &params.settings())?;
    write_captions(&ctx.output(CAPTIONS_FILE), &rows)?;
    let secs = started.elapsed().as_secs_f64();
    ctx.log(format!(
        "{} images in {secs:.1} s ({:.0} captions/s)",
        rows.len(),
        rows.len() as f64 / secs.max(1e-9)
    ));
    Ok(())
}

/// The rows of split mode: every image of `split` (or of the feature table without tokens).
pub fn caption_split(
    model: &CaptionModel,
    features_path: &Path,
    tokens_path: Option<&Path>,
    split: &str,
    settings: &DecodeSettings,
) -> Result<Vec<CaptionRow>> {
    let features = FeatureTable::load(features_path)?;
    let images = match tokens_path {
        Some(path) => TokenTable::load(path)?.split_images(split),
        None => features.images.clone(),
    };
    if images.is_empty() {
        bail!("no images in split `{split}`");
    }
    let index = features.index();
    let rows: Vec<i64> = images
        .iter()
        .map(|img| {
            index
                .get(img.as_str())
                .copied()
                .with_context(|| format!("image `{img}` has no features in {}", features_path.display()))
        })
        .collect::<Result<_>>()?;
    let selected = features.matrix.index_select(0, &Tensor::from_slice(&rows));
    let captions = model.caption(&selected, settings)?;
    Ok(images
        .into_iter()
        .zip(captions)
        .map(|(image, (caption, log_prob))| CaptionRow { image, caption, log_prob })
        .collect())
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
    /// Parts found finished from an earlier, interrupted run.
    pub resumed_parts: usize,
    /// False when `stop_after` ended the run early (the merge did not happen).
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

/// An image archive mode could not use: its path relative to the folder, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SkippedImage {
    pub image: String,
    pub reason: String,
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
    /// Captions the folder into `out_dir`. `stop_after` = Some(n) stops after n new parts
    /// (to simulate an interruption in tests). `progress(done, total)` is told per part.
    pub fn run(
        &self,
        model: &CaptionModel,
        backbone: &Backbone,
        out_dir: &Path,
        stop_after: Option<usize>,
        progress: &mut dyn FnMut(usize, usize) -> Result<()>,
        log: &dyn Fn(String),
    ) -> Result<ArchiveReport> {
        let started = Instant::now();
        let files = list_images(&self.folder)?;
        ensure!(!files.is_empty(), "{}: no .jpg/.jpeg/.png files", self.folder.display());
        let parts = out_dir.join(PARTS_DIR);
        let reused = self.prepare_parts(&parts, &files, log)?;
        let mut report = ArchiveReport { files: files.len(), ..Default::default() };
        let mut written = 0;
        for (i, chunk) in files.chunks(self.chunk_size).enumerate() {
            let part = part_path(&parts, i);
            if reused && part.exists() {
                report.resumed_parts += 1;
            } else {
                if stop_after.is_some_and(|n| written >= n) {
                    report.seconds = started.elapsed().as_secs_f64();
                    return Ok(report);
                }
                self.caption_chunk(model, backbone, chunk, &part)?;
                written += 1;
            }
            progress(((i + 1) * self.chunk_size).min(files.len()), files.len())?;
        }
        let (captioned, skipped) = merge_parts(&parts, files.len().div_ceil(self.chunk_size), out_dir)?;
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
                return Ok(true);
            }
            log(format!(
                "{}: the folder or chunk_size changed since the interrupted run; starting over",
                path.display()
            ));
            std::fs::remove_dir_all(parts).with_context(|| format!("removing {}", parts.display()))?;
        }
        std::fs::create_dir_all(parts).with_context(|| format!("creating {}", parts.display()))?;
        write_json(&path, &listing)?;
        Ok(false)
    }

    /// Backbone + decoder over one chunk; writes its skipped list, then its part (renamed
    /// into place last, so a part that exists is complete).
    fn caption_chunk(
        &self,
        model: &CaptionModel,
        backbone: &Backbone,
        chunk: &[String],
        part: &Path,
    ) -> Result<()> {
        let paths: Vec<PathBuf> = chunk.iter().map(|rel| self.folder.join(rel)).collect();
        let (mut indices, mut values, mut skipped) = (Vec::new(), Vec::<f32>::new(), Vec::new());
        backbone.extract(&paths, &self.extract, |batch| {
            indices.extend(batch.indices);
            values.extend_from_slice(&batch.features);
            skipped.extend(
                batch
                    .skipped
                    .into_iter()
                    .map(|s| SkippedImage { image: chunk[s.index].clone(), reason: s.reason }),
            );
            Ok(())
        })?;
        let mut rows = Vec::with_capacity(indices.len());
        if !indices.is_empty() {
            let features = Tensor::from_slice(&values).view([indices.len() as i64, backbone.dim() as i64]);
            let captions = model.caption(&features, &self.settings)?;
            rows.extend(indices.iter().zip(captions).map(|(&i, (caption, log_prob))| CaptionRow {
                image: chunk[i].clone(),
                caption,
                log_prob,
            }));
        }
        write_json_atomic(&part.with_extension("skipped.json"), &skipped)?;
        write_captions(part, &rows)
    }
}

/// Every image file under `folder`, as sorted relative paths with `/` separators.
pub fn list_images(folder: &Path) -> Result<Vec<String>> {
    let mut files = Vec::new();
    for entry in walkdir::WalkDir::new(folder).follow_links(true) {
        let entry = entry.with_context(|| format!("listing {}", folder.display()))?;
        let is_image = entry
            .path()
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|x| e.eq_ignore_ascii_case(x)));
        if entry.file_type().is_file() && is_image {
            let rel = entry.path().strip_prefix(folder).unwrap_or(entry.path());
            files.push(
                rel.components().map(|c| c.as_os_str().to_string_lossy()).collect::<Vec<_>>().join("/"),
            );
        }
    }
    files.sort();
    Ok(files)
}

fn listing_hash(files: &[String]) -> String {
    let mut hasher = blake3::Hasher::new();
    for f in files {
        hasher.update(f.as_bytes());
        hasher.update(b"\n");
    }
    hasher.finalize().to_hex().to_string()
}

fn part_path(parts: &Path, i: usize) -> PathBuf {
    parts.join(format!("part-{i:05}.parquet"))
}

fn write_json_atomic<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let tmp = path.with_extension("json.tmp");
    write_json(&tmp, value)?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming {}", tmp.display()))
}

/// Concatenates the parts into `captions.parquet` and `skipped.json`, then removes `parts/`.
fn merge_parts(parts: &Path, count: usize, out_dir: &Path) -> Result<(usize, usize)> {
    let (mut rows, mut skipped) = (Vec::new(), Vec::<SkippedImage>::new());
    for i in 0..count {
        let part = part_path(parts, i);
        rows.extend(read_captions(&part)?);
        let list = part.with_extension("skipped.json");
        let text = std::fs::read_to_string(&list).with_context(|| format!("reading {}", list.display()))?;
        skipped.extend(
            serde_json::from_str::<Vec<SkippedImage>>(&text)
                .with_context(|| format!("parsing {}", list.display()))?,
        );
    }
    write_captions(&out_dir.join(CAPTIONS_FILE), &rows)?;
    write_json_atomic(&out_dir.join(SKIPPED_FILE), &skipped)?;
    std::fs::remove_dir_all(parts).with_context(|| format!("removing {}", parts.display()))?;
    Ok((rows.len(), skipped.len()))
}

/// Options of [`caption_images`] (the `pipe caption IMAGE...` command).
#[derive(Debug, Clone, Default)]
pub struct CaptionImagesOptions {
    pub settings: DecodeSettings,
    pub device: DeviceChoice,
}

/// Captions a few image files: (path, caption, log_prob) per readable file, in order;
/// unreadable files are an error naming them.
pub fn caption_images(
    model_dir: &Path,
    vocab_path: &Path,
    backbone_dir: &Path,
    paths: &[PathBuf],
    opts: &CaptionImagesOptions,
) -> Result<Vec<(PathBuf, String, f64)>> {
    let device = opts.device.resolve()?;
    tch::set_num_threads(ThreadPlan::new(0, device).torch as i32);
    let model = CaptionModel::load(model_dir, &artifact(vocab_path, "vocab.json"), device)?;
    let backbone = Backbone::load(backbone_dir, opts.device, Precision::Fp32)?;
    let (features, skipped) = backbone.extract_all(paths, &ExtractOptions::default())?;
    if let Some(s) = skipped.first() {
        bail!("{}: {}", paths[s.index].display(), s.reason);
    }
    let values: Vec<f32> = features.into_iter().flatten().flatten().collect();
    let matrix = Tensor::from_slice(&values).view([paths.len() as i64, backbone.dim() as i64]);
    let captions = model.caption(&matrix, &opts.settings)?;
    Ok(paths.iter().cloned().zip(captions).map(|(p, (c, lp))| (p, c, lp)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::backbone::BackboneSpec;
    use crate::model::train::Silent;
    use crate::train::{run_training, TrainInputs};
    use image::{Rgb, RgbImage};
    use pipe::stages::train::TrainParams;

    /// A tiny TorchScript "backbone": mean colour per channel times a fixed (3, 8) matrix.
    fn write_backbone(dir: &Path) {
        std::fs::create_dir_all(dir).unwrap();
        let w = Tensor::from_slice(&[
            1.0f32, -1.0, 0.5, 2.0, 0.0, 1.0, -0.5, 1.5, 0.3, 1.0, -2.0, 0.7, 1.1, 0.2, -1.0, 0.4, 0.9, -0.3,
            1.0, 0.5, -0.7, 0.2, 1.3, -1.2,
        ])
        .view([3, 8]);
        let input = Tensor::zeros([1, 3, 8, 8], (tch::Kind::Float, Device::Cpu));
        let module = tch::CModule::create_by_tracing("Backbone", "forward", &[input], &mut |xs| {
            vec![xs[0].mean_dim(&[2i64, 3][..], false, tch::Kind::Float).matmul(&w)]
        })
        .unwrap();
        module.save(dir.join("model.pt")).unwrap();
        let spec = BackboneSpec {
            name: "tiny".into(),
            input_size: 8,
            resize: "stretch".into(),
            mean: [0.5; 3],
            std: [0.25; 3],
            dim: 8,
            layout: "NCHW".into(),
            value_range: 1.0,
        };
        write_json(&dir.join("backbone.json"), &spec).unwrap();
    }

    /// A folder of 23 small images in two sub-folders, plus one corrupt file.
    fn write_folder(dir: &Path) {
        for i in 0..23u8 {
            let sub = dir.join(if i % 2 == 0 { "even" } else { "odd/deeper" });
            std::fs::create_dir_all(&sub).unwrap();
            let img = RgbImage::from_fn(12, 10, |x, y| Rgb([i * 11, (x * 20) as u8, (y * 25) as u8]));
            img.save(sub.join(format!("img{i:02}.png"))).unwrap();
        }
        std::fs::write(dir.join("even/broken.jpg"), b"not a jpeg").unwrap();
    }

    /// Trains a tiny model on synthetic artifacts; returns (model dir, vocab path, data dir).
    fn tiny_model(root: &Path) -> (PathBuf, PathBuf) {
        use pipe::data::table::{u32_list_column, write_parquet};
        use polars::prelude::{Column, DataFrame};
        let vocab = crate::model::data::tests::vocab_of(&["dog", "cat", "runs", "sits", "red", "blue"]);
        let vocab_path = root.join("vocab.json");
        write_json(&vocab_path, &vocab.file).unwrap();
        let names = ["i0.jpg", "i1.jpg", "i2.jpg", "i3.jpg"];
        crate::model::data::tests::write_features(&root.join("features.arrow"), &names, 8);
        let caps = ["red dog runs", "blue cat sits", "red cat runs", "blue dog sits"];
        let (mut images, mut splits, mut values, mut lengths) = (vec![], vec![], vec![], vec![]);
        for (i, c) in caps.iter().enumerate() {
            let mut ids = Vec::new();
            vocab.encode_into(c, &mut ids);
            for split in ["train", "dev"] {
                images.push(names[i]);
                splits.push(split);
                lengths.push(ids.len());
                values.extend_from_slice(&ids);
            }
        }
        let mut df = DataFrame::new_infer_height(vec![
            Column::new("image".into(), images),
            Column::new("caption_index".into(), vec![0u32; lengths.len()]),
            Column::new("split".into(), splits),
            u32_list_column("tokens", &values, &lengths),
        ])
        .unwrap();
        write_parquet(&mut df, &root.join("tokens.parquet")).unwrap();
        let model_dir = root.join("model");
        std::fs::create_dir_all(&model_dir).unwrap();
        let inputs = TrainInputs {
            tokens: root.join("tokens.parquet"),
            vocab: vocab_path.clone(),
            features: root.join("features.arrow"),
            embeddings: None,
        };
        let _rng = crate::model::train::torch_rng_lock();
        let params = TrainParams {
            embed: 16,
            hidden: 16,
            dense: 16,
            dropout: 0.0,
            lr: 0.02,
            batch_size: 4,
            epochs: 60,
            patience: 60,
            device: DeviceChoice::Cpu,
            ..Default::default()
        };
        run_training(&inputs, &params, &model_dir, &mut Silent, &|_| ()).unwrap();
        (model_dir, vocab_path)
    }

    #[test]
    fn trains_then_captions_a_split_with_the_training_captions() {
        let dir = tempfile::tempdir().unwrap();
        let (model_dir, vocab) = tiny_model(dir.path());
        let history: crate::model::train::History =
            serde_json::from_str(&std::fs::read_to_string(model_dir.join("history.json")).unwrap()).unwrap();
        assert!(history.epochs.last().unwrap().train_loss < 0.2, "{history:?}");
        let model = CaptionModel::load(&model_dir, &vocab, Device::Cpu).unwrap();
        let features = dir.path().join("features.arrow");
        let tokens = dir.path().join("tokens.parquet");
        for decoder in [DecoderKind::Greedy, DecoderKind::Beam] {
            let settings = DecodeSettings { decoder, batch_size: 3, ..Default::default() };
            let rows = caption_split(&model, &features, Some(&tokens), "dev", &settings).unwrap();
            let got: Vec<&str> = rows.iter().map(|r| r.caption.as_str()).collect();
            assert_eq!(
                got,
                ["red dog runs", "blue cat sits", "red cat runs", "blue dog sits"],
                "{decoder:?}"
            );
            assert!(rows.iter().all(|r| r.log_prob < 0.0 && r.log_prob > -1.0));
        }
    }

    #[test]
    fn archive_mode_resumes_to_the_same_output() {
        let dir = tempfile::tempdir().unwrap();
        let (model_dir, vocab) = tiny_model(dir.path());
        let (folder, backbone_dir) = (dir.path().join("photos"), dir.path().join("backbone"));
        write_folder(&folder);
        write_backbone(&backbone_dir);
        let model = CaptionModel::load(&model_dir, &vocab, Device::Cpu).unwrap();
        let backbone = Backbone::load(&backbone_dir, DeviceChoice::Cpu, Precision::Fp32).unwrap();
        let archive = Archive {
            folder,
            chunk_size: 5,
            extract: ExtractOptions { batch_size: 3, ..Default::default() },
            settings: DecodeSettings::default(),
        };
        let run = |out: &Path, stop: Option<usize>| {
            archive.run(&model, &backbone, out, stop, &mut |_, _| Ok(()), &|_| ()).unwrap()
        };
        let (whole, resumed) = (dir.path().join("whole"), dir.path().join("resumed"));
        let full = run(&whole, None);
        assert!(full.complete);
        assert_eq!((full.files, full.captioned, full.skipped), (24, 23, 1));
        let first = run(&resumed, Some(2));
        assert!(!first.complete && !resumed.join(CAPTIONS_FILE).exists());
        assert!(
            part_path(&resumed.join(PARTS_DIR), 1).exists()
                && !part_path(&resumed.join(PARTS_DIR), 2).exists()
        );
        let second = run(&resumed, None);
        assert_eq!(second.resumed_parts, 2);
        let (a, b) = (
            read_captions(&whole.join(CAPTIONS_FILE)).unwrap(),
            read_captions(&resumed.join(CAPTIONS_FILE)).unwrap(),
        );
        assert_eq!(a, b);
        assert_eq!(a.len(), 23);
        assert!(a.iter().any(|r| r.image == "odd/deeper/img01.png"));
        let skipped: Vec<SkippedImage> =
            serde_json::from_str(&std::fs::read_to_string(resumed.join(SKIPPED_FILE)).unwrap()).unwrap();
        assert_eq!(skipped.len(), 1);
        assert_eq!(skipped[0].image, "even/broken.jpg");
        assert!(!resumed.join(PARTS_DIR).exists());
    }
}

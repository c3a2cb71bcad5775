//! The compute of the `caption` kind (its modes, params, inputs and outputs are declared in
//! `pipe::stages::caption`): split mode here, archive mode in [`archive`], the trained
//! model and its decode settings in [`captioner`].

mod archive;
mod captioner;
pub mod serve;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use tch::Tensor;

pub use archive::{Archive, ArchiveReport, Chunks};
pub use captioner::{CaptionModel, DecodeSettings};

use crate::model::backbone::{Backbone, DeviceChoice, ExtractOptions, Precision, ResolveDevice, ThreadPlan};
use crate::model::data::{caption_text, FeatureTable, TokenTable};
use crate::model::decode::Hypothesis;
use pipe::contract::attention::{AttentionMaps, ImageAttention};
use pipe::contract::files::{
    artifact, ATTENTION_FILE, FEATURES_FILE, GENERATED_CAPTIONS_FILE, TOKENS_FILE, VOCAB_FILE,
};
use pipe::contract::tables::{write_generated_captions, GeneratedCaption};
use pipe::metrics::cider::CorpusIdf;
use pipe::stages::caption::{CaptionParams, Rerank, MODEL_INPUTS, RERANK_IDF_SPLIT};
use pipe_engine::fsutil::write_json_atomic;
use pipe_engine::stage::StageContext;

/// Runs a `caption` stage.
pub fn run(ctx: &StageContext) -> Result<()> {
    let params: CaptionParams = ctx.params()?;
    let device = params.device.resolve()?;
    let threads = ThreadPlan::new(0, device);
    tch::set_num_threads(threads.torch as i32);
    let mut models = vec![ctx.input("model")?];
    models.extend(MODEL_INPUTS[1..].iter().filter_map(|name| ctx.optional_input(name)));
    let model = CaptionModel::load_ensemble(&models, &artifact(ctx.input("vocab")?, VOCAB_FILE), device)?;
    if models.len() > 1 {
        ctx.log(format!("an ensemble of {} models", models.len()));
    }
    let Some(folder) = &params.folder else {
        ensure!(ctx.shard.is_none(), "only archive mode (params.folder) can be split into shards");
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
        settings: DecodeSettings::from(&params),
    };
    // Keyed by the fingerprint: this artifact's shards and its own run share the parts.
    let parts = if ctx.fingerprint.is_empty() {
        ctx.out_dir.join(archive::PARTS_DIR)
    } else {
        ctx.cache_dir.join("archive").join(&ctx.fingerprint)
    };
    let chunks = ctx.shard.map_or(Chunks::All, Chunks::Shard);
    let bar = ctx.progress_bar(0, "captioning");
    let report = archive.run(
        &model,
        &backbone,
        &parts,
        &ctx.out_dir,
        chunks,
        &mut |n, total| {
            bar.set_length(total as u64);
            bar.set_position(n as u64);
            Ok(())
        },
        &|line| ctx.log(line),
    )?;
    bar.finish_and_clear();
    if let Some(shard) = ctx.shard {
        ctx.log(format!(
            "shard {shard}: {} parts computed, {} found done, of {} files in chunks of {} ({:.1} s)",
            report.new_parts, report.resumed_parts, report.files, params.chunk_size, report.seconds
        ));
        return Ok(());
    }
    ctx.log(report.summary());
    ctx.record_run(&serde_json::json!({
        "files": report.files,
        "captioned": report.captioned,
        "skipped": report.skipped,
        "resumed_parts": report.resumed_parts,
        "seconds": report.seconds,
        "captions_per_s": report.captioned as f64 / report.seconds.max(1e-9),
    }))
}

/// Split mode: captions the images of `params.split` from cached features.
fn run_split(ctx: &StageContext, model: &CaptionModel, params: &CaptionParams) -> Result<()> {
    let features_path =
        artifact(ctx.input("features").context("split mode needs input `features`")?, FEATURES_FILE);
    let tokens_path = ctx.optional_input("tokens").map(|p| artifact(p, TOKENS_FILE));
    let started = Instant::now();
    let settings = DecodeSettings::from(params);
    let (rows, maps) = caption_split_with_maps(
        model,
        &features_path,
        tokens_path.as_deref(),
        &params.split,
        &settings,
        params.attention_maps,
    )?;
    write_generated_captions(&ctx.output(GENERATED_CAPTIONS_FILE), &rows)?;
    if let Some(maps) = maps {
        write_json_atomic(&ctx.output(ATTENTION_FILE), &maps)?;
    }
    let secs = started.elapsed().as_secs_f64();
    let per_s = rows.len() as f64 / secs.max(1e-9);
    ctx.log(format!("{} images in {secs:.1} s ({per_s:.0} captions/s)", rows.len()));
    ctx.record_run(&serde_json::json!({"images": rows.len(), "seconds": secs, "captions_per_s": per_s}))
}

/// The rows of split mode: every image of `split` (or of the feature table without tokens).
pub fn caption_split(
    model: &CaptionModel,
    features_path: &Path,
    tokens_path: Option<&Path>,
    split: &str,
    settings: &DecodeSettings,
) -> Result<Vec<GeneratedCaption>> {
    Ok(caption_split_with_maps(model, features_path, tokens_path, split, settings, false)?.0)
}

/// [`caption_split`], and with `maps` where the model looked for each word.
fn caption_split_with_maps(
    model: &CaptionModel,
    features_path: &Path,
    tokens_path: Option<&Path>,
    split: &str,
    settings: &DecodeSettings,
    maps: bool,
) -> Result<(Vec<GeneratedCaption>, Option<AttentionMaps>)> {
    let features = FeatureTable::load(features_path)?;
    let tokens = tokens_path.map(TokenTable::load).transpose()?;
    let images = match &tokens {
        Some(table) => table.split_images(split),
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
    let hyps = match settings.rerank {
        Rerank::None => model.decode(&selected, settings)?,
        Rerank::Consensus => {
            let tokens = tokens.as_ref().context(
                "rerank: consensus needs the `tokens` input (its train captions give the document frequencies)",
            )?;
            let idf = train_idf(tokens)?;
            let ranked = model.decode_ranked(&selected, settings)?;
            let samples = match settings.rerank_samples {
                0 => vec![Vec::new(); ranked.len()],
                n => model.sample(&selected, settings, n, RERANK_SEED)?,
            };
            ranked
                .into_iter()
                .zip(samples)
                .map(|(ranked, samples)| consensus(&idf, ranked, &samples))
                .collect()
        }
    };
    let maps = match (maps, features.grid) {
        (false, _) => None,
        (true, None) => {
            bail!("attention_maps needs grid features ({} holds pooled ones)", features_path.display())
        }
        (true, Some(grid)) => {
            let ids: Vec<Vec<i64>> = hyps.iter().map(|h| h.tokens.clone()).collect();
            let weights = model.attention_maps(&selected, &ids, settings.batch_size)?;
            let images = images
                .iter()
                .zip(&ids)
                .zip(weights)
                .map(|((image, ids), weights)| ImageAttention {
                    image: image.clone(),
                    words: ids.iter().map(|&id| caption_text(&model.vocab, &[id])).collect(),
                    weights: weights.into_iter().map(|w| w.into_iter().map(round3).collect()).collect(),
                })
                .collect();
            Some(AttentionMaps { grid, images })
        }
    };
    let rows = images
        .into_iter()
        .zip(hyps)
        .map(|(image, h)| GeneratedCaption {
            image,
            caption: caption_text(&model.vocab, &h.tokens),
            log_prob: h.log_prob,
        })
        .collect();
    Ok((rows, maps))
}

/// CIDEr-D's document frequencies over the captions of [`RERANK_IDF_SPLIT`], grouped by
/// image. Words are token ids: CIDEr-D needs only their identity.
fn train_idf(tokens: &TokenTable) -> Result<CorpusIdf> {
    let mut by_image: HashMap<&str, Vec<Vec<String>>> = HashMap::new();
    for ((image, split), ids) in tokens.images.iter().zip(&tokens.splits).zip(&tokens.tokens) {
        if split == RERANK_IDF_SPLIT {
            // startseq … endseq: the words between.
            by_image
                .entry(image)
                .or_default()
                .push(id_words(ids.get(1..ids.len().saturating_sub(1)).unwrap_or(&[])));
        }
    }
    ensure!(
        !by_image.is_empty(),
        "rerank: consensus takes its document frequencies from the `{RERANK_IDF_SPLIT}` captions, and the tokens input has none"
    );
    // Document frequencies are counts, so the images' order does not matter.
    Ok(CorpusIdf::new(&by_image.into_values().collect::<Vec<_>>()))
}

fn id_words(ids: &[i64]) -> Vec<String> {
    ids.iter().map(i64::to_string).collect()
}

/// The seed of consensus re-ranking's samples: fixed, so a stage's output is a function
/// of its inputs and params.
const RERANK_SEED: i64 = 0;

/// The beam's hypothesis (best first) with the highest CIDEr-D against the others and the
/// image's samples.
fn consensus(idf: &CorpusIdf, mut ranked: Vec<Hypothesis>, samples: &[Hypothesis]) -> Hypothesis {
    let candidates: Vec<Vec<String>> = ranked.iter().map(|h| id_words(&h.tokens)).collect();
    let evidence: Vec<Vec<String>> = samples.iter().map(|h| id_words(&h.tokens)).collect();
    ranked.swap_remove(idf.consensus(&candidates, &evidence))
}

/// Three decimals are plenty for a heat map and keep `attention.json` small.
fn round3(x: f32) -> f32 {
    (x * 1000.0).round() / 1000.0
}

/// Options of [`caption_images`] (the `pipe caption IMAGE...` command).
#[derive(Debug, Clone, Default)]
pub struct CaptionImagesOptions {
    pub settings: DecodeSettings,
    pub device: DeviceChoice,
    /// The precision of the features stage whose features the model was trained on.
    pub precision: Precision,
}

/// Captions a few image files: (path, caption, log_prob) per readable file, in order;
/// unreadable files are an error naming them.
pub fn caption_images(
    model_dirs: &[PathBuf],
    vocab_path: &Path,
    backbone_dir: &Path,
    paths: &[PathBuf],
    opts: &CaptionImagesOptions,
) -> Result<Vec<(PathBuf, String, f64)>> {
    let device = opts.device.resolve()?;
    tch::set_num_threads(ThreadPlan::new(0, device).torch as i32);
    let dirs: Vec<&Path> = model_dirs.iter().map(PathBuf::as_path).collect();
    let model = CaptionModel::load_ensemble(&dirs, &artifact(vocab_path, VOCAB_FILE), device)?;
    let backbone = Backbone::load(backbone_dir, opts.device, opts.precision)?;
    let (features, skipped) = backbone.extract_all(paths, &ExtractOptions::default())?;
    if let Some(s) = skipped.first() {
        bail!("{}: {}", paths[s.index].display(), s.reason);
    }
    let values: Vec<f32> = features.into_iter().flatten().flatten().collect();
    let matrix = Tensor::from_slice(&values).view([paths.len() as i64, backbone.row_len() as i64]);
    let captions = model.caption(&matrix, &opts.settings)?;
    Ok(paths.iter().cloned().zip(captions).map(|(p, (c, lp))| (p, c, lp)).collect())
}

#[cfg(test)]
mod tests {
    use super::archive::{part_path, PARTS_DIR};
    use super::*;
    use crate::model::backbone::BackboneSpec;
    use crate::model::train::Silent;
    use crate::train::{run_training, TrainInputs};
    use image::{Rgb, RgbImage};
    use pipe::contract::files::SKIPPED_FILE;
    use pipe::contract::tables::{read_generated_captions, SkippedImage};
    use pipe::stages::caption::DecoderKind;
    use pipe::stages::train::TrainParams;
    use pipe_engine::fsutil::write_json_atomic as write_json;
    use tch::Device;

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
            output: Default::default(),
            grid: None,
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
        // A link inside the folder that leaves it: refused and listed, not read.
        link_outside_the_folder(dir);
    }

    fn link_outside_the_folder(dir: &Path) {
        let outside = dir.parent().unwrap().join("outside.png");
        RgbImage::from_pixel(4, 4, Rgb([1, 2, 3])).save(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, dir.join("even/escape.png")).unwrap();
    }

    /// Writes tiny synthetic training artifacts; returns the inputs, the model dir to train
    /// into and the vocab path.
    fn tiny_inputs(root: &Path) -> (TrainInputs, PathBuf, PathBuf) {
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
            head: None,
        };
        (inputs, model_dir, vocab_path)
    }

    /// Trains a tiny model on synthetic artifacts; returns (model dir, vocab path).
    fn tiny_model(root: &Path) -> (PathBuf, PathBuf) {
        let (inputs, model_dir, vocab_path) = tiny_inputs(root);
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

    /// `head_lr` needs the `head` input and the other way round, and the head must read the
    /// features' cells; each mistake is an error that says what to set.
    #[test]
    fn a_backbone_head_needs_head_lr_and_features_of_its_input_grid() {
        let dir = tempfile::tempdir().unwrap();
        let (mut inputs, model_dir, _) = tiny_inputs(dir.path());
        let train = |inputs: &TrainInputs, head_lr: Option<f64>| {
            let params = TrainParams { epochs: 1, head_lr, device: DeviceChoice::Cpu, ..Default::default() };
            format!("{:#}", run_training(inputs, &params, &model_dir, &mut Silent, &|_| ()).unwrap_err())
        };
        assert!(train(&inputs, Some(1e-4)).contains("there is no `head` input"));
        let head = dir.path().join("head");
        std::fs::create_dir_all(&head).unwrap();
        std::fs::write(head.join("head.json"), r#"{"input": [49, 192], "output": [49, 1280]}"#).unwrap();
        inputs.head = Some(head);
        assert!(train(&inputs, None).contains("`head_lr` is not"));
        let err = train(&inputs, Some(1e-4));
        assert!(err.contains("reads grids of 49 cells × 192") && err.contains("pooled 8-d"), "{err}");
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
    fn consensus_reranking_picks_one_of_the_beams_hypotheses() {
        let dir = tempfile::tempdir().unwrap();
        let (model_dir, vocab) = tiny_model(dir.path());
        let model = CaptionModel::load(&model_dir, &vocab, Device::Cpu).unwrap();
        let (features, tokens) = (dir.path().join("features.arrow"), dir.path().join("tokens.parquet"));
        let settings =
            DecodeSettings { beam_width: 4, batch_size: 3, rerank: Rerank::Consensus, ..Default::default() };
        let rows = caption_split(&model, &features, Some(&tokens), "dev", &settings).unwrap();
        let table = FeatureTable::load(&features).unwrap();
        let index = table.index();
        let picked_rows: Vec<i64> = rows.iter().map(|r| index[r.image.as_str()]).collect();
        let ranked = model
            .decode_ranked(&table.matrix.index_select(0, &Tensor::from_slice(&picked_rows)), &settings)
            .unwrap();
        assert!(ranked.iter().any(|r| r.len() > 1), "the beams offered no choice");
        for (row, ranked) in rows.iter().zip(&ranked) {
            let texts: Vec<String> = ranked.iter().map(|h| caption_text(&model.vocab, &h.tokens)).collect();
            assert!(texts.contains(&row.caption), "{} not among {texts:?}", row.caption);
        }
        let sampled = DecodeSettings { rerank_samples: 3, ..settings };
        let first = caption_split(&model, &features, Some(&tokens), "dev", &sampled).unwrap();
        assert_eq!(first, caption_split(&model, &features, Some(&tokens), "dev", &sampled).unwrap());
        for (row, ranked) in first.iter().zip(&ranked) {
            let texts: Vec<String> = ranked.iter().map(|h| caption_text(&model.vocab, &h.tokens)).collect();
            assert!(texts.contains(&row.caption), "{} not among {texts:?}", row.caption);
        }
        let err = caption_split(&model, &features, None, "dev", &settings).unwrap_err();
        assert!(format!("{err:#}").contains("tokens"), "{err:#}");
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
        let run = |out: &Path, chunks: Chunks| {
            let parts = out.join(PARTS_DIR);
            archive.run(&model, &backbone, &parts, out, chunks, &mut |_, _| Ok(()), &|_| ()).unwrap()
        };
        let (whole, resumed) = (dir.path().join("whole"), dir.path().join("resumed"));
        let full = run(&whole, Chunks::All);
        assert!(full.complete);
        assert_eq!((full.files, full.captioned, full.skipped), (25, 23, 2));
        let first = run(&resumed, Chunks::StopAfter(2));
        assert!(!first.complete && !resumed.join(GENERATED_CAPTIONS_FILE).exists());
        assert!(
            part_path(&resumed.join(PARTS_DIR), 1).exists()
                && !part_path(&resumed.join(PARTS_DIR), 2).exists()
        );
        let second = run(&resumed, Chunks::All);
        assert_eq!(second.resumed_parts, 2);
        let (a, b) = (
            read_generated_captions(&whole.join(GENERATED_CAPTIONS_FILE)).unwrap(),
            read_generated_captions(&resumed.join(GENERATED_CAPTIONS_FILE)).unwrap(),
        );
        assert_eq!(a, b);
        assert_eq!(a.len(), 23);
        assert!(a.iter().any(|r| r.image == "odd/deeper/img01.png"));
        let skipped: Vec<SkippedImage> =
            serde_json::from_str(&std::fs::read_to_string(resumed.join(SKIPPED_FILE)).unwrap()).unwrap();
        assert_eq!(skipped.len(), 2);
        assert_eq!(skipped[0].image, "even/broken.jpg");
        assert_eq!(skipped[1].image, "even/escape.png");
        assert!(skipped[1].reason.contains("links outside the image folder"), "{}", skipped[1].reason);
        assert!(!resumed.join(PARTS_DIR).exists());

        // Three shards (5 chunks: 1, 2 and 2 of them) and then the merging run: the same
        // bytes as the run that did everything itself.
        let sharded = dir.path().join("sharded");
        for index in 0..3 {
            let shard = run(&sharded, Chunks::Shard(pipe_engine::stage::Shard { index, count: 3 }));
            assert!(!shard.complete && !sharded.join(GENERATED_CAPTIONS_FILE).exists());
            assert_eq!(shard.new_parts, [1, 2, 2][index]);
        }
        let merged = run(&sharded, Chunks::All);
        assert_eq!((merged.resumed_parts, merged.new_parts), (5, 0));
        for file in [GENERATED_CAPTIONS_FILE, SKIPPED_FILE] {
            assert!(
                std::fs::read(whole.join(file)).unwrap() == std::fs::read(sharded.join(file)).unwrap(),
                "{file} differs"
            );
        }
    }
}

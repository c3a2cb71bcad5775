//! The compute of the `scst` kind (params, inputs and outputs: `pipe::stages::scst`):
//! loads a trained model and the train and dev references, runs
//! [`crate::model::scst::train_scst`], and writes a model directory like `train`'s.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use tch::{Device, Tensor};

use crate::model::artifact::{save_weights, TrainedModel};
use crate::model::backbone::{ResolveDevice, ThreadPlan};
use crate::model::data::{caption_text, FeatureTable, TokenTable, Vocab};
use crate::model::decode::{greedy, DecodeOptions};
use crate::model::decoder::CaptionDecoder;
use crate::model::scst::{train_scst, ScstImages};
use pipe::contract::files::{
    artifact, FEATURES_FILE, HISTORY_FILE, MODEL_CONFIG_FILE, REFERENCE_CAPTIONS_FILE, TOKENS_FILE,
    VOCAB_FILE,
};
use pipe::data::split::Split;
use pipe::metrics::cider::CiderReward;
use pipe::metrics::{self, CaptionSet, Convention};
use pipe::stages::score::read_references;
use pipe::stages::scst::ScstParams;
use pipe_engine::fsutil::{write_atomic, write_json_atomic};
use pipe_engine::stage::StageContext;

/// Images decoded together when scoring dev.
const DEV_BATCH: usize = 500;

/// Runs an `scst` stage.
pub fn run(ctx: &StageContext) -> Result<()> {
    let params: ScstParams = ctx.params()?;
    let device = params.device.resolve()?;
    tch::set_num_threads(ThreadPlan::new(0, device).torch as i32);
    let model_dir = ctx.input("model")?;
    let config_path = model_dir.join(MODEL_CONFIG_FILE);
    let TrainedModel { mut vs, config, decoder: model, head } =
        crate::model::artifact::load(model_dir, device, params.head_lr.is_some())?;
    if head.is_none() && params.head_lr.is_some() {
        bail!("`head_lr` is set, but the model in {} has no backbone head to train", model_dir.display());
    }
    let vocab_path = artifact(ctx.input("vocab")?, VOCAB_FILE);
    let vocab = Vocab::load(&vocab_path)?;
    anyhow::ensure!(
        vocab.len() as i64 == config.vocab_size(),
        "{} has {} tokens but the model in {} was trained on {}",
        vocab_path.display(),
        vocab.len(),
        model_dir.display(),
        config.vocab_size()
    );
    let features_path = artifact(ctx.input("features")?, FEATURES_FILE);
    let features = FeatureTable::load(&features_path)?;
    let tokens = TokenTable::load(&artifact(ctx.input("tokens")?, TOKENS_FILE))?;
    let references = artifact(ctx.input("references")?, REFERENCE_CAPTIONS_FILE);

    let train = split_references(&params.train_split, &tokens, &references, &features, &features_path)?;
    let dev = split_references(&params.dev_split, &tokens, &references, &features, &features_path)?;
    ctx.log(format!(
        "{} decoder from {}: {} train images ({} samples each, baseline {:?}), {} dev images, on {device:?}",
        config.name(),
        model_dir.display(),
        train.images.len(),
        params.samples,
        params.baseline,
        dev.images.len()
    ));
    let tokenized = metrics::tokenize(&train.caption_sets(), Convention::Coco);
    let reward = CiderReward::new(tokenized.into_iter().map(|set| set.references).collect());

    let f = &vocab.file;
    let decode = DecodeOptions {
        start_id: f.start_id as i64,
        end_id: f.end_id as i64,
        banned: vec![f.pad_id as i64, f.unk_id as i64, f.start_id as i64],
        max_steps: params.max_len.unwrap_or((config.max_len() - 1).max(1) as usize),
        block_repeats: 0,
    };
    let words = |ids: &[i64]| caption_text(&vocab, ids).split_whitespace().map(String::from).collect();
    let matrix = features.matrix.to_device(device);
    let mut dev_score =
        |model: &dyn CaptionDecoder| dev_cider_d(model, &matrix, &dev, &decode, &vocab, device);
    let images = ScstImages { feature_rows: train.feature_rows.clone(), reward: &reward };
    let history = train_scst(
        model.as_ref(),
        &vs,
        &matrix,
        &images,
        &decode,
        &params,
        &words,
        &mut dev_score,
        &|line| ctx.log(line),
    )?;
    let best = history.epochs.iter().find(|e| e.epoch == history.best_epoch);
    ctx.log(match best {
        Some(e) => format!(
            "best epoch {}: dev CIDEr-D {:.4} (from {:.4})",
            e.epoch, e.dev_cider_d, history.start_dev_cider_d
        ),
        None => format!(
            "no epoch beat the starting model (dev CIDEr-D {:.4}): kept it",
            history.start_dev_cider_d
        ),
    });
    save_weights(&mut vs, head.as_deref(), &ctx.out_dir)?;
    // The same decoder and sizes as the model it started from.
    let config_bytes =
        std::fs::read(&config_path).with_context(|| format!("reading {}", config_path.display()))?;
    write_atomic(&ctx.output(MODEL_CONFIG_FILE), &config_bytes)?;
    write_json_atomic(&ctx.output(HISTORY_FILE), &history)?;
    let epochs: Vec<_> = history.epochs.iter().map(|e| (e.epoch, e.seconds, e.dev_seconds)).collect();
    ctx.record_run(&crate::train::epoch_timings(&epochs))
}

/// The images of one split that have features, their feature rows and raw references.
struct SplitImages {
    images: Vec<String>,
    feature_rows: Vec<i64>,
    references: Vec<Vec<String>>,
}

impl SplitImages {
    fn caption_sets(&self) -> Vec<CaptionSet> {
        self.caption_sets_with(&vec![String::new(); self.images.len()])
    }

    fn caption_sets_with(&self, hypotheses: &[String]) -> Vec<CaptionSet> {
        self.images
            .iter()
            .zip(hypotheses)
            .zip(&self.references)
            .map(|((image, hyp), refs)| CaptionSet {
                image: image.clone(),
                hypothesis: hyp.clone(),
                references: refs.clone(),
            })
            .collect()
    }
}

fn split_references(
    split: &str,
    tokens: &TokenTable,
    references: &Path,
    features: &FeatureTable,
    features_path: &Path,
) -> Result<SplitImages> {
    let parsed =
        Split::parse(split).ok_or_else(|| anyhow!("unknown split `{split}` (train, dev, test or none)"))?;
    let by_image: BTreeMap<String, Vec<String>> = read_references(references, parsed)?;
    let index = features.index();
    let mut out = SplitImages { images: vec![], feature_rows: vec![], references: vec![] };
    for image in tokens.split_images(split) {
        let row = *index.get(image.as_str()).ok_or_else(|| {
            anyhow!("image `{image}` ({split}) has no features in {}", features_path.display())
        })?;
        let refs = by_image.get(&image).ok_or_else(|| {
            anyhow!("image `{image}` ({split}) has no reference captions in {}", references.display())
        })?;
        out.images.push(image);
        out.feature_rows.push(row);
        out.references.push(refs.clone());
    }
    anyhow::ensure!(!out.images.is_empty(), "no images in split `{split}`");
    Ok(out)
}

/// Corpus CIDEr-D (coco convention) of `model`'s greedy captions of `split`'s images.
fn dev_cider_d(
    model: &dyn CaptionDecoder,
    features: &Tensor,
    split: &SplitImages,
    decode: &DecodeOptions,
    vocab: &Vocab,
    device: Device,
) -> Result<f64> {
    let mut captions = Vec::with_capacity(split.images.len());
    for rows in split.feature_rows.chunks(DEV_BATCH) {
        let batch = model.features(&features.index_select(0, &Tensor::from_slice(rows).to_device(device)))?;
        captions.extend(greedy(model, &batch, decode)?.into_iter().map(|h| caption_text(vocab, &h.tokens)));
    }
    Ok(metrics::score(&split.caption_sets_with(&captions), Convention::Coco)?.cider_d)
}

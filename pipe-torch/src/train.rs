//! The training behind the `train` kind (params, inputs and outputs: `pipe::stages::train`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use indicatif::ProgressBar;
use tch::{nn, Device, Kind};

use crate::model::artifact::save_weights;
use crate::model::backbone::{ResolveDevice, ThreadPlan};
use crate::model::data::{load_word_vectors, FeatureTable, TokenTable, Vocab};
use crate::model::decoder::{
    AttentionConfig, CaptionDecoder, CnnConfig, DecoderConfig, ModelConfig, TransformerConfig,
};
use crate::model::head::{BackboneHead, HeadConfig, WithHead};
use crate::model::train::{train, EpochRecord, History, TrainMonitor, TrainOptions};
use pipe::contract::files::{
    artifact, FEATURES_FILE, HEAD_CONFIG_FILE, HISTORY_FILE, MODEL_CONFIG_FILE, TOKENS_FILE, VOCAB_FILE,
};
use pipe::stages::train::{
    Decoder, TrainParams, DEFAULT_ALPHA_C, DEFAULT_ATTENTION_DIM, DEFAULT_HEADS, DEFAULT_LAYERS,
};
use pipe_engine::fsutil::write_json_atomic;
use pipe_engine::stage::StageContext;

/// Runs a `train` stage.
pub fn run(ctx: &StageContext) -> Result<()> {
    let params: TrainParams = ctx.params()?;
    let inputs = TrainInputs {
        tokens: artifact(ctx.input("tokens")?, TOKENS_FILE),
        vocab: artifact(ctx.input("vocab")?, VOCAB_FILE),
        features: artifact(ctx.input("features")?, FEATURES_FILE),
        embeddings: ctx
            .optional_input("embeddings")
            .map(Path::to_path_buf)
            .or_else(|| params.glove.as_ref().map(|g| ctx.workspace.join(g))),
        head: ctx.optional_input("head").map(Path::to_path_buf),
    };
    let mut monitor = StageMonitor { ctx, bar: None, max_epochs: params.epochs };
    let history = run_training(&inputs, &params, &ctx.out_dir, &mut monitor, &|line| ctx.log(line))?;
    let best = &history.epochs[history.best_epoch.max(1) - 1];
    ctx.log(format!(
        "best epoch {} of {}: dev loss {}; {:.1} s/epoch",
        history.best_epoch,
        history.epochs.len(),
        best.dev_loss.map_or("-".into(), |l| format!("{l:.4}")),
        mean_seconds(&history)
    ));
    let epochs: Vec<_> = history.epochs.iter().map(|e| (e.epoch, e.seconds, e.dev_seconds)).collect();
    ctx.record_run(&epoch_timings(&epochs))
}

/// A training stage's run record: each epoch's seconds, and their mean.
pub fn epoch_timings(epochs: &[(usize, f64, f64)]) -> serde_json::Value {
    let mean = epochs.iter().map(|e| e.1).sum::<f64>() / epochs.len().max(1) as f64;
    serde_json::json!({
        "mean_epoch_seconds": mean,
        "epochs": epochs
            .iter()
            .map(|&(epoch, seconds, dev_seconds)| {
                serde_json::json!({"epoch": epoch, "seconds": seconds, "dev_seconds": dev_seconds})
            })
            .collect::<Vec<_>>(),
    })
}

/// The optimisation half of the params (whose defaults are the only defaults).
fn options(params: &TrainParams, device: Device) -> TrainOptions {
    TrainOptions {
        lr: params.lr,
        batch_size: params.batch_size,
        max_epochs: params.epochs,
        patience: params.patience,
        lr_factor: params.lr_factor,
        lr_patience: params.lr_patience,
        label_smoothing: params.label_smoothing,
        bucket_batches: params.bucket_batches,
        group_by_image: params.decoder.reads_grid(),
        head_lr: params.head_lr,
        seed: params.seed,
        device,
    }
}

/// Resolved input files of a training run.
pub struct TrainInputs {
    pub tokens: PathBuf,
    pub vocab: PathBuf,
    pub features: PathBuf,
    pub embeddings: Option<PathBuf>,
    /// A trunk backbone's folder, whose `head.pt` is fine-tuned (with `head_lr`).
    pub head: Option<PathBuf>,
}

/// Loads the inputs, trains, and writes the three outputs into `out_dir`.
pub fn run_training(
    inputs: &TrainInputs,
    params: &TrainParams,
    out_dir: &Path,
    monitor: &mut dyn TrainMonitor,
    log: &dyn Fn(String),
) -> Result<History> {
    let device = params.device.resolve()?;
    tch::set_num_threads(ThreadPlan::new(0, device).torch as i32);
    let vocab = Vocab::load(&inputs.vocab)?;
    let features = FeatureTable::load(&inputs.features)?;
    let tokens = TokenTable::load(&inputs.tokens)?;
    let max_len = params.max_len.unwrap_or(vocab.file.max_len).max(2);
    let pad = vocab.file.pad_id as i64;
    let train_set = tokens.caption_set(&params.train_split, &features, max_len, pad)?;
    let dev_set = tokens.caption_set(&params.dev_split, &features, max_len, pad)?;
    if train_set.is_empty() {
        bail!("{}: no captions in split `{}`", inputs.tokens.display(), params.train_split);
    }
    if dev_set.is_empty() {
        log(format!("no `{}` captions: early stopping watches the train loss", params.dev_split));
    }
    let head_dir = match (&inputs.head, params.head_lr) {
        (Some(dir), Some(_)) => Some(dir.as_path()),
        (None, None) => None,
        (Some(dir), None) => bail!("input `head` ({}) is set but `head_lr` is not: set both to fine-tune the backbone head", dir.display()),
        (None, Some(_)) => bail!("`head_lr` is set but there is no `head` input (a backbone folder from `scripts/export_backbone.py --output trunk`)"),
    };
    let head_config = head_dir.map(|dir| HeadConfig::read(&dir.join(HEAD_CONFIG_FILE))).transpose()?;
    let shape = match &head_config {
        None => DecoderInput::of(&features),
        Some(head) => DecoderInput::through(head, &features)
            .with_context(|| format!("features {}", inputs.features.display()))?,
    };
    let cfg = model_config(params, &shape, vocab.len() as i64, max_len as i64, pad)
        .with_context(|| format!("features {}", inputs.features.display()))?;
    log(format!(
        "{} decoder: {} train / {} dev captions, vocabulary {}, features {}{}, on {device:?}",
        cfg.name(),
        train_set.len(),
        dev_set.len(),
        cfg.vocab_size(),
        match features.grid {
            Some([h, w]) => format!("{h}x{w} grid of {}-d cells", features.dim()),
            None => format!("{}-d", features.dim()),
        },
        match (&head_config, params.head_lr) {
            (Some(head), Some(lr)) => format!(" through a backbone head to {}-d (lr {lr:e})", head.output[1]),
            _ => String::new(),
        }
    ));
    tch::manual_seed(params.seed as i64);
    let mut vs = nn::VarStore::new(device);
    let decoder = cfg.build(vs.root());
    if let Some(path) = &inputs.embeddings {
        let hits = set_word_vectors(decoder.as_ref(), path, &vocab, params.freeze_embeddings)?;
        log(format!("{hits} of {} words have pretrained vectors ({})", vocab.len(), path.display()));
    }
    let head = head_dir.map(|dir| BackboneHead::load(dir, &vs, true).map(Arc::new)).transpose()?;
    let model: Box<dyn CaptionDecoder> = match &head {
        Some(head) => Box::new(WithHead { head: head.clone(), decoder }),
        None => decoder,
    };
    let history = train(
        model.as_ref(),
        &vs,
        &features.matrix,
        &train_set,
        &dev_set,
        &options(params, device),
        monitor,
    )?;
    save_model(&mut vs, head.as_deref(), &cfg, &history, out_dir)?;
    Ok(history)
}

/// What the decoder reads per image: the feature table's cells, or the backbone head's.
struct DecoderInput {
    dim: i64,
    cells: i64,
    grid: Option<[i64; 2]>,
}

impl DecoderInput {
    fn of(features: &FeatureTable) -> Self {
        Self { dim: features.dim(), cells: features.cells(), grid: features.grid.map(|g| g.map(i64::from)) }
    }

    /// The head's output, after checking that it reads the table's cells.
    fn through(head: &HeadConfig, features: &FeatureTable) -> Result<Self> {
        let [cells, dim] = head.input;
        if features.grid.is_none() || features.cells() != cells || features.dim() != dim {
            bail!(
                "the backbone head reads grids of {cells} cells × {dim}, but the features are {} \
                 (a features stage on the trunk backbone exported with the head)",
                match features.grid {
                    Some([h, w]) => format!("a {h}x{w} grid of {}-d cells", features.dim()),
                    None => format!("pooled {}-d vectors", features.dim()),
                }
            );
        }
        let [out_cells, out_dim] = head.output;
        // The head keeps the grid when it keeps the number of cells (its blocks do not stride).
        let grid = (out_cells == cells).then(|| features.grid.map(|g| g.map(i64::from))).flatten();
        Ok(Self { dim: out_dim, cells: out_cells, grid })
    }
}

/// The decoder's config from the params and what the inputs hold.
fn model_config(
    params: &TrainParams,
    features: &DecoderInput,
    vocab_size: i64,
    max_len: i64,
    pad_id: i64,
) -> Result<ModelConfig> {
    Ok(match params.decoder {
        Decoder::Merge => ModelConfig::Merge(DecoderConfig {
            vocab_size,
            feature_dim: features.dim,
            embed: params.embed,
            hidden: params.hidden,
            dense: params.dense,
            dropout: params.dropout,
            max_len,
            pad_id,
        }),
        Decoder::Cnn => ModelConfig::Cnn(CnnConfig {
            vocab_size,
            feature_dim: features.dim,
            embed: params.embed,
            filters: params.hidden,
            dense: params.dense,
            dropout: params.dropout,
            max_len,
            pad_id,
        }),
        Decoder::Transformer => ModelConfig::Transformer(TransformerConfig {
            vocab_size,
            feature_dim: features.dim,
            grid: grid_shape(params.decoder, features)?,
            embed: params.embed,
            width: params.hidden,
            heads: params.heads.unwrap_or(DEFAULT_HEADS),
            layers: params.layers.unwrap_or(DEFAULT_LAYERS),
            dropout: params.dropout,
            max_len,
            pad_id,
        }),
        Decoder::Attention => {
            grid_shape(params.decoder, features)?;
            ModelConfig::Attention(AttentionConfig {
                vocab_size,
                feature_dim: features.dim,
                cells: features.cells,
                embed: params.embed,
                hidden: params.hidden,
                attention: params.attention_dim.unwrap_or(DEFAULT_ATTENTION_DIM),
                dropout: params.dropout,
                alpha_c: params.alpha_c.unwrap_or(DEFAULT_ALPHA_C),
                max_len,
                pad_id,
            })
        }
    })
}

/// The grid (rows, columns) of the features a grid decoder reads; an error that says how
/// to get one when they are pooled.
fn grid_shape(decoder: Decoder, features: &DecoderInput) -> Result<[i64; 2]> {
    let Some(grid) = features.grid else {
        bail!(
            "`decoder: {}` needs grid features: set `output: grid` on the features stage \
             (with a backbone exported by `scripts/export_backbone.py --output grid`)",
            serde_json::to_value(decoder)?.as_str().unwrap_or_default()
        );
    };
    Ok(grid)
}

/// Copies pretrained vectors into the embedding; frozen ones get no gradient (Adam skips them).
fn set_word_vectors(model: &dyn CaptionDecoder, path: &Path, vocab: &Vocab, freeze: bool) -> Result<usize> {
    let weights = &model.embedding().ws;
    let (matrix, hits) = load_word_vectors(path, vocab, weights)?;
    tch::no_grad(|| {
        let mut w = weights.shallow_clone();
        w.copy_(&matrix.to_device(w.device()).to_kind(Kind::Float));
    });
    if freeze {
        let _ = weights.set_requires_grad(false);
    }
    Ok(hits)
}

fn save_model(
    vs: &mut nn::VarStore,
    head: Option<&BackboneHead>,
    cfg: &ModelConfig,
    history: &History,
    out_dir: &Path,
) -> Result<()> {
    save_weights(vs, head, out_dir)?;
    let config_path = out_dir.join(MODEL_CONFIG_FILE);
    match cfg {
        // The struct itself, so a merge model.json keeps its field order and bytes.
        ModelConfig::Merge(merge) => write_json_atomic(&config_path, merge)?,
        other => write_json_atomic(&config_path, &other.to_json()?)?,
    }
    write_json_atomic(&out_dir.join(HISTORY_FILE), history)
}

fn mean_seconds(history: &History) -> f64 {
    history.epochs.iter().map(|e| e.seconds).sum::<f64>() / history.epochs.len().max(1) as f64
}

/// A progress bar per epoch and a log line when it ends.
struct StageMonitor<'a> {
    ctx: &'a StageContext,
    bar: Option<ProgressBar>,
    max_epochs: usize,
}

impl TrainMonitor for StageMonitor<'_> {
    fn epoch_start(&mut self, epoch: usize, batches: usize) {
        self.bar = Some(self.ctx.progress_bar(batches as u64, &format!("epoch {epoch}/{}", self.max_epochs)));
    }

    fn batch_done(&mut self) {
        if let Some(bar) = &self.bar {
            bar.inc(1);
        }
    }

    fn epoch_end(&mut self, r: &EpochRecord) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        self.ctx.log(epoch_line(r));
    }
}

/// "epoch 3: train 3.1234, dev 3.4567, lr 1.0e-3, 11.2 s (+0.8 s dev)".
pub fn epoch_line(r: &EpochRecord) -> String {
    let dev = r.dev_loss.map_or("-".to_string(), |l| format!("{l:.4}"));
    format!(
        "epoch {}: train {:.4}, dev {dev}, lr {:.1e}, {:.1} s (+{:.1} s dev)",
        r.epoch, r.train_loss, r.lr, r.seconds, r.dev_seconds
    )
}

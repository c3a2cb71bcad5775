//! `train`: fits the merge decoder on the train split's captions and image features,
//! early-stopping on the dev split, and writes the best epoch's weights.
//!
//! Inputs: `tokens` (tokens.parquet), `vocab` (vocab.json), `features` (features.arrow),
//! optionally `embeddings` (a GloVe/fastText text file, hashed like any input; the
//! `glove` param is the unhashed alternative). Each input may be the file or the
//! upstream stage's whole output directory.
//! Outputs: `model.safetensors`, `model.json` ([`DecoderConfig`]), `history.json`
//! ([`History`], with seconds per epoch: the benchmark figure).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use indicatif::ProgressBar;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tch::{nn, Device, Kind};

use crate::engine::stage::{normalize_typed, parse_params, InputSpec, StageContext, StageKind};
use crate::model::backbone::{DeviceChoice, ThreadPlan};
use crate::model::data::{load_word_vectors, FeatureTable, TokenTable, Vocab};
use crate::model::decoder::{DecoderConfig, MergeDecoder};
use crate::model::train::{train, EpochRecord, History, TrainMonitor, TrainOptions};

pub const WEIGHTS_FILE: &str = "model.safetensors";
pub const CONFIG_FILE: &str = "model.json";
pub const HISTORY_FILE: &str = "history.json";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainParams {
    pub embed: i64,
    pub hidden: i64,
    pub dense: i64,
    pub dropout: f64,
    pub lr: f64,
    pub batch_size: usize,
    /// Most epochs; early stopping usually ends sooner.
    pub epochs: usize,
    /// Epochs without a better dev loss before stopping.
    pub patience: usize,
    /// ReduceLROnPlateau factor (1.0 turns it off) and patience.
    pub lr_factor: f64,
    pub lr_patience: usize,
    pub label_smoothing: f64,
    pub seed: u64,
    pub device: DeviceChoice,
    /// Split names in tokens.parquet.
    pub train_split: String,
    pub dev_split: String,
    /// Captions longer than this (tokens, start and end included) are cut; default
    /// vocab.json's max_len, which is the longest train caption.
    pub max_len: Option<usize>,
    /// Word vectors file, relative to the project root (prefer the `embeddings` input).
    pub glove: Option<String>,
    /// Keep pretrained word vectors fixed during training.
    pub freeze_embeddings: bool,
}

impl Default for TrainParams {
    fn default() -> Self {
        let opts = TrainOptions::default();
        Self {
            embed: 256,
            hidden: 256,
            dense: 128,
            dropout: 0.5,
            lr: opts.lr,
            batch_size: opts.batch_size,
            epochs: opts.max_epochs,
            patience: opts.patience,
            lr_factor: opts.lr_factor,
            lr_patience: opts.lr_patience,
            label_smoothing: 0.0,
            seed: 0,
            device: DeviceChoice::Auto,
            train_split: "train".into(),
            dev_split: "dev".into(),
            max_len: None,
            glove: None,
            freeze_embeddings: false,
        }
    }
}

impl TrainParams {
    fn validate(&self) -> Result<()> {
        for (name, v) in [("embed", self.embed), ("hidden", self.hidden), ("dense", self.dense)] {
            if v <= 0 {
                bail!("{name} must be positive, got {v}");
            }
        }
        if !(0.0..1.0).contains(&self.dropout) {
            bail!("dropout must be in [0, 1), got {}", self.dropout);
        }
        if !(self.lr > 0.0) || self.batch_size == 0 || self.epochs == 0 || self.patience == 0 {
            bail!("lr, batch_size, epochs and patience must be positive");
        }
        if !(self.lr_factor > 0.0 && self.lr_factor <= 1.0) {
            bail!("lr_factor must be in (0, 1], got {}", self.lr_factor);
        }
        if !(0.0..1.0).contains(&self.label_smoothing) {
            bail!("label_smoothing must be in [0, 1), got {}", self.label_smoothing);
        }
        if self.max_len.is_some_and(|n| n < 2) {
            bail!("max_len must be at least 2 (startseq and endseq)");
        }
        Ok(())
    }

    fn options(&self, device: Device) -> TrainOptions {
        TrainOptions {
            lr: self.lr,
            batch_size: self.batch_size,
            max_epochs: self.epochs,
            patience: self.patience,
            lr_factor: self.lr_factor,
            lr_patience: self.lr_patience,
            label_smoothing: self.label_smoothing,
            seed: self.seed,
            device,
        }
    }
}

pub struct Train;

impl StageKind for Train {
    fn name(&self) -> &'static str {
        "train"
    }

    fn version(&self) -> u32 {
        1
    }

    fn normalize_params(&self, params: &Value) -> Result<Value> {
        parse_params::<TrainParams>(params)?.validate()?;
        normalize_typed::<TrainParams>(params)
    }

    fn inputs(&self) -> Option<&'static [InputSpec]> {
        const INPUTS: &[InputSpec] = &[
            InputSpec::required("tokens"),
            InputSpec::required("vocab"),
            InputSpec::required("features"),
            InputSpec::optional("embeddings"),
        ];
        Some(INPUTS)
    }

    fn outputs(&self, _params: &Value) -> Vec<String> {
        [WEIGHTS_FILE, CONFIG_FILE, HISTORY_FILE].map(String::from).to_vec()
    }

    fn run(&self, ctx: &StageContext) -> Result<()> {
        let params: TrainParams = ctx.params()?;
        let inputs = TrainInputs {
            tokens: artifact(ctx.input("tokens")?, "tokens.parquet"),
            vocab: artifact(ctx.input("vocab")?, "vocab.json"),
            features: artifact(ctx.input("features")?, "features.arrow"),
            embeddings: ctx
                .optional_input("embeddings")
                .map(Path::to_path_buf)
                .or_else(|| params.glove.as_ref().map(|g| ctx.workspace.join(g))),
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
        Ok(())
    }
}

/// Resolved input files of a training run.
pub struct TrainInputs {
    pub tokens: PathBuf,
    pub vocab: PathBuf,
    pub features: PathBuf,
    pub embeddings: Option<PathBuf>,
}

/// An input given as the upstream stage's directory means the conventional file inside it.
pub fn artifact(path: &Path, file_name: &str) -> PathBuf {
    if path.is_dir() {
        path.join(file_name)
    } else {
        path.to_path_buf()
    }
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
    let cfg = DecoderConfig {
        vocab_size: vocab.len() as i64,
        feature_dim: features.dim(),
        embed: params.embed,
        hidden: params.hidden,
        dense: params.dense,
        dropout: params.dropout,
        max_len: max_len as i64,
        pad_id: pad,
    };
    log(format!(
        "{} train / {} dev captions, vocabulary {}, features {}-d, on {device:?}",
        train_set.len(),
        dev_set.len(),
        cfg.vocab_size,
        cfg.feature_dim
    ));
    tch::manual_seed(params.seed as i64);
    let mut vs = nn::VarStore::new(device);
    let model = MergeDecoder::new(&cfg, vs.root());
    if let Some(path) = &inputs.embeddings {
        let hits = set_word_vectors(&model, path, &vocab, params.freeze_embeddings)?;
        log(format!("{hits} of {} words have pretrained vectors ({})", vocab.len(), path.display()));
    }
    let history =
        train(&model, &vs, &features.matrix, &train_set, &dev_set, &params.options(device), monitor)?;
    save_model(&mut vs, &cfg, &history, out_dir)?;
    Ok(history)
}

/// Copies pretrained vectors into the embedding; frozen ones get no gradient (Adam skips them).
fn set_word_vectors(model: &MergeDecoder, path: &Path, vocab: &Vocab, freeze: bool) -> Result<usize> {
    let weights = &model.embed.ws;
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

fn save_model(vs: &mut nn::VarStore, cfg: &DecoderConfig, history: &History, out_dir: &Path) -> Result<()> {
    vs.set_device(Device::Cpu);
    let weights = out_dir.join(WEIGHTS_FILE);
    vs.save(&weights).with_context(|| format!("writing {}", weights.display()))?;
    write_json(&out_dir.join(CONFIG_FILE), cfg)?;
    write_json(&out_dir.join(HISTORY_FILE), history)
}

pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(value)?;
    std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))
}

pub fn mean_seconds(history: &History) -> f64 {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_have_defaults_and_reject_unknown_keys() {
        let v = Train.normalize_params(&serde_json::json!({"epochs": 5})).unwrap();
        assert_eq!(v["epochs"], 5);
        assert_eq!(v["embed"], 256);
        assert_eq!(v["device"], "auto");
        assert!(Train.normalize_params(&serde_json::json!({"epoch": 5})).is_err());
        assert!(Train.normalize_params(&serde_json::json!({"dropout": 1.5})).is_err());
    }
}

//! A trained decoder with its vocabulary, and how to decode with it.

use std::path::Path;

use anyhow::{bail, Context, Result};
use tch::{nn, Device, Tensor};

use crate::model::data::{caption_text, Vocab};
use crate::model::decode::{beam_search, greedy, DecodeOptions, Hypothesis};
use crate::model::decoder::{DecoderConfig, MergeDecoder};
use pipe::contract::files::{MODEL_CONFIG_FILE, WEIGHTS_FILE};
use pipe::stages::caption::{CaptionParams, DecoderKind};

/// How to decode, independent of where the features come from: the decoding half of
/// the caption kind's params.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DecodeSettings {
    pub decoder: DecoderKind,
    pub beam_width: usize,
    pub length_norm: bool,
    pub max_len: Option<usize>,
    pub block_repeats: usize,
    pub batch_size: usize,
}

impl From<&CaptionParams> for DecodeSettings {
    fn from(params: &CaptionParams) -> Self {
        Self {
            decoder: params.decoder,
            beam_width: params.beam_width,
            length_norm: params.length_norm,
            max_len: params.max_len,
            block_repeats: params.block_repeats,
            batch_size: params.batch_size,
        }
    }
}

impl Default for DecodeSettings {
    fn default() -> Self {
        Self::from(&CaptionParams::default())
    }
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
        let config_path = model_dir.join(MODEL_CONFIG_FILE);
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

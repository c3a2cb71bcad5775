//! A trained decoder with its vocabulary, and how to decode with it.

use std::path::Path;

use anyhow::{bail, Context, Result};
use tch::{nn, Device, Kind, Tensor};

use crate::model::artifact;
use crate::model::data::{caption_text, Vocab};
use crate::model::decode::{beam_search, beam_search_ranked, greedy, sample_from, DecodeOptions, Hypothesis};
use crate::model::decoder::{Ensemble, ModelConfig, StepDecoder};
use pipe::stages::caption::{CaptionParams, DecoderKind, Rerank};

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
    /// Split mode: how the caption is picked from the beam (see [`crate::caption::caption_split`]).
    pub rerank: Rerank,
    /// Samples per image that consensus re-ranking also compares with.
    pub rerank_samples: usize,
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
            rerank: params.rerank,
            rerank_samples: params.rerank_samples,
        }
    }
}

impl Default for DecodeSettings {
    fn default() -> Self {
        Self::from(&CaptionParams::default())
    }
}

/// A trained decoder (or an ensemble of them) with its vocabulary, ready to caption features.
pub struct CaptionModel {
    /// The members' weights, which `decoder` uses.
    _weights: Vec<nn::VarStore>,
    pub configs: Vec<ModelConfig>,
    pub decoder: Box<dyn StepDecoder>,
    pub vocab: Vocab,
    device: Device,
}

impl CaptionModel {
    /// Loads the model in `model_dir` (see [`artifact`]) and the vocabulary onto `device`.
    pub fn load(model_dir: &Path, vocab_path: &Path, device: Device) -> Result<Self> {
        Self::load_ensemble(&[model_dir], vocab_path, device)
    }

    /// Loads one model, or several that decode as an [`Ensemble`] (their next-word
    /// log-probabilities averaged), all trained on the vocabulary at `vocab_path`.
    pub fn load_ensemble(model_dirs: &[&Path], vocab_path: &Path, device: Device) -> Result<Self> {
        let vocab = Vocab::load(vocab_path)?;
        let (mut weights, mut configs, mut members) =
            (Vec::new(), Vec::new(), Vec::<Box<dyn StepDecoder>>::new());
        for dir in model_dirs {
            let model = artifact::load(dir, device, false)?;
            let config = model.config;
            if vocab.len() as i64 != config.vocab_size() {
                bail!(
                    "{} has {} tokens but the model in {} was trained on {}",
                    vocab_path.display(),
                    vocab.len(),
                    dir.display(),
                    config.vocab_size()
                );
            }
            members.push(model.decoder);
            weights.push(model.vs);
            configs.push(config);
        }
        let decoder: Box<dyn StepDecoder> = match members.len() {
            1 => members.pop().expect("one member"),
            _ => Box::new(Ensemble::new(members)?),
        };
        Ok(Self { _weights: weights, configs, decoder, vocab, device })
    }

    pub fn device(&self) -> Device {
        self.device
    }

    fn options(&self, settings: &DecodeSettings) -> DecodeOptions {
        let f = &self.vocab.file;
        let default_steps = (self.decoder.max_len() - 1).max(1) as usize;
        DecodeOptions {
            start_id: f.start_id as i64,
            end_id: f.end_id as i64,
            banned: vec![f.pad_id as i64, f.unk_id as i64, f.start_id as i64],
            max_steps: settings.max_len.unwrap_or(default_steps),
            block_repeats: settings.block_repeats,
        }
    }

    /// Captions for feature rows (N, F) (a feature table's or a backbone's), decoded
    /// `settings.batch_size` images at a time.
    pub fn caption(&self, features: &Tensor, settings: &DecodeSettings) -> Result<Vec<(String, f64)>> {
        Ok(self
            .decode(features, settings)?
            .into_iter()
            .map(|h| (caption_text(&self.vocab, &h.tokens), h.log_prob))
            .collect())
    }

    /// [`Self::caption`] as word ids.
    pub fn decode(&self, features: &Tensor, settings: &DecodeSettings) -> Result<Vec<Hypothesis>> {
        self.decode_batches(features, settings, |decoder, batch, opts| match settings.decoder {
            DecoderKind::Greedy => greedy(decoder, batch, opts),
            DecoderKind::Beam => beam_search(decoder, batch, opts, settings.beam_width, settings.length_norm),
        })
    }

    /// Every hypothesis of each image's beam, best first (one, greedily).
    pub fn decode_ranked(
        &self,
        features: &Tensor,
        settings: &DecodeSettings,
    ) -> Result<Vec<Vec<Hypothesis>>> {
        self.decode_batches(features, settings, |decoder, batch, opts| match settings.decoder {
            DecoderKind::Greedy => Ok(greedy(decoder, batch, opts)?.into_iter().map(|h| vec![h]).collect()),
            DecoderKind::Beam => {
                beam_search_ranked(decoder, batch, opts, settings.beam_width, settings.length_norm)
            }
        })
    }

    /// `per_image` captions sampled from the model for each row of `features`, from torch's
    /// generator seeded with `seed` (so the same call gives the same samples).
    pub fn sample(
        &self,
        features: &Tensor,
        settings: &DecodeSettings,
        per_image: usize,
        seed: i64,
    ) -> Result<Vec<Vec<Hypothesis>>> {
        tch::manual_seed(seed);
        self.decode_batches(features, settings, |decoder, batch, opts| {
            // Each image encoded once, its start state repeated per sample (as scst does).
            let images = batch.size()[0];
            let repeat = Tensor::arange(images, (Kind::Int64, batch.device())).repeat_interleave_self_int(
                per_image as i64,
                Some(0),
                None,
            );
            let started = tch::no_grad(|| decoder.start(batch).select(&repeat));
            let samples = sample_from(decoder, started, images as usize * per_image, batch.device(), opts)?;
            Ok(samples
                .chunks(per_image.max(1))
                .map(|chunk| chunk.iter().map(|(h, _)| h.clone()).collect())
                .collect())
        })
    }

    /// Runs `decode` over `settings.batch_size` images at a time.
    fn decode_batches<T>(
        &self,
        features: &Tensor,
        settings: &DecodeSettings,
        decode: impl Fn(&dyn StepDecoder, &Tensor, &DecodeOptions) -> Result<Vec<T>>,
    ) -> Result<Vec<T>> {
        let opts = self.options(settings);
        let n = features.size()[0];
        let mut out = Vec::with_capacity(n as usize);
        for start in (0..n).step_by(settings.batch_size.max(1)) {
            let rows = features.narrow(0, start, (settings.batch_size as i64).min(n - start));
            let batch = self.decoder.features(&rows.to_device(self.device()))?;
            out.extend(decode(self.decoder.as_ref(), &batch, &opts)?);
        }
        Ok(out)
    }

    /// Where the model looked while writing each word of `captions` (word ids, as
    /// [`Self::decode`] gives them) for feature rows (N, F): per image, one weight list per
    /// word over the grid cells. An error for models that do not attend over a grid.
    pub fn attention_maps(
        &self,
        features: &Tensor,
        captions: &[Vec<i64>],
        batch_size: usize,
    ) -> Result<Vec<Vec<Vec<f32>>>> {
        let start_id = self.vocab.file.start_id as i64;
        let mut out = Vec::with_capacity(captions.len());
        for (chunk, first) in captions.chunks(batch_size.max(1)).zip((0..).step_by(batch_size.max(1))) {
            let width = chunk.iter().map(Vec::len).max().unwrap_or(0).max(1);
            // Step t reads startseq w1 … w_t and writes w_{t+1}: the inputs end one word early.
            let mut inputs = Vec::with_capacity(chunk.len() * width);
            for words in chunk {
                let mut row = vec![start_id];
                row.extend(words.iter().take(words.len().saturating_sub(1)));
                row.resize(width, start_id);
                inputs.extend(row);
            }
            let rows = features.narrow(0, first as i64, chunk.len() as i64).to_device(self.device());
            let inputs =
                Tensor::from_slice(&inputs).view([chunk.len() as i64, width as i64]).to_device(self.device());
            let alpha = self.decoder.attention(&self.decoder.features(&rows)?, &inputs).context(
                "attention_maps needs a model that attends over a feature grid (decoder: attention or transformer)",
            )?;
            let cells = alpha.size()[2] as usize;
            let values = Vec::<f32>::try_from(alpha.to_device(Device::Cpu).reshape([-1]))?;
            for (i, words) in chunk.iter().enumerate() {
                let at = |t: usize| (i * width + t) * cells;
                out.push((0..words.len()).map(|t| values[at(t)..at(t) + cells].to_vec()).collect());
            }
        }
        Ok(out)
    }
}

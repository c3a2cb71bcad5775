//! The "CNN" caption decoder of popular Flask captioning apps (their Flickr30k model), for
//! comparison: a 1-D convolution over the embedded word prefix, max-pooled over the
//! prefix, merged with the pooled image vector.
//!
//! ```text
//! words (B, T) ─ emb (E) ─ Conv1d(F filters, width 3; causal: two zero steps before) ─ relu
//!   ─ running max over the prefix → p (B, T, F)        global max pooling of each prefix
//! [p_t, features (B, D)] ─ Dense(dense) ─ relu ─ dropout ─ Dense(V) → logits at t
//! ```
//!
//! F is the `hidden` param (512 in the apps), `dense` the Dense width (512 there). The
//! Dense layer over the concatenation is split into its word and image halves, so the
//! image half is computed once per image. Decoding keeps the last two embedded words and
//! the running max, so a step is one window of the convolution.

use anyhow::Result;
use serde::{Deserialize, Serialize};
use tch::{nn, Kind, Tensor};

use super::{pooled_features, torch_linear, CaptionDecoder, DecodeState, StepDecoder};

/// The convolution's width in words.
const WINDOW: i64 = 3;

/// CNN decoder hyper-parameters; saved in `model.json` (tagged `"decoder": "cnn"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CnnConfig {
    pub vocab_size: i64,
    /// Width of one pooled image feature vector.
    pub feature_dim: i64,
    /// Word embedding width E.
    pub embed: i64,
    /// Convolution filters F.
    pub filters: i64,
    /// Width of the Dense layer after the merge.
    pub dense: i64,
    pub dropout: f64,
    pub max_len: i64,
    pub pad_id: i64,
}

/// The CNN decoder (see the module doc for the maths).
#[derive(Debug)]
pub struct CnnDecoder {
    pub cfg: CnnConfig,
    embed: nn::Embedding,
    conv: nn::Conv1D,
    dense_words: nn::Linear,
    dense_image: nn::Linear,
    out: nn::Linear,
}

impl CnnDecoder {
    pub fn new(cfg: &CnnConfig, vs: nn::Path) -> Self {
        let embed_cfg = nn::EmbeddingConfig { padding_idx: cfg.pad_id, ..Default::default() };
        let embed = nn::embedding(&vs / "embed", cfg.vocab_size, cfg.embed, embed_cfg);
        let _ = tch::no_grad(|| embed.ws.get(cfg.pad_id).zero_());
        let bound = 1.0 / ((cfg.embed * WINDOW) as f64).sqrt();
        let init = nn::Init::Uniform { lo: -bound, up: bound };
        let conv_cfg = nn::ConvConfig { ws_init: init, bs_init: init, ..Default::default() };
        let image_bound = 1.0 / ((cfg.filters + cfg.feature_dim) as f64).sqrt();
        let image_init = nn::Init::Uniform { lo: -image_bound, up: image_bound };
        Self {
            cfg: cfg.clone(),
            embed,
            conv: nn::conv1d(&vs / "conv", cfg.embed, cfg.filters, WINDOW, conv_cfg),
            dense_words: torch_linear(&vs / "dense_words", cfg.filters, cfg.dense),
            dense_image: nn::linear(
                &vs / "dense_image",
                cfg.feature_dim,
                cfg.dense,
                nn::LinearConfig { ws_init: image_init, bs_init: None, bias: false },
            ),
            out: torch_linear(&vs / "out", cfg.dense, cfg.vocab_size),
        }
    }

    /// Max-pooled convolution of every prefix of inputs (B, T): p (B, T, F).
    fn pooled_prefixes(&self, inputs: &Tensor) -> Tensor {
        let e = inputs.apply(&self.embed).transpose(1, 2).constant_pad_nd([WINDOW - 1, 0]);
        let windows = e.conv1d(&self.conv.ws, self.conv.bs.as_ref(), [1], [0], [1], 1).relu();
        windows.cummax(2).0.transpose(1, 2)
    }

    /// The output head: pooled prefixes (N, F) and image halves (N, dense) → logits (N, V).
    fn head(&self, pooled: &Tensor, image: &Tensor, train: bool) -> Tensor {
        (pooled.apply(&self.dense_words) + image).relu().dropout(self.cfg.dropout, train).apply(&self.out)
    }
}

impl StepDecoder for CnnDecoder {
    fn vocab_size(&self) -> i64 {
        self.cfg.vocab_size
    }

    fn max_len(&self) -> i64 {
        self.cfg.max_len
    }

    /// Pooled rows as they are; grid rows (L·D wide) averaged over their cells.
    fn features(&self, rows: &Tensor) -> Result<Tensor> {
        pooled_features(rows, self.cfg.feature_dim)
    }

    /// State: the image half (R, dense), the last two embedded words (R, E, 2) (zeros at
    /// the start, as the causal padding), and the running max (R, F) (zeros: every window
    /// is relu'd, so the max of a prefix is never below zero).
    fn start(&self, features: &Tensor) -> DecodeState {
        let rows = features.size()[0];
        let options = (Kind::Float, features.device());
        DecodeState::of_rows(vec![
            features.apply(&self.dense_image),
            Tensor::zeros([rows, self.cfg.embed, WINDOW - 1], options),
            Tensor::zeros([rows, self.cfg.filters], options),
        ])
    }

    fn step(&self, tokens: &Tensor, state: &DecodeState) -> (Tensor, DecodeState) {
        let [image, recent, pooled] = &state.rows[..] else {
            panic!("a cnn decoder state has three tensors")
        };
        let window = Tensor::cat(&[recent, &tokens.apply(&self.embed).unsqueeze(2)], 2); // (R, E, 3)
        let rows = window.size()[0];
        let filters = self.cfg.filters;
        let conv =
            window.reshape([rows, -1]).linear(&self.conv.ws.reshape([filters, -1]), self.conv.bs.as_ref());
        let pooled = pooled.maximum(&conv.relu());
        let lp = self.head(&pooled, image, false).log_softmax(-1, Kind::Float);
        let recent = window.narrow(2, 1, WINDOW - 1);
        (lp, DecodeState::of_rows(vec![image.shallow_clone(), recent, pooled]))
    }
}

impl CaptionDecoder for CnnDecoder {
    fn embedding(&self) -> &nn::Embedding {
        &self.embed
    }

    fn target_logits(
        &self,
        images: &Tensor,
        image_of: &Tensor,
        inputs: &Tensor,
        positions: &Tensor,
        rows: &Tensor,
        train: bool,
    ) -> (Tensor, Option<Tensor>) {
        let image =
            images.dropout(self.cfg.dropout, train).apply(&self.dense_image).index_select(0, image_of);
        let pooled = self.pooled_prefixes(inputs).reshape([-1, self.cfg.filters]).index_select(0, positions);
        (self.head(&pooled, &image.index_select(0, rows), train), None)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use tch::Device;

    pub(crate) fn tiny() -> CnnConfig {
        CnnConfig {
            vocab_size: 11,
            feature_dim: 6,
            embed: 8,
            filters: 10,
            dense: 9,
            dropout: 0.5,
            max_len: 7,
            pad_id: 0,
        }
    }

    #[test]
    fn shapes_and_stepwise_decoding_match_teacher_forcing() {
        let _rng = crate::model::train::torch_rng_lock();
        tch::manual_seed(6);
        let vs = nn::VarStore::new(Device::Cpu);
        let dec = CnnDecoder::new(&tiny(), vs.root());
        let feats = dec.features(&Tensor::randn([2, 6], (Kind::Float, Device::Cpu))).unwrap();
        let grid = dec.features(&Tensor::randn([2, 24], (Kind::Float, Device::Cpu))).unwrap();
        assert_eq!(grid.size(), [2, 6], "a grid's cells are averaged");
        let inputs = Tensor::from_slice(&[2i64, 4, 5, 6, 2, 6, 7, 7]).view([2, 4]);
        assert!(super::super::tests::assert_steps_match_teacher_forcing(&dec, &feats, &inputs).is_none());
    }
}

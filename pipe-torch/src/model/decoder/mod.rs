//! Caption decoders behind one small trait: training asks for the logits of the real
//! target tokens of a teacher-forced batch, decoding asks for one step at a time.
//!
//! | decoder | features | module |
//! |---|---|---|
//! | `merge` | pooled (B, D) | [`merge::MergeDecoder`], the 2017 tutorial model and the peer's |
//! | `attention` | grid (B, L·D) | [`attention::AttentionDecoder`], Show, Attend and Tell |
//! | `transformer` | grid (B, L·D) | [`transformer::TransformerDecoder`], pre-norm, cross-attention to the cells |
//! | `cnn` | pooled (B, D) | [`cnn::CnnDecoder`], the Flask apps' 1-D convolution over the prefix |
//!
//! `model.json` holds the config: a merge config as it always was (no tag, so older
//! models still load), the others tagged with `"decoder": "<name>"`.

pub mod attention;
pub mod cnn;
pub mod ensemble;
pub mod merge;
pub mod transformer;

use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use serde::Serialize;
use serde_json::Value;
use tch::{nn, Kind, Tensor};

pub use attention::{AttentionConfig, AttentionDecoder};
pub use cnn::{CnnConfig, CnnDecoder};
pub use ensemble::Ensemble;
pub use merge::{DecoderConfig, MergeDecoder};
pub use transformer::{TransformerConfig, TransformerDecoder};

/// What decoding needs: a model (or an ensemble of them) that scores the next word.
pub trait StepDecoder {
    fn vocab_size(&self) -> i64;
    /// Longest token sequence seen in training, start and end included.
    fn max_len(&self) -> i64;
    /// Feature-table rows (B, F), Float or Half, as this decoder reads them (Float,
    /// pooled or a grid as the decoder needs).
    fn features(&self, rows: &Tensor) -> Result<Tensor>;
    /// Starts decoding features (B, …) from [`Self::features`].
    fn start(&self, features: &Tensor) -> DecodeState;
    /// One step in eval mode: tokens (R,) → log-probs (R, V) and the next state.
    fn step(&self, tokens: &Tensor, state: &DecodeState) -> (Tensor, DecodeState);
    /// For decoders that attend over a grid: the attention weights (B, T, L) of each step
    /// of a teacher-forced pass over inputs (B, T) (startseq w1 …). None for the others.
    fn attention(&self, _features: &Tensor, _inputs: &Tensor) -> Option<Tensor> {
        None
    }
}

/// What training needs on top: a decoder with weights of its own.
pub trait CaptionDecoder: StepDecoder {
    /// The word embedding (pretrained word vectors are copied into it).
    fn embedding(&self) -> &nn::Embedding;
    /// Teacher-forced pass over a batch of B captions of U distinct images: `images`
    /// (U, …) from [`StepDecoder::features`], `image_of` (B,) each caption's image among
    /// them, inputs (B, T) = startseq w1 … (padded). Returns the logits (P, V) at
    /// `positions` (flat row·T + t, each predicting inputs[row, t+1] or endseq; `rows` is
    /// each one's batch row) and an extra loss term the decoder adds in training (None
    /// when it has none).
    fn target_logits(
        &self,
        images: &Tensor,
        image_of: &Tensor,
        inputs: &Tensor,
        positions: &Tensor,
        rows: &Tensor,
        train: bool,
    ) -> (Tensor, Option<Tensor>);
}

/// A decoder's state between steps. Every tensor of `rows` has one row per live
/// hypothesis on dimension 0, so beam search can keep, drop and copy rows without knowing
/// what they hold; `shared` holds what the decoder computed once per decode for all rows
/// (e.g. a lookup table), which selecting rows leaves as it is.
pub struct DecodeState {
    pub rows: Vec<Tensor>,
    pub shared: Vec<Tensor>,
}

impl DecodeState {
    /// A state of per-row tensors only.
    pub fn of_rows(rows: Vec<Tensor>) -> Self {
        Self { rows, shared: Vec::new() }
    }

    /// Keeps rows `index` (int64, on the state's device), in that order.
    pub fn select(&self, index: &Tensor) -> Self {
        Self {
            rows: self.rows.iter().map(|t| t.index_select(0, index)).collect(),
            shared: self.shared.iter().map(Tensor::shallow_clone).collect(),
        }
    }
}

/// `model.json`: which decoder, with its sizes.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelConfig {
    Merge(DecoderConfig),
    Attention(AttentionConfig),
    Transformer(TransformerConfig),
    Cnn(CnnConfig),
}

/// The `decoder` tag of a tagged `model.json`.
const TAG: &str = "decoder";

impl ModelConfig {
    /// The decoder's name, as the train kind's `decoder` param spells it.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Merge(_) => "merge",
            Self::Attention(_) => "attention",
            Self::Transformer(_) => "transformer",
            Self::Cnn(_) => "cnn",
        }
    }

    /// Whether the decoder attends over grid cells (and so can show where it looked).
    pub fn attends(&self) -> bool {
        matches!(self, Self::Attention(_) | Self::Transformer(_))
    }

    pub fn vocab_size(&self) -> i64 {
        match self {
            Self::Merge(c) => c.vocab_size,
            Self::Attention(c) => c.vocab_size,
            Self::Transformer(c) => c.vocab_size,
            Self::Cnn(c) => c.vocab_size,
        }
    }

    pub fn max_len(&self) -> i64 {
        match self {
            Self::Merge(c) => c.max_len,
            Self::Attention(c) => c.max_len,
            Self::Transformer(c) => c.max_len,
            Self::Cnn(c) => c.max_len,
        }
    }

    /// Builds the decoder's variables under `vs`.
    pub fn build(&self, vs: nn::Path) -> Box<dyn CaptionDecoder> {
        match self {
            Self::Merge(c) => Box::new(MergeDecoder::new(c, vs)),
            Self::Attention(c) => Box::new(AttentionDecoder::new(c, vs)),
            Self::Transformer(c) => Box::new(TransformerDecoder::new(c, vs)),
            Self::Cnn(c) => Box::new(CnnDecoder::new(c, vs)),
        }
    }

    pub fn to_json(&self) -> Result<Value> {
        Ok(match self {
            Self::Merge(c) => serde_json::to_value(c)?,
            Self::Attention(c) => tagged(self.name(), c)?,
            Self::Transformer(c) => tagged(self.name(), c)?,
            Self::Cnn(c) => tagged(self.name(), c)?,
        })
    }

    pub fn from_json(value: &Value) -> Result<Self> {
        let mut value = value.clone();
        let tag = value.as_object_mut().and_then(|m| m.remove(TAG));
        Ok(match tag.as_ref().map(|t| t.as_str().unwrap_or_default()) {
            None | Some("merge") => Self::Merge(serde_json::from_value(value)?),
            Some("attention") => Self::Attention(serde_json::from_value(value)?),
            Some("transformer") => {
                let config: TransformerConfig = serde_json::from_value(value)?;
                config.validate()?;
                Self::Transformer(config)
            }
            Some("cnn") => Self::Cnn(serde_json::from_value(value)?),
            Some(other) => bail!("unknown decoder `{other}` (expected merge, attention, transformer or cnn)"),
        })
    }

    /// Reads `model.json`.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let value: Value =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        Self::from_json(&value).with_context(|| format!("{}", path.display()))
    }
}

/// `{"decoder": name, ...config}`.
fn tagged(name: &str, config: &impl Serialize) -> Result<Value> {
    let mut map = serde_json::Map::new();
    map.insert(TAG.into(), Value::from(name));
    if let Value::Object(fields) = serde_json::to_value(config)? {
        map.extend(fields);
    }
    Ok(Value::Object(map))
}

/// Pooled rows (B, D) as they are, grid rows (B, L·D) averaged over their cells: (B, D) Float.
pub(crate) fn pooled_features(rows: &Tensor, dim: i64) -> Result<Tensor> {
    let (n, width) = (rows.size()[0], rows.size()[1]);
    ensure!(
        width % dim == 0,
        "features are {width} wide, but the model reads {dim}-d vectors (or grids of them)"
    );
    let rows = rows.to_kind(Kind::Float);
    Ok(if width == dim { rows } else { rows.view([n, width / dim, dim]).mean_dim(1, false, Kind::Float) })
}

/// Grid rows (B, L·D) → (B, L, D) Float, for the `decoder` that reads `cells` cells of `dim`.
pub(crate) fn grid_features(rows: &Tensor, cells: i64, dim: i64, decoder: &str) -> Result<Tensor> {
    let (n, width) = (rows.size()[0], rows.size()[1]);
    ensure!(
        width == cells * dim,
        "features are {width} wide, but the {decoder} model reads grids of {cells} cells × {dim} \
         (a features stage with `output: grid` and the backbone it was trained with)"
    );
    Ok(rows.to_kind(Kind::Float).view([n, cells, dim]))
}

/// A Dense layer initialised like PyTorch's `nn.Linear`: weights and bias U(±1/√fan_in).
pub(crate) fn torch_linear(vs: nn::Path, fan_in: i64, fan_out: i64) -> nn::Linear {
    let bound = 1.0 / (fan_in as f64).sqrt();
    let init = nn::Init::Uniform { lo: -bound, up: bound };
    nn::linear(vs, fan_in, fan_out, nn::LinearConfig { ws_init: init, bs_init: Some(init), bias: true })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use tch::Device;

    /// Teacher forcing over inputs (B, T), one caption per image, and step-by-step decoding
    /// from the start state give the same log-probabilities at every step. Returns the
    /// teacher-forced pass's extra loss term.
    pub(crate) fn assert_steps_match_teacher_forcing(
        dec: &dyn CaptionDecoder,
        features: &Tensor,
        inputs: &Tensor,
    ) -> Option<Tensor> {
        let (batch, steps, vocab) = (inputs.size()[0], inputs.size()[1], dec.vocab_size());
        let all = Tensor::arange(batch * steps, (Kind::Int64, Device::Cpu));
        let rows: Vec<i64> = (0..batch).flat_map(|row| std::iter::repeat_n(row, steps as usize)).collect();
        let image_of = Tensor::arange(batch, (Kind::Int64, Device::Cpu));
        let (logits, extra) =
            dec.target_logits(features, &image_of, inputs, &all, &Tensor::from_slice(&rows), false);
        assert_eq!(logits.size(), [batch * steps, vocab]);
        let full = logits.log_softmax(-1, Kind::Float).view([batch, steps, vocab]);
        let mut state = dec.start(features);
        for t in 0..steps {
            let (lp, next) = dec.step(&inputs.select(1, t), &state);
            assert!(lp.allclose(&full.select(1, t), 1e-5, 1e-5, false), "step {t}");
            state = next;
        }
        extra
    }

    /// For a decoder over grids of 4 cells of 6 values: features read Half rows as grids
    /// and refuse a wrong width; steps match teacher forcing; the attention maps (one per
    /// step, over the 4 cells) sum to 1. Returns the features, the inputs and the extra
    /// loss term.
    pub(crate) fn check_grid_decoder(dec: &dyn CaptionDecoder) -> (Tensor, Tensor, Option<Tensor>) {
        let rows = Tensor::randn([2, 24], (Kind::Float, Device::Cpu)).to_kind(Kind::Half);
        let feats = dec.features(&rows).unwrap();
        assert_eq!(feats.size(), [2, 4, 6]);
        assert!(dec.features(&Tensor::zeros([2, 23], (Kind::Float, Device::Cpu))).is_err());
        let inputs = Tensor::from_slice(&[2i64, 4, 5, 2, 6, 7]).view([2, 3]);
        let extra = assert_steps_match_teacher_forcing(dec, &feats, &inputs);
        let alpha = dec.attention(&feats, &inputs).unwrap();
        assert_eq!(alpha.size(), [2, 3, 4]);
        let sums = alpha.sum_dim_intlist(2, false, Kind::Float);
        assert!(sums.allclose(&Tensor::ones([2, 3], (Kind::Float, Device::Cpu)), 1e-5, 1e-5, false));
        (feats, inputs, extra)
    }

    #[test]
    fn merge_configs_stay_untagged_and_others_are_tagged() {
        let merge = ModelConfig::Merge(merge::tests::tiny());
        let json = merge.to_json().unwrap();
        assert!(json.get(TAG).is_none());
        assert_eq!(ModelConfig::from_json(&json).unwrap(), merge);
        let attention = ModelConfig::Attention(attention::tests::tiny());
        let json = attention.to_json().unwrap();
        assert_eq!(json[TAG], "attention");
        assert_eq!(ModelConfig::from_json(&json).unwrap(), attention);
        for config in
            [ModelConfig::Transformer(transformer::tests::tiny()), ModelConfig::Cnn(cnn::tests::tiny())]
        {
            let json = config.to_json().unwrap();
            assert_eq!(json[TAG], config.name());
            assert_eq!(ModelConfig::from_json(&json).unwrap(), config);
        }
        let err = ModelConfig::from_json(&serde_json::json!({"decoder": "gru"})).unwrap_err();
        assert!(err.to_string().contains("gru"), "{err}");
    }
}

//! A transformer decoder with cross-attention to the grid cells: pre-norm layers (the form
//! captioning transformers train stably with), learned 2-D positions for the cells and
//! learned positions for the words.
//!
//! ```text
//! grid (B, L, D), L = rows·cols ─ Dense(d) + row[r] + col[c] ─ LayerNorm → memory (B, L, d)
//! words (B, T) ─ emb (E) ─ [Dense(d) when E ≠ d] + pos[t] ─ dropout → x (B, T, d)
//! each of N layers, heads h of width d/h:
//!   x += dropout(SelfAttention(LN(x)))              causal
//!   x += dropout(CrossAttention(LN(x), memory))
//!   x += dropout(Dense(d)(dropout(relu(Dense(4d)(LN(x))))))
//! logits = Dense(V)(LN(x))                          (B, T, V)
//! ```
//!
//! Decoding keeps a key/value cache: each layer's cross-attention keys and values of the
//! memory are computed once per image, and every step appends its own self-attention key
//! and value, so no step recomputes the prefix.

use anyhow::{ensure, Result};
use serde::{Deserialize, Serialize};
use tch::{nn, Kind, Tensor};

use super::{grid_features, torch_linear, CaptionDecoder, DecodeState, StepDecoder};

/// Transformer decoder hyper-parameters; saved in `model.json` (tagged `"decoder": "transformer"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransformerConfig {
    pub vocab_size: i64,
    /// Values per grid cell (1280 for EfficientNet-Lite0).
    pub feature_dim: i64,
    /// The grid's rows and columns (7×7 for EfficientNet-Lite0 at 224 px).
    pub grid: [i64; 2],
    /// Word embedding width E (projected to `width` when it differs).
    pub embed: i64,
    /// Model width d.
    pub width: i64,
    pub heads: i64,
    pub layers: i64,
    pub dropout: f64,
    pub max_len: i64,
    pub pad_id: i64,
}

impl TransformerConfig {
    pub fn cells(&self) -> i64 {
        self.grid[0] * self.grid[1]
    }

    pub fn validate(&self) -> Result<()> {
        ensure!(
            self.heads > 0 && self.width % self.heads == 0,
            "the transformer's width ({}) must be a multiple of its heads ({})",
            self.width,
            self.heads
        );
        ensure!(self.layers > 0, "the transformer needs at least one layer");
        Ok(())
    }
}

/// Multi-head attention's four projections.
#[derive(Debug)]
struct MultiHead {
    query: nn::Linear,
    key: nn::Linear,
    value: nn::Linear,
    out: nn::Linear,
    heads: i64,
}

impl MultiHead {
    fn new(vs: nn::Path, width: i64, heads: i64) -> Self {
        Self {
            query: torch_linear(&vs / "query", width, width),
            key: torch_linear(&vs / "key", width, width),
            value: torch_linear(&vs / "value", width, width),
            out: torch_linear(&vs / "out", width, width),
            heads,
        }
    }

    /// (B, T, d) → (B, h, T, d/h).
    fn split(&self, x: &Tensor) -> Tensor {
        let size = x.size();
        x.view([size[0], size[1], self.heads, size[2] / self.heads]).transpose(1, 2)
    }

    /// Keys and values of `source` (B, S, d), split into heads: (B, h, S, d/h) each.
    fn keys_values(&self, source: &Tensor) -> (Tensor, Tensor) {
        (self.split(&source.apply(&self.key)), self.split(&source.apply(&self.value)))
    }

    /// Queries from x (B, T, d) over keys and values (B, h, S, d/h); `mask` (T, S) is added
    /// to the scores. Returns the output (B, T, d) and the weights (B, h, T, S).
    fn attend(&self, x: &Tensor, keys: &Tensor, values: &Tensor, mask: Option<&Tensor>) -> (Tensor, Tensor) {
        let query = self.split(&x.apply(&self.query));
        let scale = 1.0 / (query.size()[3] as f64).sqrt();
        let scores = query.matmul(&keys.transpose(-2, -1)) * scale;
        let scores = match mask {
            Some(mask) => scores + mask,
            None => scores,
        };
        let weights = scores.softmax(-1, Kind::Float);
        let (batch, steps) = (x.size()[0], x.size()[1]);
        let out = weights.matmul(values).transpose(1, 2).reshape([batch, steps, -1]).apply(&self.out);
        (out, weights)
    }
}

/// One pre-norm decoder layer.
#[derive(Debug)]
struct Layer {
    self_norm: nn::LayerNorm,
    self_attention: MultiHead,
    cross_norm: nn::LayerNorm,
    cross_attention: MultiHead,
    ff_norm: nn::LayerNorm,
    ff_in: nn::Linear,
    ff_out: nn::Linear,
}

/// What a layer returns: the new x, its self-attention keys and values over every position
/// so far (the next step's cache), and the cross-attention weights (B, h, T, L).
struct LayerOutput {
    x: Tensor,
    keys: Tensor,
    values: Tensor,
    cross_weights: Tensor,
}

impl Layer {
    fn new(vs: nn::Path, width: i64, heads: i64) -> Self {
        let norm = |name: &str| nn::layer_norm(&vs / name, vec![width], Default::default());
        Self {
            self_norm: norm("self_norm"),
            self_attention: MultiHead::new(&vs / "self_attention", width, heads),
            cross_norm: norm("cross_norm"),
            cross_attention: MultiHead::new(&vs / "cross_attention", width, heads),
            ff_norm: norm("ff_norm"),
            ff_in: torch_linear(&vs / "ff_in", width, 4 * width),
            ff_out: torch_linear(&vs / "ff_out", 4 * width, width),
        }
    }

    /// x (B, T, d) after `cache` (the earlier positions' keys and values, when decoding
    /// step by step), attending over the memory's `cross` keys and values.
    fn forward(
        &self,
        x: &Tensor,
        cache: Option<(&Tensor, &Tensor)>,
        cross: (&Tensor, &Tensor),
        causal: Option<&Tensor>,
        dropout: f64,
        train: bool,
    ) -> LayerOutput {
        let h = x.apply(&self.self_norm);
        let (keys, values) = self.self_attention.keys_values(&h);
        let (keys, values) = match cache {
            Some((k, v)) => (Tensor::cat(&[k, &keys], 2), Tensor::cat(&[v, &values], 2)),
            None => (keys, values),
        };
        let (a, _) = self.self_attention.attend(&h, &keys, &values, causal);
        let x = x + a.dropout(dropout, train);
        let (c, cross_weights) =
            self.cross_attention.attend(&x.apply(&self.cross_norm), cross.0, cross.1, None);
        let x = x + c.dropout(dropout, train);
        let f = x.apply(&self.ff_norm).apply(&self.ff_in).relu().dropout(dropout, train).apply(&self.ff_out);
        LayerOutput { x: x + f.dropout(dropout, train), keys, values, cross_weights }
    }
}

/// The transformer decoder (see the module doc for the maths).
#[derive(Debug)]
pub struct TransformerDecoder {
    pub cfg: TransformerConfig,
    embed: nn::Embedding,
    embed_project: Option<nn::Linear>,
    word_positions: Tensor,
    project: nn::Linear,
    row_positions: Tensor,
    column_positions: Tensor,
    memory_norm: nn::LayerNorm,
    layers: Vec<Layer>,
    final_norm: nn::LayerNorm,
    out: nn::Linear,
}

impl TransformerDecoder {
    pub fn new(cfg: &TransformerConfig, vs: nn::Path) -> Self {
        let (d, [rows, columns]) = (cfg.width, cfg.grid);
        let embed_cfg = nn::EmbeddingConfig { padding_idx: cfg.pad_id, ..Default::default() };
        let embed = nn::embedding(&vs / "embed", cfg.vocab_size, cfg.embed, embed_cfg);
        let _ = tch::no_grad(|| embed.ws.get(cfg.pad_id).zero_());
        let position = nn::Init::Randn { mean: 0.0, stdev: 0.02 };
        Self {
            cfg: cfg.clone(),
            embed,
            embed_project: (cfg.embed != d).then(|| torch_linear(&vs / "embed_project", cfg.embed, d)),
            word_positions: vs.var("word_positions", &[cfg.max_len, d], position),
            project: torch_linear(&vs / "project", cfg.feature_dim, d),
            row_positions: vs.var("row_positions", &[rows, d], position),
            column_positions: vs.var("column_positions", &[columns, d], position),
            memory_norm: nn::layer_norm(&vs / "memory_norm", vec![d], Default::default()),
            layers: (0..cfg.layers).map(|i| Layer::new(&vs / "layers" / i, d, cfg.heads)).collect(),
            final_norm: nn::layer_norm(&vs / "final_norm", vec![d], Default::default()),
            out: torch_linear(&vs / "out", d, cfg.vocab_size),
        }
    }

    /// The memory (B, L, d) of grids (B, L, D); cells in row-major order.
    fn encode(&self, grid: &Tensor, train: bool) -> Tensor {
        let positions = (self.row_positions.unsqueeze(1) + self.column_positions.unsqueeze(0))
            .view([self.cfg.cells(), self.cfg.width]);
        (grid.apply(&self.project) + positions).apply(&self.memory_norm).dropout(self.cfg.dropout, train)
    }

    /// Each layer's cross-attention keys and values of `memory`.
    fn cross_keys_values(&self, memory: &Tensor) -> Vec<(Tensor, Tensor)> {
        self.layers.iter().map(|layer| layer.cross_attention.keys_values(memory)).collect()
    }

    /// Word inputs (B, T) at positions first.. → x (B, T, d). Positions past the table
    /// reuse its last row (decoding never goes there: it stops at max_len).
    fn words(&self, inputs: &Tensor, first: i64, train: bool) -> Tensor {
        let steps = inputs.size()[1];
        let e = inputs.apply(&self.embed);
        let e = match &self.embed_project {
            Some(project) => e.apply(project),
            None => e,
        };
        let last = self.cfg.max_len - 1;
        let positions = if first + steps <= self.cfg.max_len {
            self.word_positions.narrow(0, first, steps)
        } else {
            let index: Vec<i64> = (first..first + steps).map(|t| t.min(last)).collect();
            self.word_positions.index_select(0, &Tensor::from_slice(&index).to_device(e.device()))
        };
        (e + positions).dropout(self.cfg.dropout, train)
    }

    /// Teacher-forced pass: x (B, T, d) after every layer (before the final norm), and the
    /// last layer's cross-attention weights (B, h, T, L).
    fn teacher_forced(&self, inputs: &Tensor, cross: &[(Tensor, Tensor)], train: bool) -> (Tensor, Tensor) {
        let steps = inputs.size()[1];
        let causal = Tensor::full([steps, steps], f64::NEG_INFINITY, (Kind::Float, inputs.device())).triu(1);
        let mut x = self.words(inputs, 0, train);
        let mut weights = None;
        for (layer, (keys, values)) in self.layers.iter().zip(cross) {
            let out = layer.forward(&x, None, (keys, values), Some(&causal), self.cfg.dropout, train);
            (x, weights) = (out.x, Some(out.cross_weights));
        }
        (x, weights.expect("at least one layer"))
    }
}

impl StepDecoder for TransformerDecoder {
    fn vocab_size(&self) -> i64 {
        self.cfg.vocab_size
    }

    fn max_len(&self) -> i64 {
        self.cfg.max_len
    }

    /// Grid rows (B, L·D) → (B, L, D) Float.
    fn features(&self, rows: &Tensor) -> Result<Tensor> {
        grid_features(rows, self.cfg.cells(), self.cfg.feature_dim, "transformer")
    }

    /// State, per layer: the memory's cross keys and values (R, h, L, d/h) and the
    /// self-attention cache (R, h, t, d/h) of the t steps so far (empty at the start).
    fn start(&self, features: &Tensor) -> DecodeState {
        let _guard = tch::no_grad_guard();
        let memory = self.encode(features, false);
        let rows = features.size()[0];
        let head_width = self.cfg.width / self.cfg.heads;
        let empty = Tensor::zeros([rows, self.cfg.heads, 0, head_width], (Kind::Float, features.device()));
        let mut state = Vec::with_capacity(4 * self.layers.len());
        for (keys, values) in self.cross_keys_values(&memory) {
            state.extend([keys, values, empty.shallow_clone(), empty.shallow_clone()]);
        }
        DecodeState::of_rows(state)
    }

    fn step(&self, tokens: &Tensor, state: &DecodeState) -> (Tensor, DecodeState) {
        assert_eq!(state.rows.len(), 4 * self.layers.len(), "a transformer state has four tensors per layer");
        let done = state.rows[2].size()[2];
        let mut x = self.words(&tokens.unsqueeze(1), done, false);
        let mut next = Vec::with_capacity(state.rows.len());
        for (layer, held) in self.layers.iter().zip(state.rows.chunks(4)) {
            let [cross_keys, cross_values, keys, values] = held else { unreachable!("chunks of four") };
            let out = layer.forward(&x, Some((keys, values)), (cross_keys, cross_values), None, 0.0, false);
            next.extend([cross_keys.shallow_clone(), cross_values.shallow_clone(), out.keys, out.values]);
            x = out.x;
        }
        let lp = x.squeeze_dim(1).apply(&self.final_norm).apply(&self.out).log_softmax(-1, Kind::Float);
        (lp, DecodeState::of_rows(next))
    }

    /// The last layer's cross-attention weights, averaged over its heads: (B, T, L).
    fn attention(&self, features: &Tensor, inputs: &Tensor) -> Option<Tensor> {
        let _guard = tch::no_grad_guard();
        let cross = self.cross_keys_values(&self.encode(features, false));
        let (_, weights) = self.teacher_forced(inputs, &cross, false);
        Some(weights.mean_dim(1, false, Kind::Float))
    }
}

impl CaptionDecoder for TransformerDecoder {
    fn embedding(&self) -> &nn::Embedding {
        &self.embed
    }

    /// Encodes each distinct image once (memory and every layer's cross keys and values),
    /// then gives every caption its image's.
    fn target_logits(
        &self,
        images: &Tensor,
        image_of: &Tensor,
        inputs: &Tensor,
        positions: &Tensor,
        _rows: &Tensor,
        train: bool,
    ) -> (Tensor, Option<Tensor>) {
        let cross: Vec<_> = self
            .cross_keys_values(&self.encode(images, train))
            .into_iter()
            .map(|(k, v)| (k.index_select(0, image_of), v.index_select(0, image_of)))
            .collect();
        let (x, _) = self.teacher_forced(inputs, &cross, train);
        let x = x.reshape([-1, self.cfg.width]).index_select(0, positions);
        (x.apply(&self.final_norm).apply(&self.out), None)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use tch::Device;

    /// A 12-word model over 2×2 grids of 4 values (the training tests' tiny data).
    pub(crate) fn small(dropout: f64) -> TransformerConfig {
        TransformerConfig {
            vocab_size: 12,
            feature_dim: 4,
            grid: [2, 2],
            embed: 32,
            width: 32,
            heads: 4,
            layers: 2,
            dropout,
            max_len: 6,
            pad_id: 0,
        }
    }

    pub(crate) fn tiny() -> TransformerConfig {
        TransformerConfig {
            vocab_size: 11,
            feature_dim: 6,
            grid: [2, 2],
            embed: 6,
            width: 8,
            heads: 2,
            layers: 2,
            dropout: 0.1,
            max_len: 7,
            pad_id: 0,
        }
    }

    #[test]
    fn shapes_and_stepwise_decoding_match_teacher_forcing() {
        let _rng = crate::model::train::torch_rng_lock();
        tch::manual_seed(3);
        let vs = nn::VarStore::new(Device::Cpu);
        let dec = TransformerDecoder::new(&tiny(), vs.root());
        let (feats, inputs, extra) = super::super::tests::check_grid_decoder(&dec);
        assert!(extra.is_none());
        // The cache: each step adds one key per head.
        let start = dec.start(&feats);
        assert_eq!(start.rows[2].size(), [2, 2, 0, 4]);
        let (_, next) = dec.step(&inputs.select(1, 0), &start);
        assert_eq!(next.rows[2].size(), [2, 2, 1, 4]);
    }

    #[test]
    fn a_later_word_does_not_change_earlier_logits() {
        let _rng = crate::model::train::torch_rng_lock();
        tch::manual_seed(4);
        let vs = nn::VarStore::new(Device::Cpu);
        let dec = TransformerDecoder::new(&tiny(), vs.root());
        let feats = dec.features(&Tensor::randn([1, 24], (Kind::Float, Device::Cpu))).unwrap();
        let logits = |words: &[i64]| {
            let inputs = Tensor::from_slice(words).view([1, 3]);
            let all = Tensor::arange(3, (Kind::Int64, Device::Cpu));
            let zero = Tensor::zeros([3], (Kind::Int64, Device::Cpu));
            dec.target_logits(&feats, &Tensor::from_slice(&[0i64]), &inputs, &all, &zero, false).0
        };
        let (a, b) = (logits(&[2, 4, 5]), logits(&[2, 4, 9]));
        assert!(a.narrow(0, 0, 2).allclose(&b.narrow(0, 0, 2), 1e-6, 1e-6, false));
        assert!(!a.get(2).allclose(&b.get(2), 1e-3, 1e-3, false));
    }

    #[test]
    fn width_must_split_into_heads() {
        assert!(TransformerConfig { heads: 3, ..tiny() }.validate().is_err());
        assert!(tiny().validate().is_ok());
    }
}

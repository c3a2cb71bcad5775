//! Soft attention over a feature grid with an LSTM: Show, Attend and Tell (Xu et al. 2015),
//! with the attention MLP, the gating scalar β, the deep output layer and the doubly
//! stochastic regularisation.
//!
//! ```text
//! grid (B, L, D) ─ Dense(C) ─ relu ─ dropout ─ a (B, L, C);  keys = Dense(A)(a)
//! h0, c0 = tanh(Dense(H)(mean_l a))
//! step t, input word y (embedded e, width E):
//!   α = softmax_l( Dense(1)( tanh(keys + Dense(A)(h)) ) )         (B, L)
//!   z = sigmoid(Dense(C)(h)) ⊙ Σ_l α_l a_l                        (B, C)   the gate β
//!   h, c = LSTMCell([e, z], (h, c))                                 (B, H)
//!   logits = Dense(V)( dropout( e + Dense(E)(h) + Dense(E)(z) ) )   deep output
//! loss += alpha_c · mean_{b,l} (1 − Σ_t α_tl)²                      doubly stochastic
//! ```
//!
//! C (the projected cell width) equals H. The LSTM's input weights are split into the
//! word part, computed for all steps of a batch in one product, and the context part.

use anyhow::Result;
use serde::{Deserialize, Serialize};
use tch::{nn, Device, Kind, Tensor};

use super::{grid_features, torch_linear, CaptionDecoder, DecodeState, StepDecoder};

/// Attention decoder hyper-parameters; saved in `model.json` (tagged `"decoder": "attention"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttentionConfig {
    pub vocab_size: i64,
    /// Values per grid cell (1280 for EfficientNet-Lite0).
    pub feature_dim: i64,
    /// Grid cells per image (49 for a 7×7 map).
    pub cells: i64,
    /// Word embedding width E, also the deep output width.
    pub embed: i64,
    /// LSTM width H, also the projected cell width C.
    pub hidden: i64,
    /// Attention MLP width A.
    pub attention: i64,
    pub dropout: f64,
    /// Weight of the doubly stochastic attention penalty (0 = off).
    pub alpha_c: f64,
    pub max_len: i64,
    pub pad_id: i64,
}

/// The attention decoder (see the module doc for the maths).
#[derive(Debug)]
pub struct AttentionDecoder {
    pub cfg: AttentionConfig,
    embed: nn::Embedding,
    project: nn::Linear,
    init_h: nn::Linear,
    init_c: nn::Linear,
    keys: nn::Linear,
    query: nn::Linear,
    score: nn::Linear,
    gate: nn::Linear,
    /// LSTM input weights for the word (with the bias) and for the context.
    lstm_word: nn::Linear,
    lstm_context: nn::Linear,
    lstm_hidden: nn::Linear,
    out_hidden: nn::Linear,
    out_context: nn::Linear,
    out: nn::Linear,
}

/// The encoded grid of a batch: projected cells a (B, L, C) and attention keys (B, L, A).
struct Encoded {
    cells: Tensor,
    keys: Tensor,
}

impl AttentionDecoder {
    pub fn new(cfg: &AttentionConfig, vs: nn::Path) -> Self {
        let (e, h, a, d) = (cfg.embed, cfg.hidden, cfg.attention, cfg.feature_dim);
        let embed_cfg = nn::EmbeddingConfig { padding_idx: cfg.pad_id, ..Default::default() };
        let embed = nn::embedding(&vs / "embed", cfg.vocab_size, e, embed_cfg);
        let _ = tch::no_grad(|| embed.ws.get(cfg.pad_id).zero_());
        let no_bias = |path: nn::Path, fan_in: i64, fan_out: i64| {
            let bound = 1.0 / (fan_in as f64).sqrt();
            let init = nn::Init::Uniform { lo: -bound, up: bound };
            nn::linear(path, fan_in, fan_out, nn::LinearConfig { ws_init: init, bs_init: None, bias: false })
        };
        Self {
            cfg: cfg.clone(),
            embed,
            project: torch_linear(&vs / "project", d, h),
            init_h: torch_linear(&vs / "init_h", h, h),
            init_c: torch_linear(&vs / "init_c", h, h),
            keys: torch_linear(&vs / "keys", h, a),
            query: no_bias(&vs / "query", h, a),
            score: torch_linear(&vs / "score", a, 1),
            gate: torch_linear(&vs / "gate", h, h),
            lstm_word: torch_linear(&vs / "lstm_word", e, 4 * h),
            lstm_context: no_bias(&vs / "lstm_context", h, 4 * h),
            lstm_hidden: torch_linear(&vs / "lstm_hidden", h, 4 * h),
            out_hidden: no_bias(&vs / "out_hidden", h, e),
            out_context: no_bias(&vs / "out_context", h, e),
            out: torch_linear(&vs / "out", e, cfg.vocab_size),
        }
    }

    fn encode(&self, grid: &Tensor, train: bool) -> (Encoded, Tensor, Tensor) {
        let cells = grid.apply(&self.project).relu().dropout(self.cfg.dropout, train);
        let mean = cells.mean_dim(1, false, Kind::Float);
        let (h, c) = (mean.apply(&self.init_h).tanh(), mean.apply(&self.init_c).tanh());
        (Encoded { keys: cells.apply(&self.keys), cells }, h, c)
    }

    /// Attention weights α (B, L) and the gated context z (B, C) for LSTM state h (B, H).
    fn attend(&self, enc: &Encoded, h: &Tensor) -> (Tensor, Tensor) {
        let query = h.apply(&self.query).unsqueeze(1);
        let alpha = (&enc.keys + query).tanh().apply(&self.score).squeeze_dim(2).softmax(1, Kind::Float);
        let context = alpha.unsqueeze(1).bmm(&enc.cells).squeeze_dim(1);
        (alpha, context * h.apply(&self.gate).sigmoid())
    }

    /// One LSTM step from precomputed word gates (B, 4H): (h, c, context, α).
    fn advance(&self, enc: &Encoded, word_gates: &Tensor, h: &Tensor, c: &Tensor) -> [Tensor; 4] {
        let (alpha, z) = self.attend(enc, h);
        let gates = word_gates + z.apply(&self.lstm_context) + h.apply(&self.lstm_hidden);
        let parts = gates.chunk(4, 1);
        let (i, f, g, o) = (parts[0].sigmoid(), parts[1].sigmoid(), parts[2].tanh(), parts[3].sigmoid());
        let c = f * c + i * g;
        let h = o * c.tanh();
        [h, c, z, alpha]
    }

    /// The deep output's input: e + Dense(h) + Dense(z), (…, E).
    fn pre_output(&self, e: &Tensor, h: &Tensor, z: &Tensor) -> Tensor {
        e + h.apply(&self.out_hidden) + z.apply(&self.out_context)
    }
}

impl StepDecoder for AttentionDecoder {
    fn vocab_size(&self) -> i64 {
        self.cfg.vocab_size
    }

    fn max_len(&self) -> i64 {
        self.cfg.max_len
    }

    /// Grid rows (B, L·D) → (B, L, D) Float.
    fn features(&self, rows: &Tensor) -> Result<Tensor> {
        grid_features(rows, self.cfg.cells, self.cfg.feature_dim, "attention")
    }

    /// State: cells (R, L, C), keys (R, L, A), h (R, H), c (R, H).
    fn start(&self, features: &Tensor) -> DecodeState {
        let (enc, h, c) = self.encode(features, false);
        DecodeState::of_rows(vec![enc.cells, enc.keys, h, c])
    }

    fn step(&self, tokens: &Tensor, state: &DecodeState) -> (Tensor, DecodeState) {
        let [cells, keys, h, c] = &state.rows[..] else {
            panic!("an attention decoder state has four tensors")
        };
        let enc = Encoded { cells: cells.shallow_clone(), keys: keys.shallow_clone() };
        let e = tokens.apply(&self.embed);
        let [h, c, z, _alpha] = self.advance(&enc, &e.apply(&self.lstm_word), h, c);
        let lp = self.pre_output(&e, &h, &z).apply(&self.out).log_softmax(-1, Kind::Float);
        (lp, DecodeState::of_rows(vec![enc.cells, enc.keys, h, c]))
    }

    fn attention(&self, features: &Tensor, inputs: &Tensor) -> Option<Tensor> {
        let _guard = tch::no_grad_guard();
        let (enc, mut h, mut c) = self.encode(features, false);
        let word_gates = inputs.apply(&self.embed).apply(&self.lstm_word);
        let mut alphas = Vec::with_capacity(inputs.size()[1] as usize);
        for t in 0..inputs.size()[1] {
            let [h2, c2, _, alpha] = self.advance(&enc, &word_gates.select(1, t), &h, &c);
            alphas.push(alpha);
            (h, c) = (h2, c2);
        }
        Some(Tensor::stack(&alphas, 1))
    }
}

impl CaptionDecoder for AttentionDecoder {
    fn embedding(&self) -> &nn::Embedding {
        &self.embed
    }

    /// Encodes each distinct image once, then gives every caption its image's encoding.
    /// Captions run longest first and step t computes only those still going, so padding
    /// costs nothing (a batch's longest caption is about twice its mean).
    fn target_logits(
        &self,
        images: &Tensor,
        image_of: &Tensor,
        inputs: &Tensor,
        positions: &Tensor,
        rows: &Tensor,
        train: bool,
    ) -> (Tensor, Option<Tensor>) {
        let (batch, steps) = (inputs.size()[0], inputs.size()[1]);
        let device = inputs.device();
        let lengths = Vec::<i64>::try_from(rows.bincount::<Tensor>(None, batch).to_device(Device::Cpu))
            .expect("bincount of row ids");
        let mut order: Vec<i64> = (0..batch).collect();
        order.sort_by_key(|&r| std::cmp::Reverse(lengths[r as usize]));
        let mut rank = vec![0i64; batch as usize];
        for (k, &r) in order.iter().enumerate() {
            rank[r as usize] = k as i64;
        }
        let order_t = Tensor::from_slice(&order).to_device(device);
        let (enc, h, c) = self.encode(images, train);
        let of = image_of.index_select(0, &order_t);
        let enc = Encoded { cells: enc.cells.index_select(0, &of), keys: enc.keys.index_select(0, &of) };
        let (mut h, mut c) = (h.index_select(0, &of), c.index_select(0, &of));
        let words = inputs.index_select(0, &order_t).apply(&self.embed);
        let word_gates = words.apply(&self.lstm_word);
        let longest = order.first().map_or(0, |&r| lengths[r as usize]);
        let (mut pre, mut alphas, mut offsets) = (vec![], vec![], vec![]);
        let mut done = 0;
        for t in 0..longest {
            let live = order.iter().take_while(|&&r| lengths[r as usize] > t).count() as i64;
            let first = |x: &Tensor| x.narrow(0, 0, live);
            let enc_t = Encoded { cells: first(&enc.cells), keys: first(&enc.keys) };
            let [h2, c2, z, alpha] =
                self.advance(&enc_t, &first(&word_gates.select(1, t)), &first(&h), &first(&c));
            pre.push(self.pre_output(&first(&words.select(1, t)), &h2, &z));
            alphas.push(alpha.constant_pad_nd([0, 0, 0, batch - live]));
            offsets.push(done);
            done += live;
            (h, c) = (h2, c2);
        }
        // `pre` is step-major over the sorted rows; pick it in `positions` order.
        let positions = Vec::<i64>::try_from(positions.to_device(Device::Cpu)).expect("positions");
        let picks: Vec<i64> =
            positions.iter().map(|&p| offsets[(p % steps) as usize] + rank[(p / steps) as usize]).collect();
        let pre = Tensor::cat(&pre, 0).index_select(0, &Tensor::from_slice(&picks).to_device(device));
        let logits = pre.dropout(self.cfg.dropout, train).apply(&self.out);
        let penalty = (self.cfg.alpha_c > 0.0 && !alphas.is_empty()).then(|| {
            // Attention summed over each caption's real steps (the padding rows are zero).
            let total = Tensor::stack(&alphas, 0).sum_dim_intlist(0, false, Kind::Float);
            (total - 1.0).square().mean(Kind::Float) * self.cfg.alpha_c
        });
        (logits, penalty)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use tch::Device;

    /// A 12-word model over 4-cell grids of 4 values (the training tests' tiny data).
    pub(crate) fn small(dropout: f64, alpha_c: f64) -> AttentionConfig {
        AttentionConfig {
            vocab_size: 12,
            feature_dim: 4,
            cells: 4,
            embed: 16,
            hidden: 32,
            attention: 16,
            dropout,
            alpha_c,
            max_len: 6,
            pad_id: 0,
        }
    }

    pub(crate) fn tiny() -> AttentionConfig {
        AttentionConfig {
            vocab_size: 11,
            feature_dim: 6,
            cells: 4,
            embed: 8,
            hidden: 10,
            attention: 7,
            dropout: 0.5,
            alpha_c: 1.0,
            max_len: 7,
            pad_id: 0,
        }
    }

    #[test]
    fn shapes_and_stepwise_decoding_match_teacher_forcing() {
        let _rng = crate::model::train::torch_rng_lock();
        tch::manual_seed(2);
        let vs = nn::VarStore::new(Device::Cpu);
        let dec = AttentionDecoder::new(&tiny(), vs.root());
        let (_, _, penalty) = super::super::tests::check_grid_decoder(&dec);
        assert_eq!(penalty.unwrap().size(), Vec::<i64>::new());
    }
}

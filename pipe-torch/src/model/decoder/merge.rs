//! The "merge" caption decoder: an LSTM language model whose first input step is the
//! image and whose output is merged with the image again before the vocabulary layer.
//!
//! ```text
//! features (B, D) ─ Dense(E) ─ relu ─ v (B, E)
//! LSTM(H) over [v, emb(startseq), emb(w1) … emb(w_{n-1})]   (B, 1+T, E) → h (B, T, H)
//! dropout(h) + v ─ Dense(dense) ─ relu ─ dropout ─ Dense(V) → logits
//! ```
//!
//! With the defaults (E = H = 256, dense 128, dropout 0.5) this is exactly the PyTorch
//! peer in `shared/peers/torch_merge/model.py`, initialised the way PyTorch initialises it,
//! so quality comparisons measure the pipeline and not a different model.

use anyhow::Result;
use serde::{Deserialize, Serialize};
use tch::nn::{self, RNN};
use tch::{Kind, Tensor};

use super::{pooled_features, torch_linear, CaptionDecoder, DecodeState, StepDecoder};

/// Decoder hyper-parameters; saved as `model.json` next to the weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecoderConfig {
    /// Number of token ids (`vocab.json` tokens, including pad and unk).
    pub vocab_size: i64,
    /// Width of one image feature vector (1280 for EfficientNet-Lite0).
    pub feature_dim: i64,
    /// Word embedding width, also the width of the image vector `v`.
    pub embed: i64,
    /// LSTM hidden width.
    pub hidden: i64,
    /// Width of the Dense layer between the merge and the vocabulary layer.
    pub dense: i64,
    /// Dropout probability, used twice (after the LSTM and after the Dense layer).
    pub dropout: f64,
    /// Longest token sequence seen in training, start and end included; bounds decoding.
    pub max_len: i64,
    /// Id of the padding token (its embedding row stays zero and gets no gradient).
    pub pad_id: i64,
}

/// The merge decoder. Built with [`MergeDecoder::new`] under a var-store path, so its
/// weights are named `image.weight`, `embed.weight`, `lstm.weight_ih_l0`, `fc.weight`, `out.weight`…
#[derive(Debug)]
pub struct MergeDecoder {
    pub cfg: DecoderConfig,
    image: nn::Linear,
    pub(crate) embed: nn::Embedding,
    lstm: nn::LSTM,
    /// The LSTM's own weights (w_ih, w_hh, b_ih, b_hh), shared with `lstm`, for one-step decoding.
    cell: [Tensor; 4],
    /// Only when `embed != hidden`: maps `v` to the LSTM width for the merge.
    merge: Option<nn::Linear>,
    fc: nn::Linear,
    out: nn::Linear,
}

/// The LSTM state `(h, c)`, each of shape (1, B, H).
pub type DecoderState = nn::LSTMState;

impl MergeDecoder {
    pub fn new(cfg: &DecoderConfig, vs: nn::Path) -> Self {
        let embed_cfg = nn::EmbeddingConfig { padding_idx: cfg.pad_id, ..Default::default() };
        let bound = 1.0 / (cfg.hidden as f64).sqrt();
        let uniform = nn::Init::Uniform { lo: -bound, up: bound };
        let lstm_cfg = nn::RNNConfig {
            w_ih_init: uniform,
            w_hh_init: uniform,
            b_ih_init: Some(uniform),
            b_hh_init: Some(uniform),
            ..Default::default()
        };
        let embed = nn::embedding(&vs / "embed", cfg.vocab_size, cfg.embed, embed_cfg);
        // PyTorch zeroes the padding row at construction; the peer relies on that.
        let _ = tch::no_grad(|| embed.ws.get(cfg.pad_id).zero_());
        let merge = (cfg.embed != cfg.hidden).then(|| torch_linear(&vs / "merge", cfg.embed, cfg.hidden));
        // Created in the order that draws the initial weights as before (image, then lstm).
        let image = torch_linear(&vs / "image", cfg.feature_dim, cfg.embed);
        let lstm = nn::lstm(&vs / "lstm", cfg.embed, cfg.hidden, lstm_cfg);
        let lstm_vars = &vs / "lstm";
        let cell = ["weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"]
            .map(|name| lstm_vars.get(name).expect("nn::lstm names its weights this way"));
        Self {
            cfg: cfg.clone(),
            image,
            embed,
            lstm,
            cell,
            merge,
            fc: torch_linear(&vs / "fc", cfg.hidden, cfg.dense),
            out: torch_linear(&vs / "out", cfg.dense, cfg.vocab_size),
        }
    }

    /// Image vectors: features (B, D) → v (B, E), relu'd.
    pub fn image_vector(&self, features: &Tensor) -> Tensor {
        features.apply(&self.image).relu()
    }

    /// The vector added to the LSTM output: v itself, or its projection when E ≠ H. (B, H).
    pub fn merge_vector(&self, v: &Tensor) -> Tensor {
        match &self.merge {
            Some(proj) => v.apply(proj),
            None => v.shallow_clone(),
        }
    }

    /// Teacher-forced LSTM pass. features (B, D), inputs (B, T) = startseq w1 … (padded).
    /// Returns h (B, T, H), where h[:, t] predicts inputs[:, t+1] (or endseq), and the
    /// merge vectors (B, H). The image step's own output is dropped.
    pub fn hidden_states(&self, features: &Tensor, inputs: &Tensor) -> (Tensor, Tensor) {
        let v = self.image_vector(features);
        let steps = Tensor::cat(&[v.unsqueeze(1), inputs.apply(&self.embed)], 1);
        let (h, _) = self.lstm.seq(&steps);
        (h.narrow(1, 1, inputs.size()[1]), self.merge_vector(&v))
    }

    /// Output head: h (N, H) and merge vectors m (N, H) (or (N, 1, H) against h (N, T, H))
    /// → logits (N, V) (or (N, T, V)). Dropout only when `train`.
    pub fn head(&self, h: &Tensor, m: &Tensor, train: bool) -> Tensor {
        let p = self.cfg.dropout;
        (h.dropout(p, train) + m).apply(&self.fc).relu().dropout(p, train).apply(&self.out)
    }

    /// Full teacher-forced forward: features (B, D), inputs (B, T) → logits (B, T, V).
    /// Training uses [`Self::hidden_states`] + [`Self::head`] on real tokens only; this is
    /// the plain form, for tests and inspection.
    pub fn forward_t(&self, features: &Tensor, inputs: &Tensor, train: bool) -> Tensor {
        let (h, m) = self.hidden_states(features, inputs);
        self.head(&h, &m.unsqueeze(1), train)
    }

    /// Starts decoding: features (B, D) → merge vectors (B, H) and the state after the image step.
    fn init_state(&self, features: &Tensor) -> (Tensor, DecoderState) {
        let v = self.image_vector(features);
        let (_, state) = self.lstm.seq(&v.unsqueeze(1));
        (self.merge_vector(&v), state)
    }

    /// The input half of every token's LSTM gates, emb(token)·W_ihᵀ + b_ih + b_hh (V, 4H):
    /// a decoding step gathers its rows instead of multiplying (R, E) by W_ih.
    fn gate_table(&self) -> Tensor {
        let [w_ih, _, b_ih, b_hh] = &self.cell;
        self.embed.ws.linear(w_ih, Some(b_ih)) + b_hh
    }

    /// One LSTM step from the input gates (R, 4H): (h, c) → (h', c'), PyTorch's gate order i, f, g, o.
    fn cell_step(&self, input_gates: &Tensor, h: &Tensor, c: &Tensor) -> (Tensor, Tensor) {
        let gates = input_gates.addmm(h, &self.cell[1].tr()).chunk(4, 1);
        let c = gates[1].sigmoid() * c + gates[0].sigmoid() * gates[2].tanh();
        let h = gates[3].sigmoid() * c.tanh();
        (h, c)
    }
}

impl StepDecoder for MergeDecoder {
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

    /// State: merge vectors (R, H), LSTM h (R, H) and c (R, H); shared, the gate table.
    fn start(&self, features: &Tensor) -> DecodeState {
        let (m, state) = self.init_state(features);
        DecodeState {
            rows: vec![m, state.h().squeeze_dim(0), state.c().squeeze_dim(0)],
            shared: vec![self.gate_table()],
        }
    }

    /// Always in eval mode (no dropout).
    fn step(&self, tokens: &Tensor, state: &DecodeState) -> (Tensor, DecodeState) {
        let ([m, h, c], [table]) = (&state.rows[..], &state.shared[..]) else {
            panic!("a merge decoder state has three row tensors and its gate table")
        };
        let (h, c) = self.cell_step(&table.index_select(0, tokens), h, c);
        let lp = self.head(&h, m, false).log_softmax(-1, Kind::Float);
        (lp, DecodeState { rows: vec![m.shallow_clone(), h, c], shared: vec![table.shallow_clone()] })
    }
}

impl CaptionDecoder for MergeDecoder {
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
        let (h, m) = self.hidden_states(&images.index_select(0, image_of), inputs);
        let h = h.reshape([-1, self.cfg.hidden]).index_select(0, positions);
        (self.head(&h, &m.index_select(0, rows), train), None)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use tch::Device;

    pub(crate) fn tiny() -> DecoderConfig {
        DecoderConfig {
            vocab_size: 11,
            feature_dim: 6,
            embed: 8,
            hidden: 8,
            dense: 5,
            dropout: 0.5,
            max_len: 7,
            pad_id: 0,
        }
    }

    #[test]
    fn shapes() {
        let _rng = crate::model::train::torch_rng_lock();
        tch::manual_seed(0);
        let vs = nn::VarStore::new(Device::Cpu);
        let dec = MergeDecoder::new(&tiny(), vs.root());
        let feats = Tensor::randn([3, 6], (Kind::Float, Device::Cpu));
        let inputs = Tensor::from_slice(&[2i64, 4, 5, 2, 6, 0, 2, 0, 0]).view([3, 3]);
        assert_eq!(dec.forward_t(&feats, &inputs, true).size(), [3, 3, 11]);
        let (h, m) = dec.hidden_states(&feats, &inputs);
        assert_eq!((h.size(), m.size()), (vec![3, 3, 8], vec![3, 8]));
        let (lp, state) = dec.step(&inputs.select(1, 0), &dec.start(&feats));
        assert_eq!((lp.size(), state.rows[1].size()), (vec![3, 11], vec![3, 8]));
        let total = lp.exp().sum_dim_intlist(-1, false, Kind::Float);
        assert!(total.allclose(&Tensor::ones([3], (Kind::Float, Device::Cpu)), 1e-5, 1e-5, false));
    }

    #[test]
    fn stepwise_decoding_matches_teacher_forcing() {
        let _rng = crate::model::train::torch_rng_lock();
        tch::manual_seed(1);
        let vs = nn::VarStore::new(Device::Cpu);
        let dec = MergeDecoder::new(&DecoderConfig { embed: 6, ..tiny() }, vs.root());
        let feats = Tensor::randn([2, 6], (Kind::Float, Device::Cpu));
        let inputs = Tensor::from_slice(&[2i64, 4, 5, 2, 6, 7]).view([2, 3]);
        let full = dec.forward_t(&feats, &inputs, false).log_softmax(-1, Kind::Float);
        let mut state = dec.start(&feats);
        for t in 0..3 {
            let (lp, next) = dec.step(&inputs.select(1, t), &state);
            assert!(lp.allclose(&full.select(1, t), 1e-5, 1e-5, false), "step {t}");
            state = next;
        }
    }

    #[test]
    fn padding_row_is_zero() {
        let vs = nn::VarStore::new(Device::Cpu);
        let dec = MergeDecoder::new(&tiny(), vs.root());
        assert_eq!(dec.embed.ws.get(0).abs().sum(Kind::Float).double_value(&[]), 0.0);
    }
}

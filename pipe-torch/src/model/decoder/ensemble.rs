//! Several trained decoders captioning as one: at every step of greedy or beam search each
//! member scores the next word and their log-probabilities are averaged. Members may be
//! different decoders (merge, cnn, attention, transformer) as long as they share the
//! vocabulary; each reads the feature rows its own way (a merge or cnn member averages a
//! grid's cells).

use anyhow::{bail, ensure, Result};
use tch::{Kind, Tensor};

use super::{DecodeState, StepDecoder};

pub struct Ensemble {
    members: Vec<Box<dyn StepDecoder>>,
}

impl Ensemble {
    pub fn new(members: Vec<Box<dyn StepDecoder>>) -> Result<Self> {
        let Some(first) = members.first() else { bail!("an ensemble needs at least one model") };
        let vocab = first.vocab_size();
        for (i, m) in members.iter().enumerate() {
            ensure!(
                m.vocab_size() == vocab,
                "model {} has a vocabulary of {} tokens, model 1 of {vocab}: ensemble members must share one",
                i + 1,
                m.vocab_size()
            );
        }
        Ok(Self { members })
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }
}

impl StepDecoder for Ensemble {
    fn vocab_size(&self) -> i64 {
        self.members[0].vocab_size()
    }

    fn max_len(&self) -> i64 {
        self.members.iter().map(|m| m.max_len()).max().unwrap_or(2)
    }

    /// The rows as they are (Float); each member reads them in [`Self::start`]. Checks
    /// that every member can.
    fn features(&self, rows: &Tensor) -> Result<Tensor> {
        let probe = rows.narrow(0, 0, rows.size()[0].min(1));
        for (i, m) in self.members.iter().enumerate() {
            let _readable = m.features(&probe).map_err(|e| e.context(format!("ensemble model {}", i + 1)))?;
        }
        Ok(rows.to_kind(Kind::Float))
    }

    /// The members' states one after another. The first shared tensor is the layout: each
    /// member's count of row and shared tensors (int64, on the CPU, so reading it costs no
    /// device sync).
    fn start(&self, features: &Tensor) -> DecodeState {
        let (mut layout, mut rows, mut shared) = (Vec::new(), Vec::new(), Vec::new());
        for m in &self.members {
            let own = m.features(features).expect("checked by Ensemble::features");
            let state = m.start(&own);
            layout.extend([state.rows.len() as i64, state.shared.len() as i64]);
            rows.extend(state.rows);
            shared.extend(state.shared);
        }
        shared.insert(0, Tensor::from_slice(&layout));
        DecodeState { rows, shared }
    }

    fn step(&self, tokens: &Tensor, state: &DecodeState) -> (Tensor, DecodeState) {
        let layout =
            Vec::<i64>::try_from(&state.shared[0]).expect("an ensemble state starts with its layout");
        let mut next = DecodeState { rows: Vec::new(), shared: vec![state.shared[0].shallow_clone()] };
        let (mut sum, mut row_at, mut shared_at) = (None::<Tensor>, 0, 1);
        for (m, counts) in self.members.iter().zip(layout.chunks(2)) {
            let (row_len, shared_len) = (counts[0] as usize, counts[1] as usize);
            let own = DecodeState {
                rows: state.rows[row_at..row_at + row_len].iter().map(Tensor::shallow_clone).collect(),
                shared: state.shared[shared_at..shared_at + shared_len]
                    .iter()
                    .map(Tensor::shallow_clone)
                    .collect(),
            };
            let (lp, own_next) = m.step(tokens, &own);
            sum = Some(match sum {
                None => lp,
                Some(s) => s + lp,
            });
            next.rows.extend(own_next.rows);
            next.shared.extend(own_next.shared);
            (row_at, shared_at) = (row_at + row_len, shared_at + shared_len);
        }
        let mean = sum.expect("an ensemble has members") / self.members.len() as f64;
        (mean, next)
    }
}

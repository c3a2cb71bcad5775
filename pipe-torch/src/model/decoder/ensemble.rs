//! Several trained decoders captioning as one: at every step of greedy or beam search each
//! member scores the next word and their log-probabilities are averaged. Members may be
//! different decoders (merge and attention) as long as they share the vocabulary; each
//! reads the feature rows its own way (a merge member averages a grid's cells).

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

    /// The members' states one after another, each led by a marker of its length.
    fn start(&self, features: &Tensor) -> DecodeState {
        let mut all = Vec::new();
        for m in &self.members {
            let own = m.features(features).expect("checked by Ensemble::features");
            let state = m.start(&own);
            all.push(Tensor::zeros(
                [features.size()[0], state.0.len() as i64],
                (Kind::Int8, features.device()),
            ));
            all.extend(state.0);
        }
        DecodeState(all)
    }

    fn step(&self, tokens: &Tensor, state: &DecodeState) -> (Tensor, DecodeState) {
        let (mut sum, mut next, mut at) = (None::<Tensor>, Vec::with_capacity(state.0.len()), 0);
        for m in &self.members {
            let marker = &state.0[at];
            let len = marker.size()[1] as usize;
            let own = DecodeState(state.0[at + 1..at + 1 + len].iter().map(Tensor::shallow_clone).collect());
            let (lp, own_next) = m.step(tokens, &own);
            sum = Some(match sum {
                None => lp,
                Some(s) => s + lp,
            });
            next.push(marker.shallow_clone());
            next.extend(own_next.0);
            at += 1 + len;
        }
        let mean = sum.expect("an ensemble has members") / self.members.len() as f64;
        (mean, DecodeState(next))
    }
}

//! Self-critical sequence training (Rennie et al. 2017): REINFORCE on the CIDEr-D of the
//! model's own sampled captions, with a baseline so that only captions better than the
//! usual one are reinforced.
//!
//! Per step, for a batch of images: sample `samples` captions each (no gradient), score
//! them with [`CiderReward`] (document frequencies of the train references), subtract the
//! baseline (the mean of the image's other samples, Luo 2020, or its greedy caption's
//! reward, Rennie 2017), then one teacher-forced pass over the samples gives their
//! log-probabilities and the loss −Σ advantage · log p(word) / words. Sampling and the
//! teacher-forced pass both run without dropout and without the banned tokens, so the
//! gradient is that of the distribution that was sampled.
//!
//! After each epoch the dev split's greedy captions are scored (corpus CIDEr-D, as the
//! `score` kind does); the best epoch wins, and the starting model counts as epoch 0, so
//! the result is never worse on dev than what went in.

use std::time::Instant;

use anyhow::{bail, Result};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tch::{nn, Device, Kind, Tensor};

use super::decode::{banned_tokens, greedy, sample_from, DecodeOptions, Hypothesis};
use super::decoder::CaptionDecoder;
use super::optim::Stepper;
use super::train::{group_scales, restore, shuffle, snapshot};
use pipe::metrics::cider::CiderReward;
use pipe::stages::scst::{Baseline, ScstParams};

/// One line of an scst `history.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScstEpoch {
    pub epoch: usize,
    /// Mean CIDEr-D reward of the sampled train captions.
    pub reward: f64,
    /// Corpus CIDEr-D of the greedy dev captions after the epoch.
    pub dev_cider_d: f64,
    pub lr: f64,
    /// Timings go to the stage's run record, not to history.json (see `EpochRecord`).
    #[serde(skip_serializing, default)]
    pub seconds: f64,
    #[serde(skip_serializing, default)]
    pub dev_seconds: f64,
}

/// scst's `history.json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ScstHistory {
    /// Dev CIDEr-D of the model it started from.
    pub start_dev_cider_d: f64,
    pub epochs: Vec<ScstEpoch>,
    /// 0 when no epoch beat the starting model (its weights are kept).
    pub best_epoch: usize,
}

/// The training images: each one's row in the feature matrix and its index in the reward.
pub struct ScstImages<'a> {
    pub feature_rows: Vec<i64>,
    pub reward: &'a CiderReward,
}

/// Fine-tunes `model` (variables in `vs`) and leaves the best epoch's weights in `vs`.
/// `words` turns token ids into the reward's words; `dev_score` scores a model's greedy
/// dev captions (higher is better); `log` gets a line per epoch.
#[allow(clippy::too_many_arguments)]
pub fn train_scst(
    model: &dyn CaptionDecoder,
    vs: &nn::VarStore,
    features: &Tensor,
    images: &ScstImages,
    decode: &DecodeOptions,
    opts: &ScstParams,
    words: &dyn Fn(&[i64]) -> Vec<String>,
    dev_score: &mut dyn FnMut(&dyn CaptionDecoder) -> Result<f64>,
    log: &dyn Fn(String),
) -> Result<ScstHistory> {
    if images.feature_rows.is_empty() {
        bail!("no training images");
    }
    let device = vs.device();
    let features = features.to_device(device);
    let mut opt = Stepper::new(vs, opts.lr, &group_scales(opts.lr, opts.head_lr))?;
    let mut rng = ChaCha8Rng::seed_from_u64(opts.seed);
    tch::manual_seed(opts.seed as i64);
    let started = Instant::now();
    let start = dev_score(model)?;
    log(format!("dev CIDEr-D {start:.4} before fine-tuning ({:.1} s)", started.elapsed().as_secs_f64()));
    let mut history = ScstHistory { start_dev_cider_d: start, ..Default::default() };
    let (mut best, mut best_score, mut bad) = (snapshot(vs), start, 0);
    for epoch in 1..=opts.epochs {
        let t = Instant::now();
        let mut order: Vec<usize> = (0..images.feature_rows.len()).collect();
        shuffle(&mut order, &mut rng);
        let (mut reward_sum, mut reward_count) = (0.0, 0usize);
        for batch in order.chunks(opts.batch_images) {
            let (sum, count) = step(model, &mut opt, &features, images, batch, decode, opts, words, device)?;
            reward_sum += sum;
            reward_count += count;
        }
        let seconds = t.elapsed().as_secs_f64();
        let dev_cider_d = dev_score(model)?;
        let record = ScstEpoch {
            epoch,
            reward: reward_sum / reward_count.max(1) as f64,
            dev_cider_d,
            lr: opts.lr,
            seconds,
            dev_seconds: t.elapsed().as_secs_f64() - seconds,
        };
        log(format!(
            "epoch {epoch}: reward {:.4}, dev CIDEr-D {dev_cider_d:.4}, {seconds:.1} s (+{:.1} s dev)",
            record.reward, record.dev_seconds
        ));
        history.epochs.push(record);
        if dev_cider_d > best_score {
            (best, best_score, bad, history.best_epoch) = (snapshot(vs), dev_cider_d, 0, epoch);
        } else {
            bad += 1;
            if bad >= opts.patience {
                break;
            }
        }
    }
    restore(vs, &best);
    Ok(history)
}

/// One optimisation step over the images `batch` (indices into `images`). Returns the
/// sum and count of the sample rewards.
#[allow(clippy::too_many_arguments)]
fn step(
    model: &dyn CaptionDecoder,
    opt: &mut Stepper,
    features: &Tensor,
    images: &ScstImages,
    batch: &[usize],
    decode: &DecodeOptions,
    opts: &ScstParams,
    words: &dyn Fn(&[i64]) -> Vec<String>,
    device: Device,
) -> Result<(f64, usize)> {
    let samples = opts.samples;
    let rows: Vec<i64> = batch.iter().map(|&i| images.feature_rows[i]).collect();
    let encoded = model.features(&features.index_select(0, &Tensor::from_slice(&rows).to_device(device)))?;
    let image_of: Vec<i64> = (0..batch.len() as i64).flat_map(|i| std::iter::repeat_n(i, samples)).collect();
    let image_of = Tensor::from_slice(&image_of).to_device(device);
    let started = tch::no_grad(|| model.start(&encoded).select(&image_of));
    let drawn = sample_from(model, started, image_of.size()[0] as usize, device, decode)?;
    let rewards: Vec<f64> = drawn
        .iter()
        .enumerate()
        .map(|(k, (h, _))| images.reward.score(batch[k / samples], &words(&h.tokens)))
        .collect();
    let baselines: Vec<f64> = match opts.baseline {
        Baseline::Mean => rewards
            .chunks(samples)
            .flat_map(|group| {
                let total: f64 = group.iter().sum();
                group.iter().map(move |r| (total - r) / (samples - 1) as f64)
            })
            .collect(),
        Baseline::Greedy => {
            let greedy: Vec<Hypothesis> = greedy(model, &encoded, decode)?;
            let scores: Vec<f64> = greedy
                .iter()
                .enumerate()
                .map(|(i, h)| images.reward.score(batch[i], &words(&h.tokens)))
                .collect();
            (0..rewards.len()).map(|k| scores[k / samples]).collect()
        }
    };
    let advantages: Vec<f32> = rewards.iter().zip(&baselines).map(|(r, b)| (r - b) as f32).collect();
    if advantages.iter().all(|&a| a == 0.0) {
        return Ok((rewards.iter().sum(), rewards.len())); // nothing to learn from this batch
    }

    // The samples as a teacher-forced batch: inputs startseq w1 … wn, targets w1 … wn [endseq].
    let width = drawn.iter().map(|(h, _)| h.tokens.len() + 1).max().unwrap_or(1);
    let (mut inputs, mut targets, mut positions, mut target_rows) = (vec![], vec![], vec![], vec![]);
    for (row, (hyp, ended)) in drawn.iter().enumerate() {
        let mut seq = vec![decode.start_id];
        seq.extend(&hyp.tokens);
        let mut next = hyp.tokens.clone();
        if *ended {
            next.push(decode.end_id);
        }
        for (t, &word) in next.iter().enumerate() {
            positions.push((row * width + t) as i64);
            target_rows.push(row as i64);
            targets.push(word);
        }
        seq.resize(width, decode.start_id); // padding: past every target position, never read
        inputs.extend(seq);
    }
    let upload = |v: &[i64]| Tensor::from_slice(v).to_device(device);
    let inputs = upload(&inputs).view([drawn.len() as i64, width as i64]);
    let (positions, target_rows) = (upload(&positions), upload(&target_rows));
    let (logits, _) = model.target_logits(&encoded, &image_of, &inputs, &positions, &target_rows, false);
    let log_probs = (logits + banned_tokens(model, decode, device)).log_softmax(-1, Kind::Float);
    let chosen = log_probs.gather(1, &upload(&targets).unsqueeze(1), false).squeeze_dim(1);
    let advantage = Tensor::from_slice(&advantages).to_device(device).index_select(0, &target_rows);
    let loss = -(chosen * advantage).sum(Kind::Float) / targets.len() as f64;
    opt.backward_step(&loss);
    Ok((rewards.iter().sum(), rewards.len()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::decoder::AttentionDecoder;
    use crate::model::train::{torch_rng_lock, train, CaptionSet, Silent, TrainOptions};

    /// Four images (4-cell grids of 4 values) with one caption each, over words 4..=11.
    fn data() -> (Tensor, Vec<Vec<i64>>) {
        tch::manual_seed(42);
        let features = Tensor::randn([4, 16], (Kind::Float, Device::Cpu));
        let captions =
            vec![vec![2, 4, 5, 6, 3], vec![2, 7, 8, 9, 3], vec![2, 4, 8, 10, 3], vec![2, 7, 5, 11, 3]];
        (features, captions)
    }

    fn text(ids: &[i64]) -> Vec<String> {
        ids.iter().map(|i| format!("w{i}")).collect()
    }

    #[test]
    fn scst_raises_the_cider_d_of_an_under_trained_model() {
        let _rng = torch_rng_lock();
        tch::manual_seed(0);
        let vs = nn::VarStore::new(Device::Cpu);
        let cfg = crate::model::decoder::attention::tests::small(0.0, 0.0);
        let model = AttentionDecoder::new(&cfg, vs.root());
        let (features, captions) = data();
        let set = CaptionSet::from_lists(&captions, &[0, 1, 2, 3], 0);
        let xe = TrainOptions {
            lr: 0.01,
            batch_size: 4,
            max_epochs: 8,
            patience: 8,
            lr_factor: 1.0,
            lr_patience: 1,
            label_smoothing: 0.0,
            bucket_batches: 1,
            group_by_image: true,
            head_lr: None,
            seed: 0,
            device: Device::Cpu,
        };
        let empty = CaptionSet::from_lists(&[], &[], 0);
        train(&model, &vs, &features, &set, &empty, &xe, &mut Silent).unwrap();

        let reward = CiderReward::new(captions.iter().map(|c| vec![text(&c[1..c.len() - 1])]).collect());
        let decode =
            DecodeOptions { start_id: 2, end_id: 3, banned: vec![0, 1, 2], max_steps: 5, block_repeats: 0 };
        let mut score = |m: &dyn CaptionDecoder| -> Result<f64> {
            let hyps = greedy(m, &m.features(&features)?, &decode)?;
            Ok(hyps.iter().enumerate().map(|(i, h)| reward.score(i, &text(&h.tokens))).sum::<f64>() / 4.0)
        };
        let opts = ScstParams {
            lr: 0.01,
            epochs: 40,
            patience: 40,
            batch_images: 4,
            samples: 4,
            baseline: Baseline::Mean,
            seed: 1,
            ..ScstParams::default()
        };
        let images = ScstImages { feature_rows: vec![0, 1, 2, 3], reward: &reward };
        let words = |ids: &[i64]| text(ids);
        let history =
            train_scst(&model, &vs, &features, &images, &decode, &opts, &words, &mut score, &|_| {}).unwrap();
        let best = history.epochs.iter().map(|e| e.dev_cider_d).fold(f64::MIN, f64::max);
        assert!(
            best > history.start_dev_cider_d + 0.5,
            "dev CIDEr-D {} -> best {best}: {history:?}",
            history.start_dev_cider_d
        );
        // The kept weights are the best epoch's.
        assert!((score(&model).unwrap() - best).abs() < 1e-9);
        assert!(history.epochs.iter().all(|e| e.reward.is_finite()));
    }
}

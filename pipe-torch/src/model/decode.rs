//! Batched greedy and beam-search decoding with any [`StepDecoder`] (a model or an ensemble).
//!
//! Both decode many images at once: every live hypothesis of every image is one row of
//! the decoder's batch, and rows whose image is finished are dropped, so a long caption
//! costs only its own rows. The host sees one small copy per step (the chosen tokens and
//! scores), which it needs anyway to decide what has finished.
//!
//! The beam follows the peer (`decode_eval.py`) exactly: a hypothesis that emits endseq is
//! set aside and the image's beam shrinks by one; the image is done when its beam is empty
//! or after `max_steps` tokens; if nothing finished, the live hypotheses count. The pick
//! is the best raw log-probability, or with `length_norm` the best log-probability divided
//! by the number of tokens (endseq included). Width 1 gives exactly the greedy result.

use anyhow::{ensure, Result};
use tch::{Kind, Tensor};

use super::decoder::{DecodeState, StepDecoder};

/// What every decoder needs to know about the vocabulary and the length limit.
#[derive(Debug, Clone)]
pub struct DecodeOptions {
    pub start_id: i64,
    pub end_id: i64,
    /// Tokens never emitted (pad, unk, startseq).
    pub banned: Vec<i64>,
    /// Most tokens generated per image, endseq included (the peer uses 34).
    pub max_steps: usize,
    /// Never repeat an n-gram of this many words within a caption (0 = off). Merge models
    /// tend to loop ("in the water in the water"); 3 is the usual choice.
    pub block_repeats: usize,
}

/// One decoded caption: word ids without startseq/endseq, and its summed log-probability
/// (the endseq step included when it was emitted).
#[derive(Debug, Clone, PartialEq)]
pub struct Hypothesis {
    pub tokens: Vec<i64>,
    pub log_prob: f64,
}

/// Greedy decoding. features (B, …) from [`StepDecoder::features`], on the model's
/// device → B hypotheses.
pub fn greedy(model: &dyn StepDecoder, features: &Tensor, opts: &DecodeOptions) -> Result<Vec<Hypothesis>> {
    let _guard = tch::no_grad_guard();
    let batch = features.size()[0] as usize;
    let ban = ban_vector(model, opts, features.device());
    let mut state = model.start(features);
    let mut rows: Vec<usize> = (0..batch).collect(); // image of each live row
    let mut out: Vec<Hypothesis> = vec![Hypothesis { tokens: vec![], log_prob: 0.0 }; batch];
    let mut scores = vec![0f64; batch];
    let mut tokens = Tensor::full([batch as i64], opts.start_id, (Kind::Int64, features.device()));
    for _ in 0..opts.max_steps {
        let (lp, next) = model.step(&tokens, &state);
        let lp = lp + &ban;
        let lp =
            block_repeats(lp, rows.iter().map(|&image| out[image].tokens.as_slice()), opts.block_repeats);
        let (best, words) = lp.max_dim(1, false);
        let best = Vec::<f32>::try_from(best.to_device(tch::Device::Cpu))?;
        let words = Vec::<i64>::try_from(words.to_device(tch::Device::Cpu))?;
        let mut keep = Vec::with_capacity(rows.len());
        for (r, (&image, &word)) in rows.iter().zip(&words).enumerate() {
            scores[image] += best[r] as f64;
            if word != opts.end_id {
                out[image].tokens.push(word);
                keep.push(r as i64);
            }
        }
        state = next;
        if keep.len() < rows.len() {
            if keep.is_empty() {
                rows.clear();
                break;
            }
            state = state.select(&Tensor::from_slice(&keep).to_device(features.device()));
            rows = keep.iter().map(|&r| rows[r as usize]).collect();
        }
        let live: Vec<i64> = rows.iter().map(|&image| *out[image].tokens.last().unwrap()).collect();
        tokens = Tensor::from_slice(&live).to_device(features.device());
    }
    for (h, s) in out.iter_mut().zip(scores) {
        h.log_prob = s;
    }
    Ok(out)
}

/// Samples one caption per row of features (B, …) from the model's next-word
/// distribution, renormalised without the banned tokens, drawing from torch's global
/// generator (seed it for a reproducible draw). Returns each caption with its summed
/// log-probability under that distribution, and whether it ended with endseq (rather than
/// at `max_steps`). No n-gram blocking: a sample follows the model.
pub fn sample(
    model: &dyn StepDecoder,
    features: &Tensor,
    opts: &DecodeOptions,
) -> Result<Vec<(Hypothesis, bool)>> {
    let _guard = tch::no_grad_guard();
    sample_from(model, model.start(features), features.size()[0] as usize, features.device(), opts)
}

/// [`sample`] from a started state of `batch` rows (e.g. one image's state repeated once
/// per sample, so the image is encoded once).
pub fn sample_from(
    model: &dyn StepDecoder,
    mut state: DecodeState,
    batch: usize,
    device: tch::Device,
    opts: &DecodeOptions,
) -> Result<Vec<(Hypothesis, bool)>> {
    let _guard = tch::no_grad_guard();
    let ban = ban_vector(model, opts, device);
    let mut rows: Vec<usize> = (0..batch).collect();
    let mut out = vec![(Hypothesis { tokens: vec![], log_prob: 0.0 }, false); batch];
    let mut tokens = Tensor::full([batch as i64], opts.start_id, (Kind::Int64, device));
    for _ in 0..opts.max_steps {
        let (lp, next) = model.step(&tokens, &state);
        let lp = (lp + &ban).log_softmax(-1, Kind::Float);
        let words = lp.exp().multinomial(1, true);
        let chosen = lp.gather(1, &words, false);
        let words = Vec::<i64>::try_from(words.reshape([-1]).to_device(tch::Device::Cpu))?;
        let chosen = Vec::<f32>::try_from(chosen.reshape([-1]).to_device(tch::Device::Cpu))?;
        let mut keep = Vec::with_capacity(rows.len());
        for (r, &image) in rows.iter().enumerate() {
            let (hyp, ended) = &mut out[image];
            hyp.log_prob += chosen[r] as f64;
            if words[r] == opts.end_id {
                *ended = true;
            } else {
                hyp.tokens.push(words[r]);
                keep.push(r as i64);
            }
        }
        if keep.is_empty() {
            break;
        }
        state = if keep.len() < rows.len() {
            next.select(&Tensor::from_slice(&keep).to_device(device))
        } else {
            next
        };
        rows = keep.iter().map(|&r| rows[r as usize]).collect();
        let live: Vec<i64> = rows.iter().map(|&image| *out[image].0.tokens.last().unwrap()).collect();
        tokens = Tensor::from_slice(&live).to_device(device);
    }
    Ok(out)
}

/// (V,) with -inf at the tokens `opts` bans and 0 elsewhere, to add to logits or log-probs.
pub fn banned_tokens(model: &dyn StepDecoder, opts: &DecodeOptions, device: tch::Device) -> Tensor {
    ban_vector(model, opts, device)
}

/// One image's beam while decoding.
struct Beam {
    /// Live hypotheses: (word ids, summed log-prob). Their rows are contiguous in the batch.
    live: Vec<(Vec<i64>, f64)>,
    /// Finished hypotheses: (word ids, summed log-prob, tokens incl. endseq).
    done: Vec<(Vec<i64>, f64, usize)>,
}

/// Beam search of `width` for every image of features (B, …) at once → B hypotheses.
pub fn beam_search(
    model: &dyn StepDecoder,
    features: &Tensor,
    opts: &DecodeOptions,
    width: usize,
    length_norm: bool,
) -> Result<Vec<Hypothesis>> {
    Ok(beam_search_ranked(model, features, opts, width, length_norm)?
        .into_iter()
        .map(|ranked| ranked.into_iter().next().expect("a beam always has a hypothesis"))
        .collect())
}

/// [`beam_search`], keeping every finished hypothesis of each image's beam, best first
/// (the first is [`beam_search`]'s pick).
pub fn beam_search_ranked(
    model: &dyn StepDecoder,
    features: &Tensor,
    opts: &DecodeOptions,
    width: usize,
    length_norm: bool,
) -> Result<Vec<Vec<Hypothesis>>> {
    ensure!(width >= 1, "beam width must be at least 1");
    let _guard = tch::no_grad_guard();
    let device = features.device();
    let vocab = model.vocab_size();
    let ban = ban_vector(model, opts, device);
    let mut state = model.start(features);
    let mut beams: Vec<Beam> =
        (0..features.size()[0]).map(|_| Beam { live: vec![(vec![], 0.0)], done: vec![] }).collect();
    let mut active: Vec<usize> = (0..beams.len()).collect(); // images with live rows, in row order
    let mut tokens = Tensor::full([beams.len() as i64], opts.start_id, (Kind::Int64, device));
    let mut row_scores = vec![0f64; beams.len()];
    let banned: Vec<bool> = (0..vocab).map(|id| opts.banned.contains(&id)).collect();
    for _ in 0..opts.max_steps {
        let (lp, next) = model.step(&tokens, &state);
        let live = active.iter().flat_map(|&image| beams[image].live.iter().map(|(w, _)| w.as_slice()));
        let k = (width as i64).min(vocab) as usize;
        let (values, index) = if device == tch::Device::Cpu {
            let blocked: Vec<Vec<i64>> = live.map(|words| blocked_words(words, opts.block_repeats)).collect();
            top_k_per_row(&lp, k, &banned, &blocked)
        } else {
            let lp = block_repeats(lp + &ban, live, opts.block_repeats);
            let (values, index) = lp.topk(k as i64, -1, true, true);
            (
                Vec::<f32>::try_from(values.to_device(tch::Device::Cpu).reshape([-1]))?,
                Vec::<i64>::try_from(index.to_device(tch::Device::Cpu).reshape([-1]))?,
            )
        };
        let (top_scores, top_index) =
            top_per_image(&values, &index, k, &row_scores, &beams, &active, width, vocab);
        let plan = advance(&mut beams, &active, &top_scores, &top_index, width, vocab, opts.end_id);
        active = plan.active;
        if plan.src_rows.is_empty() {
            break;
        }
        state = next.select(&Tensor::from_slice(&plan.src_rows).to_device(device));
        tokens = Tensor::from_slice(&plan.tokens).to_device(device);
        row_scores = plan.scores;
    }
    Ok(beams.into_iter().map(|b| ranked(b, length_norm)).collect())
}

/// Each row's `k` best words of log-probs `lp` (R, V) on the CPU, read in place: banned
/// words and the row's `blocked` ones are skipped. Returns (R·k) values and word ids, each
/// row's best first (equal values by word id); slots past the row's finite words stay -inf.
///
/// It gives what adding the ban vector, masking the blocked words and `topk` give on a
/// device, without three passes over (R, V) and without torch's per-row partial sort.
fn top_k_per_row(lp: &Tensor, k: usize, banned: &[bool], blocked: &[Vec<i64>]) -> (Vec<f32>, Vec<i64>) {
    let lp = lp.to_kind(Kind::Float).contiguous();
    let (rows, vocab) = (lp.size()[0] as usize, banned.len());
    assert_eq!(lp.size(), [rows as i64, vocab as i64], "log-probs are (rows, vocabulary)");
    // SAFETY: `lp` is a contiguous Float tensor on the CPU of rows·vocab elements, alive
    // and unchanged until this function returns.
    let all = unsafe { std::slice::from_raw_parts(lp.data_ptr() as *const f32, rows * vocab) };
    let (mut values, mut index) = (vec![f32::NEG_INFINITY; rows * k], vec![0i64; rows * k]);
    const LANES: usize = 16;
    for (r, row) in all.chunks_exact(vocab).enumerate() {
        let (best, ids) = (&mut values[r * k..(r + 1) * k], &mut index[r * k..(r + 1) * k]);
        for (c, chunk) in row.chunks(LANES).enumerate() {
            // Most chunks hold nothing above the k-th best so far: one vectorised max says so.
            let top = chunk.iter().fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m });
            if top <= best[k - 1] {
                continue;
            }
            for (j, &v) in chunk.iter().enumerate() {
                let word = c * LANES + j;
                if v <= best[k - 1] || banned[word] || blocked[r].contains(&(word as i64)) {
                    continue;
                }
                let at = best.iter().position(|&b| v > b).expect("v beats the k-th best");
                best.copy_within(at..k - 1, at + 1);
                ids.copy_within(at..k - 1, at + 1);
                (best[at], ids[at]) = (v, word as i64);
            }
        }
    }
    (values, index)
}

/// Each active image's `width` best candidates over its live rows: (G·width) scores and
/// flat indices (slot·V + word), host side, from each row's `k` best words (`values`,
/// `index`: (R·k)). Missing slots score -inf.
///
/// A row's score is the same for all its words, so only a row's `width` best log-probs
/// can be among its image's `width` best candidates: a choice among at most width²
/// candidates per image, instead of a top-k over an (images, width·V) grid. Scores add
/// up in f64, so a long prefix's sum does not round two candidates' different f32
/// log-probs into a tie (width 1 then ranks exactly as greedy does); equal scores keep
/// the grid's order, by flat index.
#[allow(clippy::too_many_arguments)]
fn top_per_image(
    values: &[f32],
    index: &[i64],
    k: usize,
    row_scores: &[f64],
    beams: &[Beam],
    active: &[usize],
    width: usize,
    vocab: i64,
) -> (Vec<f64>, Vec<i64>) {
    let (mut top_scores, mut top_index) =
        (vec![f64::NEG_INFINITY; active.len() * width], vec![0; active.len() * width]);
    let mut row = 0;
    let mut candidates: Vec<(f64, i64)> = Vec::with_capacity(width * k);
    for (g, &image) in active.iter().enumerate() {
        candidates.clear();
        for slot in 0..beams[image].live.len() {
            let at = (row + slot) * k;
            for j in at..at + k {
                candidates.push((values[j] as f64 + row_scores[row + slot], slot as i64 * vocab + index[j]));
            }
        }
        candidates.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        for (j, &(score, flat)) in candidates.iter().take(width).enumerate() {
            (top_scores[g * width + j], top_index[g * width + j]) = (score, flat);
        }
        row += beams[image].live.len();
    }
    (top_scores, top_index)
}

/// The next step's rows, host side.
struct StepPlan {
    active: Vec<usize>,
    /// For each new row: the old row it continues, its token and its score.
    src_rows: Vec<i64>,
    tokens: Vec<i64>,
    scores: Vec<f64>,
}

/// Applies the chosen candidates to each beam, as the peer does: the first `k` candidates
/// are taken; endseq ones finish and shrink the beam.
fn advance(
    beams: &mut [Beam],
    active: &[usize],
    top_scores: &[f64],
    top_index: &[i64],
    width: usize,
    vocab: i64,
    end_id: i64,
) -> StepPlan {
    let mut plan = StepPlan { active: vec![], src_rows: vec![], tokens: vec![], scores: vec![] };
    let mut row_start = 0usize;
    for (g, &image) in active.iter().enumerate() {
        let beam = &mut beams[image];
        // The peer's k: the width less what has finished (at step 0 that exceeds the live count).
        let k = width - beam.done.len();
        let mut next = Vec::with_capacity(k);
        for j in 0..k {
            let (score, flat) = (top_scores[g * width + j], top_index[g * width + j]);
            if score == f64::NEG_INFINITY {
                break;
            }
            let (slot, word) = ((flat / vocab) as usize, flat % vocab);
            let words = &beam.live[slot].0;
            if word == end_id {
                beam.done.push((words.clone(), score, words.len() + 1));
            } else {
                let mut extended = words.clone();
                extended.push(word);
                plan.src_rows.push((row_start + slot) as i64);
                plan.tokens.push(word);
                plan.scores.push(score);
                next.push((extended, score));
            }
        }
        row_start += beam.live.len();
        beam.live = next;
        if !beam.live.is_empty() {
            plan.active.push(image);
        }
    }
    plan
}

/// One image's hypotheses, best first: the finished ones (or the live ones when none
/// finished), by raw or length-normalised log-probability. The sort is stable, so the
/// first best wins ties, like Python's `max`.
fn ranked(beam: Beam, length_norm: bool) -> Vec<Hypothesis> {
    let done = if beam.done.is_empty() {
        beam.live
            .into_iter()
            .map(|(w, s)| {
                let n = w.len();
                (w, s, n)
            })
            .collect()
    } else {
        beam.done
    };
    let key = |d: &(Vec<i64>, f64, usize)| if length_norm { d.1 / d.2.max(1) as f64 } else { d.1 };
    let mut done: Vec<_> = done.into_iter().map(|d| (key(&d), d)).collect();
    done.sort_by(|a, b| b.0.total_cmp(&a.0));
    done.into_iter().map(|(_, (tokens, log_prob, _))| Hypothesis { tokens, log_prob }).collect()
}

/// Sets log-probs (R, V) to -inf where the row's next word would repeat an n-gram of
/// `n` words already in it; `rows` gives each row's words so far.
fn block_repeats<'a>(mut lp: Tensor, rows: impl Iterator<Item = &'a [i64]>, n: usize) -> Tensor {
    if n == 0 {
        return lp;
    }
    let (mut at_row, mut at_word) = (Vec::new(), Vec::new());
    for (r, words) in rows.enumerate() {
        for word in repeated_continuations(words, n) {
            at_row.push(r as i64);
            at_word.push(word);
        }
    }
    if !at_row.is_empty() {
        let device = lp.device();
        let index = [
            Some(Tensor::from_slice(&at_row).to_device(device)),
            Some(Tensor::from_slice(&at_word).to_device(device)),
        ];
        let minus_inf = Tensor::from_slice(&[f32::NEG_INFINITY]).to_device(device);
        lp = lp.index_put(&index, &minus_inf, false);
    }
    lp
}

/// The words a row must not emit next: those completing a repeated n-gram (none when n is 0).
fn blocked_words(words: &[i64], n: usize) -> Vec<i64> {
    if n == 0 {
        Vec::new()
    } else {
        repeated_continuations(words, n)
    }
}

/// The words that would complete an n-gram already in `words` (n ≥ 1).
fn repeated_continuations(words: &[i64], n: usize) -> Vec<i64> {
    if words.len() < n {
        return Vec::new();
    }
    let prefix = &words[words.len() + 1 - n..];
    (0..=words.len() - n).filter(|&i| words[i..i + n - 1] == *prefix).map(|i| words[i + n - 1]).collect()
}

/// (V,) with -inf at banned ids and 0 elsewhere, added to log-probs.
fn ban_vector(model: &dyn StepDecoder, opts: &DecodeOptions, device: tch::Device) -> Tensor {
    let mut ban = vec![0f32; model.vocab_size() as usize];
    for &id in &opts.banned {
        if let Some(slot) = ban.get_mut(id as usize) {
            *slot = f32::NEG_INFINITY;
        }
    }
    Tensor::from_slice(&ban).to_device(device)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::decoder::{
        AttentionConfig, AttentionDecoder, CnnConfig, CnnDecoder, DecoderConfig, Ensemble, MergeDecoder,
        StepDecoder, TransformerConfig, TransformerDecoder,
    };
    use tch::{nn, Device};

    /// A random model; holds the RNG lock until the caller has drawn its features too.
    fn model(seed: i64) -> (std::sync::MutexGuard<'static, ()>, nn::VarStore, MergeDecoder) {
        let rng = crate::model::train::torch_rng_lock();
        tch::manual_seed(seed);
        let vs = nn::VarStore::new(Device::Cpu);
        let cfg = DecoderConfig {
            vocab_size: 30,
            feature_dim: 10,
            embed: 16,
            hidden: 16,
            dense: 12,
            dropout: 0.5,
            max_len: 12,
            pad_id: 0,
        };
        let dec = MergeDecoder::new(&cfg, vs.root());
        (rng, vs, dec)
    }

    fn opts() -> DecodeOptions {
        DecodeOptions { start_id: 2, end_id: 3, banned: vec![0, 1, 2], max_steps: 11, block_repeats: 0 }
    }

    #[test]
    fn beam_width_one_equals_greedy() {
        for seed in 0..5 {
            let (_rng, _vs, dec) = model(seed);
            let feats = Tensor::randn([17, 10], (Kind::Float, Device::Cpu)) * 3.0;
            let g = greedy(&dec, &feats, &opts()).unwrap();
            let b = beam_search(&dec, &feats, &opts(), 1, false).unwrap();
            let bn = beam_search(&dec, &feats, &opts(), 1, true).unwrap();
            assert_eq!(g, b, "seed {seed}");
            assert_eq!(g, bn, "seed {seed}");
            assert!(g.iter().all(|h| h.tokens.iter().all(|&t| t > 2)));
        }
    }

    #[test]
    fn blocked_repeats_never_appear() {
        let (_rng, _vs, dec) = model(0);
        let feats = Tensor::randn([17, 10], (Kind::Float, Device::Cpu)) * 3.0;
        let o = DecodeOptions { block_repeats: 2, ..opts() };
        let g = greedy(&dec, &feats, &o).unwrap();
        assert_eq!(g, beam_search(&dec, &feats, &o, 1, false).unwrap());
        for h in g.iter().chain(&beam_search(&dec, &feats, &o, 4, true).unwrap()) {
            let pairs: Vec<_> = h.tokens.windows(2).collect();
            let distinct: std::collections::HashSet<_> = pairs.iter().collect();
            assert_eq!(pairs.len(), distinct.len(), "{:?}", h.tokens);
        }
        assert_eq!(repeated_continuations(&[5, 6, 7, 5, 6], 3), [7]);
        assert_eq!(repeated_continuations(&[5, 5], 1), [5, 5]);
    }

    #[test]
    fn host_top_k_equals_masking_and_torch_topk() {
        let (_rng, _vs, dec) = model(5);
        let lp = Tensor::randn([9, 30], (Kind::Float, Device::Cpu)).log_softmax(-1, Kind::Float);
        let prefixes: Vec<Vec<i64>> = (0..9).map(|r| vec![4, 5 + r % 3, 4, 5 + r % 3, 4]).collect();
        for (k, n) in [(1, 0), (3, 2), (5, 3), (30, 2)] {
            let banned: Vec<bool> = (0..30).map(|id| opts().banned.contains(&id)).collect();
            let blocked: Vec<Vec<i64>> = prefixes.iter().map(|p| blocked_words(p, n)).collect();
            let (values, index) = top_k_per_row(&lp, k, &banned, &blocked);
            let masked = block_repeats(
                &lp + ban_vector(&dec, &opts(), Device::Cpu),
                prefixes.iter().map(Vec::as_slice),
                n,
            );
            let (tv, ti) = masked.topk(k as i64, -1, true, true);
            let tv = Vec::<f32>::try_from(tv.reshape([-1])).unwrap();
            let ti = Vec::<i64>::try_from(ti.reshape([-1])).unwrap();
            assert_eq!(values, tv, "k {k} n {n}");
            // Slots past the finite words hold -inf in both; only their ids may differ.
            for ((v, a), b) in values.iter().zip(&index).zip(&ti) {
                assert!(*v == f32::NEG_INFINITY || a == b, "k {k} n {n}");
            }
        }
    }

    #[test]
    fn batched_beam_equals_one_image_at_a_time() {
        let (_rng, _vs, dec) = model(3);
        let feats = Tensor::randn([6, 10], (Kind::Float, Device::Cpu)) * 3.0;
        let all = beam_search(&dec, &feats, &opts(), 4, true).unwrap();
        for (i, h) in all.iter().enumerate() {
            let one = beam_search(&dec, &feats.narrow(0, i as i64, 1), &opts(), 4, true).unwrap();
            assert_eq!(one[0].tokens, h.tokens, "image {i}");
            assert!((one[0].log_prob - h.log_prob).abs() < 1e-4);
        }
    }

    #[test]
    fn wider_beam_finds_no_worse_raw_score() {
        let (_rng, _vs, dec) = model(4);
        let feats = Tensor::randn([8, 10], (Kind::Float, Device::Cpu)) * 3.0;
        let g = greedy(&dec, &feats, &opts()).unwrap();
        let b = beam_search(&dec, &feats, &opts(), 5, false).unwrap();
        let (sg, sb): (f64, f64) = (g.iter().map(|h| h.log_prob).sum(), b.iter().map(|h| h.log_prob).sum());
        assert!(sb >= sg - 1e-4, "beam {sb} < greedy {sg}");
        assert!(b.iter().all(|h| h.tokens.len() <= 11));
    }

    /// A random attention model over 5-cell grids of 6 values, and its batch of features.
    fn attention_model(seed: i64, images: i64) -> (nn::VarStore, AttentionDecoder, Tensor) {
        let _rng = crate::model::train::torch_rng_lock();
        tch::manual_seed(seed);
        let vs = nn::VarStore::new(Device::Cpu);
        let cfg = AttentionConfig {
            vocab_size: 30,
            feature_dim: 6,
            cells: 5,
            embed: 12,
            hidden: 16,
            attention: 8,
            dropout: 0.5,
            alpha_c: 1.0,
            max_len: 12,
            pad_id: 0,
        };
        let dec = AttentionDecoder::new(&cfg, vs.root());
        let rows = Tensor::randn([images, 30], (Kind::Float, Device::Cpu)) * 3.0;
        let feats = dec.features(&rows).unwrap();
        (vs, dec, feats)
    }

    /// Beam width 1 equals greedy, with and without length normalisation, and a batch
    /// decodes as its images one at a time.
    fn check_beam_one_and_batching(dec: &dyn StepDecoder, feats: &Tensor, what: &str) {
        let g = greedy(dec, feats, &opts()).unwrap();
        assert_eq!(g, beam_search(dec, feats, &opts(), 1, false).unwrap(), "{what}");
        assert_eq!(g, beam_search(dec, feats, &opts(), 1, true).unwrap(), "{what}");
        let wide = beam_search(dec, feats, &opts(), 3, true).unwrap();
        for (i, h) in wide.iter().enumerate() {
            let one = beam_search(dec, &feats.narrow(0, i as i64, 1), &opts(), 3, true).unwrap();
            assert_eq!(one[0].tokens, h.tokens, "{what} image {i}");
        }
    }

    #[test]
    fn attention_beam_width_one_equals_greedy_and_batching_changes_nothing() {
        for seed in 0..3 {
            let (_vs, dec, feats) = attention_model(seed, 9);
            check_beam_one_and_batching(&dec, &feats, &format!("seed {seed}"));
        }
    }

    #[test]
    fn transformer_and_cnn_beam_width_one_equals_greedy_and_batching_changes_nothing() {
        for seed in 0..3 {
            let _rng = crate::model::train::torch_rng_lock();
            tch::manual_seed(seed);
            let vs = nn::VarStore::new(Device::Cpu);
            let cfg = TransformerConfig {
                vocab_size: 30,
                feature_dim: 6,
                grid: [1, 5],
                embed: 16,
                width: 16,
                heads: 4,
                layers: 2,
                dropout: 0.1,
                max_len: 12,
                pad_id: 0,
            };
            let transformer = TransformerDecoder::new(&cfg, vs.root());
            let rows = Tensor::randn([9, 30], (Kind::Float, Device::Cpu)) * 3.0;
            let feats = transformer.features(&rows).unwrap();
            check_beam_one_and_batching(&transformer, &feats, &format!("transformer, seed {seed}"));
            let cfg = CnnConfig {
                vocab_size: 30,
                feature_dim: 10,
                embed: 12,
                filters: 16,
                dense: 12,
                dropout: 0.5,
                max_len: 12,
                pad_id: 0,
            };
            let cnn = CnnDecoder::new(&cfg, vs.root() / "cnn");
            let feats = Tensor::randn([9, 10], (Kind::Float, Device::Cpu)) * 3.0;
            check_beam_one_and_batching(&cnn, &feats, &format!("cnn, seed {seed}"));
        }
    }

    #[test]
    fn samples_follow_the_model_and_are_reproducible_with_a_seed() {
        let (_vs, dec, feats) = attention_model(3, 4);
        let draw = |seed| {
            let _rng = crate::model::train::torch_rng_lock();
            tch::manual_seed(seed);
            sample(&dec, &feats, &opts()).unwrap()
        };
        let (a, b, c) = (draw(1), draw(1), draw(2));
        assert_eq!(a, b);
        assert_ne!(a, c);
        for (hyp, ended) in &a {
            assert!(hyp.tokens.iter().all(|&t| t > 2), "{hyp:?}");
            assert!(*ended || hyp.tokens.len() == opts().max_steps, "{hyp:?}");
            assert!(hyp.log_prob < 0.0);
        }
    }

    #[test]
    fn an_ensemble_of_one_equals_its_model() {
        let (_vs, dec, feats) = attention_model(7, 6);
        let alone = beam_search(&dec, &feats, &opts(), 3, true).unwrap();
        let (_vs2, twin, _) = attention_model(7, 6); // the same weights, as a member
        let ensemble = Ensemble::new(vec![Box::new(twin)]).unwrap();
        let rows = feats.reshape([6, 30]);
        let together = beam_search(&ensemble, &ensemble.features(&rows).unwrap(), &opts(), 3, true).unwrap();
        assert_eq!(alone, together);
        assert_eq!(greedy(&dec, &feats, &opts()).unwrap(), greedy(&ensemble, &rows, &opts()).unwrap());
    }

    #[test]
    fn an_ensemble_averages_its_members_log_probabilities() {
        let (_vs, a, feats) = attention_model(1, 4);
        let (_vs2, b, _) = attention_model(2, 4);
        let tokens = Tensor::full([4], 2, (Kind::Int64, Device::Cpu));
        let (la, _) = a.step(&tokens, &a.start(&feats));
        let (lb, _) = b.step(&tokens, &b.start(&feats));
        let (_vs3, a2, _) = attention_model(1, 4);
        let (_vs4, b2, _) = attention_model(2, 4);
        let ensemble = Ensemble::new(vec![Box::new(a2), Box::new(b2)]).unwrap();
        let rows = ensemble.features(&feats.reshape([4, 30])).unwrap();
        let (mean, state) = ensemble.step(&tokens, &ensemble.start(&rows));
        assert!(mean.allclose(&((la + lb) / 2.0), 1e-6, 1e-6, false));
        assert_eq!(state.select(&Tensor::from_slice(&[3i64, 0])).rows[1].size()[0], 2);
        let hyps = beam_search(&ensemble, &rows, &opts(), 2, true).unwrap();
        assert_eq!(hyps.len(), 4);
    }
}

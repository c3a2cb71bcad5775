//! Corpus BLEU-1..4 in the two conventions captioning papers report.
//!
//! Both sum clipped n-gram matches and n-gram counts over the corpus before dividing
//! (micro-averaging) and pick, per image, the reference length closest to the hypothesis
//! (ties to the shorter one). They differ in details that move scores visibly:
//!
//! - pycocoevalcap's `BleuScorer` counts `max(0, len - n + 1)` n-grams per hypothesis,
//!   adds `tiny = 1e-15` to matches and `small = 1e-9` to counts (so a zero precision gives
//!   a tiny, not zero, score), and applies the brevity penalty to the corpus ratio
//!   `(hyp + tiny) / (ref + small)`.
//! - NLTK's `corpus_bleu` counts at least 1 n-gram per hypothesis, returns exactly 0 when
//!   no unigram matches, and otherwise (no smoothing) replaces a zero precision by the
//!   smallest positive double, warning that the score "evaluates to 0" (it is ~1e-77).

use crate::data::fxhash::FxHashMap;

use super::{ngram_counts, TokenizedSet};

const MAX_N: usize = 4;

/// What one hypothesis contributes to the corpus sums.
#[derive(Debug, Default, Clone, Copy)]
struct Contribution {
    hyp_len: usize,
    ref_len: usize,
    /// Clipped matches of order n+1.
    matches: [usize; MAX_N],
    /// N-grams of order n+1 in the hypothesis.
    ngrams: [usize; MAX_N],
}

/// pycocoevalcap `Bleu(4).compute_score` (its corpus score, option `closest`).
pub fn coco_bleu(sets: &[TokenizedSet]) -> [f64; 4] {
    const TINY: f64 = 1e-15;
    const SMALL: f64 = 1e-9;
    let total = corpus_sums(sets);
    let ratio = (total.hyp_len as f64 + TINY) / (total.ref_len as f64 + SMALL);
    let penalty = if ratio < 1.0 { (1.0 - 1.0 / ratio).exp() } else { 1.0 };
    let mut product = 1.0;
    let mut scores = [0.0; MAX_N];
    for (k, score) in scores.iter_mut().enumerate() {
        product *= (total.matches[k] as f64 + TINY) / (total.ngrams[k] as f64 + SMALL);
        *score = product.powf(1.0 / (k + 1) as f64) * penalty;
    }
    scores
}

/// NLTK `corpus_bleu` with weights `(1/n,) * n` for n = 1..4 and no smoothing.
pub fn nltk_bleu(sets: &[TokenizedSet]) -> [f64; 4] {
    let mut total = corpus_sums(sets);
    // NLTK's modified precision never divides by less than 1 per hypothesis.
    total.ngrams = [0; MAX_N];
    for set in sets {
        for (k, n) in total.ngrams.iter_mut().enumerate() {
            *n += set.hypothesis.len().saturating_sub(k).max(1);
        }
    }
    if total.matches[0] == 0 {
        return [0.0; MAX_N];
    }
    let penalty = nltk_brevity_penalty(total.ref_len, total.hyp_len);
    let mut scores = [0.0; MAX_N];
    for (n, score) in scores.iter_mut().enumerate().map(|(k, s)| (k + 1, s)) {
        let weight = 1.0 / n as f64;
        let log_sum: f64 = (0..n)
            .map(|k| {
                let p = if total.matches[k] == 0 {
                    f64::MIN_POSITIVE
                } else {
                    total.matches[k] as f64 / total.ngrams[k] as f64
                };
                weight * p.ln()
            })
            .sum();
        *score = penalty * log_sum.exp();
    }
    scores
}

fn nltk_brevity_penalty(ref_len: usize, hyp_len: usize) -> f64 {
    if hyp_len > ref_len {
        1.0
    } else if hyp_len == 0 {
        0.0
    } else {
        (1.0 - ref_len as f64 / hyp_len as f64).exp()
    }
}

/// Sums every hypothesis's contribution (with pycocoevalcap's n-gram counts).
fn corpus_sums(sets: &[TokenizedSet]) -> Contribution {
    let mut total = Contribution::default();
    for c in sets.iter().map(contribution) {
        total.hyp_len += c.hyp_len;
        total.ref_len += c.ref_len;
        for k in 0..MAX_N {
            total.matches[k] += c.matches[k];
            total.ngrams[k] += c.ngrams[k];
        }
    }
    total
}

fn contribution(set: &TokenizedSet) -> Contribution {
    let hyp_len = set.hypothesis.len();
    let mut max_ref: FxHashMap<&[String], usize> = FxHashMap::default();
    for reference in &set.references {
        for (gram, count) in ngram_counts(reference, MAX_N) {
            let best = max_ref.entry(gram).or_insert(0);
            *best = (*best).max(count);
        }
    }
    let mut c = Contribution {
        hyp_len,
        ref_len: closest_length(&set.references, hyp_len),
        ..Contribution::default()
    };
    for (gram, count) in ngram_counts(&set.hypothesis, MAX_N) {
        c.matches[gram.len() - 1] += count.min(max_ref.get(gram).copied().unwrap_or(0));
    }
    for (k, n) in c.ngrams.iter_mut().enumerate() {
        *n = hyp_len.saturating_sub(k);
    }
    c
}

/// The reference length closest to `hyp_len`, the shorter one on a tie.
fn closest_length(references: &[Vec<String>], hyp_len: usize) -> usize {
    references.iter().map(Vec::len).min_by_key(|&len| (len.abs_diff(hyp_len), len)).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::words;

    fn set(hyp: &str, refs: &[&str]) -> TokenizedSet {
        TokenizedSet { hypothesis: words(hyp), references: refs.iter().map(|r| words(r)).collect() }
    }

    #[test]
    fn identical_captions_score_one() {
        let sets = [set("a dog runs on the grass", &["a dog runs on the grass"])];
        for score in coco_bleu(&sets).into_iter().chain(nltk_bleu(&sets)) {
            assert!((score - 1.0).abs() < 1e-6, "{score}");
        }
    }

    #[test]
    fn closest_reference_length_breaks_ties_to_the_shorter() {
        let refs = [words("a b"), words("a b c d e f")];
        assert_eq!(closest_length(&refs, 4), 2);
        assert_eq!(closest_length(&refs, 5), 6);
    }

    #[test]
    fn nltk_returns_zero_without_unigram_matches_and_tiny_without_4gram_matches() {
        assert_eq!(nltk_bleu(&[set("x y z", &["a b c"])]), [0.0; 4]);
        let scores = nltk_bleu(&[set("a b c d", &["a b c e"])]);
        assert!(scores[2] > 0.1 && scores[3] < 1e-70, "{scores:?}");
    }

    #[test]
    fn coco_counts_no_ngrams_for_short_hypotheses() {
        let c = contribution(&set("a b", &["a b c"]));
        assert_eq!(c.ngrams, [2, 1, 0, 0]);
        assert_eq!(c.matches, [2, 1, 0, 0]);
    }

    #[test]
    fn matches_the_reference_fixture() {
        for case in &crate::metrics::fixture::load().cases {
            let sets = crate::metrics::tokenize(&case.sets(), crate::metrics::Convention::Coco);
            for (got, want) in coco_bleu(&sets).iter().zip(&case.coco.bleu) {
                assert!((got - want).abs() < 1e-6, "case {}: {got} vs {want}", case.name);
            }
            let sets = crate::metrics::tokenize(&case.sets(), crate::metrics::Convention::Nltk);
            for (got, want) in nltk_bleu(&sets).iter().zip(&case.nltk.bleu) {
                assert!((got - want).abs() < 1e-6, "case {}: {got} vs {want}", case.name);
            }
        }
    }
}

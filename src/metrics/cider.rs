//! CIDEr-D exactly as pycocoevalcap's `CiderScorer` computes it.
//!
//! Each caption becomes, per n-gram order (1..4), a TF-IDF vector whose document
//! frequencies come from the references of the scored set itself (an image counts once per
//! n-gram, whichever of its references holds it), so a score depends on which images are
//! scored together. A hypothesis is compared with each reference by cosine similarity with
//! the hypothesis weights clipped to the reference's, times a Gaussian penalty
//! `exp(-δ²/2σ²)` on the length difference; the mean over orders and references, times 10,
//! is the image's score, and the corpus score is the mean over images.
//!
//! Kept as pycocoevalcap has it: the "length" in the penalty counts bigram occurrences, not
//! words (`if n == 1` after a zero-based order), and a zero norm skips the division.

use crate::data::fxhash::FxHashMap;

use super::{ngram_counts, TokenizedSet};

const MAX_N: usize = 4;
const SIGMA: f64 = 6.0;

/// One caption's TF-IDF vectors (one per order), their norms and its "length".
struct Vectors<'a> {
    weights: [FxHashMap<&'a [String], f64>; MAX_N],
    norms: [f64; MAX_N],
    length: f64,
}

/// Corpus CIDEr-D (pycocoevalcap `Cider().compute_score`, n = 4, σ = 6).
pub fn cider_d(sets: &[TokenizedSet]) -> f64 {
    if sets.is_empty() {
        return f64::NAN;
    }
    let df = document_frequency(sets);
    let log_images = (sets.len() as f64).ln();
    let total: f64 = sets.iter().map(|set| image_score(set, &df, log_images)).sum();
    total / sets.len() as f64
}

/// CIDEr-D of one image against its references.
fn image_score(set: &TokenizedSet, df: &FxHashMap<&[String], f64>, log_images: f64) -> f64 {
    let idf = |gram: &[String]| log_images - df.get(gram).copied().unwrap_or(0.0).max(1.0).ln();
    score_against(&set.hypothesis, &set.references, &idf)
}

/// CIDEr-D of `hypothesis` against `references`, given the n-gram idf.
fn score_against(hypothesis: &[String], references: &[Vec<String>], idf: &dyn Fn(&[String]) -> f64) -> f64 {
    let references: Vec<Vectors> = references.iter().map(|r| vectors(r, idf)).collect();
    score_vectors(&vectors(hypothesis, idf), references.iter())
}

/// CIDEr-D of a hypothesis's vectors against references' vectors, summed in their order.
fn score_vectors<'a, 'v: 'a>(hyp: &Vectors, references: impl Iterator<Item = &'a Vectors<'v>>) -> f64 {
    let mut count = 0;
    let mut per_order = [0.0; MAX_N];
    for reference in references {
        count += 1;
        for (acc, s) in per_order.iter_mut().zip(similarity(hyp, reference)) {
            *acc += s;
        }
    }
    let mean = per_order.iter().sum::<f64>() / MAX_N as f64;
    mean / count as f64 * 10.0
}

/// Document frequencies counted once over a fixed corpus of images' references, so that a
/// caption's CIDEr-D against some references does not depend on which other images are
/// scored with it (self-critical.pytorch's `CiderD` with `df = corpus`).
pub struct CorpusIdf {
    df: FxHashMap<Vec<String>, f64>,
    log_images: f64,
}

impl CorpusIdf {
    /// `references[i]`: image i's tokenized reference captions.
    pub fn new(references: &[Vec<Vec<String>>]) -> Self {
        let sets: Vec<TokenizedSet> = references
            .iter()
            .map(|refs| TokenizedSet { hypothesis: Vec::new(), references: refs.clone() })
            .collect();
        let df = document_frequency(&sets).into_iter().map(|(gram, n)| (gram.to_vec(), n)).collect();
        Self { df, log_images: (references.len().max(1) as f64).ln() }
    }

    fn idf(&self, gram: &[String]) -> f64 {
        self.log_images - self.df.get(gram).copied().unwrap_or(0.0).max(1.0).ln()
    }

    /// CIDEr-D of `hypothesis` against `references` under these document frequencies.
    pub fn score(&self, hypothesis: &[String], references: &[Vec<String>]) -> f64 {
        score_against(hypothesis, references, &|gram| self.idf(gram))
    }

    /// Consensus re-ranking (minimum Bayes risk with a CIDEr-D utility, uniform weights):
    /// the index of the candidate with the highest CIDEr-D against all the other
    /// candidates and every caption of `evidence` (e.g. samples of the same model), the
    /// first on a tie; 0 when a candidate has nothing to be compared with.
    pub fn consensus(&self, candidates: &[Vec<String>], evidence: &[Vec<String>]) -> usize {
        if candidates.len() + evidence.len() < 2 {
            return 0;
        }
        // Each caption's vectors once; candidate i is scored against the others in order.
        let idf = |gram: &[String]| self.idf(gram);
        let all: Vec<Vectors> = candidates.iter().chain(evidence).map(|c| vectors(c, &idf)).collect();
        let mut best = (0, f64::NEG_INFINITY);
        for (i, candidate) in all[..candidates.len()].iter().enumerate() {
            let others = all.iter().enumerate().filter(|&(j, _)| j != i).map(|(_, v)| v);
            let score = score_vectors(candidate, others);
            if score > best.1 {
                best = (i, score);
            }
        }
        best.0
    }
}

/// CIDEr-D as a reward, for self-critical training: each training image's references, with
/// the document frequencies of all of them (a [`CorpusIdf`]).
pub struct CiderReward {
    idf: CorpusIdf,
    references: Vec<Vec<Vec<String>>>,
}

impl CiderReward {
    /// `references[i]`: image i's tokenized reference captions.
    pub fn new(references: Vec<Vec<Vec<String>>>) -> Self {
        Self { idf: CorpusIdf::new(&references), references }
    }

    pub fn images(&self) -> usize {
        self.references.len()
    }

    /// CIDEr-D of one caption of image `image`.
    pub fn score(&self, image: usize, hypothesis: &[String]) -> f64 {
        self.idf.score(hypothesis, &self.references[image])
    }
}

/// For every n-gram, the number of images whose references contain it.
fn document_frequency(sets: &[TokenizedSet]) -> FxHashMap<&[String], f64> {
    let mut df = FxHashMap::default();
    for set in sets {
        let mut seen: Vec<&[String]> =
            set.references.iter().flat_map(|r| ngram_counts(r, MAX_N).into_keys()).collect();
        seen.sort_unstable();
        seen.dedup();
        for gram in seen {
            *df.entry(gram).or_insert(0.0) += 1.0;
        }
    }
    df
}

fn vectors<'a>(tokens: &'a [String], idf: &dyn Fn(&[String]) -> f64) -> Vectors<'a> {
    let mut v = Vectors { weights: Default::default(), norms: [0.0; MAX_N], length: 0.0 };
    for (gram, tf) in ngram_counts(tokens, MAX_N) {
        let order = gram.len() - 1;
        let weight = tf as f64 * idf(gram);
        v.weights[order].insert(gram, weight);
        v.norms[order] += weight * weight;
        if order == 1 {
            v.length += tf as f64;
        }
    }
    for norm in &mut v.norms {
        *norm = norm.sqrt();
    }
    v
}

/// Clipped cosine similarity per order, with the length penalty.
fn similarity(hyp: &Vectors, reference: &Vectors) -> [f64; MAX_N] {
    let delta = hyp.length - reference.length;
    let penalty = (-(delta * delta) / (2.0 * SIGMA * SIGMA)).exp();
    let mut out = [0.0; MAX_N];
    for (n, value) in out.iter_mut().enumerate() {
        for (gram, &h) in &hyp.weights[n] {
            let r = reference.weights[n].get(gram).copied().unwrap_or(0.0);
            *value += h.min(r) * r;
        }
        if hyp.norms[n] != 0.0 && reference.norms[n] != 0.0 {
            *value /= hyp.norms[n] * reference.norms[n];
        }
        *value *= penalty;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::words;

    fn set(hyp: &str, refs: &[&str]) -> TokenizedSet {
        TokenizedSet { hypothesis: words(hyp), references: refs.iter().map(|r| words(r)).collect() }
    }

    #[test]
    fn ngrams_shared_by_every_image_carry_no_weight() {
        // "a" is in every image's references, so its idf is log(2) - log(2) = 0.
        let sets = [set("a", &["a dog"]), set("a", &["a cat"])];
        assert_eq!(cider_d(&sets), 0.0);
    }

    #[test]
    fn identical_captions_of_distinct_images_score_ten() {
        let sets = [
            set("a dog runs fast", &["a dog runs fast"]),
            set("two cats sleep here", &["two cats sleep here"]),
        ];
        assert!((cider_d(&sets) - 10.0).abs() < 1e-9, "{}", cider_d(&sets));
        // Three words have no 4-gram, and the order-4 similarity of empty vectors is 0.
        let sets = [set("a dog runs", &["a dog runs"]), set("two cats sleep", &["two cats sleep"])];
        assert!((cider_d(&sets) - 7.5).abs() < 1e-9, "{}", cider_d(&sets));
    }

    #[test]
    fn length_counts_bigrams_as_pycocoevalcap_does() {
        let idf = |_: &[String]| 1.0;
        assert_eq!(vectors(&words("a b c d"), &idf).length, 3.0);
        assert_eq!(vectors(&words("a"), &idf).length, 0.0);
    }

    #[test]
    fn the_reward_equals_corpus_cider_d_on_its_own_corpus() {
        let sets = [
            set("a dog runs on grass", &["a dog runs on the grass", "a brown dog runs"]),
            set("two cats sleep", &["two cats sleep on a bed", "cats asleep"]),
            set("a man rides a bike", &["a man rides a bicycle", "a person on a bike"]),
        ];
        let reward = CiderReward::new(sets.iter().map(|s| s.references.clone()).collect());
        let mean: f64 =
            sets.iter().enumerate().map(|(i, s)| reward.score(i, &s.hypothesis)).sum::<f64>() / 3.0;
        assert!((mean - cider_d(&sets)).abs() < 1e-12, "{mean} vs {}", cider_d(&sets));
        assert!(reward.score(0, &words("a dog runs on the grass")) > reward.score(0, &words("a cat")));
    }

    #[test]
    fn consensus_picks_the_candidate_closest_to_the_others() {
        let refs = [
            vec![words("a dog runs on the grass"), words("a brown dog runs")],
            vec![words("two cats sleep on a bed"), words("cats asleep")],
            vec![words("a man rides a bike"), words("a person on a bike")],
        ];
        let idf = CorpusIdf::new(&refs);
        let candidates =
            [words("a cat sleeps"), words("a dog runs on grass"), words("a brown dog runs on grass")];
        let pick = idf.consensus(&candidates, &[]);
        assert!(pick == 1 || pick == 2, "{pick}");
        // The odd one out never wins; with one or two alike, order breaks the tie.
        assert_eq!(idf.consensus(&[words("a dog runs")], &[]), 0);
        assert_eq!(idf.consensus(&[words("a dog runs"), words("a dog runs")], &[]), 0);
        assert_eq!(idf.consensus(&[], &[]), 0);
        let moved = [words("a brown dog runs on grass"), words("a cat sleeps"), words("a dog runs on grass")];
        assert_ne!(idf.consensus(&moved, &[]), 1);
        // Evidence outvotes the candidates: three samples about cats make the cat win.
        let cats = [words("a cat sleeps"), words("a cat sleeps here"), words("a cat sleeps on a bed")];
        assert_eq!(idf.consensus(&candidates, &cats), 0);
        assert_eq!(idf.consensus(&[words("a dog runs")], &cats), 0);
    }

    /// Float sums run over n-gram maps; with a per-map random hasher their order, and so
    /// the last bits of the score, changed from one computation to the next.
    #[test]
    fn the_same_captions_score_the_same_bits_every_time() {
        let words_of = |seed: usize, len: usize| -> Vec<String> {
            (0..len).map(|i| format!("w{}", (seed * 7919 + i * 104_729) % 53)).collect()
        };
        let sets: Vec<TokenizedSet> = (0..40)
            .map(|i| TokenizedSet {
                hypothesis: words_of(i, 18),
                references: (1..6).map(|r| words_of(i + r * 100, 12 + r)).collect(),
            })
            .collect();
        let first = cider_d(&sets).to_bits();
        let reward = CiderReward::new(sets.iter().map(|s| s.references.clone()).collect());
        let first_reward = reward.score(3, &sets[3].hypothesis).to_bits();
        for _ in 0..30 {
            assert_eq!(cider_d(&sets).to_bits(), first);
            assert_eq!(reward.score(3, &sets[3].hypothesis).to_bits(), first_reward);
        }
    }

    #[test]
    fn empty_hypothesis_scores_zero() {
        let sets = [set("", &["a dog"]), set("a cat", &["a cat"])];
        let score = image_score(&sets[0], &document_frequency(&sets), 2f64.ln());
        assert_eq!(score, 0.0);
    }

    #[test]
    fn matches_the_reference_fixture() {
        use crate::metrics::{tokenize, Convention};
        for case in &crate::metrics::fixture::load().cases {
            for (convention, want) in [(Convention::Coco, &case.coco), (Convention::Nltk, &case.nltk)] {
                let got = cider_d(&tokenize(&case.sets(), convention));
                assert!(
                    (got - want.cider_d).abs() < 1e-6,
                    "case {} {convention}: {got} vs {}",
                    case.name,
                    want.cider_d
                );
            }
        }
    }
}

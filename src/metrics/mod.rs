//! Caption metrics that reproduce the reference tools, so that numbers are comparable with
//! published ones.
//!
//! Two conventions exist in the captioning literature and they disagree by several BLEU
//! points on the same captions, so every score names the one it used:
//!
//! | convention | tokens | BLEU | CIDEr-D |
//! |---|---|---|---|
//! | `coco` | PTB tokenizer + punctuation removal ([`ptb`]) | pycocoevalcap `Bleu(4)` ([`bleu::coco_bleu`]) | pycocoevalcap `Cider` ([`cider::cider_d`]) |
//! | `nltk` | classic cleaning (`data::clean::Cleaning::default()`) | NLTK `corpus_bleu`, uniform weights, no smoothing ([`bleu::nltk_bleu`]) | same CIDEr-D, on the cleaned tokens |
//!
//! Everything here is a pure function of the caption text: no files, no polars, no tch.
//! `tests/fixtures/score_reference.json` (written by `scripts/score_reference.py` with the
//! real pycocoevalcap and nltk) pins the results to 1e-6.

pub mod bleu;
pub mod cider;
pub mod ptb;

use crate::data::fxhash::FxHashMap;

use anyhow::{bail, ensure, Result};

use crate::data::clean::Cleaning;
use serde::{Deserialize, Serialize};

/// One scored image: its generated caption and its reference captions, as raw text.
#[derive(Debug, Clone, PartialEq)]
pub struct CaptionSet {
    pub image: String,
    pub hypothesis: String,
    pub references: Vec<String>,
}

/// A [`CaptionSet`] after tokenization: what the metrics actually compare.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenizedSet {
    pub hypothesis: Vec<String>,
    pub references: Vec<Vec<String>>,
}

/// Which reference tool's tokenization and BLEU the scores reproduce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Convention {
    /// pycocoevalcap: PTB tokens, `Bleu(4)` with closest reference length.
    #[default]
    Coco,
    /// NLTK `corpus_bleu` on classically cleaned words.
    Nltk,
}

impl std::fmt::Display for Convention {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Convention::Coco => "coco",
            Convention::Nltk => "nltk",
        })
    }
}

/// Corpus-level scores of one caption set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scores {
    pub convention: Convention,
    pub images: usize,
    /// Cumulative BLEU-1..4.
    pub bleu: [f64; 4],
    pub cider_d: f64,
}

/// Tokenizes and scores captions under one convention.
///
/// Errors on an empty input, an image without references, or a non-finite result, so a
/// broken upstream stage can never show up as a plausible-looking 0.
pub fn score(sets: &[CaptionSet], convention: Convention) -> Result<Scores> {
    validate(sets)?;
    let tokenized = tokenize(sets, convention);
    let bleu = match convention {
        Convention::Coco => bleu::coco_bleu(&tokenized),
        Convention::Nltk => bleu::nltk_bleu(&tokenized),
    };
    let scores = Scores { convention, images: sets.len(), bleu, cider_d: cider::cider_d(&tokenized) };
    if scores.bleu.iter().chain([&scores.cider_d]).any(|x| !x.is_finite()) {
        bail!("scoring produced a non-finite value: {scores:?}");
    }
    Ok(scores)
}

/// Tokenizes every caption the way the convention's reference tool does.
///
/// For `coco`, references and hypotheses are each lexed as one batch in the given order,
/// as pycocoevalcap does (a caption's last word can see the next caption's first word).
pub fn tokenize(sets: &[CaptionSet], convention: Convention) -> Vec<TokenizedSet> {
    match convention {
        Convention::Coco => {
            let hyps: Vec<&str> = sets.iter().map(|s| s.hypothesis.as_str()).collect();
            let refs: Vec<&str> = sets.iter().flat_map(|s| s.references.iter().map(String::as_str)).collect();
            let hyps = ptb::tokenize_batch(&hyps);
            let mut refs = ptb::tokenize_batch(&refs).into_iter();
            sets.iter()
                .zip(hyps)
                .map(|(set, hypothesis)| TokenizedSet {
                    hypothesis,
                    references: refs.by_ref().take(set.references.len()).collect(),
                })
                .collect()
        }
        Convention::Nltk => {
            // The classic cleaning, which is also tokenize's default (idempotent, so
            // already cleaned hypotheses are unchanged).
            let classic = Cleaning::default();
            sets.iter()
                .map(|set| TokenizedSet {
                    hypothesis: classic.clean_words(&set.hypothesis),
                    references: set.references.iter().map(|r| classic.clean_words(r)).collect(),
                })
                .collect()
        }
    }
}

fn validate(sets: &[CaptionSet]) -> Result<()> {
    ensure!(!sets.is_empty(), "nothing to score: no images");
    if let Some(set) = sets.iter().find(|s| s.references.is_empty()) {
        bail!("image {} has no reference captions", set.image);
    }
    Ok(())
}

/// Counts of every n-gram of order 1..=`max_n`, keyed by the token slice (whose length is
/// the order), as both tools' `precook` does. The map's hasher is fixed, so iterating it
/// visits n-grams in the same order in every process: CIDEr-D sums floats over these maps,
/// and with std's per-map random hasher its last bits varied from run to run.
pub(crate) fn ngram_counts(tokens: &[String], max_n: usize) -> FxHashMap<&[String], usize> {
    let mut counts = FxHashMap::default();
    for n in 1..=max_n {
        for gram in tokens.windows(n) {
            *counts.entry(gram).or_insert(0) += 1;
        }
    }
    counts
}

/// Splits a space-separated test string into owned tokens.
#[cfg(test)]
pub(crate) fn words(s: &str) -> Vec<String> {
    s.split_whitespace().map(str::to_string).collect()
}

/// The reference fixture written by `scripts/score_reference.py`, shared by the tests of
/// every metric.
#[cfg(test)]
pub(crate) mod fixture {
    use serde::Deserialize;

    pub const JSON: &str = include_str!("../../tests/fixtures/score_reference.json");

    #[derive(Debug, Deserialize)]
    pub struct Fixture {
        pub cases: Vec<Case>,
        /// Every caption of every case with pycocoevalcap's PTB tokens, lexed alone.
        pub ptb: Vec<PtbCaption>,
    }

    #[derive(Debug, Deserialize)]
    pub struct Case {
        pub name: String,
        pub images: Vec<Image>,
        pub coco: Expected,
        pub nltk: Expected,
    }

    #[derive(Debug, Deserialize)]
    pub struct Image {
        pub image: String,
        pub hypothesis: String,
        pub references: Vec<String>,
        /// The tokens pycocoevalcap scored (batch tokenization), joined by spaces.
        pub coco_hypothesis: String,
        pub coco_references: Vec<String>,
    }

    #[derive(Debug, Deserialize)]
    pub struct Expected {
        pub bleu: [f64; 4],
        pub cider_d: f64,
    }

    #[derive(Debug, Deserialize)]
    pub struct PtbCaption {
        pub caption: String,
        pub tokens: String,
    }

    pub fn load() -> Fixture {
        serde_json::from_str(JSON).expect("tests/fixtures/score_reference.json parses")
    }

    impl Case {
        pub fn sets(&self) -> Vec<super::CaptionSet> {
            self.images
                .iter()
                .map(|i| super::CaptionSet {
                    image: i.image.clone(),
                    hypothesis: i.hypothesis.clone(),
                    references: i.references.clone(),
                })
                .collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOLERANCE: f64 = 1e-6;

    #[test]
    fn scores_every_fixture_case_like_the_reference_tools() {
        let fixture = fixture::load();
        assert!(fixture.cases.len() >= 5);
        for case in &fixture.cases {
            for (convention, expected) in [(Convention::Coco, &case.coco), (Convention::Nltk, &case.nltk)] {
                let got = score(&case.sets(), convention).unwrap();
                let pairs = got.bleu.iter().zip(&expected.bleu).chain([(&got.cider_d, &expected.cider_d)]);
                for (g, e) in pairs {
                    assert!(
                        (g - e).abs() < TOLERANCE,
                        "case {} ({convention}): got {got:?}, expected {expected:?}",
                        case.name
                    );
                }
            }
        }
    }

    #[test]
    fn coco_tokens_match_the_batches_pycocoevalcap_scored() {
        for case in &fixture::load().cases {
            let tokenized = tokenize(&case.sets(), Convention::Coco);
            for (image, got) in case.images.iter().zip(&tokenized) {
                assert_eq!(got.hypothesis.join(" "), image.coco_hypothesis, "case {}", case.name);
                let refs: Vec<String> = got.references.iter().map(|r| r.join(" ")).collect();
                assert_eq!(refs, image.coco_references, "case {}", case.name);
            }
        }
    }

    #[test]
    fn rejects_empty_input_and_missing_references() {
        assert!(score(&[], Convention::Coco).is_err());
        let set = CaptionSet { image: "a.jpg".into(), hypothesis: "a dog".into(), references: vec![] };
        let err = score(&[set], Convention::Nltk).unwrap_err().to_string();
        assert!(err.contains("a.jpg"), "{err}");
    }

    #[test]
    fn ngram_counts_cover_every_order() {
        let tokens = words("a b a b");
        let counts = ngram_counts(&tokens, 4);
        assert_eq!(counts[&tokens[0..2]], 2);
        assert_eq!(counts[&tokens[0..4]], 1);
        assert_eq!(counts.len(), 2 + 2 + 2 + 1);
    }
}

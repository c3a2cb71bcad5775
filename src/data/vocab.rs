//! The vocabulary: words seen at least `min_count` times in the train split's cleaned
//! captions, sorted, after `<pad>` (id 0) and `<unk>` (id 1).
//!
//! This is the PyTorch peer's rule (`train.py::build_data`, `MIN_COUNT = 5`), kept so that
//! pipe and the peer train over the same vocabulary: on Flickr8k's train split it keeps 2,530
//! words plus `<pad>`/`<unk>` (vocabulary 2,532, as in the peer's README). Rare words would
//! otherwise get an embedding row each with a handful of training examples: min_count 5
//! shrinks the softmax about threefold and maps what is left to `<unk>`.
//!
//! Only train captions are counted, so dev and test words never leak into the model. The
//! start and end tokens are counted like words (as the peer does); they are always kept, even
//! in a train split too small to reach `min_count`, since decoding needs them.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::clean::{words, Cleaning};
use super::fxhash::FxHashMap;

pub const PAD: &str = "<pad>";
pub const UNK: &str = "<unk>";
pub const PAD_ID: u32 = 0;
pub const UNK_ID: u32 = 1;

/// Word counts over train captions, mergeable across threads.
#[derive(Debug, Default, Clone)]
pub struct WordCounts {
    pub counts: FxHashMap<String, u64>,
    /// Captions counted; each contributes one start and one end token.
    pub captions: u64,
    /// Longest caption in words, start and end tokens included.
    pub max_len: usize,
}

impl WordCounts {
    /// Counts one caption, as cleaned by [`Cleaning::clean_into`].
    pub fn add(&mut self, cleaned: &str) {
        let mut len = 2;
        for word in words(cleaned) {
            len += 1;
            match self.counts.get_mut(word) {
                Some(count) => *count += 1,
                None => {
                    self.counts.insert(word.to_string(), 1);
                }
            }
        }
        self.captions += 1;
        self.max_len = self.max_len.max(len);
    }
}

/// `vocab.json`, as in docs/CONTRACTS.md.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VocabFile {
    /// `tokens[id]` is the word.
    pub tokens: Vec<String>,
    pub pad_id: u32,
    pub unk_id: u32,
    pub start_id: u32,
    pub end_id: u32,
    /// Longest train caption in tokens, start and end included.
    pub max_len: usize,
    pub min_count: u64,
    pub cleaning: Cleaning,
}

/// A vocabulary ready to encode and decode.
#[derive(Debug, Clone)]
pub struct Vocab {
    pub file: VocabFile,
    ids: FxHashMap<String, u32>,
}

impl Vocab {
    /// Builds the vocabulary from train counts.
    pub fn build(counts: &WordCounts, min_count: u64, cleaning: &Cleaning) -> Result<Vocab> {
        if counts.captions == 0 {
            bail!("no train captions to build a vocabulary from");
        }
        let mut kept: Vec<&str> = counts
            .counts
            .iter()
            .filter(|(word, &count)| count >= min_count && *word != PAD && *word != UNK)
            .map(|(word, _)| word.as_str())
            .collect();
        for marker in [&cleaning.start_token, &cleaning.end_token] {
            if !kept.contains(&marker.as_str()) {
                kept.push(marker);
            }
        }
        // Byte order of UTF-8 is code point order, i.e. Python's `sorted`.
        kept.sort_unstable();
        kept.dedup();
        let mut tokens = vec![PAD.to_string(), UNK.to_string()];
        tokens.extend(kept.into_iter().map(str::to_string));
        Vocab::from_tokens(tokens, counts.max_len, min_count, cleaning.clone())
    }

    fn from_tokens(tokens: Vec<String>, max_len: usize, min_count: u64, cleaning: Cleaning) -> Result<Vocab> {
        let ids: FxHashMap<String, u32> =
            tokens.iter().enumerate().map(|(i, w)| (w.clone(), i as u32)).collect();
        let id = |word: &str| ids.get(word).copied().with_context(|| format!("vocabulary lacks {word:?}"));
        let (start_id, end_id) = (id(&cleaning.start_token)?, id(&cleaning.end_token)?);
        let file = VocabFile {
            tokens,
            pad_id: PAD_ID,
            unk_id: UNK_ID,
            start_id,
            end_id,
            max_len,
            min_count,
            cleaning,
        };
        Ok(Vocab { file, ids })
    }

    /// Reads `vocab.json`.
    pub fn load(path: &Path) -> Result<Vocab> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let file: VocabFile =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        Vocab::from_tokens(file.tokens, file.max_len, file.min_count, file.cleaning)
            .with_context(|| format!("{}", path.display()))
    }

    pub fn len(&self) -> usize {
        self.file.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.file.tokens.is_empty()
    }

    /// The id of a word, `<unk>` when unknown.
    pub fn id(&self, word: &str) -> u32 {
        self.ids.get(word).copied().unwrap_or(UNK_ID)
    }

    pub fn word(&self, id: u32) -> &str {
        self.file.tokens.get(id as usize).map_or(UNK, String::as_str)
    }

    /// Appends start, the ids of a cleaned caption's words, and end to `out`.
    pub fn encode_into(&self, cleaned: &str, out: &mut Vec<u32>) {
        out.push(self.file.start_id);
        out.extend(words(cleaned).map(|w| self.id(w)));
        out.push(self.file.end_id);
    }

    /// The words of `ids`, without pad, start and end: what a caption reads as.
    pub fn decode(&self, ids: &[u32]) -> String {
        let skip = [self.file.pad_id, self.file.start_id, self.file.end_id];
        let words: Vec<&str> = ids.iter().filter(|id| !skip.contains(id)).map(|&id| self.word(id)).collect();
        words.join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(captions: &[&str]) -> WordCounts {
        let cleaning = Cleaning::default();
        let mut counts = WordCounts::default();
        let mut buf = String::new();
        for caption in captions {
            cleaning.clean_into(caption, &mut buf);
            counts.add(&buf);
        }
        counts
    }

    #[test]
    fn keeps_frequent_words_sorted_after_pad_and_unk() {
        let c = counts(&["A dog runs .", "A dog sits", "The dog runs"]);
        let vocab = Vocab::build(&c, 2, &Cleaning::default()).unwrap();
        assert_eq!(vocab.file.tokens, ["<pad>", "<unk>", "dog", "endseq", "runs", "startseq"]);
        assert_eq!((vocab.file.start_id, vocab.file.end_id), (5, 3));
        assert_eq!(vocab.file.max_len, 5);
        let mut ids = Vec::new();
        vocab.encode_into("dog sits", &mut ids);
        assert_eq!(ids, [5, 2, UNK_ID, 3]);
        assert_eq!(vocab.decode(&ids), "dog <unk>");
    }

    #[test]
    fn start_and_end_survive_a_tiny_train_split() {
        let vocab = Vocab::build(&counts(&["dog"]), 5, &Cleaning::default()).unwrap();
        assert_eq!(vocab.file.tokens, ["<pad>", "<unk>", "endseq", "startseq"]);
    }

    #[test]
    fn round_trips_through_json() {
        let vocab = Vocab::build(&counts(&["a dog", "a dog"]), 1, &Cleaning::default()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vocab.json");
        std::fs::write(&path, serde_json::to_string_pretty(&vocab.file).unwrap()).unwrap();
        let loaded = Vocab::load(&path).unwrap();
        assert_eq!(loaded.file, vocab.file);
        assert_eq!(loaded.id("dog"), vocab.id("dog"));
    }

    #[test]
    fn empty_train_split_is_an_error() {
        assert!(Vocab::build(&WordCounts::default(), 5, &Cleaning::default()).is_err());
    }
}

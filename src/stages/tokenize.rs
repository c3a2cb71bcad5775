//! `tokenize`: cleans every caption of ingest's `captions.parquet`, builds the vocabulary
//! from the train split only, and writes each caption as token ids.
//!
//! The defaults reproduce the PyTorch peer's preprocessing exactly (see
//! [`crate::data::clean`] and [`crate::data::vocab`]), so vocabularies and scores compare.
//! Dev and test captions are encoded with the train vocabulary (unseen words become
//! `<unk>`) and are never truncated; `max_len` in vocab.json is the longest *train* caption,
//! as in the peer.

use std::path::Path;

use anyhow::{bail, Context, Result};
use polars::prelude::DataFrame;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::contract::files::{TOKENS_FILE, VOCAB_FILE};
use crate::contract::tables::read_reference_captions;
use crate::data::clean::{words, Cleaning};
use crate::data::fxhash::FxHashMap;
use crate::data::split::Split;
use crate::data::table::{str_values, u32_list_column, write_parquet};
use crate::data::vocab::{Vocab, WordCounts, UNK_ID};
use pipe_engine::fsutil::write_json_atomic;
use pipe_engine::stage::{normalize_typed, parse_params, InputSpec, Inputs, StageContext, StageKind};

/// Captions per parallel work item: big enough to amortise a cleaning buffer and a
/// counting map, small enough to balance two cores.
const CHUNK: usize = 4096;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TokenizeParams {
    /// Words seen fewer times in train captions become `<unk>`. 5 is the peer's value.
    pub min_count: u64,
    pub lowercase: bool,
    pub strip_non_letters: bool,
    pub min_word_len: usize,
    pub start_token: String,
    pub end_token: String,
}

impl Default for TokenizeParams {
    fn default() -> Self {
        let cleaning = Cleaning::default();
        Self {
            min_count: 5,
            lowercase: cleaning.lowercase,
            strip_non_letters: cleaning.strip_non_letters,
            min_word_len: cleaning.min_word_len,
            start_token: cleaning.start_token,
            end_token: cleaning.end_token,
        }
    }
}

impl TokenizeParams {
    pub fn cleaning(&self) -> Cleaning {
        Cleaning {
            lowercase: self.lowercase,
            strip_non_letters: self.strip_non_letters,
            min_word_len: self.min_word_len,
            start_token: self.start_token.clone(),
            end_token: self.end_token.clone(),
        }
    }

    fn validate(&self) -> Result<()> {
        if self.min_count == 0 {
            bail!("min_count must be at least 1");
        }
        for (name, token) in [("start_token", &self.start_token), ("end_token", &self.end_token)] {
            if token.is_empty() || token.contains(char::is_whitespace) {
                bail!("{name} must be one non-empty word, got {token:?}");
            }
        }
        if self.start_token == self.end_token {
            bail!("start_token and end_token must differ");
        }
        Ok(())
    }
}

pub struct Tokenize;

impl StageKind for Tokenize {
    fn name(&self) -> &'static str {
        "tokenize"
    }

    fn version(&self) -> u32 {
        1
    }

    fn normalize_params(&self, params: &Value) -> Result<Value> {
        parse_params::<TokenizeParams>(params)?.validate()?;
        normalize_typed::<TokenizeParams>(params)
    }

    fn inputs(&self) -> Inputs {
        const INPUTS: [InputSpec; 1] = [InputSpec { name: "captions", required: true }];
        Inputs::Named(&INPUTS)
    }

    fn outputs(&self, _params: &Value) -> Vec<String> {
        vec![TOKENS_FILE.to_string(), VOCAB_FILE.to_string()]
    }

    fn run(&self, ctx: &StageContext) -> Result<()> {
        let params: TokenizeParams = ctx.params()?;
        let summary = tokenize(ctx.input("captions")?, &params, &ctx.out_dir)?;
        ctx.log(format!(
            "{} captions; vocabulary {} (min_count {}) from {} train captions; max_len {}; train <unk> rate {:.2}%",
            summary.captions,
            summary.vocab_size,
            params.min_count,
            summary.train_captions,
            summary.max_len,
            100.0 * summary.train_unk_rate
        ));
        Ok(())
    }
}

/// What a run produced, for logs and benchmarks.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenizeSummary {
    pub captions: usize,
    pub train_captions: u64,
    pub vocab_size: usize,
    pub max_len: usize,
    pub train_unk_rate: f64,
}

/// Reads `captions.parquet`, writes `tokens.parquet` and `vocab.json` into `out_dir`.
pub fn tokenize(captions_path: &Path, params: &TokenizeParams, out_dir: &Path) -> Result<TokenizeSummary> {
    let frame = read_reference_captions(captions_path)?;
    let captions = str_values(&frame, "caption")?;
    let is_train = train_mask(&str_values(&frame, "split")?, captions_path)?;
    let cleaning = params.cleaning();

    let chunks = clean_chunks(&captions, &is_train, &cleaning);
    let counts = train_counts(&chunks);
    let vocab = Vocab::build(&counts, params.min_count, &cleaning)
        .with_context(|| format!("{}: building the vocabulary", captions_path.display()))?;
    let (values, lengths) = encode_chunks(&chunks, &vocab);
    drop(chunks);

    let mut tokens = DataFrame::new_infer_height(vec![
        frame.column("image")?.clone(),
        frame.column("caption_index")?.clone(),
        frame.column("split")?.clone(),
        u32_list_column("tokens", &values, &lengths),
    ])?;
    write_parquet(&mut tokens, &out_dir.join(TOKENS_FILE))?;
    write_json_atomic(&out_dir.join(VOCAB_FILE), &vocab.file)?;

    Ok(TokenizeSummary {
        captions: captions.len(),
        train_captions: counts.captions,
        vocab_size: vocab.len(),
        max_len: vocab.file.max_len,
        train_unk_rate: train_unk_rate(&values, &lengths, &is_train),
    })
}

/// Which rows are train rows; an unknown split name is an error naming it.
fn train_mask(splits: &[&str], path: &Path) -> Result<Vec<bool>> {
    splits
        .iter()
        .enumerate()
        .map(|(row, &split)| match Split::parse(split) {
            Some(parsed) => Ok(parsed == Split::Train),
            None => bail!("{}: row {row}: unknown split {split:?}", path.display()),
        })
        .collect()
}

/// A chunk of captions cleaned once, its words numbered in a chunk-local dictionary. Each
/// word occurrence is hashed once; counting and encoding then work on small integers, and
/// only the few thousand distinct words per chunk are looked up in the vocabulary.
#[derive(Debug, Default)]
struct CleanChunk {
    /// Local id → word.
    words: Vec<String>,
    /// Local id → occurrences in this chunk's train captions.
    train_counts: Vec<u64>,
    /// The local ids of every caption's words, concatenated.
    local_ids: Vec<u32>,
    /// Words per caption.
    lengths: Vec<usize>,
    train_captions: u64,
    /// Longest train caption in tokens, start and end included.
    max_train_len: usize,
}

impl CleanChunk {
    fn clean(captions: &[&str], is_train: &[bool], cleaning: &Cleaning) -> CleanChunk {
        let mut chunk = CleanChunk::default();
        let mut local: FxHashMap<String, u32> = FxHashMap::default();
        let mut buf = String::new();
        for (caption, &train) in captions.iter().zip(is_train) {
            cleaning.clean_into(caption, &mut buf);
            let before = chunk.local_ids.len();
            for word in words(&buf) {
                let id = chunk.local_id(&mut local, word);
                chunk.local_ids.push(id);
                chunk.train_counts[id as usize] += u64::from(train);
            }
            let len = chunk.local_ids.len() - before;
            chunk.lengths.push(len);
            if train {
                chunk.train_captions += 1;
                chunk.max_train_len = chunk.max_train_len.max(len + 2);
            }
        }
        chunk
    }

    fn local_id(&mut self, local: &mut FxHashMap<String, u32>, word: &str) -> u32 {
        if let Some(&id) = local.get(word) {
            return id;
        }
        let id = self.words.len() as u32;
        local.insert(word.to_string(), id);
        self.words.push(word.to_string());
        self.train_counts.push(0);
        id
    }
}

/// Cleans all captions in parallel chunks, in order.
fn clean_chunks(captions: &[&str], is_train: &[bool], cleaning: &Cleaning) -> Vec<CleanChunk> {
    captions
        .par_chunks(CHUNK)
        .zip(is_train.par_chunks(CHUNK))
        .map(|(captions, train)| CleanChunk::clean(captions, train, cleaning))
        .collect()
}

/// Train word counts over all chunks.
fn train_counts(chunks: &[CleanChunk]) -> WordCounts {
    let mut counts = WordCounts::default();
    for chunk in chunks {
        for (word, &n) in chunk.words.iter().zip(&chunk.train_counts).filter(|(_, &n)| n > 0) {
            match counts.counts.get_mut(word.as_str()) {
                Some(total) => *total += n,
                None => {
                    counts.counts.insert(word.clone(), n);
                }
            }
        }
        counts.captions += chunk.train_captions;
        counts.max_len = counts.max_len.max(chunk.max_train_len);
    }
    counts
}

/// Token ids of every caption, start and end included: the concatenated ids and each
/// caption's length.
fn encode_chunks(chunks: &[CleanChunk], vocab: &Vocab) -> (Vec<u32>, Vec<usize>) {
    let (start_id, end_id) = (vocab.file.start_id, vocab.file.end_id);
    let encoded: Vec<(Vec<u32>, Vec<usize>)> = chunks
        .par_iter()
        .map(|chunk| {
            let global: Vec<u32> = chunk.words.iter().map(|w| vocab.id(w)).collect();
            let mut values = Vec::with_capacity(chunk.local_ids.len() + 2 * chunk.lengths.len());
            let mut start = 0;
            for &len in &chunk.lengths {
                values.push(start_id);
                values.extend(chunk.local_ids[start..start + len].iter().map(|&l| global[l as usize]));
                values.push(end_id);
                start += len;
            }
            (values, chunk.lengths.iter().map(|len| len + 2).collect())
        })
        .collect();
    let mut values = Vec::with_capacity(encoded.iter().map(|c| c.0.len()).sum());
    let mut lengths = Vec::new();
    for (chunk_values, chunk_lengths) in encoded {
        values.extend(chunk_values);
        lengths.extend(chunk_lengths);
    }
    (values, lengths)
}

fn train_unk_rate(values: &[u32], lengths: &[usize], is_train: &[bool]) -> f64 {
    let (mut unk, mut total, mut start) = (0usize, 0usize, 0usize);
    for (&len, &train) in lengths.iter().zip(is_train) {
        if train {
            unk += values[start..start + len].iter().filter(|&&id| id == UNK_ID).count();
            total += len;
        }
        start += len;
    }
    if total == 0 {
        0.0
    } else {
        unk as f64 / total as f64
    }
}

#[cfg(test)]
mod tests {
    use polars::prelude::Column;
    use serde_json::json;

    use super::*;
    use crate::data::table::{read_parquet, require_columns};
    use crate::data::table::{u32_list_values, u32_values};
    use crate::data::vocab::VocabFile;
    use crate::stages::ingest::tests::{check_with_pyarrow, context};

    fn captions_parquet(dir: &Path, rows: &[(&str, u32, &str, &str)]) -> std::path::PathBuf {
        let path = dir.join("captions.parquet");
        let mut frame = DataFrame::new_infer_height(vec![
            Column::new("image".into(), rows.iter().map(|r| r.0).collect::<Vec<_>>()),
            Column::new("caption_index".into(), rows.iter().map(|r| r.1).collect::<Vec<_>>()),
            Column::new("caption".into(), rows.iter().map(|r| r.2).collect::<Vec<_>>()),
            Column::new("split".into(), rows.iter().map(|r| r.3).collect::<Vec<_>>()),
        ])
        .unwrap();
        write_parquet(&mut frame, &path).unwrap();
        path
    }

    fn run(rows: &[(&str, u32, &str, &str)], params: Value) -> Result<(tempfile::TempDir, VocabFile)> {
        let dir = tempfile::tempdir().unwrap();
        let input = captions_parquet(dir.path(), rows);
        let out = dir.path().join("out");
        std::fs::create_dir_all(&out).unwrap();
        let ctx = context(Tokenize.normalize_params(&params)?, &[("captions", input)], &out);
        Tokenize.run(&ctx)?;
        let vocab: VocabFile = serde_json::from_slice(&std::fs::read(out.join(VOCAB_FILE))?)?;
        Ok((dir, vocab))
    }

    const ROWS: &[(&str, u32, &str, &str)] = &[
        ("a.jpg", 0, "A dog runs .", "train"),
        ("a.jpg", 1, "The dog runs fast", "train"),
        ("b.jpg", 0, "A cat sleeps", "train"),
        ("c.jpg", 0, "A dog and a zebra", "dev"),
    ];

    #[test]
    fn vocabulary_from_train_only_and_tokens_with_markers() {
        let (dir, vocab) = run(ROWS, json!({"min_count": 2})).unwrap();
        assert_eq!(vocab.tokens, ["<pad>", "<unk>", "dog", "endseq", "runs", "startseq"]);
        assert_eq!((vocab.pad_id, vocab.unk_id, vocab.start_id, vocab.end_id), (0, 1, 5, 3));
        assert_eq!(vocab.max_len, 6);
        assert_eq!(vocab.min_count, 2);
        assert_eq!(vocab.cleaning, Cleaning::default());

        let path = dir.path().join("out").join(TOKENS_FILE);
        let frame = read_parquet(&path).unwrap();
        require_columns(&frame, &path, &crate::contract::tables::token_columns()).unwrap();
        assert_eq!(u32_values(&frame, "caption_index").unwrap(), [0, 1, 0, 0]);
        let tokens = u32_list_values(&frame, "tokens").unwrap();
        assert_eq!(tokens[0], [5, 2, 4, 3]);
        // "zebra" is only in dev: <unk>, never in the vocabulary. "and" is seen once.
        assert_eq!(tokens[3], [5, 2, 1, 1, 3]);
        check_with_pyarrow(&[path]);
    }

    #[test]
    fn default_min_count_is_five_and_markers_stay() {
        let (_, vocab) = run(ROWS, json!({})).unwrap();
        assert_eq!(vocab.tokens, ["<pad>", "<unk>", "endseq", "startseq"]);
        assert_eq!(vocab.min_count, 5);
    }

    #[test]
    fn cleaning_params_change_the_words() {
        let params = json!({"min_count": 1, "lowercase": false, "min_word_len": 1, "start_token": "<s>", "end_token": "</s>"});
        let (_, vocab) = run(ROWS, params).unwrap();
        assert!(vocab.tokens.contains(&"A".to_string()) && vocab.tokens.contains(&"The".to_string()));
        assert!(vocab.tokens.contains(&"<s>".to_string()));
        assert!(!vocab.tokens.contains(&"zebra".to_string()));
    }

    #[test]
    fn no_train_split_is_an_error() {
        let rows = [("a.jpg", 0, "A dog", "dev")];
        let message = format!("{:#}", run(&rows, json!({})).unwrap_err());
        assert!(message.contains("no train captions"), "{message}");
        let rows = [("a.jpg", 0, "A dog", "validation")];
        let message = format!("{:#}", run(&rows, json!({})).unwrap_err());
        assert!(message.contains("unknown split \"validation\""), "{message}");
    }

    #[test]
    fn bad_params_are_refused() {
        assert!(Tokenize.normalize_params(&json!({"min_count": 0})).is_err());
        assert!(Tokenize.normalize_params(&json!({"start_token": "a b"})).is_err());
        assert!(Tokenize.normalize_params(&json!({"start_token": "x", "end_token": "x"})).is_err());
        assert!(Tokenize.normalize_params(&json!({"mincount": 3})).is_err());
    }

    #[test]
    fn chunked_encoding_matches_the_plain_encoder_in_row_order() {
        let captions: Vec<String> = (0..10_000)
            .map(|i| format!("A dog number {} , word{} .", if i % 2 == 0 { "even" } else { "odd" }, i % 700))
            .collect();
        let refs: Vec<&str> = captions.iter().map(String::as_str).collect();
        let is_train: Vec<bool> = (0..refs.len()).map(|i| i % 3 != 0).collect();
        let cleaning = Cleaning::default();
        let chunks = clean_chunks(&refs, &is_train, &cleaning);
        assert!(chunks.len() > 1);
        let counts = train_counts(&chunks);
        assert_eq!(counts.captions, is_train.iter().filter(|&&t| t).count() as u64);
        assert_eq!(counts.counts["dog"], counts.captions);
        let vocab = Vocab::build(&counts, 5, &cleaning).unwrap();
        let (values, lengths) = encode_chunks(&chunks, &vocab);
        let (mut start, mut buf, mut expected) = (0, String::new(), Vec::new());
        for (caption, &len) in refs.iter().zip(&lengths) {
            cleaning.clean_into(caption, &mut buf);
            expected.clear();
            vocab.encode_into(&buf, &mut expected);
            assert_eq!(values[start..start + len], expected[..], "{caption}");
            start += len;
        }
        assert_eq!(start, values.len());
    }
}

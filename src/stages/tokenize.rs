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
use polars::prelude::{DataFrame, DataType};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::data::clean::Cleaning;
use crate::data::split::Split;
use crate::data::table::{read_parquet, require_columns, str_values, u32_list_column, write_parquet};
use crate::data::vocab::{Vocab, WordCounts, UNK_ID};
use crate::engine::stage::{normalize_typed, parse_params, InputSpec, StageContext, StageKind};

pub const TOKENS_FILE: &str = "tokens.parquet";
pub const VOCAB_FILE: &str = "vocab.json";

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

    fn inputs(&self) -> Option<&'static [InputSpec]> {
        const INPUTS: [InputSpec; 1] = [InputSpec { name: "captions", required: true }];
        Some(&INPUTS)
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
    let frame = read_parquet(captions_path)?;
    let columns = [
        ("image", DataType::String),
        ("caption_index", DataType::UInt32),
        ("caption", DataType::String),
        ("split", DataType::String),
    ];
    require_columns(&frame, captions_path, &columns)?;
    let captions = str_values(&frame, "caption")?;
    let is_train = train_mask(&str_values(&frame, "split")?, captions_path)?;
    let cleaning = params.cleaning();

    let counts = count_train_words(&captions, &is_train, &cleaning);
    let vocab = Vocab::build(&counts, params.min_count, &cleaning)
        .with_context(|| format!("{}: building the vocabulary", captions_path.display()))?;
    let (values, lengths) = encode_all(&captions, &vocab);

    let mut tokens = DataFrame::new_infer_height(vec![
        frame.column("image")?.clone(),
        frame.column("caption_index")?.clone(),
        frame.column("split")?.clone(),
        u32_list_column("tokens", &values, &lengths),
    ])?;
    write_parquet(&mut tokens, &out_dir.join(TOKENS_FILE))?;
    let json = serde_json::to_string_pretty(&vocab.file)? + "\n";
    std::fs::write(out_dir.join(VOCAB_FILE), json).context("writing vocab.json")?;

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

/// Counts words of train captions, in parallel chunks merged at the end.
fn count_train_words(captions: &[&str], is_train: &[bool], cleaning: &Cleaning) -> WordCounts {
    captions
        .par_chunks(CHUNK)
        .zip(is_train.par_chunks(CHUNK))
        .map(|(chunk, train)| {
            let (mut counts, mut buf) = (WordCounts::default(), String::new());
            for (caption, _) in chunk.iter().zip(train).filter(|(_, &t)| t) {
                cleaning.clean_into(caption, &mut buf);
                counts.add(&buf);
            }
            counts
        })
        .reduce(WordCounts::default, WordCounts::merge)
}

/// Encodes every caption; returns the concatenated ids and each caption's length.
fn encode_all(captions: &[&str], vocab: &Vocab) -> (Vec<u32>, Vec<usize>) {
    let cleaning = &vocab.file.cleaning;
    let chunks: Vec<(Vec<u32>, Vec<usize>)> = captions
        .par_chunks(CHUNK)
        .map(|chunk| {
            let (mut values, mut lengths, mut buf) = (Vec::with_capacity(chunk.len() * 14), Vec::new(), String::new());
            for caption in chunk {
                cleaning.clean_into(caption, &mut buf);
                let before = values.len();
                vocab.encode_into(&buf, &mut values);
                lengths.push(values.len() - before);
            }
            (values, lengths)
        })
        .collect();
    let mut values = Vec::with_capacity(chunks.iter().map(|c| c.0.len()).sum());
    let mut lengths = Vec::with_capacity(captions.len());
    for (chunk_values, chunk_lengths) in chunks {
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
        let list = DataType::List(Box::new(DataType::UInt32));
        let expected = [
            ("image", DataType::String),
            ("caption_index", DataType::UInt32),
            ("split", DataType::String),
            ("tokens", list),
        ];
        require_columns(&frame, &path, &expected).unwrap();
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
    fn parallel_encoding_keeps_row_order() {
        let captions: Vec<String> = (0..10_000).map(|i| format!("dog number {}", if i % 2 == 0 { "even" } else { "odd" })).collect();
        let refs: Vec<&str> = captions.iter().map(String::as_str).collect();
        let mask = vec![true; refs.len()];
        let counts = count_train_words(&refs, &mask, &Cleaning::default());
        assert_eq!(counts.captions, 10_000);
        let vocab = Vocab::build(&counts, 1, &Cleaning::default()).unwrap();
        let (values, lengths) = encode_all(&refs, &vocab);
        assert_eq!(lengths.len(), 10_000);
        let (even, odd) = (vocab.id("even"), vocab.id("odd"));
        for (row, chunk) in values.chunks(5).enumerate() {
            assert_eq!(chunk[3], if row % 2 == 0 { even } else { odd });
        }
    }
}

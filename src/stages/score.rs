//! `score`: BLEU-1..4 and CIDEr-D of generated captions against the reference captions of
//! one split, equal to what pycocoevalcap or NLTK would report (see [`crate::metrics`]).
//!
//! Inputs: `hypotheses` (the `caption` stage's captions.parquet: `image`, `caption`,
//! `log_prob`) and `references` (ingest's captions.parquet: `image`, `caption_index`,
//! `caption`, `split`). References are filtered to `params.split`, and both sides must
//! cover exactly the same images: scoring a subset would silently change CIDEr-D's document
//! frequencies and make numbers incomparable, so a mismatch is an error naming images.
//!
//! Outputs: `metrics.json` (`convention`, `split`, `images`, `bleu` [b1..b4], `bleu_1`..
//! `bleu_4`, `cider_d`) and `metrics.md` (the same as a Markdown table).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::contract::tables::{read_generated_captions, read_reference_captions, GeneratedCaption};
use crate::data::split::Split;
use crate::data::table::{str_values, u32_values};
use crate::metrics::{self, CaptionSet, Convention, Scores};
use pipe_engine::fsutil::{write_atomic, write_json_atomic};
use pipe_engine::stage::{normalize_typed, InputSpec, Inputs, StageContext, StageKind};

pub const KIND: &str = "score";
pub const METRICS_FILE: &str = "metrics.json";
pub const METRICS_MARKDOWN: &str = "metrics.md";

/// How many missing image names an error lists before "and N more".
const SHOWN_MISSING: usize = 5;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScoreParams {
    /// `coco` (pycocoevalcap: PTB tokens) or `nltk` (corpus_bleu on cleaned words).
    pub convention: Convention,
    /// The split whose reference captions are scored against.
    pub split: Split,
}

impl Default for ScoreParams {
    fn default() -> Self {
        Self { convention: Convention::Coco, split: Split::Test }
    }
}

pub struct Score;

impl StageKind for Score {
    fn name(&self) -> &'static str {
        KIND
    }

    fn version(&self) -> u32 {
        2 // 2: CIDEr-D sums n-gram maps in a fixed order (its last bits varied between runs)
    }

    fn normalize_params(&self, params: &Value) -> Result<Value> {
        normalize_typed::<ScoreParams>(params)
    }

    fn inputs(&self) -> Inputs {
        Inputs::Named(&[
            InputSpec { name: "hypotheses", required: true },
            InputSpec { name: "references", required: true },
        ])
    }

    fn outputs(&self, _params: &Value) -> Vec<String> {
        vec![METRICS_FILE.to_string(), METRICS_MARKDOWN.to_string()]
    }

    fn run(&self, ctx: &StageContext) -> Result<()> {
        let params: ScoreParams = ctx.params()?;
        let report = score_files(ctx.input("hypotheses")?, ctx.input("references")?, &params)?;
        write_metrics(&report, &ctx.out_dir)?;
        let b = &report.bleu;
        ctx.log(format!(
            "{} {} images ({}): BLEU-1..4 {:.4} {:.4} {:.4} {:.4}, CIDEr-D {:.4}",
            report.images, report.split, report.convention, b[0], b[1], b[2], b[3], report.cider_d
        ));
        Ok(())
    }
}

/// What `metrics.json` holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricsReport {
    pub convention: Convention,
    pub split: Split,
    pub images: usize,
    pub bleu: [f64; 4],
    pub bleu_1: f64,
    pub bleu_2: f64,
    pub bleu_3: f64,
    pub bleu_4: f64,
    pub cider_d: f64,
    /// The same scores for a trivial captioner that always emits the most frequent
    /// training caption: the bar a trained model has to clear.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<Baseline>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Baseline {
    pub caption: String,
    pub bleu: [f64; 4],
    pub cider_d: f64,
}

impl MetricsReport {
    fn new(scores: Scores, split: Split) -> Self {
        let [bleu_1, bleu_2, bleu_3, bleu_4] = scores.bleu;
        Self {
            convention: scores.convention,
            split,
            images: scores.images,
            bleu: scores.bleu,
            bleu_1,
            bleu_2,
            bleu_3,
            bleu_4,
            cider_d: scores.cider_d,
            baseline: None,
        }
    }

    /// Reads a `metrics.json` back (for the report).
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }

    /// The metrics as a two-row Markdown table.
    pub fn markdown(&self) -> String {
        let b = &self.bleu;
        format!(
            "| convention | split | images | BLEU-1 | BLEU-2 | BLEU-3 | BLEU-4 | CIDEr-D |\n\
             |---|---|---:|---:|---:|---:|---:|---:|\n\
             | {} | {} | {} | {:.4} | {:.4} | {:.4} | {:.4} | {:.4} |\n",
            self.convention, self.split, self.images, b[0], b[1], b[2], b[3], self.cider_d
        )
    }
}

/// Reads, checks and scores the two caption tables.
pub fn score_files(hypotheses: &Path, references: &Path, params: &ScoreParams) -> Result<MetricsReport> {
    let hyps = read_hypotheses(hypotheses)?;
    let refs = read_references(references, params.split)?;
    let sets = pair_up(hyps, refs)
        .with_context(|| format!("scoring {} against {}", hypotheses.display(), references.display()))?;
    let scores = metrics::score(&sets, params.convention)?;
    let mut report = MetricsReport::new(scores, params.split);
    report.baseline = most_frequent_caption_baseline(references, &sets, params.convention)?;
    Ok(report)
}

/// Scores "always say the most frequent training caption" on the same images and references.
fn most_frequent_caption_baseline(
    references: &Path,
    sets: &[CaptionSet],
    convention: Convention,
) -> Result<Option<Baseline>> {
    let train = read_split_captions(references, Split::Train)?;
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for caption in train.values().flatten() {
        *counts.entry(caption.trim().to_lowercase()).or_default() += 1;
    }
    // Ties go to the alphabetically first caption, so the baseline is deterministic.
    let Some((caption, _)) = counts.into_iter().max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(&a.0))) else {
        return Ok(None);
    };
    let trivial: Vec<CaptionSet> =
        sets.iter().map(|set| CaptionSet { hypothesis: caption.clone(), ..set.clone() }).collect();
    let scores = metrics::score(&trivial, convention)?;
    Ok(Some(Baseline { caption, bleu: scores.bleu, cider_d: scores.cider_d }))
}

/// Writes `metrics.json` and `metrics.md` into `out_dir`.
pub fn write_metrics(report: &MetricsReport, out_dir: &Path) -> Result<()> {
    write_json_atomic(&out_dir.join(METRICS_FILE), report)?;
    write_atomic(&out_dir.join(METRICS_MARKDOWN), report.markdown().as_bytes())
}

/// Reads generated captions; rejects an empty table, duplicate images and NaN log-probs
/// (a sign of a broken model, which must not turn into a score).
pub fn read_hypotheses(path: &Path) -> Result<Vec<GeneratedCaption>> {
    let rows = read_generated_captions(path)?;
    ensure!(!rows.is_empty(), "{}: no captions to score", path.display());
    let mut seen = BTreeSet::new();
    for row in &rows {
        if row.log_prob.is_nan() {
            bail!("{}: image {} has a NaN log_prob", path.display(), row.image);
        }
        if !seen.insert(row.image.as_str()) {
            bail!("{}: image {} has more than one caption", path.display(), row.image);
        }
    }
    Ok(rows)
}

/// Reads the reference captions of one split, by image, in `caption_index` order.
pub fn read_references(path: &Path, split: Split) -> Result<BTreeMap<String, Vec<String>>> {
    let references = read_split_captions(path, split)?;
    ensure!(!references.is_empty(), "{}: no reference captions in split `{split}`", path.display());
    Ok(references)
}

/// The captions of one split by image, in caption order; empty when the split has none.
fn read_split_captions(path: &Path, split: Split) -> Result<BTreeMap<String, Vec<String>>> {
    let frame = read_reference_captions(path)?;
    let images = str_values(&frame, "image")?;
    let indices = u32_values(&frame, "caption_index")?;
    let captions = str_values(&frame, "caption")?;
    let splits = str_values(&frame, "split")?;
    let mut by_image: BTreeMap<String, Vec<(u32, String)>> = BTreeMap::new();
    for (((image, index), caption), row_split) in images.into_iter().zip(indices).zip(captions).zip(splits) {
        if row_split == split.as_str() {
            by_image.entry(image.to_string()).or_default().push((index, caption.to_string()));
        }
    }
    Ok(by_image
        .into_iter()
        .map(|(image, mut captions)| {
            captions.sort_by_key(|(index, _)| *index);
            (image, captions.into_iter().map(|(_, c)| c).collect())
        })
        .collect())
}

/// Joins hypotheses with their references, sorted by image name (the order fixes how the
/// PTB tokenizer sees line boundaries, so it must not depend on file order). Both sides must
/// name the same images.
pub fn pair_up(
    hyps: Vec<GeneratedCaption>,
    mut refs: BTreeMap<String, Vec<String>>,
) -> Result<Vec<CaptionSet>> {
    let hyp_images: BTreeSet<&str> = hyps.iter().map(|h| h.image.as_str()).collect();
    let without_refs: Vec<&str> = hyp_images.iter().copied().filter(|i| !refs.contains_key(*i)).collect();
    let without_hyps: Vec<&str> =
        refs.keys().map(String::as_str).filter(|i| !hyp_images.contains(i)).collect();
    if !without_refs.is_empty() || !without_hyps.is_empty() {
        let mut problems = Vec::new();
        if !without_refs.is_empty() {
            problems.push(format!(
                "{} captioned images have no references: {}",
                without_refs.len(),
                sample(&without_refs)
            ));
        }
        if !without_hyps.is_empty() {
            problems.push(format!(
                "{} referenced images have no caption: {}",
                without_hyps.len(),
                sample(&without_hyps)
            ));
        }
        bail!("hypotheses and references cover different images; {}", problems.join("; "));
    }
    let mut sets: Vec<CaptionSet> = hyps
        .into_iter()
        .map(|h| {
            let references = refs.remove(&h.image).unwrap_or_default();
            CaptionSet { image: h.image, hypothesis: h.caption, references }
        })
        .collect();
    sets.sort_by(|a, b| a.image.cmp(&b.image));
    Ok(sets)
}

/// The first few names, and how many more there are.
fn sample(names: &[&str]) -> String {
    let shown = names.iter().take(SHOWN_MISSING).copied().collect::<Vec<_>>().join(", ");
    match names.len().saturating_sub(SHOWN_MISSING) {
        0 => shown,
        more => format!("{shown} and {more} more"),
    }
}

#[cfg(test)]
mod tests {
    use polars::prelude::{Column, DataFrame};

    use super::*;
    use crate::data::table::write_parquet;

    fn write_hypotheses(dir: &Path, rows: &[(&str, &str, f64)]) -> std::path::PathBuf {
        let path = dir.join("hyps.parquet");
        let mut frame = DataFrame::new_infer_height(vec![
            Column::new("image".into(), rows.iter().map(|r| r.0).collect::<Vec<_>>()),
            Column::new("caption".into(), rows.iter().map(|r| r.1).collect::<Vec<_>>()),
            Column::new("log_prob".into(), rows.iter().map(|r| r.2).collect::<Vec<_>>()),
        ])
        .unwrap();
        write_parquet(&mut frame, &path).unwrap();
        path
    }

    fn write_references(dir: &Path, rows: &[(&str, u32, &str, &str)]) -> std::path::PathBuf {
        let path = dir.join("refs.parquet");
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

    const REFS: [(&str, u32, &str, &str); 6] = [
        ("b.jpg", 1, "Two dogs play on the road .", "test"),
        ("b.jpg", 0, "Two dogs are playing .", "test"),
        ("a.jpg", 0, "A little girl climbs the stairs .", "test"),
        ("a.jpg", 1, "A girl in pink going into a wooden cabin .", "test"),
        ("c.jpg", 0, "A man sleeps on a bench .", "train"),
        ("d.jpg", 0, "A black dog leaps over a log .", "dev"),
    ];

    #[test]
    fn scores_the_fixture_through_parquet_files() {
        let dir = tempfile::tempdir().unwrap();
        let fixture = crate::metrics::fixture::load();
        let case = fixture.cases.iter().find(|c| c.name == "normal").unwrap();
        let hyps: Vec<(&str, &str, f64)> =
            case.images.iter().map(|i| (i.image.as_str(), i.hypothesis.as_str(), -1.0)).collect();
        let refs: Vec<(&str, u32, &str, &str)> = case
            .images
            .iter()
            .flat_map(|i| {
                i.references.iter().enumerate().map(|(k, r)| (i.image.as_str(), k as u32, r.as_str(), "test"))
            })
            .collect();
        let (h, r) = (write_hypotheses(dir.path(), &hyps), write_references(dir.path(), &refs));
        for (convention, expected) in [(Convention::Coco, &case.coco), (Convention::Nltk, &case.nltk)] {
            let report = score_files(&h, &r, &ScoreParams { convention, split: Split::Test }).unwrap();
            assert_eq!(report.images, case.images.len());
            for (got, want) in report
                .bleu
                .iter()
                .chain([&report.cider_d])
                .zip(expected.bleu.iter().chain([&expected.cider_d]))
            {
                assert!((got - want).abs() < 1e-6, "{convention}: {got} vs {want}");
            }
        }
    }

    #[test]
    fn filters_the_split_and_orders_references_by_index() {
        let dir = tempfile::tempdir().unwrap();
        let refs = read_references(&write_references(dir.path(), &REFS), Split::Test).unwrap();
        assert_eq!(refs.keys().collect::<Vec<_>>(), ["a.jpg", "b.jpg"]);
        assert_eq!(refs["b.jpg"], ["Two dogs are playing .", "Two dogs play on the road ."]);
        let err = read_references(&write_references(dir.path(), &REFS[..4]), Split::Dev).unwrap_err();
        assert!(err.to_string().contains("split `dev`"), "{err}");
    }

    #[test]
    fn mismatched_images_are_an_error_naming_them() {
        let dir = tempfile::tempdir().unwrap();
        let h =
            write_hypotheses(dir.path(), &[("a.jpg", "girl climbs stairs", -3.0), ("z.jpg", "a cat", -2.0)]);
        let r = write_references(dir.path(), &REFS);
        let err = format!("{:#}", score_files(&h, &r, &ScoreParams::default()).unwrap_err());
        assert!(err.contains("z.jpg") && err.contains("b.jpg"), "{err}");
    }

    #[test]
    fn empty_tables_and_nan_log_probs_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let empty = write_hypotheses(dir.path(), &[]);
        assert!(read_hypotheses(&empty).unwrap_err().to_string().contains("no captions"));
        let nan = write_hypotheses(dir.path(), &[("a.jpg", "a dog", f64::NAN)]);
        assert!(read_hypotheses(&nan).unwrap_err().to_string().contains("NaN"));
        let twice = write_hypotheses(dir.path(), &[("a.jpg", "a dog", -1.0), ("a.jpg", "a cat", -1.0)]);
        assert!(read_hypotheses(&twice).unwrap_err().to_string().contains("more than one"));
    }

    #[test]
    fn writes_metrics_json_and_markdown_that_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let h = write_hypotheses(
            dir.path(),
            &[("a.jpg", "little girl climbs the stairs", -3.0), ("b.jpg", "two dogs are playing", -2.0)],
        );
        let r = write_references(dir.path(), &REFS);
        let report = score_files(&h, &r, &ScoreParams::default()).unwrap();
        write_metrics(&report, dir.path()).unwrap();
        let json: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join(METRICS_FILE)).unwrap()).unwrap();
        assert_eq!(json["convention"], "coco");
        assert_eq!(json["images"], 2);
        assert_eq!(json["bleu"].as_array().unwrap().len(), 4);
        assert_eq!(json["bleu_4"], json["bleu"][3]);
        assert_eq!(MetricsReport::read(&dir.path().join(METRICS_FILE)).unwrap(), report);
        let md = std::fs::read_to_string(dir.path().join(METRICS_MARKDOWN)).unwrap();
        assert!(md.starts_with("| convention |") && md.contains("| coco | test | 2 |"), "{md}");
    }

    #[test]
    fn params_default_and_reject_unknown_keys() {
        let normalized = Score.normalize_params(&Value::Null).unwrap();
        assert_eq!(normalized, serde_json::json!({"convention": "coco", "split": "test"}));
        assert!(Score.normalize_params(&serde_json::json!({"convension": "nltk"})).is_err());
        assert!(Score.normalize_params(&serde_json::json!({"convention": "sacrebleu"})).is_err());
    }
}

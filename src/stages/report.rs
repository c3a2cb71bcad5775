//! `report`: a self-contained HTML report of one experiment, `report/index.html`, that
//! opens from disk (every asset is linked relatively and copied inside `report/`).
//!
//! It shows, in order: the metrics table (`metrics`: score's metrics.json), the training and
//! dev loss per epoch as an SVG line chart (`history`: train's history.json, drawn with
//! plotters), a gallery of `params.gallery` scored images (copied from the `images` dir)
//! with the generated caption (`hypotheses`) and the reference captions of `params.split`
//! (`references`), and, given a caption stage's `attention.json` (`attention`, optional), for
//! each gallery image where an attention model looked for every word; then the upstream
//! stages with their fingerprints (`ctx.lineage`, which the runner hands forward). Nothing
//! on the page differs between two runs of the same inputs: no timings, no cached flags.

use std::fmt::Write as _;
use std::path::{Component, Path};

use anyhow::{bail, ensure, Context, Result};
use plotters::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::contract::attention::{AttentionMaps, ImageAttention};
use crate::contract::tables::GeneratedCaption;
use crate::data::split::Split;
use crate::stages::score::{read_hypotheses, read_references, MetricsReport};
use pipe_engine::stage::{normalize_typed, InputSpec, Inputs, LineageEntry, StageContext, StageKind};

pub const REPORT_DIR: &str = "report";
const INDEX_FILE: &str = "index.html";
const LOSS_FILE: &str = "loss.svg";
const IMAGES_DIR: &str = "images";
const CHART_SIZE: (u32, u32) = (720, 360);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReportParams {
    /// How many scored images the gallery shows (evenly spread over the sorted names).
    pub gallery: usize,
    /// The split whose reference captions the gallery shows (the one `score` used).
    pub split: Split,
    /// The page title.
    pub title: String,
}

impl Default for ReportParams {
    fn default() -> Self {
        Self { gallery: 12, split: Split::Test, title: "pipe report".to_string() }
    }
}

pub struct Report;

impl StageKind for Report {
    fn name(&self) -> &'static str {
        "report"
    }

    fn version(&self) -> u32 {
        2 // 2: no timings or cached flags on the page
    }

    fn normalize_params(&self, params: &Value) -> Result<Value> {
        normalize_typed::<ReportParams>(params)
    }

    fn inputs(&self) -> Inputs {
        Inputs::Named(&[
            InputSpec { name: "metrics", required: true },
            InputSpec { name: "history", required: true },
            InputSpec { name: "hypotheses", required: true },
            InputSpec { name: "references", required: true },
            InputSpec { name: "images", required: true },
            InputSpec { name: "attention", required: false },
        ])
    }

    fn outputs(&self, _params: &Value) -> Vec<String> {
        vec![REPORT_DIR.to_string()]
    }

    fn run(&self, ctx: &StageContext) -> Result<()> {
        let params: ReportParams = ctx.params()?;
        let inputs = ReportInputs {
            metrics: ctx.input("metrics")?,
            history: ctx.input("history")?,
            hypotheses: ctx.input("hypotheses")?,
            references: ctx.input("references")?,
            images: ctx.input("images")?,
            attention: ctx.optional_input("attention"),
        };
        let dir = ctx.output(REPORT_DIR);
        let shown = write_report(&inputs, &params, &ctx.lineage, &dir)?;
        ctx.log(format!("wrote {REPORT_DIR}/{INDEX_FILE} with {shown} gallery images"));
        Ok(())
    }
}

/// The paths the report reads.
pub struct ReportInputs<'a> {
    pub metrics: &'a Path,
    pub history: &'a Path,
    pub hypotheses: &'a Path,
    pub references: &'a Path,
    pub images: &'a Path,
    /// A caption stage's `attention.json`, for the per-word heat maps.
    pub attention: Option<&'a Path>,
}

/// The part of history.json the chart needs (other fields are ignored).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LossHistory {
    pub epochs: Vec<EpochLoss>,
    #[serde(default)]
    pub best_epoch: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochLoss {
    pub epoch: usize,
    pub train_loss: f64,
    #[serde(default)]
    pub dev_loss: Option<f64>,
}

/// One gallery entry: the image's file name inside the report and its captions.
#[derive(Debug, Clone, PartialEq)]
struct GalleryItem {
    hypothesis: GeneratedCaption,
    references: Vec<String>,
}

/// Writes `dir/index.html`, `dir/loss.svg` and `dir/images/...`; returns the gallery size.
pub fn write_report(
    inputs: &ReportInputs,
    params: &ReportParams,
    lineage: &[LineageEntry],
    dir: &Path,
) -> Result<usize> {
    let metrics = MetricsReport::read(inputs.metrics)?;
    let history = read_history(inputs.history)?;
    let gallery = pick_gallery(inputs.hypotheses, inputs.references, params)?;
    std::fs::create_dir_all(dir.join(IMAGES_DIR)).with_context(|| format!("creating {}", dir.display()))?;
    for item in &gallery {
        copy_image(inputs.images, &item.hypothesis.image, &dir.join(IMAGES_DIR))?;
    }
    let svg = loss_chart(&history)?;
    write_file(&dir.join(LOSS_FILE), &svg)?;
    let maps = inputs.attention.map(AttentionMaps::read).transpose()?;
    let html = render_page(params, &metrics, &history, &gallery, maps.as_ref(), lineage);
    write_file(&dir.join(INDEX_FILE), &html)?;
    Ok(gallery.len())
}

fn write_file(path: &Path, text: &str) -> Result<()> {
    pipe_engine::fsutil::write_atomic(path, text.as_bytes())
}

/// Reads history.json; an empty history or a non-finite loss is an error.
pub fn read_history(path: &Path) -> Result<LossHistory> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let history: LossHistory =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    ensure!(!history.epochs.is_empty(), "{}: no epochs", path.display());
    for e in &history.epochs {
        if !e.train_loss.is_finite() || e.dev_loss.is_some_and(|d| !d.is_finite()) {
            bail!("{}: epoch {} has a non-finite loss", path.display(), e.epoch);
        }
    }
    Ok(history)
}

/// `params.gallery` captioned images of the split, evenly spread over the sorted names, so
/// the choice is stable across runs and does not favour the first files.
fn pick_gallery(hypotheses: &Path, references: &Path, params: &ReportParams) -> Result<Vec<GalleryItem>> {
    let mut hyps = read_hypotheses(hypotheses)?;
    let mut refs = read_references(references, params.split)?;
    hyps.retain(|h| refs.contains_key(&h.image));
    ensure!(
        !hyps.is_empty() || params.gallery == 0,
        "no captioned image of {} has references in split `{}` of {}",
        hypotheses.display(),
        params.split,
        references.display()
    );
    hyps.sort_by(|a, b| a.image.cmp(&b.image));
    Ok(spread(hyps.len(), params.gallery)
        .into_iter()
        .map(|i| {
            let hypothesis = hyps[i].clone();
            let references = refs.remove(&hypothesis.image).unwrap_or_default();
            GalleryItem { hypothesis, references }
        })
        .collect())
}

/// `n` distinct indices evenly spread over `0..len` (all of them when `n >= len`).
fn spread(len: usize, n: usize) -> Vec<usize> {
    let n = n.min(len);
    (0..n).map(|k| k * len / n).collect()
}

/// Copies `images/<name>` to `to/<name>`; the name must stay inside the image dir.
fn copy_image(images: &Path, name: &str, to: &Path) -> Result<()> {
    let relative = Path::new(name);
    if !relative.components().all(|c| matches!(c, Component::Normal(_))) {
        bail!("image name {name:?} is not a plain relative path");
    }
    let target = to.join(relative);
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    let source = images.join(relative);
    std::fs::copy(&source, &target)
        .with_context(|| format!("copying image {} into the report", source.display()))?;
    Ok(())
}

/// Train and dev loss per epoch as an SVG line chart, with the best epoch marked.
pub fn loss_chart(history: &LossHistory) -> Result<String> {
    let train: Vec<(f64, f64)> = history.epochs.iter().map(|e| (e.epoch as f64, e.train_loss)).collect();
    let dev: Vec<(f64, f64)> =
        history.epochs.iter().filter_map(|e| e.dev_loss.map(|d| (e.epoch as f64, d))).collect();
    let (x_min, x_max) = padded_range(train.iter().map(|p| p.0));
    let (y_min, y_max) = padded_range(train.iter().chain(&dev).map(|p| p.1));
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, CHART_SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(plot_error)?;
        let mut chart = ChartBuilder::on(&root)
            .caption("loss per epoch", ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .build_cartesian_2d(x_min..x_max, y_min..y_max)
            .map_err(plot_error)?;
        chart
            .configure_mesh()
            .light_line_style(TRANSPARENT)
            .x_labels(train.len().clamp(2, 10))
            .x_label_formatter(&|x| format!("{x:.0}"))
            .x_desc("epoch")
            .y_desc("loss")
            .draw()
            .map_err(plot_error)?;
        let best: Vec<(f64, f64)> = history
            .best_epoch
            .map(|e| e as f64)
            .filter(|e| (x_min..=x_max).contains(e))
            .map(|e| vec![(e, y_min), (e, y_max)])
            .unwrap_or_default();
        for (name, points, color) in
            [("train", &train, BLUE), ("dev", &dev, RED), ("best epoch", &best, GREEN)]
        {
            if points.is_empty() {
                continue;
            }
            chart
                .draw_series(LineSeries::new(points.iter().copied(), color.stroke_width(2)))
                .map_err(plot_error)?
                .label(name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(plot_error)?;
        root.present().map_err(plot_error)?;
    }
    Ok(svg)
}

/// The range of the values with 5% padding (and a unit range around a single value).
fn padded_range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let pad = if hi > lo { (hi - lo) * 0.05 } else { 0.5 };
    (lo - pad, hi + pad)
}

fn plot_error<E: std::error::Error + Send + Sync + 'static>(err: DrawingAreaErrorKind<E>) -> anyhow::Error {
    anyhow::anyhow!("drawing the loss chart: {err}")
}

fn render_page(
    params: &ReportParams,
    metrics: &MetricsReport,
    history: &LossHistory,
    gallery: &[GalleryItem],
    maps: Option<&AttentionMaps>,
    lineage: &[LineageEntry],
) -> String {
    let title = escape(&params.title);
    let mut html = format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{title}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<h1>{title}</h1>\n"
    );
    html += &metrics_section(metrics);
    html += &loss_section(history);
    html += &gallery_section(gallery, params.split, maps);
    html += &lineage_section(lineage);
    html += "</body>\n</html>\n";
    html
}

fn metrics_section(m: &MetricsReport) -> String {
    let b = &m.bleu;
    format!(
        "<h2>Metrics</h2>\n<table class=\"num\">\n<tr><th>convention</th><th>split</th><th>images</th><th>BLEU-1</th><th>BLEU-2</th><th>BLEU-3</th><th>BLEU-4</th><th>CIDEr-D</th></tr>\n<tr><td>{}</td><td>{}</td><td>{}</td><td>{:.4}</td><td>{:.4}</td><td>{:.4}</td><td>{:.4}</td><td>{:.4}</td></tr>\n</table>\n",
        m.convention, m.split, m.images, b[0], b[1], b[2], b[3], m.cider_d
    )
}

fn loss_section(history: &LossHistory) -> String {
    let best = history.best_epoch.map(|e| format!(" Best epoch: {e}.")).unwrap_or_default();
    let last = history.epochs.last().expect("read_history rejects empty histories");
    let dev = last.dev_loss.map(|d| format!(", dev {d:.4}")).unwrap_or_default();
    format!(
        "<h2>Training</h2>\n<p>{} epochs; last: train {:.4}{dev}.{best}</p>\n<img class=\"chart\" src=\"{LOSS_FILE}\" alt=\"train and dev loss per epoch\">\n",
        history.epochs.len(),
        last.train_loss
    )
}

fn gallery_section(gallery: &[GalleryItem], split: Split, maps: Option<&AttentionMaps>) -> String {
    let mut html = format!("<h2>Gallery ({} {split} images)</h2>\n<div class=\"gallery\">\n", gallery.len());
    let by_image: std::collections::HashMap<&str, &ImageAttention> =
        maps.iter().flat_map(|m| m.images.iter().map(|a| (a.image.as_str(), a))).collect();
    for item in gallery {
        let name = escape(&item.hypothesis.image);
        let src = escape(&url_path(&format!("{IMAGES_DIR}/{}", item.hypothesis.image)));
        let _ = write!(
            html,
            "<figure>\n<img src=\"{src}\" alt=\"{name}\">\n<figcaption>\n<p class=\"hyp\">{}</p>\n<p class=\"meta\">{name} · log p = {:.2}</p>\n<ul>\n",
            escape(&item.hypothesis.caption),
            item.hypothesis.log_prob
        );
        for reference in &item.references {
            let _ = writeln!(html, "<li>{}</li>", escape(reference));
        }
        html += "</ul>\n";
        if let (Some(maps), Some(attention)) = (maps, by_image.get(item.hypothesis.image.as_str())) {
            html += &heat_maps(&src, maps.grid, attention);
        }
        html += "</figcaption>\n</figure>\n";
    }
    html + "</div>\n"
}

/// One thumbnail per word, the image dimmed where the model did not look: a grid of
/// H×W cells over the (stretched, as the backbone saw it) image, each cell's shade
/// 0.8·(1 − weight / the word's largest weight).
fn heat_maps(src: &str, [rows, columns]: [u32; 2], attention: &ImageAttention) -> String {
    let mut html = String::from("<div class=\"attn\">\n");
    for (word, weights) in attention.words.iter().zip(&attention.weights) {
        let top = weights.iter().copied().fold(f32::MIN_POSITIVE, f32::max);
        let _ = write!(
            html,
            "<span class=\"aw\"><span class=\"hm\" style=\"background-image:url('{src}')\"><span class=\"g\" style=\"grid-template-columns:repeat({columns},1fr);grid-template-rows:repeat({rows},1fr)\">"
        );
        for w in weights {
            let _ = write!(html, "<i style=\"opacity:{:.2}\"></i>", 0.8 * (1.0 - w / top));
        }
        let _ = writeln!(html, "</span></span>{}</span>", escape(word));
    }
    html + "</div>\n"
}

fn lineage_section(lineage: &[LineageEntry]) -> String {
    let mut html = String::from(
        "<h2>Upstream stages</h2>\n<table>\n<tr><th>stage</th><th>kind</th><th>fingerprint</th></tr>\n",
    );
    for entry in lineage {
        let _ = writeln!(
            html,
            "<tr><td>{}</td><td>{}</td><td><code title=\"{fp}\">{}</code></td></tr>",
            escape(&entry.stage),
            escape(&entry.kind),
            escape(entry.fingerprint.get(..12).unwrap_or(&entry.fingerprint)),
            fp = escape(&entry.fingerprint),
        );
    }
    // Timings differ between runs of the same inputs, so they stay out of this artifact.
    html + "</table>\n<p>How long each stage took: <code>pipe show STAGE</code>.</p>\n"
}

/// Percent-encodes what a relative URL cannot hold verbatim (spaces, `#`, `?`, `%`...).
fn url_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for byte in path.bytes() {
        if byte.is_ascii_alphanumeric() || b"/-_.~".contains(&byte) {
            out.push(byte as char);
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

/// Escapes text for HTML element content and double-quoted attributes.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}\
table{border-collapse:collapse;margin:.5em 0}th,td{border:1px solid #ccc;padding:.3em .6em;text-align:left}\
table.num td,td.n{text-align:right;font-variant-numeric:tabular-nums}\
.chart{max-width:100%;border:1px solid #eee}\
.gallery{display:grid;grid-template-columns:repeat(auto-fill,minmax(250px,1fr));gap:1em}\
figure{margin:0;border:1px solid #ddd;padding:.5em}figure img{width:100%;height:auto}\
.hyp{font-weight:bold;margin:.3em 0}.meta{color:#777;font-size:.8em;margin:.2em 0}\
ul{padding-left:1.2em;margin:.3em 0;font-size:.9em;color:#444}\
.attn{display:flex;flex-wrap:wrap;gap:.3em;margin-top:.4em}.aw{display:flex;flex-direction:column;align-items:center;font-size:.75em}\
.hm{position:relative;width:64px;height:64px;background-size:100% 100%}.g{position:absolute;inset:0;display:grid}.g i{background:#000}";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::table::write_parquet;
    use polars::prelude::*;

    fn write_inputs(dir: &Path) {
        let mut hyps = DataFrame::new_infer_height(vec![
            Column::new("image".into(), ["a b.jpg", "b.jpg", "c.jpg"]),
            Column::new("caption".into(), ["girl <climbs> stairs", "two dogs play", "man on bench"]),
            Column::new("log_prob".into(), [-3.0, -2.5, -4.0]),
        ])
        .unwrap();
        write_parquet(&mut hyps, &dir.join("hyps.parquet")).unwrap();
        let mut refs = DataFrame::new_infer_height(vec![
            Column::new("image".into(), ["a b.jpg", "b.jpg", "c.jpg", "d.jpg"]),
            Column::new("caption_index".into(), [0u32, 0, 0, 0]),
            Column::new("caption".into(), ["A girl & her \"stairs\" .", "Two dogs .", "A man .", "A dog ."]),
            Column::new("split".into(), ["test", "test", "test", "train"]),
        ])
        .unwrap();
        write_parquet(&mut refs, &dir.join("refs.parquet")).unwrap();
        std::fs::create_dir_all(dir.join("images")).unwrap();
        for name in ["a b.jpg", "b.jpg", "c.jpg", "d.jpg"] {
            std::fs::write(dir.join("images").join(name), name.as_bytes()).unwrap();
        }
        let metrics = serde_json::json!({
            "convention": "coco", "split": "test", "images": 3, "bleu": [0.6, 0.4, 0.3, 0.2],
            "bleu_1": 0.6, "bleu_2": 0.4, "bleu_3": 0.3, "bleu_4": 0.2, "cider_d": 0.5
        });
        std::fs::write(dir.join("metrics.json"), metrics.to_string()).unwrap();
        let history = serde_json::json!({"epochs": [
            {"epoch": 1, "train_loss": 4.0, "dev_loss": 3.9, "lr": 0.001, "seconds": 10.0, "dev_seconds": 1.0},
            {"epoch": 2, "train_loss": 3.0, "dev_loss": 3.5, "lr": 0.001, "seconds": 10.0, "dev_seconds": 1.0}
        ], "best_epoch": 2});
        std::fs::write(dir.join("history.json"), history.to_string()).unwrap();
    }

    fn inputs(
        dir: &Path,
    ) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf, std::path::PathBuf, std::path::PathBuf)
    {
        (
            dir.join("metrics.json"),
            dir.join("history.json"),
            dir.join("hyps.parquet"),
            dir.join("refs.parquet"),
            dir.join("images"),
        )
    }

    #[test]
    fn writes_a_self_contained_report() {
        let dir = tempfile::tempdir().unwrap();
        write_inputs(dir.path());
        let (m, h, hy, r, i) = inputs(dir.path());
        let inputs = ReportInputs {
            metrics: &m,
            history: &h,
            hypotheses: &hy,
            references: &r,
            images: &i,
            attention: None,
        };
        let lineage = [LineageEntry {
            stage: "train".into(),
            kind: "train".into(),
            fingerprint: "0123456789abcdef0123".into(),
        }];
        let out = dir.path().join("out").join(REPORT_DIR);
        let params = ReportParams { gallery: 2, ..ReportParams::default() };
        assert_eq!(write_report(&inputs, &params, &lineage, &out).unwrap(), 2);

        let html = std::fs::read_to_string(out.join(INDEX_FILE)).unwrap();
        assert!(html.contains("<td>0.6000</td>") && html.contains("<td>0.5000</td>"), "metrics table");
        assert!(html.contains("src=\"loss.svg\""));
        assert!(
            html.contains("girl &lt;climbs&gt; stairs")
                && html.contains("A girl &amp; her &quot;stairs&quot; .")
        );
        assert!(html.contains("src=\"images/a%20b.jpg\""), "relative, encoded image link");
        assert!(html.contains("0123456789ab"), "lineage");
        assert!(!html.contains(dir.path().to_str().unwrap()), "no absolute paths");
        // Two of the three test images, spread: indices 0 and 1 of 3.
        assert!(out.join("images/a b.jpg").exists() && out.join("images/b.jpg").exists());
        assert!(!out.join("images/c.jpg").exists() && !out.join("images/d.jpg").exists());
        let svg = std::fs::read_to_string(out.join(LOSS_FILE)).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("polyline"), "{}", &svg[..svg.len().min(200)]);
    }

    #[test]
    fn attention_maps_shade_each_word_where_the_model_did_not_look() {
        let dir = tempfile::tempdir().unwrap();
        write_inputs(dir.path());
        let maps = AttentionMaps {
            grid: [1, 2],
            images: vec![ImageAttention {
                image: "b.jpg".into(),
                words: vec!["two".into(), "<dogs>".into()],
                weights: vec![vec![0.9, 0.1], vec![0.5, 0.5]],
            }],
        };
        let path = dir.path().join("attention.json");
        std::fs::write(&path, serde_json::to_string(&maps).unwrap()).unwrap();
        let (m, h, hy, r, i) = inputs(dir.path());
        let inputs = ReportInputs {
            metrics: &m,
            history: &h,
            hypotheses: &hy,
            references: &r,
            images: &i,
            attention: Some(&path),
        };
        let out = dir.path().join("out").join(REPORT_DIR);
        write_report(&inputs, &ReportParams { gallery: 3, ..ReportParams::default() }, &[], &out).unwrap();
        let html = std::fs::read_to_string(out.join(INDEX_FILE)).unwrap();
        assert_eq!(html.matches("class=\"hm\"").count(), 2, "one map per word of b.jpg only");
        assert!(html.contains("grid-template-columns:repeat(2,1fr);grid-template-rows:repeat(1,1fr)"));
        // The most attended cell is clear, the other shaded; equal weights leave both clear.
        assert!(html.contains("<i style=\"opacity:0.00\"></i><i style=\"opacity:0.71\"></i>"), "{html}");
        assert!(html.contains("&lt;dogs&gt;"));

        std::fs::write(
            &path,
            r#"{"grid": [2, 2], "images": [{"image": "b.jpg", "words": ["a"], "weights": [[1.0]]}]}"#,
        )
        .unwrap();
        let err = write_report(&inputs, &ReportParams::default(), &[], &out).unwrap_err();
        assert!(format!("{err:#}").contains("attention.json"), "{err:#}");
    }

    #[test]
    fn missing_image_files_are_errors_naming_them() {
        let dir = tempfile::tempdir().unwrap();
        write_inputs(dir.path());
        std::fs::remove_file(dir.path().join("images/b.jpg")).unwrap();
        let (m, h, hy, r, i) = inputs(dir.path());
        let inputs = ReportInputs {
            metrics: &m,
            history: &h,
            hypotheses: &hy,
            references: &r,
            images: &i,
            attention: None,
        };
        let err = write_report(&inputs, &ReportParams::default(), &[], &dir.path().join("out")).unwrap_err();
        assert!(format!("{err:#}").contains("b.jpg"), "{err:#}");
    }

    #[test]
    fn rejects_unsafe_image_names_and_bad_histories() {
        let dir = tempfile::tempdir().unwrap();
        assert!(copy_image(dir.path(), "../etc/passwd", dir.path()).is_err());
        assert!(copy_image(dir.path(), "/etc/passwd", dir.path()).is_err());
        let path = dir.path().join("history.json");
        std::fs::write(&path, r#"{"epochs": [], "best_epoch": 0}"#).unwrap();
        assert!(read_history(&path).is_err());
        std::fs::write(&path, r#"{"epochs": [{"epoch": 1, "train_loss": NaN}]}"#).unwrap();
        assert!(read_history(&path).is_err());
    }

    #[test]
    fn spreads_the_gallery_evenly() {
        assert_eq!(spread(10, 3), [0, 3, 6]);
        assert_eq!(spread(2, 12), [0, 1]);
        assert!(spread(5, 0).is_empty());
    }

    #[test]
    fn chart_handles_a_single_epoch_without_dev_loss() {
        let history = LossHistory {
            epochs: vec![EpochLoss { epoch: 1, train_loss: 2.0, dev_loss: None }],
            best_epoch: None,
        };
        let svg = loss_chart(&history).unwrap();
        assert!(svg.contains("train") && !svg.contains(">dev<"));
    }

    #[test]
    fn params_default_and_reject_unknown_keys() {
        let normalized = Report.normalize_params(&Value::Null).unwrap();
        assert_eq!(normalized, serde_json::json!({"gallery": 12, "split": "test", "title": "pipe report"}));
        assert!(Report.normalize_params(&serde_json::json!({"galery": 3})).is_err());
    }
}

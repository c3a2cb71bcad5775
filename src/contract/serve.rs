//! The protocol between `pipe serve` and its long-lived worker, `pipe-torch serve`.
//!
//! The worker is started with a [`ServeConfig`] (JSON, in a file it is given), loads every
//! model once, and answers with one [`Ready`] line. Then, per batch: `pipe` writes a
//! [`CaptionRequest`] as one JSON line followed by the images' bytes back to back (their
//! lengths are in the request), and the worker answers with one [`CaptionResponse`] line.
//! Image bytes never become file paths on either side.

use std::io::{BufRead, Write};
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::contract::device::Precision;
use crate::stages::caption::CaptionParams;

/// One model the server offers: a caption stage's model (or ensemble), vocabulary,
/// backbone and decode params, as `pipe caption` resolves them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServeModel {
    /// The caption stage's name.
    pub name: String,
    pub model_dirs: Vec<PathBuf>,
    pub vocab: PathBuf,
    pub backbone: PathBuf,
    pub precision: Precision,
    pub params: CaptionParams,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServeConfig {
    pub models: Vec<ServeModel>,
}

/// The worker's first line: what it loaded.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ready {
    pub models: Vec<LoadedModel>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoadedModel {
    pub name: String,
    /// `merge`, `attention`, …; `ensemble of N` for several.
    pub decoder: String,
    /// Whether captions can come with per-word attention maps.
    pub attention: bool,
    /// [H, W] of the backbone's grid, when it has one.
    pub grid: Option<[u32; 2]>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CaptionRequest {
    pub id: u64,
    pub model: String,
    /// 1 decodes greedily.
    pub beam_width: usize,
    /// Per-word attention maps of the best caption (attention models only).
    pub attention: bool,
    /// Byte length of each image that follows the line, in order.
    pub sizes: Vec<usize>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaptionResponse {
    pub id: u64,
    /// One per image, in order; empty when `error` says why the whole batch failed.
    pub results: Vec<ImageOutcome>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ImageOutcome {
    Captioned(ImageCaption),
    Failed { error: String },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageCaption {
    pub caption: String,
    pub log_prob: f64,
    /// Every finished hypothesis of the beam, best first (the caption is the first).
    pub beams: Vec<Hypothesis>,
    /// For each word of the caption, its attention weights over the grid (row-major).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub attention: Option<Vec<Vec<f32>>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hypothesis {
    pub caption: String,
    pub log_prob: f64,
}

/// Writes a request line and its images.
pub fn write_request(out: &mut impl Write, request: &CaptionRequest, images: &[&[u8]]) -> Result<()> {
    let mut line = serde_json::to_vec(request)?;
    line.push(b'\n');
    out.write_all(&line)?;
    for image in images {
        out.write_all(image)?;
    }
    out.flush()?;
    Ok(())
}

/// Reads a request line and its images; `None` at the end of the stream.
pub fn read_request(input: &mut impl BufRead) -> Result<Option<(CaptionRequest, Vec<Vec<u8>>)>> {
    let mut line = String::new();
    if input.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let request: CaptionRequest = serde_json::from_str(&line).context("a caption request line")?;
    let mut images = Vec::with_capacity(request.sizes.len());
    for &size in &request.sizes {
        let mut bytes = vec![0u8; size];
        input.read_exact(&mut bytes).context("the images after a request line")?;
        images.push(bytes);
    }
    Ok(Some((request, images)))
}

/// Reads one JSON line of type `T`; an error at the end of the stream.
pub fn read_line<T: serde::de::DeserializeOwned>(input: &mut impl BufRead) -> Result<T> {
    let mut line = String::new();
    if input.read_line(&mut line)? == 0 {
        bail!("the worker closed its output");
    }
    serde_json::from_str(&line).with_context(|| format!("a worker line: {}", line.trim_end()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_with_their_bytes() {
        let request = CaptionRequest {
            id: 7,
            model: "caption".into(),
            beam_width: 5,
            attention: false,
            sizes: vec![3, 0, 2],
        };
        let mut wire = Vec::new();
        write_request(&mut wire, &request, &[b"abc", b"", b"\n\n"]).unwrap();
        write_request(&mut wire, &CaptionRequest { id: 8, sizes: vec![1], ..request.clone() }, &[b"z"])
            .unwrap();
        let mut input = std::io::Cursor::new(wire);
        let (first, images) = read_request(&mut input).unwrap().unwrap();
        assert_eq!((first.id, images), (7, vec![b"abc".to_vec(), vec![], b"\n\n".to_vec()]));
        let (second, images) = read_request(&mut input).unwrap().unwrap();
        assert_eq!((second.id, images), (8, vec![b"z".to_vec()]));
        assert!(read_request(&mut input).unwrap().is_none());
    }

    #[test]
    fn outcomes_read_back_as_written() {
        let response = CaptionResponse {
            id: 1,
            results: vec![
                ImageOutcome::Captioned(ImageCaption {
                    caption: "a dog".into(),
                    log_prob: -1.5,
                    beams: vec![Hypothesis { caption: "a dog".into(), log_prob: -1.5 }],
                    attention: None,
                }),
                ImageOutcome::Failed { error: "not an image".into() },
            ],
            error: None,
        };
        let line = serde_json::to_string(&response).unwrap();
        assert_eq!(serde_json::from_str::<CaptionResponse>(&line).unwrap(), response);
    }
}

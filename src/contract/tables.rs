//! The Parquet tables that more than one kind reads or writes, each with its schema
//! spelled once: ingest's reference captions and image manifest, and the generated
//! captions of the `caption` kind.

use std::path::Path;

use anyhow::{Context, Result};
use polars::prelude::{Column, DataFrame, DataType, ParquetReader, SerReader};

use crate::data::table::{read_parquet, require_columns, str_values, write_parquet};

/// ingest's `captions.parquet`: one row per reference caption, in file order.
pub const REFERENCE_CAPTION_COLUMNS: [(&str, DataType); 4] = [
    ("image", DataType::String),
    ("caption_index", DataType::UInt32),
    ("caption", DataType::String),
    ("split", DataType::String),
];

/// ingest's `images.parquet`: one row per image found under the image root.
pub const IMAGE_MANIFEST_COLUMNS: [(&str, DataType); 6] = [
    ("image", DataType::String),
    ("path", DataType::String),
    ("content_hash", DataType::String),
    ("bytes", DataType::UInt64),
    ("width", DataType::UInt32),
    ("height", DataType::UInt32),
];

/// tokenize's `tokens.parquet`: one row per caption, in ingest's order.
pub fn token_columns() -> [(&'static str, DataType); 4] {
    [
        ("image", DataType::String),
        ("caption_index", DataType::UInt32),
        ("split", DataType::String),
        ("tokens", DataType::List(Box::new(DataType::UInt32))),
    ]
}

/// Reads ingest's `captions.parquet` and checks its columns.
pub fn read_reference_captions(path: &Path) -> Result<DataFrame> {
    let frame = read_parquet(path)?;
    require_columns(&frame, path, &REFERENCE_CAPTION_COLUMNS)?;
    Ok(frame)
}

/// One row of the `caption` kind's `captions.parquet`.
#[derive(Debug, Clone, PartialEq)]
pub struct GeneratedCaption {
    /// The image name (split mode) or its path relative to the folder (archive mode).
    pub image: String,
    /// Words, without startseq/endseq.
    pub caption: String,
    /// The caption's log-probability under the model.
    pub log_prob: f64,
}

/// The columns of the `caption` kind's `captions.parquet`.
pub const GENERATED_CAPTION_COLUMNS: [(&str, DataType); 3] =
    [("image", DataType::String), ("caption", DataType::String), ("log_prob", DataType::Float64)];

/// Writes generated captions (image, caption, log_prob) to `path`.
pub fn write_generated_captions(path: &Path, rows: &[GeneratedCaption]) -> Result<()> {
    let mut frame = DataFrame::new_infer_height(vec![
        Column::new("image".into(), rows.iter().map(|r| r.image.as_str()).collect::<Vec<_>>()),
        Column::new("caption".into(), rows.iter().map(|r| r.caption.as_str()).collect::<Vec<_>>()),
        Column::new("log_prob".into(), rows.iter().map(|r| r.log_prob).collect::<Vec<_>>()),
    ])?;
    write_parquet(&mut frame, path)
}

/// Reads generated captions written by [`write_generated_captions`], in file order.
pub fn read_generated_captions(path: &Path) -> Result<Vec<GeneratedCaption>> {
    let frame = read_parquet(path)?;
    require_columns(&frame, path, &GENERATED_CAPTION_COLUMNS)?;
    let (images, captions) = (str_values(&frame, "image")?, str_values(&frame, "caption")?);
    let log_probs = frame.column("log_prob")?.f64()?.into_no_null_iter();
    Ok(images
        .into_iter()
        .zip(captions)
        .zip(log_probs)
        .map(|((image, caption), log_prob)| GeneratedCaption {
            image: image.into(),
            caption: caption.into(),
            log_prob,
        })
        .collect())
}

/// An image a kind could not use, and why: listed in `features.json` and the caption
/// kind's `skipped.json` rather than stopping the run.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SkippedImage {
    pub image: String,
    pub reason: String,
}

/// One row of ingest's `images.parquet`, as the kinds downstream of it use it.
#[derive(Debug, Clone)]
pub struct ImageManifestRow {
    pub image: String,
    /// Relative to the `images` input.
    pub path: String,
    /// blake3 of the file's bytes.
    pub content_hash: String,
}

/// Reads `image`, `path` and `content_hash` from ingest's `images.parquet`.
pub fn read_image_manifest(path: &Path) -> Result<Vec<ImageManifestRow>> {
    let file = std::fs::File::open(path).with_context(|| format!("opening manifest {}", path.display()))?;
    let columns = ["image", "path", "content_hash"].map(String::from).to_vec();
    let frame = ParquetReader::new(file)
        .with_columns(Some(columns))
        .finish()
        .with_context(|| format!("reading manifest {}", path.display()))?;
    require_columns(&frame, path, &IMAGE_MANIFEST_COLUMNS[..3])?;
    let (images, paths) = (str_values(&frame, "image")?, str_values(&frame, "path")?);
    let hashes = str_values(&frame, "content_hash")?;
    Ok(images
        .into_iter()
        .zip(paths)
        .zip(hashes)
        .map(|((image, path), hash)| ImageManifestRow {
            image: image.into(),
            path: path.into(),
            content_hash: hash.into(),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_captions_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("captions.parquet");
        let rows = vec![
            GeneratedCaption { image: "a.jpg".into(), caption: "a dog runs".into(), log_prob: -3.5 },
            GeneratedCaption { image: "b/c.png".into(), caption: String::new(), log_prob: -0.25 },
        ];
        write_generated_captions(&path, &rows).unwrap();
        assert_eq!(read_generated_captions(&path).unwrap(), rows);
        assert!(read_reference_captions(&path).is_err(), "a generated table is no reference table");
    }
}

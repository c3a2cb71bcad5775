//! The image manifest: which files exist under the image root, their content hashes and
//! their dimensions, read from the headers only (decoding 8,000 JPEGs just to learn they are
//! 224x224 would dominate ingest).
//!
//! The content hash is what later stages key per-image caches on, so renaming an image does
//! not invalidate its features and editing one in place does.

use std::collections::HashSet;
use std::io::Cursor;
use std::path::Path;

use anyhow::{Context, Result};
use rayon::prelude::*;
use serde::Serialize;
use walkdir::WalkDir;

/// One row of `images.parquet`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImageEntry {
    pub image: String,
    /// Relative to the image root; the same as `image` for every reader today.
    pub path: String,
    /// blake3 of the file's bytes, hex.
    pub content_hash: String,
    pub bytes: u64,
    pub width: u32,
    pub height: u32,
}

/// An image whose header could not be read; reported and left out of the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Undecodable {
    pub image: String,
    pub error: String,
}

/// File extensions counted as images, everywhere pipe looks for images (ingest's orphan
/// check, archive captioning). pipe decodes JPEG and PNG; a file with another of these
/// extensions is reported as undecodable rather than silently passed over.
pub const IMAGE_EXTENSIONS: [&str; 8] = ["jpg", "jpeg", "png", "gif", "bmp", "webp", "tif", "tiff"];

/// Every file under `root`, as `/`-separated paths relative to it. Symlinks are followed,
/// since stores hand inputs over as links.
pub fn list_files(root: &Path) -> Result<HashSet<String>> {
    let mut files = HashSet::new();
    for entry in WalkDir::new(root).follow_links(true) {
        let entry = entry.with_context(|| format!("listing images under {}", root.display()))?;
        if !entry.file_type().is_file() {
            continue;
        }
        let relative = entry.path().strip_prefix(root).expect("walkdir stays under its root");
        let parts: Vec<_> = relative.components().map(|c| c.as_os_str().to_string_lossy()).collect();
        files.insert(parts.join("/"));
    }
    Ok(files)
}

/// Every image file under `root` (by [`is_image_name`]), as sorted `/`-separated paths
/// relative to it.
pub fn list_image_files(root: &Path) -> Result<Vec<String>> {
    let mut files: Vec<String> = list_files(root)?.into_iter().filter(|f| is_image_name(f)).collect();
    files.sort();
    Ok(files)
}

/// Whether a file name looks like an image (by extension, case-insensitive).
pub fn is_image_name(name: &str) -> bool {
    let extension = name.rsplit_once('.').map_or("", |(_, ext)| ext);
    IMAGE_EXTENSIONS.iter().any(|known| known.eq_ignore_ascii_case(extension))
}

/// Hashes and reads the header of each named image, in parallel, keeping the given order.
/// `on_done` is called once per image (for a progress bar).
pub fn probe_images(
    root: &Path,
    images: &[&str],
    on_done: impl Fn() + Sync,
) -> Vec<Result<ImageEntry, Undecodable>> {
    images
        .par_iter()
        .map(|image| {
            let result = probe_image(root, image)
                .map_err(|err| Undecodable { image: image.to_string(), error: format!("{err:#}") });
            on_done();
            result
        })
        .collect()
}

/// One image: read once, hashed, dimensions from the header. Reading the bytes once serves
/// both the hash and the header (the same as `ImageReader::open`, without a second read).
pub fn probe_image(root: &Path, image: &str) -> Result<ImageEntry> {
    let path = root.join(image);
    let data = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    let (width, height) = image::ImageReader::new(Cursor::new(&data))
        .with_guessed_format()
        .context("guessing the image format")?
        .into_dimensions()
        .context("reading the image header")?;
    Ok(ImageEntry {
        image: image.to_string(),
        path: image.to_string(),
        content_hash: blake3::hash(&data).to_hex().to_string(),
        bytes: data.len() as u64,
        width,
        height,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_png(path: &Path, width: u32, height: u32) {
        image::RgbImage::new(width, height).save(path).unwrap();
    }

    #[test]
    fn lists_nested_files_relative_to_the_root() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("a.jpg"), b"x").unwrap();
        std::fs::write(dir.path().join("sub/b.png"), b"x").unwrap();
        let files = list_files(dir.path()).unwrap();
        assert_eq!(files, HashSet::from(["a.jpg".to_string(), "sub/b.png".to_string()]));
    }

    #[test]
    fn probes_dimensions_and_hash_and_reports_bad_headers() {
        let dir = tempfile::tempdir().unwrap();
        write_png(&dir.path().join("ok.png"), 7, 5);
        std::fs::write(dir.path().join("bad.jpg"), b"not an image at all").unwrap();
        let results = probe_images(dir.path(), &["ok.png", "bad.jpg", "gone.png"], || {});
        let ok = results[0].as_ref().unwrap();
        assert_eq!((ok.width, ok.height), (7, 5));
        let bytes = std::fs::read(dir.path().join("ok.png")).unwrap();
        assert_eq!(ok.content_hash, blake3::hash(&bytes).to_hex().to_string());
        assert_eq!(ok.bytes, bytes.len() as u64);
        assert_eq!(results[1].as_ref().unwrap_err().image, "bad.jpg");
        assert!(results[2].as_ref().unwrap_err().error.contains("gone.png"));
    }

    #[test]
    fn image_extensions() {
        assert!(is_image_name("a.JPG") && is_image_name("x/y.png"));
        assert!(!is_image_name("README") && !is_image_name("notes.txt"));
    }
}

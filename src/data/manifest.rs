//! The image manifest: which files exist under the image root, their content hashes and
//! their dimensions, read from the headers only (decoding 8,000 JPEGs just to learn they are
//! 224x224 would dominate ingest).
//!
//! The content hash is what later stages key per-image caches on, so renaming an image does
//! not invalidate its features and editing one in place does.

use std::collections::HashSet;
use std::io::Cursor;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
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

/// Largest accepted image side, in pixels: bigger files are refused as oversized.
pub const MAX_IMAGE_SIDE: u32 = 16_384;
/// Largest decoder allocation for one image. A 60000×60000 PNG header is refused before
/// anything is allocated; several decode threads run at once, so this bounds memory at
/// roughly `decode threads × MAX_DECODE_ALLOC`.
pub const MAX_DECODE_ALLOC: u64 = 256 * 1024 * 1024;

/// Refuses an image whose header promises more pixels than any kind will decode.
pub fn check_image_size(width: u32, height: u32) -> Result<()> {
    if width > MAX_IMAGE_SIDE || height > MAX_IMAGE_SIDE {
        bail!("{width}x{height} pixels: a side exceeds the limit of {MAX_IMAGE_SIDE}");
    }
    let bytes = u64::from(width) * u64::from(height) * 3;
    if bytes > MAX_DECODE_ALLOC {
        bail!(
            "{width}x{height} pixels need {} MB decoded, over the limit of {} MB",
            bytes >> 20,
            MAX_DECODE_ALLOC >> 20
        );
    }
    Ok(())
}

/// A folder of images whose files may be symlinks, but only to files inside it: an entry
/// that resolves outside the folder (`a.jpg -> /etc/passwd`) is refused, not read.
pub struct ImageRoot {
    canonical: PathBuf,
}

impl ImageRoot {
    pub fn new(root: &Path) -> Result<Self> {
        let canonical = root.canonicalize().with_context(|| format!("resolving {}", root.display()))?;
        Ok(Self { canonical })
    }

    /// The real path of `rel` (relative to the root), if it stays inside the root.
    pub fn resolve(&self, rel: &str) -> Result<PathBuf> {
        let path = self.canonical.join(rel);
        let real = path.canonicalize().with_context(|| format!("resolving {}", path.display()))?;
        if !real.starts_with(&self.canonical) {
            bail!("{rel} links outside the image folder (to {}); refused", real.display());
        }
        Ok(real)
    }
}

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
    let root = ImageRoot::new(root);
    images
        .par_iter()
        .map(|image| {
            let result = root
                .as_ref()
                .map_err(|err| anyhow::anyhow!("{err:#}"))
                .and_then(|root| probe_image(root, image))
                .map_err(|err| Undecodable { image: image.to_string(), error: format!("{err:#}") });
            on_done();
            result
        })
        .collect()
}

/// An image's width and height from its header alone (nothing is decoded).
pub fn header_dimensions(bytes: &[u8]) -> Result<(u32, u32)> {
    image::ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .context("guessing the image format")?
        .into_dimensions()
        .context("reading the image header")
}

/// One image: read once, hashed, dimensions from the header. Reading the bytes once serves
/// both the hash and the header (the same as `ImageReader::open`, without a second read).
pub fn probe_image(root: &ImageRoot, image: &str) -> Result<ImageEntry> {
    let path = root.resolve(image)?;
    let data = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    let (width, height) = header_dimensions(&data)?;
    check_image_size(width, height)?;
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

    /// A PNG whose header claims `width`×`height` pixels (no pixel data follows).
    fn png_header(width: u32, height: u32) -> Vec<u8> {
        fn chunk(out: &mut Vec<u8>, kind: &[u8], data: &[u8]) {
            let mut crc = 0xFFFF_FFFFu32;
            for &byte in kind.iter().chain(data) {
                crc ^= u32::from(byte);
                for _ in 0..8 {
                    crc = if crc & 1 == 1 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
                }
            }
            out.extend_from_slice(&(data.len() as u32).to_be_bytes());
            out.extend_from_slice(kind);
            out.extend_from_slice(data);
            out.extend_from_slice(&(!crc).to_be_bytes());
        }
        let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
        let mut ihdr = Vec::new();
        ihdr.extend_from_slice(&width.to_be_bytes());
        ihdr.extend_from_slice(&height.to_be_bytes());
        ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
        chunk(&mut png, b"IHDR", &ihdr);
        chunk(&mut png, b"IDAT", &[]);
        chunk(&mut png, b"IEND", &[]);
        png
    }

    #[test]
    fn a_decompression_bomb_is_refused_from_its_header() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("bomb.png"), png_header(60_000, 60_000)).unwrap();
        std::fs::write(dir.path().join("fine.png"), png_header(640, 480)).unwrap();
        let results = probe_images(dir.path(), &["bomb.png", "fine.png"], || {});
        let err = &results[0].as_ref().unwrap_err().error;
        assert!(err.contains("60000x60000") && err.contains("exceeds"), "{err}");
        assert_eq!(results[1].as_ref().map(|e| (e.width, e.height)).unwrap(), (640, 480));
    }

    #[test]
    fn symlinks_may_stay_inside_the_image_root_but_not_leave_it() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("images");
        std::fs::create_dir(&root).unwrap();
        write_png(&root.join("real.png"), 3, 2);
        write_png(&dir.path().join("outside.png"), 3, 2);
        std::os::unix::fs::symlink("real.png", root.join("inside.png")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("outside.png"), root.join("escape.png")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", root.join("passwd.jpg")).unwrap();
        let results = probe_images(&root, &["inside.png", "escape.png", "passwd.jpg"], || {});
        assert_eq!(results[0].as_ref().unwrap().width, 3);
        for refused in &results[1..] {
            let err = &refused.as_ref().unwrap_err().error;
            assert!(err.contains("links outside the image folder"), "{err}");
        }
    }
}

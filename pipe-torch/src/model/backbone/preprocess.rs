//! Image files to S×S RGB pixels: decoding under limits (a corrupt, truncated or
//! oversized file is an error, never a crash or a silent grey fill), then resizing.

use std::fs;
use std::io::Cursor;
use std::path::Path;

use anyhow::{bail, Context, Result};
use image::imageops::FilterType;
use image::{ImageFormat, ImageReader, Limits, RgbImage};

use super::spec::BackboneSpec;
pub use pipe::data::manifest::{MAX_DECODE_ALLOC, MAX_IMAGE_SIDE};

/// Turns image files into S×S RGB pixels (HWC `u8`), the form batches travel in.
#[derive(Debug, Clone, Copy)]
pub struct Preprocess {
    size: u32,
    /// Bytes in one prepared image ([`BackboneSpec::image_len`]).
    pub image_len: usize,
}

impl Preprocess {
    pub fn new(spec: &BackboneSpec) -> Self {
        Self { size: spec.input_size, image_len: spec.image_len() }
    }

    /// Reads, decodes and resizes one file into `dst` (length [`BackboneSpec::image_len`]).
    pub fn file_into(&self, path: &Path, dst: &mut [u8]) -> Result<()> {
        let bytes = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let img = decode_rgb(&bytes).with_context(|| format!("decoding {}", path.display()))?;
        self.image_into(&img, dst);
        Ok(())
    }

    /// Stretches `img` to S×S and copies its pixels (RGB, row-major) into `dst`.
    pub fn image_into(&self, img: &RgbImage, dst: &mut [u8]) {
        let s = self.size;
        let resized;
        let img = if img.dimensions() == (s, s) {
            img
        } else {
            resized = image::imageops::resize(img, s, s, FilterType::Triangle);
            &resized
        };
        dst.copy_from_slice(img.as_raw());
    }
}

/// Decodes PNG or JPEG bytes to RGB under size limits. A truncated JPEG is an error: the
/// decoder would otherwise fill the missing part with grey and carry on.
pub fn decode_rgb(bytes: &[u8]) -> Result<RgbImage> {
    let mut reader = ImageReader::new(Cursor::new(bytes)).with_guessed_format()?;
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_IMAGE_SIDE);
    limits.max_image_height = Some(MAX_IMAGE_SIDE);
    limits.max_alloc = Some(MAX_DECODE_ALLOC);
    reader.limits(limits);
    if reader.format() == Some(ImageFormat::Jpeg) {
        ensure_complete_jpeg(bytes)?;
    }
    Ok(reader.decode()?.into_rgb8())
}

/// A complete JPEG has an end-of-image marker (FF D9) after its last start-of-scan (FF DA).
/// Neither can occur inside entropy-coded data, where FF is always followed by 00 or RSTn.
fn ensure_complete_jpeg(bytes: &[u8]) -> Result<()> {
    let last = |marker: u8| bytes.windows(2).rposition(|w| w == [0xFF, marker]);
    match (last(0xDA), last(0xD9)) {
        (Some(sos), Some(eoi)) if eoi > sos => Ok(()),
        (None, _) => bail!("JPEG has no image data (no start-of-scan marker)"),
        _ => bail!("truncated JPEG (no end-of-image marker after the last scan)"),
    }
}

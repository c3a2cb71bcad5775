//! Drawing: a scene rendered as an anti-aliased RGB image, and encoded as JPEG or PNG.

use anyhow::Result;
use image::{ExtendedColorType, ImageEncoder, Rgb, RgbImage};
use rand::Rng;

use super::scene::*;
use super::{ImageFormat, SynthConfig};

/// Radius of a shape's disc, as a fraction of the image side.
pub(super) fn radius(size: Size) -> f32 {
    match size {
        Size::Small => 0.09,
        Size::Large => 0.17,
    }
}

/// A shape ready to rasterise, in pixels.
pub(super) struct Stamp {
    shape: Shape,
    cx: f32,
    cy: f32,
    r: f32,
    rgb: [f32; 3],
}

impl Stamp {
    /// Whether the point lies inside. Squares and triangles are scaled to look about as big
    /// as the circle of the same size.
    fn contains(&self, x: f32, y: f32) -> bool {
        let (dx, dy) = (x - self.cx, y - self.cy);
        match self.shape {
            Shape::Circle => dx * dx + dy * dy <= self.r * self.r,
            Shape::Square => dx.abs() <= 0.88 * self.r && dy.abs() <= 0.88 * self.r,
            Shape::Triangle => {
                // Upward equilateral triangle with circumradius 1.3 r, centred on (cx, cy).
                let big = 1.3 * self.r;
                let bottom = dy <= big / 2.0;
                let half_width = (dy + big) / (1.5 * big) * (big * 0.866);
                bottom && dy >= -big && dx.abs() <= half_width
            }
        }
    }

    fn extent(&self) -> f32 {
        1.3 * self.r + 1.0
    }
}

pub(super) fn stamp(object: &Object, side: f32, rng: &mut impl Rng) -> Stamp {
    let base = object.colour.rgb();
    let rgb = base.map(|c| (c as f32 + jitter(rng, 15.0)).clamp(0.0, 255.0));
    let r = radius(object.size) * side * (1.0 + jitter(rng, 0.08));
    Stamp { shape: object.shape, cx: object.x * side, cy: object.y * side, r, rgb }
}

/// Draws the scene on a light, slightly tinted background, anti-aliased by 4x supersampling.
pub fn render(scene: &Scene, size: u32, rng: &mut impl Rng) -> RgbImage {
    let grey: f32 = rng.random_range(205.0..245.0);
    let background = [0, 1, 2].map(|_| (grey + jitter(rng, 8.0)).clamp(0.0, 255.0) as u8);
    let mut image = RgbImage::from_pixel(size, size, Rgb(background));
    for object in scene.objects() {
        paint(&mut image, &stamp(&object, size as f32, rng));
    }
    image
}

pub(super) fn paint(image: &mut RgbImage, stamp: &Stamp) {
    let (w, h) = (image.width() as f32, image.height() as f32);
    let reach = stamp.extent();
    let x0 = (stamp.cx - reach).floor().clamp(0.0, w) as u32;
    let x1 = (stamp.cx + reach).ceil().clamp(0.0, w) as u32;
    let y0 = (stamp.cy - reach).floor().clamp(0.0, h) as u32;
    let y1 = (stamp.cy + reach).ceil().clamp(0.0, h) as u32;
    for y in y0..y1 {
        for x in x0..x1 {
            let coverage = coverage(stamp, x as f32, y as f32);
            if coverage > 0.0 {
                let pixel = image.get_pixel_mut(x, y);
                for (c, target) in pixel.0.iter_mut().zip(stamp.rgb) {
                    *c = (*c as f32 * (1.0 - coverage) + target * coverage).round() as u8;
                }
            }
        }
    }
}

/// Fraction of the pixel at (x, y) covered, from a 2x2 grid of samples.
pub(super) fn coverage(stamp: &Stamp, x: f32, y: f32) -> f32 {
    let offsets = [0.25, 0.75];
    let hits = offsets
        .iter()
        .flat_map(|dy| offsets.iter().map(move |dx| (dx, dy)))
        .filter(|(dx, dy)| stamp.contains(x + *dx, y + *dy))
        .count();
    hits as f32 / 4.0
}

pub(super) fn encode(image: &RgbImage, config: &SynthConfig) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    let (w, h) = image.dimensions();
    match config.format {
        ImageFormat::Png => image::codecs::png::PngEncoder::new(&mut bytes).write_image(
            image.as_raw(),
            w,
            h,
            ExtendedColorType::Rgb8,
        )?,
        ImageFormat::Jpeg => image::codecs::jpeg::JpegEncoder::new_with_quality(
            &mut bytes,
            config.jpeg_quality,
        )
        .write_image(image.as_raw(), w, h, ExtendedColorType::Rgb8)?,
    }
    Ok(bytes)
}

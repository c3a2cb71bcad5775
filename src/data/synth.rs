//! A synthetic captioning data set laid out exactly like Flickr8k: small images of coloured
//! shapes, five captions each, and the three official split files.
//!
//! It exists so the whole pipeline can be trained and scored in minutes of CPU, with
//! captions that are learnable from pixels alone. Three rules make that true:
//! - every caption is derived from the scene that was drawn, never the other way round, and
//!   nothing a caption says contradicts the picture (a caption may leave out a size);
//! - the five captions of an image vary in wording, synonyms and word order ("a red circle
//!   above a blue square" / "a blue box beneath a red disc"), so a perfect BLEU is not
//!   trivial and the references behave like human ones;
//! - the language is small: about 60 distinct words, 5 to 12 words per caption.
//!
//! Determinism: image `i` draws everything (scene, wording, colour jitter) from its own
//! ChaCha8 stream seeded with blake3(seed, i). Rendering runs in parallel with rayon, yet
//! the same seed gives byte-identical files, and image `i` does not change when `images`
//! grows.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{bail, Context, Result};
use image::{ExtendedColorType, ImageEncoder, Rgb, RgbImage};
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::split::{write_split_file, Split, SplitRatios, FLICKR8K_SPLIT_FILES};

pub const IMAGES_DIR: &str = "images";
pub const TOKEN_FILE: &str = "Flickr8k.token.txt";
pub const CAPTIONS_PER_IMAGE: usize = 5;
/// Caption length bounds in words (the trailing " ." not counted).
pub const MIN_WORDS: usize = 5;
pub const MAX_WORDS: usize = 12;

/// The params of the `synth` kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SynthConfig {
    /// Number of images (five captions each).
    pub images: usize,
    /// Side of the square images, in pixels.
    pub size: u32,
    pub seed: u64,
    /// Images go to train, dev and test in index order, in these proportions.
    pub splits: SplitRatios,
    pub format: ImageFormat,
    /// JPEG quality, 1 to 100 (ignored for PNG).
    pub jpeg_quality: u8,
}

impl Default for SynthConfig {
    fn default() -> Self {
        Self {
            images: 2000,
            size: 96,
            seed: 0,
            splits: SplitRatios::default(),
            format: ImageFormat::Jpeg,
            jpeg_quality: 90,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageFormat {
    Png,
    Jpeg,
}

impl ImageFormat {
    fn extension(self) -> &'static str {
        match self {
            ImageFormat::Png => "png",
            ImageFormat::Jpeg => "jpg",
        }
    }
}

impl SynthConfig {
    pub fn validate(&self) -> Result<()> {
        if self.images == 0 {
            bail!("images must be at least 1");
        }
        if !(32..=1024).contains(&self.size) {
            bail!("size must be between 32 and 1024 pixels, got {}", self.size);
        }
        if !(1..=100).contains(&self.jpeg_quality) {
            bail!("jpeg_quality must be between 1 and 100, got {}", self.jpeg_quality);
        }
        self.splits.validate()
    }

    /// `synth_00042.jpg`: zero-padded so that names sort in index order.
    pub fn image_name(&self, index: usize) -> String {
        let width = (self.images.saturating_sub(1)).to_string().len().max(5);
        format!("synth_{index:0width$}.{}", self.format.extension())
    }

    /// The split of image `index`: the first `train` fraction, then dev, then test.
    pub fn split_of(&self, index: usize) -> Split {
        let n = self.images as f64;
        let train = (n * self.splits.train).round() as usize;
        let dev = train + (n * self.splits.dev).round() as usize;
        let test = dev + (n * self.splits.test).round() as usize;
        match index {
            i if i < train => Split::Train,
            i if i < dev => Split::Dev,
            i if i < test => Split::Test,
            _ => Split::None,
        }
    }
}

// ----------------------------------------------------------------------------------------
// Scenes

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    Circle,
    Square,
    Triangle,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Colour {
    Red,
    Green,
    Blue,
    Yellow,
    Purple,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Size {
    Small,
    Large,
}

const SHAPES: [Shape; 3] = [Shape::Circle, Shape::Square, Shape::Triangle];
const COLOURS: [Colour; 5] = [Colour::Red, Colour::Green, Colour::Blue, Colour::Yellow, Colour::Purple];
const SIZES: [Size; 2] = [Size::Small, Size::Large];

impl Colour {
    fn rgb(self) -> [u8; 3] {
        match self {
            Colour::Red => [215, 40, 40],
            Colour::Green => [40, 160, 60],
            Colour::Blue => [40, 80, 215],
            Colour::Yellow => [230, 195, 20],
            Colour::Purple => [140, 60, 180],
        }
    }

    fn word(self) -> &'static str {
        match self {
            Colour::Red => "red",
            Colour::Green => "green",
            Colour::Blue => "blue",
            Colour::Yellow => "yellow",
            Colour::Purple => "purple",
        }
    }
}

/// One drawn shape. Positions are fractions of the image side, so scenes do not depend on
/// the pixel size.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Object {
    pub shape: Shape,
    pub colour: Colour,
    pub size: Size,
    pub x: f32,
    pub y: f32,
}

/// Where a group of shapes lines up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Left,
    Right,
    Top,
    Bottom,
}

/// What an image shows; captions are derived from it.
#[derive(Debug, Clone, PartialEq)]
pub enum Scene {
    /// One shape in a cell of a 3x3 grid (`col`, `row` in 0..3).
    Single { object: Object, col: usize, row: usize },
    /// Two different shapes; `first` is above `second` (vertical) or left of it.
    Pair { first: Object, second: Object, vertical: bool },
    /// Two or three identical shapes along one side.
    Group { objects: Vec<Object>, side: Side },
}

impl Scene {
    pub fn objects(&self) -> Vec<Object> {
        match self {
            Scene::Single { object, .. } => vec![*object],
            Scene::Pair { first, second, .. } => vec![*first, *second],
            Scene::Group { objects, .. } => objects.clone(),
        }
    }
}

/// The per-image random stream: blake3("pipe-synth", seed, index) as a ChaCha8 seed.
fn image_rng(seed: u64, index: usize) -> ChaCha8Rng {
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"pipe-synth");
    hasher.update(&seed.to_le_bytes());
    hasher.update(&(index as u64).to_le_bytes());
    ChaCha8Rng::from_seed(*hasher.finalize().as_bytes())
}

fn jitter(rng: &mut impl Rng, amount: f32) -> f32 {
    rng.random_range(-amount..=amount)
}

fn pick<T: Copy>(rng: &mut impl Rng, items: &[T]) -> T {
    *items.choose(rng).expect("non-empty choice")
}

/// Cell centres of the 3x3 grid, far enough from the edges for a large shape.
const GRID: [f32; 3] = [0.22, 0.5, 0.78];

pub fn sample_scene(rng: &mut impl Rng) -> Scene {
    match rng.random_range(0..20) {
        0..7 => sample_single(rng),
        7..15 => sample_pair(rng),
        _ => sample_group(rng),
    }
}

fn sample_object(rng: &mut impl Rng, x: f32, y: f32) -> Object {
    Object { shape: pick(rng, &SHAPES), colour: pick(rng, &COLOURS), size: pick(rng, &SIZES), x, y }
}

fn sample_single(rng: &mut impl Rng) -> Scene {
    let (col, row) = (rng.random_range(0..3), rng.random_range(0..3));
    let (x, y) = (GRID[col] + jitter(rng, 0.04), GRID[row] + jitter(rng, 0.04));
    Scene::Single { object: sample_object(rng, x, y), col, row }
}

fn sample_pair(rng: &mut impl Rng) -> Scene {
    let vertical = rng.random_bool(0.5);
    let across = rng.random_range(0.3..0.7);
    let (near, far) = (0.27 + jitter(rng, 0.04), 0.73 + jitter(rng, 0.04));
    let (a, b) = if vertical {
        ((across + jitter(rng, 0.08), near), (across + jitter(rng, 0.08), far))
    } else {
        ((near, across + jitter(rng, 0.08)), (far, across + jitter(rng, 0.08)))
    };
    let first = sample_object(rng, a.0, a.1);
    let mut second = sample_object(rng, b.0, b.1);
    // Two shapes of the same colour and kind would make "a red circle above a red circle".
    while (second.shape, second.colour) == (first.shape, first.colour) {
        second.colour = pick(rng, &COLOURS);
    }
    Scene::Pair { first, second, vertical }
}

fn sample_group(rng: &mut impl Rng) -> Scene {
    let count = if rng.random_bool(0.65) { 2 } else { 3 };
    let side = pick(rng, &[Side::Left, Side::Right, Side::Top, Side::Bottom]);
    // Three large shapes do not fit along one side of the image.
    let size = if count == 2 { pick(rng, &SIZES) } else { Size::Small };
    let (shape, colour) = (pick(rng, &SHAPES), pick(rng, &COLOURS));
    let edge = match side {
        Side::Left | Side::Top => 0.2,
        Side::Right | Side::Bottom => 0.8,
    } + jitter(rng, 0.03);
    let along: &[f32] = if count == 2 { &[0.3, 0.7] } else { &[0.2, 0.5, 0.8] };
    let objects = along
        .iter()
        .map(|&t| {
            let t = t + jitter(rng, 0.03);
            let (x, y) = if matches!(side, Side::Left | Side::Right) { (edge, t) } else { (t, edge) };
            Object { shape, colour, size, x, y }
        })
        .collect();
    Scene::Group { objects, side }
}

// ----------------------------------------------------------------------------------------
// Captions

fn noun(shape: Shape, plural: bool, rng: &mut impl Rng) -> &'static str {
    let choices: &[&str] = match (shape, plural) {
        (Shape::Circle, false) => &["circle", "circle", "disc"],
        (Shape::Circle, true) => &["circles", "circles", "discs"],
        (Shape::Square, false) => &["square", "square", "box", "block"],
        (Shape::Square, true) => &["squares", "squares", "boxes", "blocks"],
        (Shape::Triangle, false) => &["triangle"],
        (Shape::Triangle, true) => &["triangles"],
    };
    pick(rng, choices)
}

fn size_word(size: Size, rng: &mut impl Rng) -> &'static str {
    match size {
        Size::Small => pick(rng, &["small", "small", "little", "tiny"]),
        Size::Large => pick(rng, &["big", "big", "large"]),
    }
}

/// "small red circle" (size mentioned with probability `p_size`).
fn bare_object(
    shape: Shape,
    colour: Colour,
    size: Size,
    plural: bool,
    p_size: f64,
    rng: &mut impl Rng,
) -> String {
    let mut words = Vec::with_capacity(3);
    if rng.random_bool(p_size) {
        words.push(size_word(size, rng));
    }
    words.push(colour.word());
    words.push(noun(shape, plural, rng));
    words.join(" ")
}

/// "a small red circle".
fn object_phrase(object: &Object, p_size: f64, rng: &mut impl Rng) -> String {
    format!("a {}", bare_object(object.shape, object.colour, object.size, false, p_size, rng))
}

fn place_phrase(col: usize, row: usize, rng: &mut impl Rng) -> String {
    let h = ["left", "", "right"][col];
    let v = ["top", "", "bottom"][row];
    let upper = ["upper", "", "lower"][row];
    let choices: Vec<String> = match (col, row) {
        (1, 1) => vec!["in the middle".into(), "in the center".into(), "at the center".into()],
        (_, 1) => vec![format!("on the {h}"), format!("on the {h} side"), format!("at the {h}")],
        (1, _) => vec![format!("at the {v}"), format!("near the {v}")],
        _ => vec![
            format!("in the {v} {h} corner"),
            format!("at the {v} {h}"),
            format!("in the {upper} {h} corner"),
        ],
    };
    choices.choose(rng).expect("non-empty").clone()
}

fn side_phrase(side: Side, rng: &mut impl Rng) -> String {
    let word = match side {
        Side::Left => "left",
        Side::Right => "right",
        Side::Top => "top",
        Side::Bottom => "bottom",
    };
    let choices: Vec<String> = match side {
        Side::Left | Side::Right => {
            vec![format!("on the {word}"), format!("on the {word} side"), format!("along the {word} side")]
        }
        Side::Top | Side::Bottom => {
            vec![format!("at the {word}"), format!("along the {word}"), format!("near the {word}")]
        }
    };
    choices.choose(rng).expect("non-empty").clone()
}

fn describe_single(object: &Object, col: usize, row: usize, rng: &mut impl Rng) -> String {
    let (o, p) = (object_phrase(object, 0.75, rng), place_phrase(col, row, rng));
    match rng.random_range(0..6) {
        0 => format!("{o} {p}"),
        1 => format!("there is {o} {p}"),
        2 => format!("{p} there is {o}"),
        3 => format!("{o} is {p}"),
        4 => format!("{o} sits {p}"),
        _ => format!("{} of {o} {p}", pick(rng, &["an image", "a picture"])),
    }
}

fn describe_pair(first: &Object, second: &Object, vertical: bool, rng: &mut impl Rng) -> String {
    let (a, b) = (object_phrase(first, 0.6, rng), object_phrase(second, 0.6, rng));
    if vertical {
        match rng.random_range(0..6) {
            0 => format!("{a} {} {b}", pick(rng, &["above", "over", "is above"])),
            1 => format!("{b} {} {a}", pick(rng, &["below", "under", "beneath", "is below"])),
            2 => format!("there is {a} above {b}"),
            3 => format!("{b} with {a} above it"),
            4 => format!("{a} at the top and {b} at the bottom"),
            _ => format!("{a} on top of {b}"),
        }
    } else {
        match rng.random_range(0..6) {
            0 => format!("{a} to the left of {b}"),
            1 => format!("{b} to the right of {a}"),
            2 => format!("{a} on the left and {b} on the right"),
            3 => format!("{b} on the right and {a} on the left"),
            4 => format!("{a} next to {b}"),
            _ => format!("{a} left of {b}"),
        }
    }
}

fn describe_group(objects: &[Object], side: Side, rng: &mut impl Rng) -> String {
    let o = objects[0];
    let count = if objects.len() == 2 { "two" } else { "three" };
    let things = bare_object(o.shape, o.colour, o.size, true, 0.6, rng);
    let n = if objects.len() == 2 && rng.random_bool(0.25) {
        format!("a pair of {things}")
    } else {
        format!("{count} {things}")
    };
    let s = side_phrase(side, rng);
    let lined = if matches!(side, Side::Left | Side::Right) { "stacked" } else { "side by side" };
    match rng.random_range(0..4) {
        0 => format!("{n} {s}"),
        1 => format!("there are {n} {s}"),
        2 => format!("{s} there are {n}"),
        _ => format!("{n} {lined} {s}"),
    }
}

/// One caption in Flickr8k's style: sometimes capitalised, sometimes with " ." at the end.
fn describe_once(scene: &Scene, rng: &mut impl Rng) -> String {
    match scene {
        Scene::Single { object, col, row } => describe_single(object, *col, *row, rng),
        Scene::Pair { first, second, vertical } => describe_pair(first, second, *vertical, rng),
        Scene::Group { objects, side } => describe_group(objects, *side, rng),
    }
}

fn word_count(caption: &str) -> usize {
    caption.split_whitespace().count()
}

/// Five captions of `scene`, distinct where the wording allows, 5 to 12 words each.
pub fn describe(scene: &Scene, rng: &mut impl Rng) -> Vec<String> {
    let mut captions: Vec<String> = Vec::with_capacity(CAPTIONS_PER_IMAGE);
    let mut attempts = 0;
    while captions.len() < CAPTIONS_PER_IMAGE {
        attempts += 1;
        let caption = describe_once(scene, rng);
        let fits = (MIN_WORDS..=MAX_WORDS).contains(&word_count(&caption));
        let fresh = !captions.contains(&caption) || attempts > 200;
        if fits && fresh {
            captions.push(caption);
        }
    }
    captions.into_iter().map(|c| style(c, rng)).collect()
}

fn style(mut caption: String, rng: &mut impl Rng) -> String {
    if rng.random_bool(0.6) {
        caption[..1].make_ascii_uppercase();
    }
    if rng.random_bool(0.6) {
        caption.push_str(" .");
    }
    caption
}

// ----------------------------------------------------------------------------------------
// Drawing

/// Radius of a shape's disc, as a fraction of the image side.
fn radius(size: Size) -> f32 {
    match size {
        Size::Small => 0.09,
        Size::Large => 0.17,
    }
}

/// A shape ready to rasterise, in pixels.
struct Stamp {
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

fn stamp(object: &Object, side: f32, rng: &mut impl Rng) -> Stamp {
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

fn paint(image: &mut RgbImage, stamp: &Stamp) {
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
fn coverage(stamp: &Stamp, x: f32, y: f32) -> f32 {
    let offsets = [0.25, 0.75];
    let hits = offsets
        .iter()
        .flat_map(|dy| offsets.iter().map(move |dx| (dx, dy)))
        .filter(|(dx, dy)| stamp.contains(x + *dx, y + *dy))
        .count();
    hits as f32 / 4.0
}

fn encode(image: &RgbImage, config: &SynthConfig) -> Result<Vec<u8>> {
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

// ----------------------------------------------------------------------------------------
// The data set

/// One generated image and its captions.
#[derive(Debug, Clone, PartialEq)]
pub struct SynthImage {
    pub name: String,
    pub split: Split,
    pub scene: Scene,
    pub captions: Vec<String>,
}

/// The scene and captions of image `index`, and its pixels.
pub fn generate_one(config: &SynthConfig, index: usize) -> (SynthImage, RgbImage) {
    let mut rng = image_rng(config.seed, index);
    let scene = sample_scene(&mut rng);
    let captions = describe(&scene, &mut rng);
    let pixels = render(&scene, config.size, &mut rng);
    let name = config.image_name(index);
    (SynthImage { name, split: config.split_of(index), scene, captions }, pixels)
}

/// Writes the whole data set under `out_dir`: `images/`, the token file and the three split
/// files. `on_done` is called once per image written (for a progress bar).
pub fn write_dataset(
    config: &SynthConfig,
    out_dir: &Path,
    on_done: impl Fn() + Sync,
) -> Result<Vec<SynthImage>> {
    config.validate()?;
    let images_dir = out_dir.join(IMAGES_DIR);
    std::fs::create_dir_all(&images_dir).with_context(|| format!("creating {}", images_dir.display()))?;
    let images: Vec<SynthImage> = (0..config.images)
        .into_par_iter()
        .map(|index| {
            let (image, pixels) = generate_one(config, index);
            let path = images_dir.join(&image.name);
            let bytes = encode(&pixels, config).with_context(|| format!("encoding {}", image.name))?;
            std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
            on_done();
            Ok(image)
        })
        .collect::<Result<_>>()?;
    write_token_file(&out_dir.join(TOKEN_FILE), &images)?;
    for (split, file) in FLICKR8K_SPLIT_FILES {
        let names: Vec<&str> =
            images.iter().filter(|im| im.split == split).map(|im| im.name.as_str()).collect();
        write_split_file(&out_dir.join(file), &names)?;
    }
    Ok(images)
}

/// `name#N<TAB>caption`, five lines per image, in image order.
fn write_token_file(path: &Path, images: &[SynthImage]) -> Result<()> {
    let mut text = String::with_capacity(images.len() * CAPTIONS_PER_IMAGE * 64);
    for image in images {
        for (n, caption) in image.captions.iter().enumerate() {
            writeln!(text, "{}#{n}\t{caption}", image.name).expect("writing to a String");
        }
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeSet, HashSet};

    use super::*;
    use crate::data::clean::Cleaning;

    fn small_config(format: ImageFormat) -> SynthConfig {
        SynthConfig { images: 60, size: 64, seed: 7, format, ..SynthConfig::default() }
    }

    fn read_tree(dir: &Path) -> Vec<(String, Vec<u8>)> {
        let mut files: Vec<_> = walkdir::WalkDir::new(dir)
            .into_iter()
            .map(|e| e.unwrap())
            .filter(|e| e.file_type().is_file())
            .map(|e| {
                (e.path().strip_prefix(dir).unwrap().display().to_string(), std::fs::read(e.path()).unwrap())
            })
            .collect();
        files.sort();
        files
    }

    #[test]
    fn same_seed_gives_byte_identical_outputs() {
        for format in [ImageFormat::Png, ImageFormat::Jpeg] {
            let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
            write_dataset(&small_config(format), a.path(), || {}).unwrap();
            write_dataset(&small_config(format), b.path(), || {}).unwrap();
            let (ta, tb) = (read_tree(a.path()), read_tree(b.path()));
            assert_eq!(ta.len(), 60 + 4);
            assert!(ta == tb, "outputs differ for {format:?}");
        }
    }

    #[test]
    fn another_seed_gives_other_images() {
        let one = generate_one(&small_config(ImageFormat::Png), 3);
        let other = generate_one(&SynthConfig { seed: 8, ..small_config(ImageFormat::Png) }, 3);
        assert_ne!(one.1, other.1);
    }

    #[test]
    fn image_does_not_depend_on_the_data_set_size() {
        let small = generate_one(&small_config(ImageFormat::Png), 5);
        let big = generate_one(&SynthConfig { images: 5000, ..small_config(ImageFormat::Png) }, 5);
        assert_eq!(small.0.captions, big.0.captions);
        assert_eq!(small.1, big.1);
    }

    #[test]
    fn layout_matches_flickr8k() {
        let dir = tempfile::tempdir().unwrap();
        let config = SynthConfig { images: 20, ..small_config(ImageFormat::Jpeg) };
        write_dataset(&config, dir.path(), || {}).unwrap();
        let tokens = std::fs::read_to_string(dir.path().join(TOKEN_FILE)).unwrap();
        let lines: Vec<&str> = tokens.lines().collect();
        assert_eq!(lines.len(), 100);
        assert!(lines[0].starts_with("synth_00000.jpg#0\t"), "{}", lines[0]);
        assert!(lines[4].starts_with("synth_00000.jpg#4\t"));
        let split_lines =
            |file: &str| std::fs::read_to_string(dir.path().join(file)).unwrap().lines().count();
        assert_eq!(split_lines("Flickr_8k.trainImages.txt"), 16);
        assert_eq!(split_lines("Flickr_8k.devImages.txt"), 2);
        assert_eq!(split_lines("Flickr_8k.testImages.txt"), 2);
        let decoded = image::open(dir.path().join("images/synth_00019.jpg")).unwrap();
        assert_eq!((decoded.width(), decoded.height()), (64, 64));
    }

    #[test]
    fn captions_are_varied_short_and_from_a_small_vocabulary() {
        let config = SynthConfig { images: 2000, ..SynthConfig::default() };
        let cleaning = Cleaning { min_word_len: 1, ..Cleaning::default() };
        let mut vocabulary = BTreeSet::new();
        let mut distinct_per_image = 0;
        for index in 0..config.images {
            let mut rng = image_rng(config.seed, index);
            let scene = sample_scene(&mut rng);
            let captions = describe(&scene, &mut rng);
            assert_eq!(captions.len(), CAPTIONS_PER_IMAGE);
            for caption in &captions {
                let words = word_count(caption.trim_end_matches(" ."));
                assert!((MIN_WORDS..=MAX_WORDS).contains(&words), "{caption:?}");
                vocabulary.extend(cleaning.clean_words(caption));
            }
            let lowered: HashSet<String> =
                captions.iter().map(|c| c.to_lowercase().replace(" .", "")).collect();
            distinct_per_image += lowered.len();
        }
        assert!(vocabulary.len() < 90, "{} words: {vocabulary:?}", vocabulary.len());
        assert!(vocabulary.len() > 40, "{vocabulary:?}");
        assert!(distinct_per_image as f64 / config.images as f64 > 4.5);
    }

    #[test]
    fn captions_name_what_is_drawn() {
        for index in 0..300 {
            let mut rng = image_rng(1, index);
            let scene = sample_scene(&mut rng);
            let captions = describe(&scene, &mut rng);
            for caption in &captions {
                let caption = caption.to_lowercase();
                for object in scene.objects() {
                    assert!(caption.contains(object.colour.word()), "{caption:?} vs {scene:?}");
                }
                if let Scene::Group { objects, .. } = &scene {
                    let count = if objects.len() == 2 { "two" } else { "three" };
                    assert!(caption.contains(count) || caption.contains("pair"), "{caption:?}");
                }
            }
        }
    }

    #[test]
    fn shapes_are_drawn_where_the_scene_says() {
        let object =
            Object { shape: Shape::Square, colour: Colour::Red, size: Size::Large, x: 0.25, y: 0.75 };
        let scene = Scene::Single { object, col: 0, row: 2 };
        let image = render(&scene, 96, &mut image_rng(0, 0));
        let centre = image.get_pixel(24, 72).0;
        assert!(centre[0] > 180 && centre[1] < 90, "{centre:?}");
        let elsewhere = image.get_pixel(72, 24).0;
        assert!(elsewhere.iter().all(|&c| c > 180), "{elsewhere:?}");
    }

    #[test]
    fn bad_configs_are_refused() {
        assert!(SynthConfig { images: 0, ..SynthConfig::default() }.validate().is_err());
        assert!(SynthConfig { size: 8, ..SynthConfig::default() }.validate().is_err());
        let bad_splits = SplitRatios { train: 0.9, dev: 0.9, test: 0.0 };
        assert!(SynthConfig { splits: bad_splits, ..SynthConfig::default() }.validate().is_err());
    }
}

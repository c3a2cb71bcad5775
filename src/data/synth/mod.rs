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

mod captions;
mod drawing;
mod scene;

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{bail, Context, Result};
use image::RgbImage;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

pub use captions::describe;
use drawing::encode;
pub use drawing::render;
use scene::image_rng;
pub use scene::{sample_scene, Colour, Object, Scene, Shape, Side, Size};

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

    use super::captions::word_count;
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

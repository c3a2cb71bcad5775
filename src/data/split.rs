//! Train/dev/test splits: the official Flickr8k split files when a data set ships them,
//! otherwise a split derived from a hash of the image name.
//!
//! The hash split depends only on the name and the ratios, never on file order or on which
//! other images exist, so adding images to a data set never moves an old image to another
//! split (a moved image would leak dev captions into training).

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// The split a caption belongs to, as written in the `split` column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Dev,
    Test,
    /// Named by no split file (for example the 91 unsplit Flickr8k images).
    None,
}

impl Split {
    pub const ALL: [Split; 4] = [Split::Train, Split::Dev, Split::Test, Split::None];

    pub fn as_str(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Dev => "dev",
            Split::Test => "test",
            Split::None => "none",
        }
    }

    /// Parses the `split` column back.
    pub fn parse(text: &str) -> Option<Split> {
        Split::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Fractions of images per split. A remainder below 1 goes to `none`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SplitRatios {
    pub train: f64,
    pub dev: f64,
    pub test: f64,
}

impl Default for SplitRatios {
    fn default() -> Self {
        Self { train: 0.8, dev: 0.1, test: 0.1 }
    }
}

impl SplitRatios {
    /// Rejects negative ratios and ratios that add up to more than 1.
    pub fn validate(&self) -> Result<()> {
        for (name, value) in [("train", self.train), ("dev", self.dev), ("test", self.test)] {
            if !(0.0..=1.0).contains(&value) {
                bail!("split ratio `{name}` must be between 0 and 1, got {value}");
            }
        }
        let sum = self.train + self.dev + self.test;
        if sum > 1.0 + 1e-9 {
            bail!("split ratios add up to {sum}, more than 1");
        }
        Ok(())
    }

    /// The split of the image at `fraction` in [0, 1).
    pub fn pick(&self, fraction: f64) -> Split {
        if fraction < self.train {
            Split::Train
        } else if fraction < self.train + self.dev {
            Split::Dev
        } else if fraction < self.train + self.dev + self.test {
            Split::Test
        } else {
            Split::None
        }
    }
}

/// Deterministic split from the blake3 hash of the image name.
pub fn hash_split(image: &str, ratios: &SplitRatios) -> Split {
    let hash = blake3::hash(image.as_bytes());
    let mut head = [0u8; 8];
    head.copy_from_slice(&hash.as_bytes()[..8]);
    // 53 bits give an exactly representable fraction in [0, 1).
    let fraction = (u64::from_le_bytes(head) >> 11) as f64 / (1u64 << 53) as f64;
    ratios.pick(fraction)
}

/// The official Flickr8k split file names, as `synth` writes them and `ingest` reads them.
pub const FLICKR8K_SPLIT_FILES: [(Split, &str); 3] = [
    (Split::Train, "Flickr_8k.trainImages.txt"),
    (Split::Dev, "Flickr_8k.devImages.txt"),
    (Split::Test, "Flickr_8k.testImages.txt"),
];

/// Image name → split, from split files.
pub type SplitMap = HashMap<String, Split>;

/// Reads whichever Flickr8k split files exist in `dir`; `None` when there are none.
/// An image listed in two different split files is an error (it would leak).
pub fn read_split_files(dir: &Path) -> Result<Option<SplitMap>> {
    let mut map = SplitMap::new();
    let mut found = false;
    for (split, name) in FLICKR8K_SPLIT_FILES {
        let path = dir.join(name);
        if !path.is_file() {
            continue;
        }
        found = true;
        read_split_file(&path, split, &mut map)?;
    }
    Ok(found.then_some(map))
}

fn read_split_file(path: &Path, split: Split, map: &mut SplitMap) -> Result<()> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading split file {}", path.display()))?;
    for (number, line) in text.lines().enumerate() {
        let image = line.trim();
        if image.is_empty() {
            continue;
        }
        if let Some(previous) = map.insert(image.to_string(), split) {
            if previous != split {
                bail!("{}:{}: image {image} is already in the {previous} split", path.display(), number + 1);
            }
        }
    }
    Ok(())
}

/// Writes one split file: one image name per line, in the given order.
pub fn write_split_file(path: &Path, images: &[&str]) -> Result<()> {
    let mut text = String::with_capacity(images.len() * 24);
    for image in images {
        text.push_str(image);
        text.push('\n');
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_split_is_stable_and_roughly_proportional() {
        let ratios = SplitRatios::default();
        let mut counts = HashMap::new();
        for i in 0..10_000 {
            let name = format!("img_{i}.jpg");
            let split = hash_split(&name, &ratios);
            assert_eq!(split, hash_split(&name, &ratios));
            *counts.entry(split).or_insert(0usize) += 1;
        }
        let train = counts[&Split::Train] as f64 / 10_000.0;
        assert!((train - 0.8).abs() < 0.02, "train fraction {train}");
        assert!(!counts.contains_key(&Split::None));
    }

    #[test]
    fn remainder_goes_to_none() {
        let ratios = SplitRatios { train: 0.5, dev: 0.0, test: 0.0 };
        assert_eq!(ratios.pick(0.7), Split::None);
        assert_eq!(ratios.pick(0.2), Split::Train);
    }

    #[test]
    fn bad_ratios_are_refused() {
        assert!(SplitRatios { train: 0.9, dev: 0.2, test: 0.0 }.validate().is_err());
        assert!(SplitRatios { train: -0.1, dev: 0.2, test: 0.0 }.validate().is_err());
        assert!(SplitRatios::default().validate().is_ok());
    }

    #[test]
    fn split_files_are_read_and_conflicts_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read_split_files(dir.path()).unwrap().is_none());
        write_split_file(&dir.path().join(FLICKR8K_SPLIT_FILES[0].1), &["a.jpg", "b.jpg"]).unwrap();
        write_split_file(&dir.path().join(FLICKR8K_SPLIT_FILES[1].1), &["c.jpg"]).unwrap();
        let map = read_split_files(dir.path()).unwrap().unwrap();
        assert_eq!(map["a.jpg"], Split::Train);
        assert_eq!(map["c.jpg"], Split::Dev);
        write_split_file(&dir.path().join(FLICKR8K_SPLIT_FILES[2].1), &["x.jpg", "a.jpg"]).unwrap();
        let err = read_split_files(dir.path()).unwrap_err().to_string();
        assert!(err.contains("Flickr_8k.testImages.txt:2"), "{err}");
    }

    #[test]
    fn split_names_round_trip() {
        for split in Split::ALL {
            assert_eq!(Split::parse(split.as_str()), Some(split));
        }
    }
}

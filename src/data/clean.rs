//! Caption cleaning, by default exactly the classic Keras-tutorial cleaning of the PyTorch
//! peer (`shared/peers/torch_merge/common.py::clean_words`):
//!
//! ```python
//! words = (re.sub("[^a-z]", "", w) for w in caption.lower().split())
//! return [w for w in words if len(w) > 1]
//! ```
//!
//! Matching it to the character matters: scores are only comparable with the peer's if both
//! see the same words. Hence the details below follow Python, not Rust, where they differ:
//! - `str.split()` also splits on U+001C..U+001F, which Rust's `char::is_whitespace` does not;
//! - `str.lower()` maps a character to possibly several (`İ` → `i̇`), as `char::to_lowercase`;
//! - `len(w)` counts code points, not bytes.

use serde::{Deserialize, Serialize};

/// The cleaning steps, each a `tokenize` param; recorded in `vocab.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Cleaning {
    /// Lowercase before anything else.
    pub lowercase: bool,
    /// Delete every character that is not an ASCII letter from inside each word
    /// ("t-shirt" → "tshirt", "2" → ""). Non-ASCII letters go too, as in the peer.
    pub strip_non_letters: bool,
    /// Drop words shorter than this many characters (2 drops "a" and "."; the peer's rule).
    pub min_word_len: usize,
    pub start_token: String,
    pub end_token: String,
}

impl Default for Cleaning {
    fn default() -> Self {
        Self {
            lowercase: true,
            strip_non_letters: true,
            min_word_len: 2,
            start_token: "startseq".into(),
            end_token: "endseq".into(),
        }
    }
}

impl Cleaning {
    /// Writes the cleaned words of `caption` into `out`, separated by single spaces, without
    /// start and end tokens. `out` is cleared first; reusing it avoids an allocation per word.
    /// Empty words are dropped even with `min_word_len` 0: they cannot be tokens.
    pub fn clean_into(&self, caption: &str, out: &mut String) {
        out.clear();
        if caption.is_ascii() {
            self.clean_ascii(caption.as_bytes(), out);
        } else {
            self.clean_unicode(caption, out);
        }
    }

    /// The common case, byte by byte: ASCII lowercases to ASCII, one byte per character.
    fn clean_ascii(&self, caption: &[u8], out: &mut String) {
        for word in caption.split(|&b| is_python_space(b as char)).filter(|w| !w.is_empty()) {
            let start = self.begin_word(out);
            let mut chars = 0;
            for &byte in word {
                let byte = if self.lowercase { byte.to_ascii_lowercase() } else { byte };
                if !self.strip_non_letters || byte.is_ascii_alphabetic() {
                    out.push(byte as char);
                    chars += 1;
                }
            }
            self.end_word(out, start, chars);
        }
    }

    fn clean_unicode(&self, caption: &str, out: &mut String) {
        for word in caption.split(is_python_space).filter(|w| !w.is_empty()) {
            let start = self.begin_word(out);
            let mut chars = 0;
            let mut keep = |c: char| {
                if !self.strip_non_letters || c.is_ascii_alphabetic() {
                    out.push(c);
                    chars += 1;
                }
            };
            for c in word.chars() {
                if self.lowercase {
                    c.to_lowercase().for_each(&mut keep);
                } else {
                    keep(c);
                }
            }
            self.end_word(out, start, chars);
        }
    }

    /// Adds the separator before a word; returns where to cut if the word is dropped.
    fn begin_word(&self, out: &mut String) -> usize {
        let start = out.len();
        if start > 0 {
            out.push(' ');
        }
        start
    }

    fn end_word(&self, out: &mut String, start: usize, chars: usize) {
        if chars == 0 || chars < self.min_word_len {
            out.truncate(start);
        }
    }

    /// The cleaned words of a caption, without start and end tokens.
    pub fn clean_words(&self, caption: &str) -> Vec<String> {
        let mut out = String::new();
        self.clean_into(caption, &mut out);
        words(&out).map(str::to_string).collect()
    }
}

/// Splits the output of [`Cleaning::clean_into`] into words.
pub fn words(cleaned: &str) -> impl Iterator<Item = &str> {
    cleaned.split(' ').filter(|w| !w.is_empty())
}

/// Python's `str.isspace`: Unicode whitespace plus the ASCII information separators.
fn is_python_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clean(caption: &str) -> Vec<String> {
        Cleaning::default().clean_words(caption)
    }

    #[test]
    fn matches_the_keras_tutorial_cleaning() {
        assert_eq!(
            clean("A child in a pink dress is climbing up a set of stairs in an entry way ."),
            [
                "child", "in", "pink", "dress", "is", "climbing", "up", "set", "of", "stairs", "in", "an",
                "entry", "way"
            ]
        );
        assert_eq!(clean("A man's T-shirt , 2 dogs & 1 cat!"), ["mans", "tshirt", "dogs", "cat"]);
        assert_eq!(clean("  \t  "), Vec::<String>::new());
        assert_eq!(clean("x y z"), Vec::<String>::new());
    }

    #[test]
    fn follows_python_on_unicode() {
        // Python: "Café naïve İx\x1fab".lower().split() then [^a-z] removal.
        assert_eq!(clean("Café naïve İx\u{1f}ab"), ["caf", "nave", "ix", "ab"]);
        // Non-breaking space splits words in Python too.
        assert_eq!(clean("big\u{a0}dog"), ["big", "dog"]);
    }

    #[test]
    fn every_step_can_be_turned_off() {
        let keep_case = Cleaning { lowercase: false, ..Cleaning::default() };
        assert_eq!(keep_case.clean_words("A Big dog"), ["Big", "dog"]);
        let keep_all = Cleaning { strip_non_letters: false, min_word_len: 1, ..Cleaning::default() };
        assert_eq!(keep_all.clean_words("A t-shirt ."), ["a", "t-shirt", "."]);
        let long = Cleaning { min_word_len: 4, ..Cleaning::default() };
        assert_eq!(long.clean_words("the big brown dog"), ["brown"]);
    }

    #[test]
    fn clean_into_reuses_its_buffer() {
        let mut out = String::from("stale");
        Cleaning::default().clean_into("A dog . Runs", &mut out);
        assert_eq!(out, "dog runs");
        assert_eq!(words(&out).collect::<Vec<_>>(), ["dog", "runs"]);
    }

    #[test]
    fn default_is_the_classic_tutorial_cleaning() {
        let classic = Cleaning::default();
        assert_eq!(classic.clean_words("A dog's T-shirt , 3rd place ."), ["dogs", "tshirt", "rd", "place"]);
        assert_eq!(
            classic.clean_words("Café naïve İx\u{1f}ab big\u{a0}dog"),
            ["caf", "nave", "ix", "ab", "big", "dog"]
        );
        let once = classic.clean_words("Two kids' toys (red) on a 2-seat swing!").join(" ");
        assert_eq!(classic.clean_words(&once).join(" "), once, "cleaning is idempotent");
        assert!(classic.clean_words(" . , a ").is_empty());
    }
}

//! The "classic" caption cleaning of the Keras/NLTK captioning tutorials, which the `nltk`
//! convention scores on: references and hypotheses must be cleaned the same way or BLEU
//! silently drops (hypotheses are cleaned again here; cleaning is idempotent).
//!
//! It is the Python one to the character (and the `tokenize` stage's default cleaning,
//! which a test in `stages::score` checks):
//!
//! ```python
//! words = (re.sub("[^a-z]", "", w) for w in caption.lower().split())
//! return [w for w in words if len(w) > 1]
//! ```

/// Lower-cases, removes every character that is not an ASCII letter from inside each
/// whitespace-separated word (`dog's` → `dogs`, `t-shirt` → `tshirt`, `3rd` → `rd`,
/// `café` → `caf`), then drops words left with fewer than two letters (`a`, a hanging `s`).
pub fn clean_caption(text: &str) -> Vec<String> {
    text.split(is_python_space)
        .map(|word| {
            word.chars().flat_map(char::to_lowercase).filter(char::is_ascii_lowercase).collect::<String>()
        })
        .filter(|word| word.len() > 1)
        .collect()
}

/// Python's `str.split()` separators: Unicode whitespace plus U+001C..U+001F.
fn is_python_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_punctuation_digits_and_one_letter_words() {
        assert_eq!(clean_caption("A dog's T-shirt , 3rd place ."), vec!["dogs", "tshirt", "rd", "place"]);
    }

    #[test]
    fn follows_python_on_unicode() {
        assert_eq!(
            clean_caption("Café naïve İx\u{1f}ab big\u{a0}dog"),
            vec!["caf", "nave", "ix", "ab", "big", "dog"]
        );
    }

    #[test]
    fn is_idempotent() {
        let once = clean_caption("Two kids' toys (red) on a 2-seat swing!").join(" ");
        assert_eq!(clean_caption(&once).join(" "), once);
    }

    #[test]
    fn empty_and_punctuation_only_captions_clean_to_nothing() {
        assert!(clean_caption("").is_empty());
        assert!(clean_caption(" . , a ").is_empty());
    }
}

//! The in-memory caption table that every reader produces, and the checks on image names.
//!
//! Records borrow from the source file's bytes where the format allows it (the token file
//! and Flickr30k), so parsing a million captions does not allocate a million strings.

use std::borrow::Cow;
use std::collections::HashMap;

use serde::Serialize;

use super::split::Split;

/// One caption as read from a source file.
#[derive(Debug, Clone, PartialEq)]
pub struct CaptionRecord<'a> {
    /// Image file name relative to the image root, `/`-separated.
    pub image: Cow<'a, str>,
    /// The caption's number for its image (`#N` in the token file).
    pub index: u32,
    /// The raw caption, surrounding whitespace trimmed.
    pub caption: Cow<'a, str>,
    /// Where it came from: a 1-based line for text formats, an entry number for JSON.
    pub pos: u32,
}

/// A line (or JSON entry) that could not be read, kept when `skip_bad_lines` is on.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BadLine {
    /// `line 12` or `annotations[3]`.
    pub location: String,
    pub reason: String,
}

/// What a reader returns.
#[derive(Debug, Default)]
pub struct ParsedCaptions<'a> {
    pub records: Vec<CaptionRecord<'a>>,
    pub bad_lines: Vec<BadLine>,
    /// Splits carried by the file itself (Karpathy JSON); `None` for other formats.
    pub splits: Option<HashMap<String, Split>>,
    /// How `pos` is spelled in messages: "line", "annotation" or "image entry".
    pub pos_label: &'static str,
}

impl ParsedCaptions<'_> {
    /// `line 12`, `annotation 3`, for messages about a record.
    pub fn describe_pos(&self, pos: u32) -> String {
        format!("{} {pos}", self.pos_label)
    }
}

/// Refuses image names that would let a caption file reach outside the image root: absolute
/// paths, drive prefixes and `..` components. Returns the reason for the refusal.
pub fn check_image_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("empty image name");
    }
    let bytes = name.as_bytes();
    let drive = bytes.len() >= 2 && bytes[1] == b':' && bytes[0].is_ascii_alphabetic();
    if bytes[0] == b'/' || bytes[0] == b'\\' || drive {
        return Err("absolute image path");
    }
    // The `contains` pre-check keeps the common case to one scan of the name.
    if name.contains("..") && name.split(['/', '\\']).any(|part| part == "..") {
        return Err("image path escapes the image root (`..`)");
    }
    if bytes.contains(&0) {
        return Err("NUL byte in image name");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_names_are_checked() {
        assert!(check_image_name("a.jpg").is_ok());
        assert!(check_image_name("val2014/a.jpg").is_ok());
        assert!(check_image_name("a..b.jpg").is_ok());
        assert_eq!(check_image_name("/etc/passwd"), Err("absolute image path"));
        assert_eq!(check_image_name("C:\\x.jpg"), Err("absolute image path"));
        assert!(check_image_name("../x.jpg").unwrap_err().contains(".."));
        assert!(check_image_name("a/../../x.jpg").unwrap_err().contains(".."));
        assert!(check_image_name("a\\..\\x.jpg").is_err());
        assert!(check_image_name("").is_err());
    }
}

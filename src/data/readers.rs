//! Readers for the caption formats in the wild, all producing [`ParsedCaptions`].
//!
//! | format | file | one caption is |
//! |---|---|---|
//! | `flickr8k` | `Flickr8k.token.txt` | `name.jpg#N<TAB>caption` |
//! | `csv` | Kaggle `captions.txt` | an RFC 4180 row `image,caption` under that header |
//! | `flickr30k` | `results.csv` | `image_name| comment_number| comment` |
//! | `coco` | `captions_*.json` | an entry of `annotations`, named through `images[].file_name` |
//! | `karpathy` | `dataset_*.json` | an entry of `images[].sentences`, with `images[].split` |
//!
//! Error policy: a malformed line (or JSON entry) is an error naming file and line, unless
//! `skip_bad_lines` is set, in which case it is collected in `bad_lines`. An image name that
//! is absolute or climbs out of the image root is always an error: it is never a typo that
//! skipping would paper over.
//!
//! The line formats are parsed in parallel chunks cut at newlines; records borrow from the
//! file's bytes, so the token file is parsed without per-line allocations.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::captions::{check_image_name, BadLine, CaptionRecord, ParsedCaptions};
use super::split::Split;

/// The `format` param of `ingest`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CaptionFormat {
    #[default]
    Auto,
    Flickr8k,
    Csv,
    Flickr30k,
    Coco,
    Karpathy,
}

impl CaptionFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            CaptionFormat::Auto => "auto",
            CaptionFormat::Flickr8k => "flickr8k",
            CaptionFormat::Csv => "csv",
            CaptionFormat::Flickr30k => "flickr30k",
            CaptionFormat::Coco => "coco",
            CaptionFormat::Karpathy => "karpathy",
        }
    }
}

/// Parses `bytes` (the content of `source`) in `format`, detecting it when `Auto`.
/// Returns the format actually used.
pub fn parse_captions<'a>(
    bytes: &'a [u8],
    format: CaptionFormat,
    source: &Path,
    skip_bad_lines: bool,
) -> Result<(CaptionFormat, ParsedCaptions<'a>)> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let sink = Sink { source, skip: skip_bad_lines };
    let format = match format {
        CaptionFormat::Auto => detect_format(bytes, source)?,
        explicit => explicit,
    };
    let parsed = match format {
        CaptionFormat::Flickr8k => parse_lines(bytes, &sink, parse_token_line)?,
        CaptionFormat::Flickr30k => parse_lines(bytes, &sink, parse_flickr30k_line)?,
        CaptionFormat::Csv => parse_kaggle_csv(bytes, &sink)?,
        CaptionFormat::Coco => parse_coco(bytes, &sink)?,
        CaptionFormat::Karpathy => parse_karpathy(bytes, &sink)?,
        CaptionFormat::Auto => unreachable!("detect_format never answers auto"),
    };
    Ok((format, parsed))
}

/// Guesses the format from the first non-blank line, or from the JSON keys.
pub fn detect_format(bytes: &[u8], source: &Path) -> Result<CaptionFormat> {
    let start = bytes.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(bytes.len());
    if bytes.get(start) == Some(&b'{') {
        return detect_json(bytes, source);
    }
    let first = bytes[start..].split(|&b| b == b'\n').next().unwrap_or_default();
    let first = String::from_utf8_lossy(first);
    if first.contains('\t') {
        Ok(CaptionFormat::Flickr8k)
    } else if first.starts_with("image_name") || first.contains('|') {
        Ok(CaptionFormat::Flickr30k)
    } else if first.contains(',') {
        Ok(CaptionFormat::Csv)
    } else {
        bail!("{}: cannot tell the caption format from its first line; set params.format", source.display())
    }
}

fn detect_json(bytes: &[u8], source: &Path) -> Result<CaptionFormat> {
    let value: serde_json::Value =
        serde_json::from_slice(bytes).with_context(|| format!("{}: invalid JSON", source.display()))?;
    if value.get("annotations").is_some() {
        return Ok(CaptionFormat::Coco);
    }
    let first_image = value.get("images").and_then(|images| images.get(0));
    if first_image.is_some_and(|image| image.get("sentences").is_some()) {
        return Ok(CaptionFormat::Karpathy);
    }
    bail!("{}: JSON with neither `annotations` (COCO) nor `images[].sentences` (Karpathy)", source.display())
}

/// Decides what a bad line costs: an error, or an entry in `bad_lines`.
struct Sink<'p> {
    source: &'p Path,
    skip: bool,
}

impl Sink<'_> {
    fn error(&self, location: &str, reason: &str) -> anyhow::Error {
        anyhow!("{}: {location}: {reason}", self.source.display())
    }

    /// Records a bad line when skipping, fails otherwise.
    fn bad(&self, bad: &mut Vec<BadLine>, location: String, reason: String) -> Result<()> {
        if !self.skip {
            return Err(self.error(&location, &reason));
        }
        bad.push(BadLine { location, reason });
        Ok(())
    }

    fn check_name(&self, location: impl FnOnce() -> String, image: &str) -> Result<()> {
        check_image_name(image)
            .map_err(|why| self.error(&location(), &format!("refused image name {image:?}: {why}")))
    }
}

/// What a line parser makes of one line.
enum Line<'a> {
    Record(&'a str, u32, &'a str),
    /// A blank line or a header.
    Skip,
    Bad(String),
}

type LineParser = for<'a> fn(u32, &'a str) -> Line<'a>;

/// One chunk's records and bad lines, or the first error in it.
type ChunkResult<'a> = Result<(Vec<CaptionRecord<'a>>, Vec<BadLine>)>;

/// Parses a line-per-caption file in parallel chunks, keeping file order.
fn parse_lines<'a>(bytes: &'a [u8], sink: &Sink, parse: LineParser) -> Result<ParsedCaptions<'a>> {
    let chunks = line_chunks(bytes, rayon::current_num_threads() * 4);
    let results: Vec<ChunkResult<'a>> = chunks
        .into_par_iter()
        .map(|(first_line, chunk)| parse_chunk(chunk, first_line, sink, parse))
        .collect();
    let mut parsed = ParsedCaptions { pos_label: "line", ..Default::default() };
    let total = results.iter().map(|r| r.as_ref().map_or(0, |(records, _)| records.len())).sum();
    parsed.records.reserve_exact(total);
    for result in results {
        let (records, bad) = result?;
        parsed.records.extend(records);
        parsed.bad_lines.extend(bad);
    }
    Ok(parsed)
}

fn parse_chunk<'a>(chunk: &'a [u8], first_line: u32, sink: &Sink, parse: LineParser) -> ChunkResult<'a> {
    let mut records = Vec::with_capacity(chunk.len() / 64 + 1);
    let mut bad = Vec::new();
    for (offset, raw) in chunk.split(|&b| b == b'\n').enumerate() {
        let line_no = first_line + offset as u32;
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let line = match std::str::from_utf8(raw) {
            Ok(line) => line,
            Err(err) => {
                let reason = format!("not valid UTF-8 (at byte {} of the line)", err.valid_up_to());
                sink.bad(&mut bad, format!("line {line_no}"), reason)?;
                continue;
            }
        };
        match parse(line_no, line) {
            Line::Record(image, index, caption) => {
                sink.check_name(|| format!("line {line_no}"), image)?;
                let (image, caption) = (Cow::Borrowed(image), Cow::Borrowed(caption));
                records.push(CaptionRecord { image, index, caption, pos: line_no });
            }
            Line::Skip => {}
            Line::Bad(reason) => sink.bad(&mut bad, format!("line {line_no}"), reason)?,
        }
    }
    Ok((records, bad))
}

/// Cuts `bytes` into about `pieces` chunks ending at newlines, each with its first line
/// number. The last chunk holds whatever follows the last newline.
fn line_chunks(bytes: &[u8], pieces: usize) -> Vec<(u32, &[u8])> {
    let target = (bytes.len() / pieces.max(1)).max(1 << 16);
    let mut chunks = Vec::new();
    let (mut start, mut line) = (0usize, 1u32);
    while start < bytes.len() {
        let mut end = (start + target).min(bytes.len());
        if end < bytes.len() {
            end += bytes[end..].iter().position(|&b| b == b'\n').map_or(bytes.len() - end, |p| p + 1);
        }
        // The chunk's final newline ends its last line; do not yield an empty line after it.
        let chunk = &bytes[start..end];
        let body = chunk.strip_suffix(b"\n").unwrap_or(chunk);
        chunks.push((line, body));
        line += chunk.iter().filter(|&&b| b == b'\n').count() as u32;
        start = end;
    }
    chunks
}

/// `name.jpg#N<TAB>caption`.
fn parse_token_line(_line_no: u32, line: &str) -> Line<'_> {
    if line.trim().is_empty() {
        return Line::Skip;
    }
    let Some((key, caption)) = line.split_once('\t') else {
        return Line::Bad("no tab between `image#N` and the caption".into());
    };
    let Some((image, index)) = key.rsplit_once('#') else {
        return Line::Bad(format!("no `#N` caption number after the image name in {key:?}"));
    };
    let Ok(index) = index.trim().parse::<u32>() else {
        return Line::Bad(format!("caption number {index:?} after `#` is not a number"));
    };
    record(image.trim(), index, caption.trim())
}

/// `image_name| comment_number| comment`, with that header.
fn parse_flickr30k_line(line_no: u32, line: &str) -> Line<'_> {
    if line.trim().is_empty() || (line_no == 1 && line.starts_with("image_name")) {
        return Line::Skip;
    }
    let mut fields = line.splitn(3, '|');
    let (Some(image), Some(index), Some(caption)) = (fields.next(), fields.next(), fields.next()) else {
        return Line::Bad("expected three `|`-separated fields: image_name| comment_number| comment".into());
    };
    let Ok(index) = index.trim().parse::<u32>() else {
        return Line::Bad(format!("comment number {:?} is not a number", index.trim()));
    };
    record(image.trim(), index, caption.trim())
}

fn record<'a>(image: &'a str, index: u32, caption: &'a str) -> Line<'a> {
    if image.is_empty() {
        Line::Bad("empty image name".into())
    } else if caption.is_empty() {
        Line::Bad("empty caption".into())
    } else {
        Line::Record(image, index, caption)
    }
}

/// Kaggle `captions.txt`: RFC 4180 CSV with the header `image,caption`. A caption's number
/// is its rank among its image's captions in file order.
fn parse_kaggle_csv<'a>(bytes: &'a [u8], sink: &Sink) -> Result<ParsedCaptions<'a>> {
    let mut reader = csv::ReaderBuilder::new().has_headers(false).flexible(true).from_reader(bytes);
    let mut parsed = ParsedCaptions { pos_label: "line", ..Default::default() };
    let mut next_index: HashMap<String, u32> = HashMap::new();
    let mut row = csv::ByteRecord::new();
    let mut header_seen = false;
    loop {
        let more = reader.read_byte_record(&mut row).map_err(|err| sink.error("CSV", &err.to_string()))?;
        if !more {
            break;
        }
        let line_no = row.position().map_or(0, |p| p.line()) as u32;
        if !header_seen {
            check_csv_header(&row, sink)?;
            header_seen = true;
            continue;
        }
        if let Some((image, caption)) = csv_fields(&row, line_no, sink, &mut parsed.bad_lines)? {
            let index = next_index.entry(image.clone()).or_insert(0);
            let record =
                CaptionRecord { image: image.into(), index: *index, caption: caption.into(), pos: line_no };
            *index += 1;
            parsed.records.push(record);
        }
    }
    Ok(parsed)
}

fn check_csv_header(row: &csv::ByteRecord, sink: &Sink) -> Result<()> {
    let fields: Vec<String> =
        row.iter().map(|f| String::from_utf8_lossy(f).trim().to_ascii_lowercase()).collect();
    if fields != ["image", "caption"] {
        return Err(sink.error("line 1", &format!("expected the header `image,caption`, found {fields:?}")));
    }
    Ok(())
}

/// The two fields of a data row, or `None` for a skipped bad or blank row.
fn csv_fields(
    row: &csv::ByteRecord,
    line_no: u32,
    sink: &Sink,
    bad: &mut Vec<BadLine>,
) -> Result<Option<(String, String)>> {
    let location = || format!("line {line_no}");
    if row.len() == 1 && row[0].iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    if row.len() != 2 {
        sink.bad(bad, location(), format!("expected 2 fields (image,caption), found {}", row.len()))?;
        return Ok(None);
    }
    let (Ok(image), Ok(caption)) = (std::str::from_utf8(&row[0]), std::str::from_utf8(&row[1])) else {
        sink.bad(bad, location(), "not valid UTF-8".into())?;
        return Ok(None);
    };
    let (image, caption) = (image.trim(), caption.trim());
    if image.is_empty() || caption.is_empty() {
        sink.bad(bad, location(), "empty image name or caption".into())?;
        return Ok(None);
    }
    if let Some(why) = line_break(image).or(line_break(caption)) {
        let lines = 1 + caption.matches('\n').count() + image.matches('\n').count();
        let reason =
            format!("{why}: its quoted field runs over {lines} lines (a quote opened here and not closed?)");
        sink.bad(bad, location(), reason)?;
        return Ok(None);
    }
    sink.check_name(location, image)?;
    Ok(Some((image.to_string(), caption.to_string())))
}

#[derive(Deserialize)]
struct CocoFile {
    images: Vec<CocoImage>,
    annotations: Vec<CocoAnnotation>,
}

#[derive(Deserialize)]
struct CocoImage {
    id: u64,
    file_name: String,
}

#[derive(Deserialize)]
struct CocoAnnotation {
    image_id: u64,
    caption: String,
}

/// COCO `captions_*.json`. A caption's number is its rank among its image's annotations.
fn parse_coco<'a>(bytes: &[u8], sink: &Sink) -> Result<ParsedCaptions<'a>> {
    let file: CocoFile = serde_json::from_slice(bytes)
        .with_context(|| format!("{}: not a COCO captions file", sink.source.display()))?;
    let names: HashMap<u64, &str> = file.images.iter().map(|im| (im.id, im.file_name.as_str())).collect();
    let mut parsed = ParsedCaptions { pos_label: "annotations", ..Default::default() };
    let mut next_index: HashMap<u64, u32> = HashMap::new();
    for (pos, annotation) in file.annotations.iter().enumerate() {
        let location = || format!("annotations[{pos}]");
        let Some(&image) = names.get(&annotation.image_id) else {
            let reason = format!("image_id {} is not in `images`", annotation.image_id);
            sink.bad(&mut parsed.bad_lines, location(), reason)?;
            continue;
        };
        let caption = annotation.caption.trim();
        if caption.is_empty() {
            sink.bad(&mut parsed.bad_lines, location(), "empty caption".into())?;
            continue;
        }
        if let Some(why) = line_break(caption) {
            sink.bad(&mut parsed.bad_lines, location(), why.into())?;
            continue;
        }
        sink.check_name(location, image)?;
        let index = next_index.entry(annotation.image_id).or_insert(0);
        parsed.records.push(CaptionRecord {
            image: Cow::Owned(image.to_string()),
            index: *index,
            caption: Cow::Owned(caption.to_string()),
            pos: pos as u32,
        });
        *index += 1;
    }
    Ok(parsed)
}

#[derive(Deserialize)]
struct KarpathyFile {
    images: Vec<KarpathyImage>,
}

#[derive(Deserialize)]
struct KarpathyImage {
    /// `val2014` for COCO; absent for Flickr.
    #[serde(default)]
    filepath: String,
    filename: String,
    #[serde(default)]
    split: Option<String>,
    sentences: Vec<KarpathySentence>,
}

#[derive(Deserialize)]
struct KarpathySentence {
    raw: String,
}

/// Karpathy's `dataset_{flickr8k,flickr30k,coco}.json`, whose splits it also returns
/// (`restval` counts as train, `val` as dev).
fn parse_karpathy<'a>(bytes: &[u8], sink: &Sink) -> Result<ParsedCaptions<'a>> {
    let file: KarpathyFile = serde_json::from_slice(bytes)
        .with_context(|| format!("{}: not a Karpathy dataset file", sink.source.display()))?;
    let mut parsed = ParsedCaptions { pos_label: "images", ..Default::default() };
    let mut splits = HashMap::new();
    for (pos, entry) in file.images.into_iter().enumerate() {
        let location = || format!("images[{pos}]");
        let image = match entry.filepath.as_str() {
            "" => entry.filename,
            dir => format!("{dir}/{}", entry.filename),
        };
        sink.check_name(location, &image)?;
        let Some(split) = karpathy_split(entry.split.as_deref()) else {
            sink.bad(&mut parsed.bad_lines, location(), format!("unknown split {:?}", entry.split))?;
            continue;
        };
        add_sentences(&mut parsed, &image, entry.sentences, pos, sink)?;
        splits.insert(image, split);
    }
    parsed.splits = Some(splits);
    Ok(parsed)
}

fn add_sentences(
    parsed: &mut ParsedCaptions<'_>,
    image: &str,
    sentences: Vec<KarpathySentence>,
    pos: usize,
    sink: &Sink,
) -> Result<()> {
    for (index, sentence) in sentences.into_iter().enumerate() {
        let caption = sentence.raw.trim();
        let location = || format!("images[{pos}].sentences[{index}]");
        if caption.is_empty() {
            sink.bad(&mut parsed.bad_lines, location(), "empty caption".into())?;
            continue;
        }
        if let Some(why) = line_break(caption) {
            sink.bad(&mut parsed.bad_lines, location(), why.into())?;
            continue;
        }
        parsed.records.push(CaptionRecord {
            image: Cow::Owned(image.to_string()),
            index: index as u32,
            caption: Cow::Owned(caption.to_string()),
            pos: pos as u32,
        });
    }
    Ok(())
}

/// A caption (or image name) is one line in every format; a line break inside one is a
/// sign of broken quoting or a merged record, never accepted silently.
fn line_break(text: &str) -> Option<&'static str> {
    text.contains(['\n', '\r']).then_some("a caption contains a line break")
}

fn karpathy_split(split: Option<&str>) -> Option<Split> {
    match split? {
        "train" | "restval" => Some(Split::Train),
        "val" => Some(Split::Dev),
        "test" => Some(Split::Test),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn parse(text: &[u8], format: CaptionFormat, skip: bool) -> Result<(CaptionFormat, ParsedCaptions<'_>)> {
        parse_captions(text, format, &PathBuf::from("caps.txt"), skip)
    }

    fn triples(parsed: &ParsedCaptions) -> Vec<(String, u32, String)> {
        parsed.records.iter().map(|r| (r.image.to_string(), r.index, r.caption.to_string())).collect()
    }

    const TOKEN: &[u8] =
        b"a.jpg#0\tA dog runs .\na.jpg#1\tA brown dog .\r\n\nb.jpg#0\tTwo cats , sleeping .\n";

    #[test]
    fn reads_the_flickr8k_token_file() {
        let (format, parsed) = parse(TOKEN, CaptionFormat::Auto, false).unwrap();
        assert_eq!(format, CaptionFormat::Flickr8k);
        assert_eq!(
            triples(&parsed),
            vec![
                ("a.jpg".into(), 0, "A dog runs .".into()),
                ("a.jpg".into(), 1, "A brown dog .".into()),
                ("b.jpg".into(), 0, "Two cats , sleeping .".into()),
            ]
        );
        assert_eq!(parsed.records[2].pos, 4);
    }

    #[test]
    fn reads_the_kaggle_csv_with_quotes() {
        let text =
            b"image,caption\na.jpg,A dog runs .\na.jpg,\"A dog, brown , says \"\"hi\"\" .\"\nb.jpg,Cats .\n";
        let (format, parsed) = parse(text, CaptionFormat::Auto, false).unwrap();
        assert_eq!(format, CaptionFormat::Csv);
        assert_eq!(
            triples(&parsed),
            vec![
                ("a.jpg".into(), 0, "A dog runs .".into()),
                ("a.jpg".into(), 1, "A dog, brown , says \"hi\" .".into()),
                ("b.jpg".into(), 0, "Cats .".into()),
            ]
        );
    }

    #[test]
    fn reads_flickr30k_results() {
        let text = b"image_name| comment_number| comment\n1.jpg| 0| Two men | one hat .\n1.jpg| 1| A man .\n";
        let (format, parsed) = parse(text, CaptionFormat::Auto, false).unwrap();
        assert_eq!(format, CaptionFormat::Flickr30k);
        assert_eq!(
            triples(&parsed),
            vec![("1.jpg".into(), 0, "Two men | one hat .".into()), ("1.jpg".into(), 1, "A man .".into())]
        );
    }

    #[test]
    fn reads_coco_json() {
        let text = br#"{"info": {}, "images": [{"id": 7, "file_name": "x.jpg", "width": 4}],
            "annotations": [{"image_id": 7, "id": 1, "caption": "A cat. "}, {"image_id": 7, "id": 2, "caption": "Cat"}]}"#;
        let (format, parsed) = parse(text, CaptionFormat::Auto, false).unwrap();
        assert_eq!(format, CaptionFormat::Coco);
        assert_eq!(
            triples(&parsed),
            vec![("x.jpg".into(), 0, "A cat.".into()), ("x.jpg".into(), 1, "Cat".into())]
        );
        assert!(parsed.splits.is_none());
    }

    #[test]
    fn reads_karpathy_json_with_splits() {
        let text = br#"{"dataset": "coco", "images": [
            {"filepath": "val2014", "filename": "v.jpg", "split": "restval", "sentences": [{"raw": "A b .", "tokens": ["a","b"]}]},
            {"filename": "t.jpg", "split": "val", "sentences": [{"raw": "C"}, {"raw": "D"}]}]}"#;
        let (format, parsed) = parse(text, CaptionFormat::Auto, false).unwrap();
        assert_eq!(format, CaptionFormat::Karpathy);
        assert_eq!(triples(&parsed)[0], ("val2014/v.jpg".into(), 0, "A b .".into()));
        assert_eq!(triples(&parsed)[2], ("t.jpg".into(), 1, "D".into()));
        let splits = parsed.splits.unwrap();
        assert_eq!(splits["val2014/v.jpg"], Split::Train);
        assert_eq!(splits["t.jpg"], Split::Dev);
    }

    #[test]
    fn malformed_lines_fail_with_file_and_line() {
        let text = b"a.jpg#0\tok .\na.jpg 1 no tab\nb.jpg#x\tbad number\n";
        let err = parse(text, CaptionFormat::Flickr8k, false).unwrap_err().to_string();
        assert!(err.contains("caps.txt: line 2") && err.contains("no tab"), "{err}");
        let (_, parsed) = parse(text, CaptionFormat::Flickr8k, true).unwrap();
        assert_eq!(parsed.records.len(), 1);
        let locations: Vec<_> = parsed.bad_lines.iter().map(|b| b.location.as_str()).collect();
        assert_eq!(locations, ["line 2", "line 3"]);
    }

    #[test]
    fn non_utf8_fails_with_line_unless_skipped() {
        let text = b"a.jpg#0\tok .\nb.jpg#0\tcaf\xe9 .\n";
        let err = parse(text, CaptionFormat::Flickr8k, false).unwrap_err().to_string();
        assert!(err.contains("line 2") && err.contains("UTF-8"), "{err}");
        let (_, parsed) = parse(text, CaptionFormat::Flickr8k, true).unwrap();
        assert_eq!((parsed.records.len(), parsed.bad_lines.len()), (1, 1));
    }

    #[test]
    fn escaping_or_absolute_names_are_refused_even_when_skipping() {
        for text in [&b"ok.jpg#0\tfine\n../x.jpg#0\tbad\n"[..], b"ok.jpg#0\tfine\n/etc/x.jpg#0\tbad\n"] {
            let err = parse(text, CaptionFormat::Flickr8k, true).unwrap_err().to_string();
            assert!(err.contains("caps.txt: line 2: refused image name"), "{err}");
        }
        let csv = b"image,caption\nsub/../../x.jpg,bad\n";
        assert!(parse(csv, CaptionFormat::Csv, true).unwrap_err().to_string().contains("line 2"));
        let coco = br#"{"images": [{"id": 1, "file_name": "/abs.jpg"}], "annotations": [{"image_id": 1, "caption": "x"}]}"#;
        assert!(parse(coco, CaptionFormat::Coco, true).unwrap_err().to_string().contains("annotations[0]"));
    }

    #[test]
    fn csv_and_flickr30k_bad_rows() {
        let csv = b"image,caption\na.jpg,one\na.jpg,two,three\n";
        let err = parse(csv, CaptionFormat::Csv, false).unwrap_err().to_string();
        assert!(err.contains("line 3") && err.contains("2 fields"), "{err}");
        let csv_header = b"img,text\na.jpg,one\n";
        assert!(parse(csv_header, CaptionFormat::Csv, true).unwrap_err().to_string().contains("header"));
        // The real Flickr30k results.csv has a line with a missing `|` like this one.
        let f30k = b"image_name| comment_number| comment\n1.jpg| 0| ok .\n2.jpg| 4 A dog .\n";
        let err = parse(f30k, CaptionFormat::Flickr30k, false).unwrap_err().to_string();
        assert!(err.contains("line 3"), "{err}");
        assert_eq!(parse(f30k, CaptionFormat::Flickr30k, true).unwrap().1.bad_lines.len(), 1);
    }

    #[test]
    fn an_unterminated_quote_is_a_bad_line_where_it_opened() {
        let csv = b"image,caption\na.png,\"unterminated\nb.png,ok\nc.png,fine\n";
        let err = parse(csv, CaptionFormat::Csv, false).unwrap_err().to_string();
        assert!(err.contains("line 2") && err.contains("runs over"), "{err}");
        let (_, parsed) = parse(csv, CaptionFormat::Csv, true).unwrap();
        assert_eq!(parsed.bad_lines.len(), 1, "{:?}", parsed.bad_lines);
        assert_eq!(parsed.bad_lines[0].location, "line 2");
        let coco = br#"{"images": [{"id": 1, "file_name": "a.jpg"}],
            "annotations": [{"image_id": 1, "caption": "two\nlines"}]}"#;
        let err = parse(coco, CaptionFormat::Coco, false).unwrap_err().to_string();
        assert!(err.contains("annotations[0]") && err.contains("line break"), "{err}");
    }

    #[test]
    fn coco_annotation_for_unknown_image() {
        let coco = br#"{"images": [], "annotations": [{"image_id": 9, "caption": "x"}]}"#;
        let err = parse(coco, CaptionFormat::Coco, false).unwrap_err().to_string();
        assert!(err.contains("annotations[0]") && err.contains("image_id 9"), "{err}");
    }

    #[test]
    fn undetectable_format_is_an_error() {
        assert!(parse(b"just words\n", CaptionFormat::Auto, false).is_err());
        assert!(parse(b"{\"x\": 1}", CaptionFormat::Auto, false).is_err());
    }

    #[test]
    fn chunked_parsing_matches_sequential_line_numbers() {
        let mut text = String::new();
        for i in 0..50_000 {
            text.push_str(&format!("img{}.jpg#{}\tcaption number {i}\n", i / 5, i % 5));
        }
        text.push_str("last.jpg#0\tno trailing newline");
        let chunks = line_chunks(text.as_bytes(), 8);
        assert!(chunks.len() > 4);
        let (_, parsed) = parse(text.as_bytes(), CaptionFormat::Flickr8k, false).unwrap();
        assert_eq!(parsed.records.len(), 50_001);
        for (i, record) in parsed.records.iter().enumerate() {
            assert_eq!(record.pos as usize, i + 1);
        }
        assert_eq!(parsed.records[49_999].caption, "caption number 49999");
        assert_eq!(parsed.records[50_000].image, "last.jpg");
    }
}

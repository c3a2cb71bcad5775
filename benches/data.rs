//! Data benchmark: caption parsing, `ingest` and `tokenize` throughput, in captions/s.
//!
//! ```text
//! cargo bench --bench data -- [FLICKR8K_DIR] [--captions N]
//! ```
//! FLICKR8K_DIR (default /work/shared/flickr8k) needs `Flickr8k.token.txt`, `images/` and
//! the split files. The benchmark runs twice: on that token file as is, then on a generated
//! token file of N captions (default 1,000,000) that cycles the real captions over the real
//! images, so ingest still probes every image once. Parsing is timed alone (best of 5) and
//! as part of the whole `ingest` (which also hashes and reads the header of each image).
//! Figures go in docs/BENCHMARKS.md; nothing here asserts a time.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use pipe::contract::files::REFERENCE_CAPTIONS_FILE as CAPTIONS_FILE;
use pipe::data::readers::{parse_captions, CaptionFormat};
use pipe::stages::ingest::{ingest, IngestInputs, IngestParams};
use pipe::stages::tokenize::{tokenize, TokenizeParams};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let captions = flag_value(&args, "--captions").unwrap_or(1_000_000);
    let data = args.iter().find(|a| !a.starts_with("--") && a.parse::<usize>().is_err());
    let data = PathBuf::from(data.map_or("/work/shared/flickr8k", String::as_str));
    let scratch = tempfile::tempdir()?;
    println!("threads: {}", rayon::current_num_threads());

    let token_file = data.join("Flickr8k.token.txt");
    bench_one("flickr8k", &token_file, &data, scratch.path())?;
    let generated = scratch.path().join("generated.token.txt");
    write_generated(&token_file, &generated, captions)?;
    bench_one(&format!("generated {captions}"), &generated, &data, scratch.path())
}

fn flag_value(args: &[String], flag: &str) -> Option<usize> {
    let at = args.iter().position(|a| a == flag)?;
    args.get(at + 1)?.replace('_', "").parse().ok()
}

/// Times parsing alone, then ingest and tokenize end to end, for one token file.
fn bench_one(label: &str, token_file: &Path, data: &Path, scratch: &Path) -> Result<()> {
    let bytes = std::fs::read(token_file).with_context(|| format!("reading {}", token_file.display()))?;
    let mut best = Duration::MAX;
    let mut count = 0;
    for _ in 0..5 {
        let start = Instant::now();
        let (_, parsed) = parse_captions(&bytes, CaptionFormat::Auto, token_file, false)?;
        best = best.min(start.elapsed());
        count = parsed.records.len();
    }
    report(label, "parse (best of 5)", count, best, bytes.len());

    let out = scratch.join(label.replace(' ', "_"));
    std::fs::create_dir_all(&out)?;
    let inputs = IngestInputs { captions: token_file, images: &data.join("images"), splits: Some(data) };
    let start = Instant::now();
    let ingest_report = ingest(&inputs, &IngestParams::default(), &out, &|| {}, &|_| {})?;
    let written = ingest_report.counts.captions_written;
    report(label, "ingest (parse+images+parquet)", written, start.elapsed(), bytes.len());

    let tokens_out = out.join("tokenize");
    std::fs::create_dir_all(&tokens_out)?;
    let start = Instant::now();
    let summary = tokenize(&out.join(CAPTIONS_FILE), &TokenizeParams::default(), &tokens_out)?;
    report(label, "tokenize", summary.captions, start.elapsed(), 0);
    println!(
        "    vocabulary {} from {} train captions, max_len {}",
        summary.vocab_size, summary.train_captions, summary.max_len
    );
    Ok(())
}

fn report(label: &str, what: &str, captions: usize, took: Duration, bytes: usize) {
    let seconds = took.as_secs_f64();
    let mut line = format!(
        "{label:>18} | {what:<30} | {captions:>9} captions | {seconds:>8.3} s | {:>12.0} captions/s",
        captions as f64 / seconds
    );
    if bytes > 0 {
        write!(line, " | {:.0} MB/s", bytes as f64 / seconds / 1e6).unwrap();
    }
    println!("{line}");
}

/// A token file of `n` captions: the real captions cycled over the real images, with
/// caption numbers growing past 4 so every (image, number) pair stays unique.
fn write_generated(source: &Path, target: &Path, n: usize) -> Result<()> {
    let text = std::fs::read_to_string(source)?;
    let lines: Vec<(&str, &str)> = text
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(key, caption)| (key.rsplit_once('#').map_or(key, |(image, _)| image), caption))
        .collect();
    let mut out = String::with_capacity(n * 80);
    for i in 0..n {
        let (image, caption) = lines[i % lines.len()];
        writeln!(out, "{image}#{}\t{caption}", i / lines.len() * 5 + i % 5).unwrap();
    }
    std::fs::write(target, out).with_context(|| format!("writing {}", target.display()))
}

//! Decoding benchmark: captions/s of greedy or beam search over cached features, the
//! decode alone (model loaded, features in memory), with a digest of the captions so a
//! speed change can be checked to change no caption.
//!
//! ```text
//! cargo bench -p pipe-torch --bench decode -- MODEL_DIR VOCAB_JSON FEATURES_ARROW TOKENS_PARQUET
//!     [--split dev] [--width 5] [--rounds 5] [--batch 512] [--threads N] [--greedy]
//! ```
//! The paths are a pipeline's artifacts, e.g. `data/out/flickr8k/{train,tokenize/vocab.json,
//! features/features.arrow,tokenize/tokens.parquet}`. Figures go in docs/BENCHMARKS.md;
//! nothing here asserts a time.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use pipe::stages::caption::DecoderKind;
use pipe_torch::caption::{CaptionModel, DecodeSettings};
use pipe_torch::model::data::{caption_text, FeatureTable, TokenTable};
use tch::{Device, Tensor};

fn main() -> Result<()> {
    pipe_torch::numerics::reproducible_cpu_maths(); // as in the worker
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let (mut paths, mut flags) = (Vec::new(), std::collections::HashMap::new());
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.strip_prefix("--") {
            Some("greedy") => drop(flags.insert("greedy", String::new())),
            Some(name) => drop(flags.insert(name, it.next().context("a flag without its value")?.clone())),
            None => paths.push(PathBuf::from(a)),
        }
    }
    let [model_dir, vocab, features, tokens] = &paths[..] else {
        anyhow::bail!("usage: decode MODEL_DIR VOCAB_JSON FEATURES_ARROW TOKENS_PARQUET [flags]");
    };
    let number = |name: &str, default: usize| -> Result<usize> {
        flags.get(name).map_or(Ok(default), |v| v.parse().with_context(|| format!("--{name} {v}")))
    };
    pipe_torch::memory::keep_freed_memory_in_the_heap();
    let auto_threads = pipe_torch::model::backbone::ThreadPlan::new(0, Device::Cpu).torch;
    tch::set_num_threads(number("threads", auto_threads)? as i32);

    let model = CaptionModel::load(model_dir, vocab, Device::Cpu)?;
    let table = FeatureTable::load(features)?;
    let split = flags.get("split").map_or("dev", String::as_str);
    let images = TokenTable::load(tokens)?.split_images(split);
    let index = table.index();
    let rows: Vec<i64> = images.iter().map(|i| index[i.as_str()]).collect();
    let selected = table.matrix.index_select(0, &Tensor::from_slice(&rows));
    let settings = DecodeSettings {
        decoder: if flags.contains_key("greedy") { DecoderKind::Greedy } else { DecoderKind::Beam },
        beam_width: number("width", 5)?,
        length_norm: true,
        batch_size: number("batch", DecodeSettings::default().batch_size)?,
        ..DecodeSettings::default()
    };
    println!(
        "{} images of split {split}, {:?} width {}",
        images.len(),
        settings.decoder,
        settings.beam_width
    );
    for round in 1..=number("rounds", 5)? {
        let started = Instant::now();
        let hyps = model.decode(&selected, &settings)?;
        let secs = started.elapsed().as_secs_f64();
        let (mut words, mut scores) = (blake3::Hasher::new(), blake3::Hasher::new());
        for (image, h) in images.iter().zip(&hyps) {
            words.update(format!("{image}\t{}\n", caption_text(&model.vocab, &h.tokens)).as_bytes());
            scores.update(&h.log_prob.to_le_bytes());
        }
        println!(
            "round {round}: {secs:.3} s, {:.0} captions/s, captions {}, log-probs {}",
            hyps.len() as f64 / secs,
            &words.finalize().to_hex()[..16],
            &scores.finalize().to_hex()[..16]
        );
    }
    Ok(())
}

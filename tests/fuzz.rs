//! Fuzzing every parser that reads a user's file (issue 16): the caption formats (Flickr8k
//! token file, Flickr30k, CSV, COCO, Karpathy, and format detection), `pipeline.yaml`,
//! `-S` overrides, the lock file, `vocab.json` and image headers. (`backbone.json` is
//! fuzzed beside its reader, in pipe-torch/tests/fuzz_backbone.rs.)
//!
//! Property-based with proptest, not coverage-guided: inputs are seeds mutated by byte
//! flips, insertions, deletions, duplicated ranges and syntax tokens, and plain arbitrary
//! bytes. The property: the parser returns (no panic) within a time limit, and an error
//! names the file it is about (an override's error, the key).
//!
//! The test suite runs `PIPE_FUZZ_CASES` (default 300) cases per target and replays every
//! input kept under `fuzz/<target>/` (seeds and any crasher found). The campaign,
//! `scripts/fuzz_campaign.sh`, runs each target for `PIPE_FUZZ_SECONDS` and, with
//! `PIPE_FUZZ_SAVE=1`, keeps the shrunk input of a failure under `fuzz/<target>/`.

use std::path::Path;

use pipe::data::readers::{parse_captions, CaptionFormat};
use pipe_engine::spec::{KindRegistry, Override};

#[path = "support/mutate.rs"]
mod mutate;
use mutate::{fuzz_target, property};

/// The property one input must satisfy, given a scratch folder.
type Check = Box<dyn Fn(&[u8], &Path) -> Result<(), String>>;

/// One parser under test: its seeds and the property every input must satisfy.
struct Target {
    name: &'static str,
    seeds: Vec<Vec<u8>>,
    check: Check,
}

fn caption_target(name: &'static str, format: CaptionFormat, seeds: &[&str]) -> Target {
    Target {
        name,
        seeds: seeds.iter().map(|s| s.as_bytes().to_vec()).collect(),
        check: Box::new(move |input, _| {
            let source = Path::new("data/captions.txt");
            for skip in [false, true] {
                property(input, "data/captions.txt", |bytes| {
                    parse_captions(bytes, format, source, skip).map(|_| ()).map_err(|err| format!("{err:#}"))
                })?;
            }
            Ok(())
        }),
    }
}

fn targets() -> Vec<Target> {
    let flickr8k = "1000268201_693b08cb0e.jpg#0\tA child in a pink dress .\n1000268201_693b08cb0e.jpg#1\tA girl going into a wooden building .\n";
    let flickr30k = "image_name| comment_number| comment\n1000092795.jpg| 0| Two young guys with shaggy hair .\n1000092795.jpg| 1| Two friends enjoy time spent together .\n";
    let csv = "image,caption\na.jpg,\"A dog, running .\"\nb.jpg,A cat sleeps\n";
    let coco = r#"{"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": [{"image_id": 1, "id": 5, "caption": "A dog runs."}]}"#;
    let karpathy = r#"{"images": [{"filename": "a.jpg", "split": "train", "sentences": [{"raw": "A dog runs.", "tokens": ["a", "dog", "runs"]}]}]}"#;
    let pipeline =
        std::fs::read_to_string(env!("CARGO_MANIFEST_DIR").to_string() + "/pipeline.yaml").unwrap();
    let small_pipeline = "params:\n  seed: 0\nstages:\n  ingest:\n    kind: ingest\n    deps: {captions: c.txt, images: imgs}\n    params: {format: auto}\n";
    let lock = std::fs::read_to_string(env!("CARGO_MANIFEST_DIR").to_string() + "/pipe.lock").unwrap();
    let vocab =
        r#"{"tokens": ["<pad>", "<unk>", "startseq", "endseq", "a", "dog"], "max_len": 5, "min_count": 1}"#;
    let png =
        std::fs::read(env!("CARGO_MANIFEST_DIR").to_string() + "/tests/fixtures/photos/coffee.png").unwrap();
    let jpeg =
        std::fs::read(env!("CARGO_MANIFEST_DIR").to_string() + "/tests/fixtures/photos/chelsea.jpg").unwrap();

    let registry = KindRegistry::new(pipe::stages::registry());
    let registry = std::sync::Arc::new(registry);
    let spec_registry = registry.clone();
    vec![
        caption_target("flickr8k", CaptionFormat::Flickr8k, &[flickr8k]),
        caption_target("flickr30k", CaptionFormat::Flickr30k, &[flickr30k]),
        caption_target("csv", CaptionFormat::Csv, &[csv]),
        caption_target("coco", CaptionFormat::Coco, &[coco]),
        caption_target("karpathy", CaptionFormat::Karpathy, &[karpathy]),
        caption_target("detect", CaptionFormat::Auto, &[flickr8k, flickr30k, csv, coco, karpathy]),
        Target {
            name: "pipeline-yaml",
            seeds: vec![pipeline.into_bytes(), small_pipeline.as_bytes().to_vec()],
            check: Box::new(move |input, root| {
                property(input, "pipeline.yaml", |bytes| {
                    let text = String::from_utf8_lossy(bytes);
                    pipe_engine::spec::parse(root, Path::new("pipeline.yaml"), &text, &spec_registry, &[])
                        .map(|_| ())
                        .map_err(|err| err.to_string())
                })
            }),
        },
        Target {
            name: "overrides",
            seeds: ["train.env.A=2", "params.seed=3", "train.cmd=echo hi", "features.device=cuda:0"]
                .iter()
                .map(|s| s.as_bytes().to_vec())
                .collect(),
            check: Box::new(move |input, root| {
                let text = String::from_utf8_lossy(input).into_owned();
                // An override that parses must then be accepted or refused by the spec, naming it.
                property(input, "", |_| text.parse::<Override>().map(|_| ()).map_err(|err| err.to_string()))?;
                let Ok(item) = text.parse::<Override>() else { return Ok(()) };
                let pipeline = "params:\n  seed: 0\nstages:\n  train:\n    kind: cmd\n    cmd: 'true'\n    params: {env: {A: '1'}}\n";
                // The error names the stage (or `params`) the key points at.
                let stage = text.split(['=', '.']).next().unwrap_or_default().to_string();
                property(input, &stage, |_| {
                    pipe_engine::spec::parse(root, Path::new("p.yaml"), pipeline, &registry, &[item])
                        .map(|_| ())
                        .map_err(|err| err.to_string())
                })
            }),
        },
        Target {
            name: "lock-file",
            seeds: vec![lock.into_bytes()],
            check: Box::new(|input, root| {
                let path = root.join("pipe.lock");
                std::fs::write(&path, input).unwrap();
                property(input, "pipe.lock", |_| {
                    pipe_engine::lockfile::LockFile::load(&path).map(|_| ()).map_err(|err| format!("{err:#}"))
                })
            }),
        },
        Target {
            name: "vocab-json",
            seeds: vec![vocab.as_bytes().to_vec()],
            check: Box::new(|input, root| {
                let path = root.join("vocab.json");
                std::fs::write(&path, input).unwrap();
                property(input, "vocab.json", |_| {
                    pipe::data::vocab::Vocab::load(&path).map(|_| ()).map_err(|err| format!("{err:#}"))
                })
            }),
        },
        Target {
            name: "image-header",
            seeds: vec![png, jpeg[..jpeg.len().min(4096)].to_vec()],
            check: Box::new(|input, _| {
                property(input, "", |bytes| {
                    let (w, h) =
                        pipe::data::manifest::header_dimensions(bytes).map_err(|err| format!("{err:#}"))?;
                    pipe::data::manifest::check_image_size(w, h).map_err(|err| format!("{err:#}"))
                })
            }),
        },
    ]
}

#[test]
fn parsers_of_user_files_never_panic_or_hang_and_errors_name_the_file() {
    let root = tempfile::tempdir().unwrap();
    let only = std::env::var("PIPE_FUZZ_TARGET").ok();
    let mut failures = Vec::new();
    for target in targets() {
        if only.as_deref().is_none_or(|only| only == target.name) {
            failures
                .extend(fuzz_target(target.name, target.seeds, &|input| (target.check)(input, root.path())));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

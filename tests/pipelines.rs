//! The shipped pipeline files: each parses, and the archive pipeline really shares the
//! default pipeline's trained model (same kinds, params and deps up to `train`), as its
//! comment promises.

use std::path::Path;

use pipe_engine::spec::{self, KindRegistry, Pipeline};

/// Parses a pipeline file of this repository against a scratch root that has the
/// workspace paths its deps name.
fn load(file: &str) -> Pipeline {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let root = tempfile::tempdir().unwrap();
    for dir in [
        "data/models/efficientnet_lite0",
        "data/models/efficientnet_lite0_grid",
        "data/models/efficientnet_lite2_grid_224",
        "data/archive",
        "data/flickr8k/images",
    ] {
        std::fs::create_dir_all(root.path().join(dir)).unwrap();
    }
    for file in [
        "Flickr8k.token.txt",
        "Flickr_8k.trainImages.txt",
        "Flickr_8k.devImages.txt",
        "Flickr_8k.testImages.txt",
    ] {
        std::fs::write(root.path().join("data/flickr8k").join(file), "").unwrap();
    }
    let text = std::fs::read_to_string(repo.join(file)).unwrap();
    let registry = KindRegistry::new(pipe::stages::registry());
    spec::parse(root.path(), Path::new(file), &text, &registry, &[]).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn every_shipped_pipeline_parses() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = vec!["pipeline.yaml".to_string()];
    for entry in std::fs::read_dir(repo.join("pipelines")).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if name.ends_with(".yaml") {
            files.push(format!("pipelines/{name}"));
        }
    }
    assert!(files.len() >= 5, "{files:?}");
    for file in &files {
        assert!(!load(file).stages.is_empty(), "{file}");
    }
}

#[test]
fn the_archive_pipeline_reuses_the_default_model() {
    let default = load("pipeline.yaml");
    let archive = load("pipelines/archive.yaml");
    let shared = ["synth", "ingest", "tokenize", "features", "train"];
    for name in shared {
        let (a, b) = (default.stage(name).unwrap(), archive.stage(name).unwrap());
        assert_eq!(a.kind.name(), b.kind.name(), "{name}");
        assert_eq!(a.params, b.params, "{name}: params differ, so the archive pipeline would retrain");
        let deps = |s: &pipe_engine::spec::StageSpec| {
            s.deps.iter().map(|d| (d.name.clone(), d.source.to_string())).collect::<Vec<_>>()
        };
        assert_eq!(deps(a), deps(b), "{name}: deps differ");
    }
}

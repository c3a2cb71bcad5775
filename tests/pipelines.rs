//! The shipped pipeline files: each parses, the archive pipeline really shares the
//! default pipeline's trained model (same kinds, params and deps up to `train`), and the GPU
//! quality runs train what the Flickr8k pipelines train, as their comments promise.

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
        "data/models/efficientnet_lite0_trunk",
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

/// A stage's inputs as (name, source) pairs.
fn deps(stage: &pipe_engine::spec::StageSpec) -> Vec<(String, String)> {
    stage.deps.iter().map(|d| (d.name.clone(), d.source.to_string())).collect()
}

#[test]
fn every_shipped_pipeline_parses() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = vec!["pipeline.yaml".to_string()];
    for dir in ["pipelines", "scripts/gpu"] {
        for entry in std::fs::read_dir(repo.join(dir)).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            if name.ends_with(".yaml") {
                files.push(format!("{dir}/{name}"));
            }
        }
    }
    assert!(files.len() >= 7, "{files:?}");
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
        assert_eq!(deps(a), deps(b), "{name}: deps differ");
    }
}

/// The seed-0 stages of `scripts/gpu/flickr8k-quality.yaml` against their counterparts in the
/// shipped Flickr8k pipelines: the same kind, params and dep names, so the figures measured
/// with the one are those of the others.
#[test]
fn the_gpu_quality_runs_train_the_shipped_flickr8k_models() {
    let quality = load("scripts/gpu/flickr8k-quality.yaml");
    let scst2 = load("pipelines/flickr8k-scst2.yaml");
    let transformer = load("pipelines/flickr8k-transformer.yaml");
    let ensemble = load("pipelines/flickr8k-ensemble.yaml");
    let finetune = load("pipelines/flickr8k-finetune.yaml");
    let flickr8k = load("pipelines/flickr8k.yaml");
    let finetune_ensemble = load("pipelines/flickr8k-finetune-ensemble.yaml");
    let finetune_pair = load("pipelines/flickr8k-finetune-pair.yaml");
    let pairs = [
        ("train_attention_0", &scst2, "train"),
        ("scst_attention_0", &scst2, "scst"),
        ("scst_low_attention_0", &scst2, "scst_low"),
        ("caption_attention_0", &scst2, "caption"),
        ("train_attention_0", &ensemble, "train_attention"),
        ("scst_attention_0", &ensemble, "scst_attention"),
        ("scst_low_attention_0", &ensemble, "scst_low_attention"),
        ("train_transformer_0", &transformer, "train"),
        ("scst_transformer_0", &transformer, "scst"),
        ("train_transformer_0", &ensemble, "train_transformer"),
        ("scst_transformer_0", &ensemble, "scst_transformer"),
        ("caption_ensemble_0", &ensemble, "caption"),
        ("train_ft_0", &finetune, "train"),
        ("scst_attention_head_0", &finetune, "scst"),
        ("scst_low_attention_head_0", &finetune, "scst_low"),
        ("caption_attention_head_0", &finetune, "caption"),
        ("train_ft_0", &flickr8k, "train"),
        ("scst_ft_0", &flickr8k, "scst"),
        ("caption_ft_0", &flickr8k, "caption"),
        ("caption_ft_ensemble_0", &finetune_ensemble, "caption"),
        ("caption_attention_head_pair_0", &finetune_pair, "caption"),
    ];
    let dep_names =
        |s: &pipe_engine::spec::StageSpec| s.deps.iter().map(|d| d.name.clone()).collect::<Vec<_>>();
    for (name, shipped, counterpart) in pairs {
        let (a, b) = (quality.stage(name).unwrap(), shipped.stage(counterpart).unwrap());
        assert_eq!(a.kind.name(), b.kind.name(), "{name} / {counterpart}");
        let mut params = b.params.clone();
        // The shipped files caption the test split by default; the quality runs score dev,
        // and draw no report, so they keep no attention maps (the captions are the same).
        if name.starts_with("caption") {
            params["split"] = serde_json::json!("dev");
            params.as_object_mut().unwrap().remove("attention_maps");
        }
        assert_eq!(a.params, params, "{name} / {counterpart}: params differ");
        assert_eq!(dep_names(a), dep_names(b), "{name} / {counterpart}: deps differ");
    }
}

/// Checks that every member of an ensemble file is a single-model file's model with the
/// member's own seed: the first member's stages (`bases`, and what they read) equal the single
/// file's, and member `N`'s stages `{base}_N` equal them up to the seed and the renamed deps.
/// So a workspace that ran the single file with a member's seed finds that member cached.
fn assert_members_are(ensemble: &Pipeline, single: &Pipeline, bases: &[&str], seeds: &[(&str, i64)]) {
    for name in ["ingest", "tokenize", "features"].iter().chain(bases) {
        let (a, b) = (ensemble.stage(name).unwrap(), single.stage(name).unwrap());
        assert_eq!(a.params, b.params, "{name}: params differ");
        assert_eq!(deps(a), deps(b), "{name}: deps differ");
    }
    for &(member, seed) in seeds {
        let unsuffixed = |source: String| match source.strip_suffix(&format!("_{member}")) {
            Some(base) if bases.contains(&base) => base.to_string(),
            _ => source,
        };
        for base in bases {
            let a = ensemble.stage(&format!("{base}_{member}")).unwrap();
            let b = single.stage(base).unwrap();
            assert_eq!(a.kind.name(), b.kind.name(), "{base}_{member}");
            let mut params = b.params.clone();
            params["seed"] = serde_json::json!(seed);
            assert_eq!(a.params, params, "{base}_{member}: params differ beyond the seed");
            let renamed =
                deps(a).into_iter().map(|(dep, source)| (dep, unsuffixed(source))).collect::<Vec<_>>();
            assert_eq!(renamed, deps(b), "{base}_{member}: deps differ");
        }
    }
}

/// The models a caption stage averages, by source.
fn caption_models(pipeline: &Pipeline) -> Vec<String> {
    let caption = pipeline.stage("caption").unwrap();
    caption.deps.iter().filter(|d| d.name.starts_with("model")).map(|d| d.source.to_string()).collect()
}

/// `pipelines/flickr8k-finetune-ensemble.yaml` averages three of `pipelines/flickr8k.yaml`'s
/// models.
#[test]
fn the_finetune_ensemble_members_are_the_flickr8k_model() {
    let ensemble = load("pipelines/flickr8k-finetune-ensemble.yaml");
    let single = load("pipelines/flickr8k.yaml");
    assert_members_are(&ensemble, &single, &["train", "scst"], &[("2", 1), ("3", 2)]);
    assert_eq!(caption_models(&ensemble), ["scst", "scst_2", "scst_3"]);
}

/// `pipelines/flickr8k-finetune-pair.yaml` averages two of `pipelines/flickr8k-finetune.yaml`'s
/// two-phase models.
#[test]
fn the_finetune_pair_members_are_the_two_phase_model() {
    let pair = load("pipelines/flickr8k-finetune-pair.yaml");
    let single = load("pipelines/flickr8k-finetune.yaml");
    assert_members_are(&pair, &single, &["train", "scst", "scst_low"], &[("2", 1)]);
    assert_eq!(caption_models(&pair), ["scst_low", "scst_low_2"]);
}

//! Fuzzing `backbone.json`, the sidecar a user writes beside an exported backbone (issue
//! 16; the other parsers are fuzzed in the repository's tests/fuzz.rs, whose input
//! generator this shares). Property: reading never panics or hangs, and an error names
//! the file.

#[path = "../../tests/support/mutate.rs"]
mod mutate;

use pipe_torch::model::backbone::BackboneSpec;

#[test]
fn backbone_json_never_panics_or_hangs_and_errors_name_the_file() {
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let seed = std::fs::read(repo.join("data/models/efficientnet_lite0/backbone.json"))
        .expect("run `make setup` first: it exports the backbone");
    let grid = br#"{"name": "g", "input_size": 224, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "dim": 1280, "output": "grid", "grid": [7, 7]}"#;
    let dir = tempfile::tempdir().unwrap();
    let failures = mutate::fuzz_target("backbone-json", vec![seed, grid.to_vec()], &|input| {
        std::fs::write(dir.path().join("backbone.json"), input).unwrap();
        mutate::property(input, "backbone.json", |_| {
            BackboneSpec::read(dir.path()).map(|_| ()).map_err(|err| format!("{err:#}"))
        })
    });
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

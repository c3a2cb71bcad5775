//! Helpers shared by the integration tests that drive the `pipe` binary.
#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `pipe` in `root`, asserts success, returns stderr + stdout.
pub fn pipe(root: &Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_pipe")).args(args).current_dir(root).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stderr), String::from_utf8_lossy(&out.stdout));
    assert!(out.status.success(), "pipe {args:?} failed:\n{text}");
    text
}

/// A project holding the repository's pipeline.yaml and its exported backbone.
pub fn project() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    project_at(dir.path());
    dir
}

/// [`project`] in a given folder.
pub fn project_at(root: &Path) {
    fs::create_dir_all(root.join("data/models")).unwrap();
    fs::copy(repo().join("pipeline.yaml"), root.join("pipeline.yaml")).unwrap();
    link_exported_model(root, "efficientnet_lite0", "the backbone");
}

/// Links the exported 7x7 grid backbone into a project, for the grid decoders' pipelines.
pub fn link_grid_backbone(root: &Path) {
    link_exported_model(root, "efficientnet_lite0_grid", "the grid backbone");
}

/// Links the exported Lite0 trunk and its head (`--output trunk`) into a project, for
/// fine-tuning the backbone's last block.
pub fn link_trunk_backbone(root: &Path) {
    link_exported_model(root, "efficientnet_lite0_trunk", "the trunk backbone and its head");
}

/// Links the repository's `data/models/<name>` (which `make setup` exports as `what`) into
/// the project's `data/models`.
fn link_exported_model(root: &Path, name: &str, what: &str) {
    let model = repo().join("data/models").join(name);
    assert!(model.join("model.pt").exists(), "run `make setup` first: it exports {what}");
    std::os::unix::fs::symlink(&model, root.join("data/models").join(name)).unwrap();
}

/// Appends to a project's pipeline.yaml an archive-mode `caption` stage over the synthetic
/// images, in chunks of 32 (the 160 images of the reduced tests: five part files).
pub fn add_archive_caption_stage(root: &Path) {
    const STAGE: &str = "
  caption_archive:
    kind: caption
    deps: {model: train, vocab: tokenize/vocab.json, backbone: data/models/efficientnet_lite0, images: synth/images}
    params: {folder: data/out/synth/images, chunk_size: 32, beam_width: 3, device: cpu}
";
    let file = root.join("pipeline.yaml");
    fs::write(&file, fs::read_to_string(&file).unwrap() + STAGE).unwrap();
}

/// Every file below a project's `data/out` (following the views' links), by relative path,
/// with its blake3 hash: what "the same outputs" means in the determinism tests.
pub fn output_hashes(root: &Path) -> std::collections::BTreeMap<String, String> {
    let out = root.join("data/out");
    let mut files = std::collections::BTreeMap::new();
    for entry in walkdir::WalkDir::new(&out).follow_links(true) {
        let entry = entry.unwrap();
        if entry.file_type().is_file() {
            let rel = entry.path().strip_prefix(&out).unwrap().to_string_lossy().into_owned();
            files.insert(rel, blake3::hash(&fs::read(entry.path()).unwrap()).to_hex().to_string());
        }
    }
    files
}

/// A project's lock file without the lines that say how long stages took.
pub fn lock_without_timings(root: &Path) -> String {
    let lock = fs::read_to_string(root.join("pipe.lock")).unwrap_or_default();
    lock.lines().filter(|line| !line.trim_start().starts_with("seconds:")).collect::<Vec<_>>().join("\n")
}

/// The first of `names` found on PATH.
pub fn which(names: &[&str]) -> Option<PathBuf> {
    names.iter().find_map(|name| {
        let out = Command::new("which").arg(name).output().ok()?;
        out.status.success().then(|| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
    })
}

pub fn chromium() -> Option<PathBuf> {
    which(&["chromium", "chromium-browser", "google-chrome"])
}

/// The pid of a `pipe-torch` worker whose parent is `parent`, if one runs.
pub fn worker_of(parent: u32) -> Option<u32> {
    fs::read_dir("/proc").ok()?.flatten().find_map(|entry| {
        let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
        let comm = fs::read_to_string(entry.path().join("comm")).ok()?;
        let stat = fs::read_to_string(entry.path().join("stat")).ok()?;
        // stat: "pid (comm) state ppid ...": the fields after the last ')'.
        let ppid: u32 = stat.rsplit(')').next()?.split_whitespace().nth(1)?.parse().ok()?;
        (comm.trim() == "pipe-torch" && ppid == parent).then_some(pid)
    })
}

pub fn alive(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit(')').next().and_then(|rest| rest.split_whitespace().next()) != Some("Z")
    })
}

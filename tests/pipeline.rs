//! The default pipeline.yaml, end to end, reduced to CI size with `-S` overrides, driven
//! through the `pipe` binary in a temp directory as a user would.

use std::fs;
use std::path::Path;
use std::process::Command;

mod common;
use common::{
    add_archive_caption_stage, alive, chromium, link_grid_backbone, link_trunk_backbone,
    lock_without_timings, output_hashes, pipe, project, repo, worker_of,
};

/// Smaller than the default so the suite stays inside the CI budget on 2 cores.
const REDUCED: &[&str] = &["-S", "synth.images=400", "-S", "train.epochs=12", "-S", "caption.beam_width=3"];

fn run_args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["run"];
    args.extend_from_slice(REDUCED);
    args.extend_from_slice(extra);
    args
}

fn ran_stages(output: &str) -> Vec<String> {
    output
        .lines()
        .filter_map(|line| line.trim_start().strip_prefix("ran "))
        .map(|rest| rest.split_whitespace().next().unwrap().to_string())
        .collect()
}

fn metrics(root: &Path) -> serde_json::Value {
    metrics_of(&root.join("data/out"))
}

/// `score/metrics.json` of the pipeline whose outputs are in `out`.
fn metrics_of(out: &Path) -> serde_json::Value {
    serde_json::from_str(&fs::read_to_string(out.join("score/metrics.json")).unwrap()).unwrap()
}

#[test]
fn default_pipeline_learns_caches_and_reruns_only_downstream() {
    let dir = project();
    let root = dir.path();

    let first = pipe(root, &run_args(&[]));
    assert_eq!(ran_stages(&first).len(), 8, "{first}");
    let report = root.join("data/out/report/report/index.html");
    assert!(report.exists(), "no report:\n{first}");

    // It learned: BLEU-4 beats always saying the most frequent training caption.
    let m = metrics(root);
    let (bleu4, baseline4) = (m["bleu_4"].as_f64().unwrap(), m["baseline"]["bleu"][3].as_f64().unwrap());
    eprintln!("test BLEU-4 {bleu4:.4} vs most-frequent-caption baseline {baseline4:.4}");
    assert!(bleu4 > baseline4 + 0.05, "BLEU-4 {bleu4} does not beat the baseline {baseline4}");

    // Pin this experiment in git, as a user would, to compare against it later.
    git(root, &["init", "-q"]);
    git(root, &["add", "pipe.lock", "pipeline.yaml"]);
    git(root, &["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "baseline"]);

    // Second run: everything cached.
    let second = pipe(root, &run_args(&[]));
    assert!(second.contains("8 stages: 0 ran, 8 cached"), "{second}");

    // A train param change reruns exactly train and what is downstream of it.
    let status = pipe(
        root,
        &[
            "status",
            "-S",
            "synth.images=400",
            "-S",
            "train.epochs=12",
            "-S",
            "caption.beam_width=3",
            "-S",
            "train.hidden=128",
        ],
    );
    assert!(status.contains("train: params.hidden changed (256 → 128)"), "{status}");
    let third = pipe(root, &run_args(&["-S", "train.hidden=128"]));
    assert_eq!(ran_stages(&third), ["train", "caption", "score", "report"], "{third}");

    // The cnn decoder (the Flask apps' model) on the same pooled features learns too.
    let cnn_args = ["-S", "train.hidden=128", "-S", "train.decoder=cnn"];
    let cnn = pipe(root, &run_args(&cnn_args));
    assert_eq!(ran_stages(&cnn), ["train", "caption", "score", "report"], "{cnn}");
    assert!(cnn.contains("cnn decoder"), "{cnn}");
    let cnn_bleu4 = metrics(root)["bleu_4"].as_f64().unwrap();
    eprintln!("cnn: test BLEU-4 {cnn_bleu4:.4} vs most-frequent-caption baseline {baseline4:.4}");
    assert!(cnn_bleu4 > baseline4 + 0.05, "cnn: BLEU-4 {cnn_bleu4} does not beat the baseline {baseline4}");

    // Consensus re-ranking is a caption param: only caption and what reads it rerun.
    let consensus = ["-S", "caption.rerank=consensus", "-S", "caption.rerank_samples=5"];
    let reranked = pipe(root, &run_args(&[&cnn_args[..], &consensus[..]].concat()));
    assert_eq!(ran_stages(&reranked), ["caption", "score", "report"], "{reranked}");
    let reranked_bleu4 = metrics(root)["bleu_4"].as_f64().unwrap();
    eprintln!("cnn, consensus re-ranking: test BLEU-4 {reranked_bleu4:.4}");
    assert!(
        reranked_bleu4 > baseline4 + 0.05,
        "re-ranked: BLEU-4 {reranked_bleu4} does not beat the baseline"
    );

    // `pipe caption` uses the current train artifact on any image file.
    let image = root.join("data/out/synth/images").read_dir().unwrap().next().unwrap().unwrap().path();
    let captioned = pipe(root, &["caption", "--beam", "3", image.to_str().unwrap()]);
    let line = captioned.lines().find(|l| l.contains('\t')).unwrap_or_else(|| panic!("{captioned}"));
    assert!(line.split('\t').nth(1).is_some_and(|caption| caption.split_whitespace().count() >= 3), "{line}");

    let shown = pipe(root, &["metrics"]);
    assert!(shown.contains("bleu_4"), "{shown}");
    // The committed lock names the first run's metrics; the workspace has the last run's.
    let diff = pipe(root, &["metrics", "--diff", "HEAD"]);
    let row = diff
        .lines()
        .find(|l| l.starts_with("score") && l.contains("bleu_4 "))
        .unwrap_or_else(|| panic!("{diff}"));
    let old_bleu4 = format!("{bleu4:.4}");
    assert!(row.contains(&old_bleu4), "the HEAD column must show the first run's BLEU-4 {old_bleu4}: {row}");

    check_parquet_from_python(root);
    check_report_in_chromium(&report, &metrics(root));
}

/// Outputs are a pure function of their fingerprint: the default pipeline run in two
/// workspaces, and run again with features from the per-image cache, stores the same
/// bytes under the same fingerprints. (Timings and cache counts live in run records.)
#[test]
fn the_same_fingerprints_hold_the_same_bytes_in_every_workspace() {
    let (first, second) = (project(), project());
    for dir in [&first, &second] {
        pipe(dir.path(), &run_args(&[]));
    }
    let outputs = output_hashes(first.path());
    assert!(outputs.len() > 400, "{} files", outputs.len());
    let differing = |other: &std::collections::BTreeMap<String, String>| -> Vec<String> {
        let names: std::collections::BTreeSet<&String> = outputs.keys().chain(other.keys()).collect();
        names.into_iter().filter(|name| outputs.get(*name) != other.get(*name)).cloned().collect()
    };
    assert_eq!(differing(&output_hashes(second.path())), Vec::<String>::new());
    assert_eq!(lock_without_timings(first.path()), lock_without_timings(second.path()));

    let again = pipe(first.path(), &run_args(&["--force"]));
    assert!(again.contains("8 ran"), "{again}");
    assert_eq!(differing(&output_hashes(first.path())), Vec::<String>::new());
    let shown = pipe(first.path(), &["show", "features"]);
    assert!(shown.contains("run.reused: 400"), "the forced rerun took every image from the cache:\n{shown}");
}

/// The grid decoders, each in its own pipeline file over the same synthetic data and grid
/// features: each learns, is cached on a second run, reruns exactly the downstream stages
/// when one of its params changes, and captions a new image file. The second pipeline
/// finds the first one's upstream stages in the store.
#[test]
fn attention_and_transformer_pipelines_learn_from_grids_cache_and_rerun_only_downstream() {
    let dir = project();
    let root = dir.path();
    link_grid_backbone(root);
    fs::create_dir_all(root.join("pipelines")).unwrap();
    let downstream = ["train", "scst", "caption", "score", "report"];
    for (name, changed_param) in [("attention", "train.alpha_c=0.5"), ("transformer", "train.layers=1")] {
        let file = format!("pipelines/{name}.yaml");
        fs::copy(repo().join(&file), root.join(&file)).unwrap();
        let run = |extra: &[&str]| run_grid_pipeline(root, &file, extra);

        let first = run(&[]);
        if name == "attention" {
            assert_eq!(ran_stages(&first).len(), 9, "{first}");
        } else {
            assert_eq!(
                ran_stages(&first),
                downstream,
                "the upstream stages are the attention pipeline's: {first}"
            );
        }
        assert!(
            first.contains(&format!("{name} decoder")) && first.contains("7x7 grid of 1280-d cells"),
            "{first}"
        );
        let out = root.join("data/out").join(name);
        let scst: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(out.join("scst/history.json")).unwrap()).unwrap();
        assert_eq!(scst["epochs"].as_array().map(Vec::len), Some(2), "{scst}");
        let m = metrics_of(&out);
        let (bleu4, baseline4) = (m["bleu_4"].as_f64().unwrap(), m["baseline"]["bleu"][3].as_f64().unwrap());
        eprintln!("{name}: test BLEU-4 {bleu4:.4} vs most-frequent-caption baseline {baseline4:.4}");
        assert!(bleu4 > baseline4 + 0.05, "{name}: BLEU-4 {bleu4} does not beat the baseline {baseline4}");

        let again = run(&[]);
        assert!(again.contains("9 stages: 0 ran, 9 cached"), "{again}");
        let report = fs::read_to_string(out.join("report/report/index.html")).unwrap();
        assert!(
            report.matches("class=\"hm\"").count() >= 3,
            "{name}: the gallery shows per-word attention maps"
        );
        let changed = run(&["-S", changed_param]);
        assert_eq!(ran_stages(&changed), downstream, "{changed}");

        // `pipe caption` runs the model over the grid backbone on a new image file.
        assert_captions_an_image_file(root, &file, &out);
    }
}

/// The grid pipelines' CI size.
const GRID_SMALL: &[&str] =
    &["-S", "synth.images=400", "-S", "train.epochs=10", "-S", "scst.epochs=2", "-S", "caption.beam_width=3"];

/// `pipe -f FILE run` at [`GRID_SMALL`] size, then `extra`.
fn run_grid_pipeline(root: &Path, file: &str, extra: &[&str]) -> String {
    let mut args = vec!["-f", file, "run"];
    args.extend_from_slice(GRID_SMALL);
    args.extend_from_slice(extra);
    pipe(root, &args)
}

/// `pipe -f FILE caption` on one of the synthetic images in `out` gives a caption of three
/// words or more.
fn assert_captions_an_image_file(root: &Path, file: &str, out: &Path) {
    let image = out.join("synth/images").read_dir().unwrap().next().unwrap().unwrap().path();
    let captioned = pipe(root, &["-f", file, "caption", image.to_str().unwrap()]);
    let line = captioned.lines().find(|l| l.contains('\t')).unwrap_or_else(|| panic!("{captioned}"));
    assert!(line.split('\t').nth(1).is_some_and(|caption| caption.split_whitespace().count() >= 3), "{line}");
}

/// The attention pipeline over the trunk backbone, fine-tuning its last block with the
/// decoder: it learns; the trained head is written beside the decoder and differs from the
/// exported one; scst and `pipe caption` run through it; and a changed `head_lr` reruns
/// exactly the stages from train on.
#[test]
fn fine_tuning_the_backbone_head_learns_and_every_later_stage_runs_through_it() {
    let dir = project();
    let root = dir.path();
    link_trunk_backbone(root);
    fs::create_dir_all(root.join("pipelines")).unwrap();
    let attention = fs::read_to_string(repo().join("pipelines/attention.yaml")).unwrap();
    let trunk = "data/models/efficientnet_lite0_trunk";
    let yaml = attention.replace("data/models/efficientnet_lite0_grid", trunk).replace(
        "      features: features/features.arrow\n    params:\n      decoder: attention",
        &format!("      features: features/features.arrow\n      head: {trunk}\n    params:\n      head_lr: 1.0e-4\n      decoder: attention"),
    );
    assert!(
        yaml.contains("head_lr") && yaml.contains("backbone: data/models/efficientnet_lite0_trunk"),
        "{yaml}"
    );
    fs::write(root.join("pipelines/head.yaml"), yaml).unwrap();
    let run = |extra: &[&str]| run_grid_pipeline(root, "pipelines/head.yaml", extra);

    let first = run(&[]);
    assert_eq!(ran_stages(&first).len(), 9, "{first}");
    assert!(first.contains("7x7 grid of 192-d cells through a backbone head to 1280-d"), "{first}");
    let out = root.join("data/out/head");
    let exported = fs::read(repo().join(trunk).join("head.pt")).unwrap();
    for stage in ["train", "scst"] {
        let head = fs::read(out.join(stage).join("head.pt")).unwrap();
        assert_ne!(head, exported, "{stage} wrote the fine-tuned head");
        assert!(out.join(stage).join("head.json").exists());
    }
    let m = metrics_of(&out);
    let (bleu4, baseline4) = (m["bleu_4"].as_f64().unwrap(), m["baseline"]["bleu"][3].as_f64().unwrap());
    eprintln!("fine-tuned head: test BLEU-4 {bleu4:.4} vs most-frequent-caption baseline {baseline4:.4}");
    assert!(bleu4 > baseline4 + 0.05, "BLEU-4 {bleu4} does not beat the baseline {baseline4}");

    assert!(run(&[]).contains("9 stages: 0 ran, 9 cached"));
    let changed = run(&["-S", "train.head_lr=5.0e-5"]);
    assert_eq!(ran_stages(&changed), ["train", "scst", "caption", "score", "report"], "{changed}");

    // `pipe caption` runs the trunk backbone, then the model's own head, on a new image.
    assert_captions_an_image_file(root, "pipelines/head.yaml", &out);
}

fn git(root: &Path, args: &[&str]) {
    let status = Command::new("git").args(args).current_dir(root).status().unwrap();
    assert!(status.success(), "git {args:?}");
}

/// Opens the outputs with real pyarrow from the project's venv, as the README shows.
fn check_parquet_from_python(root: &Path) {
    let python = repo().join(".venv/bin/python");
    assert!(python.exists(), "run `make setup` first");
    let out = Command::new(python)
        .arg(repo().join("tests/py/check_parquet.py"))
        .arg(format!("captions={}", root.join("data/out/ingest/captions.parquet").display()))
        .arg(format!("images={}", root.join("data/out/ingest/images.parquet").display()))
        .arg(format!("tokens={}", root.join("data/out/tokenize/tokens.parquet").display()))
        .arg(format!("hypotheses={}", root.join("data/out/caption/captions.parquet").display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let target = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy_tree(&path, &target);
        } else {
            fs::copy(&path, &target).unwrap();
        }
    }
}

/// Renders the report headless; a probe script appended to a copy of the page reports
/// broken images, and the metrics shown must equal metrics.json.
fn check_report_in_chromium(report: &Path, metrics: &serde_json::Value) {
    let Some(browser) = chromium() else {
        assert!(std::env::var_os("CI").is_none(), "CI must have chromium (.ci/run installs it)");
        eprintln!("SKIPPED the Chromium check: no chromium on this machine (`apt-get install chromium`)");
        return;
    };
    let probe = report.with_file_name("probe.html");
    let html = fs::read_to_string(report).unwrap();
    let script = r#"<script>window.addEventListener('load', () => {
  const imgs = [...document.images];
  const broken = imgs.filter(i => !i.complete || i.naturalWidth === 0).map(i => i.getAttribute('src'));
  const out = document.createElement('pre'); out.id = 'probe';
  out.textContent = 'PROBE images=' + imgs.length + ' broken=' + JSON.stringify(broken);
  document.body.appendChild(out);
});</script>"#;
    // The report directory is a read-only store artifact only by convention; write beside it in a copy.
    let copy_dir = tempfile::tempdir().unwrap();
    copy_tree(report.parent().unwrap(), copy_dir.path());
    let probe = copy_dir.path().join(probe.file_name().unwrap());
    fs::write(&probe, html.replace("</body>", &format!("{script}</body>"))).unwrap();
    let out = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
        ])
        .args(["--disable-component-update", "--disable-sync", "--allow-file-access-from-files"])
        .arg(format!("--user-data-dir={}", copy_dir.path().join(".chrome").display()))
        .args(["--virtual-time-budget=5000", "--dump-dom"])
        .arg(format!("file://{}", probe.display()))
        .output()
        .unwrap();
    let dom = String::from_utf8_lossy(&out.stdout);
    let probe_line = dom
        .lines()
        .find(|l| l.contains("<pre id=\"probe\">"))
        .unwrap_or_else(|| panic!("page did not render:\n{dom}"));
    assert!(probe_line.contains("broken=[]"), "broken images: {probe_line}");
    assert!(!probe_line.contains("images=0 "), "no images rendered: {probe_line}");
    for key in ["bleu_1", "bleu_2", "bleu_3", "bleu_4", "cider_d"] {
        let shown = format!("{:.4}", metrics[key].as_f64().unwrap());
        assert!(dom.contains(&format!("<td>{shown}</td>")), "{key} = {shown} not shown in the report");
    }
}

#[test]
fn killing_pipe_mid_stage_kills_its_worker_and_the_next_run_completes() {
    let dir = project();
    let root = dir.path();
    let mut run = Command::new(env!("CARGO_BIN_EXE_pipe"))
        .args(["run", "features", "-S", "synth.images=300"])
        .current_dir(root)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    let worker = loop {
        if let Some(pid) = worker_of(run.id()) {
            break pid;
        }
        assert!(run.try_wait().unwrap().is_none(), "pipe ended before its features worker was seen");
        assert!(started.elapsed().as_secs() < 300, "no pipe-torch worker appeared");
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    // Let the worker get past its start-up (where it checks that its parent lives) and
    // into its forward passes, then SIGKILL the parent: no chance to clean up.
    std::thread::sleep(std::time::Duration::from_secs(3));
    assert!(alive(worker), "the worker ended before the kill");
    run.kill().unwrap();
    run.wait().unwrap();
    let killed = std::time::Instant::now();
    while alive(worker) {
        assert!(killed.elapsed().as_secs() < 10, "worker {worker} outlived its killed parent");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }

    let verified = pipe(root, &["verify"]);
    assert!(verified.contains(", 0 damaged"), "{verified}");
    let rerun = pipe(root, &["run", "features", "-S", "synth.images=300"]);
    assert!(ran_stages(&rerun).contains(&"features".to_string()), "{rerun}");
    let features = root.join("data/out/features/features.json");
    let summary: serde_json::Value = serde_json::from_str(&fs::read_to_string(features).unwrap()).unwrap();
    assert_eq!(summary["count"], 300, "{summary}");
}

/// The Flickr8k pipelines, as the README tells users to run them, on a miniature data set
/// in the official Flickr8k layout (the `synth` kind writes exactly that layout): first
/// pipelines/flickr8k.yaml (attention over the trunk with its last block fine-tuned, then
/// scst), then the peer-comparable pipelines/flickr8k-merge.yaml, which finds ingest and
/// tokenize in the store.
#[test]
fn flickr8k_pipelines_run_on_the_official_layout() {
    let dir = project();
    let root = dir.path();
    link_trunk_backbone(root);
    fs::create_dir_all(root.join("pipelines")).unwrap();
    for file in ["pipelines/flickr8k.yaml", "pipelines/flickr8k-merge.yaml"] {
        fs::copy(repo().join(file), root.join(file)).unwrap();
    }
    fs::write(
        root.join("make_data.yaml"),
        "stages:\n  synth:\n    kind: synth\n    params: {images: 150, size: 64, seed: 3}\n",
    )
    .unwrap();
    pipe(root, &["-f", "make_data.yaml", "run"]);
    copy_tree(&root.join("data/out/make_data/synth"), &root.join("data/flickr8k"));
    let hashed = pipe(root, &["hash", "data/flickr8k"]);
    assert!(hashed.contains("data/flickr8k"), "{hashed}");

    let small = ["-S", "params.split=dev", "-S", "train.epochs=2", "-S", "caption.beam_width=2"];
    // (file stem, its extra args, its stages, the stages its first run finds in the store)
    let runs = [
        ("flickr8k", &["-S", "scst.epochs=1"][..], 8, &[][..]),
        ("flickr8k-merge", &[][..], 9, &["ingest", "tokenize"][..]),
    ];
    for (name, extra, stages, reused) in runs {
        let file = format!("pipelines/{name}.yaml");
        let args = [&["-f", file.as_str(), "run"][..], &small, extra].concat();
        let first = pipe(root, &args);
        let ran = ran_stages(&first);
        assert_eq!(ran.len(), stages - reused.len(), "{file}:\n{first}");
        assert!(reused.iter().all(|stage| !ran.contains(&stage.to_string())), "{file}:\n{first}");
        let metrics = root.join(format!("data/out/{name}/score/metrics.json"));
        let metrics: serde_json::Value = serde_json::from_str(&fs::read_to_string(metrics).unwrap()).unwrap();
        assert_eq!(metrics["split"], "dev", "{metrics}");
        assert!(metrics["bleu_4"].as_f64().is_some(), "{metrics}");

        // The README's maintenance commands on this workspace.
        let dry = pipe(root, &["-f", &file, "gc", "--dry-run"]);
        let status = pipe(root, &["-f", &file, "status", "-S", "params.split=dev"]);
        assert!(!status.contains("never run"), "{status}");
        let again = pipe(root, &args);
        assert!(
            again.contains(&format!("{stages} stages: 0 ran, {stages} cached")),
            "gc --dry-run must not remove anything: {dry}\n{again}"
        );
    }
}

/// Archive-mode captioning split into shards (`pipe shard`, what a cluster's array tasks
/// run): each shard captions its range of chunks into the kind's cache, the stage's own
/// run only merges, and the result is byte-identical to one machine's run.
#[test]
fn archive_captioning_in_shards_merges_to_the_same_bytes() {
    let size = ["-S", "synth.images=160", "-S", "synth.size=64", "-S", "train.epochs=2"];
    let (whole, sharded) = (project(), project());
    for dir in [&whole, &sharded] {
        add_archive_caption_stage(dir.path());
    }
    pipe(whole.path(), &[&["run", "caption_archive"][..], &size].concat());

    // 160 images in chunks of 32: 5 chunks, taken 1, 2 and 2 by three shards.
    for (index, parts) in [(0, 1), (1, 2), (2, 2)] {
        let index = index.to_string();
        let args = [&["shard", "caption_archive", "--of", "3", "--index", &index][..], &size].concat();
        let out = pipe(sharded.path(), &args);
        assert!(out.contains(&format!("shard {index}/3: {parts} parts computed, 0 found done")), "{out}");
    }
    let out = pipe(sharded.path(), &[&["run", "caption_archive"][..], &size].concat());
    assert!(out.contains("5 parts resumed"), "the merging run computed nothing itself:\n{out}");
    let archive = |dir: &Path| {
        output_hashes(dir)
            .into_iter()
            .filter(|(name, _)| name.starts_with("caption_archive/"))
            .collect::<Vec<_>>()
    };
    assert_eq!(archive(whole.path()).len(), 2);
    assert_eq!(archive(whole.path()), archive(sharded.path()));
    assert!(
        !sharded.path().join("data/cache/caption/archive").read_dir().unwrap().any(|_| true),
        "the merge removes the parts"
    );

    // Split-mode captioning has no chunks to share out.
    let file = sharded.path().join("pipeline.yaml");
    let text = fs::read_to_string(&file).unwrap();
    fs::write(
        &file,
        text.replace("  caption:\n    kind: caption\n", "  caption:\n    kind: caption\n    shards: 2\n"),
    )
    .unwrap();
    let refused =
        Command::new(env!("CARGO_BIN_EXE_pipe")).arg("status").current_dir(sharded.path()).output().unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("stages.caption.shards") && stderr.contains("cannot be split into shards"),
        "{stderr}"
    );
}

//! The Slurm executor (issue 14) against a real single-node Slurm cluster that the test
//! starts itself with `scripts/slurm_local.sh` (munged, slurmctld and slurmd with a config
//! under a temp dir; `.ci/run` installs Debian's slurmctld, slurmd, slurm-client and munge).
//! Skipped, saying why, only where those packages are missing or the test is not root.

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{add_archive_caption_stage, lock_without_timings, output_hashes, project, repo, which};

/// The reduced default pipeline of the crash campaign: seconds per stage.
const SIZE: &[&str] =
    &["-S", "synth.images=160", "-S", "synth.size=64", "-S", "train.epochs=3", "-S", "caption.beam_width=3"];

/// A running single-node cluster; stopped when dropped.
struct Cluster {
    dir: tempfile::TempDir,
    conf: PathBuf,
}

impl Cluster {
    /// Starts a cluster, or says why it cannot and returns `None`.
    fn start() -> Option<Self> {
        let missing: Vec<&str> = ["slurmctld", "slurmd", "sbatch", "munged"]
            .into_iter()
            .filter(|tool| which(&[tool]).is_none() && !Path::new("/usr/sbin").join(tool).exists())
            .collect();
        if !missing.is_empty() {
            eprintln!(
                "SKIPPED: Slurm is not installed (missing {}); .ci/run installs slurmctld slurmd slurm-client munge",
                missing.join(", ")
            );
            return None;
        }
        if !Command::new("id").arg("-u").output().is_ok_and(|out| out.stdout.starts_with(b"0\n")) {
            eprintln!("SKIPPED: starting slurmd needs root");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let port = free_port_pair().to_string();
        let out = Command::new(repo().join("scripts/slurm_local.sh"))
            .args(["start", dir.path().to_str().unwrap(), &port])
            .output()
            .unwrap();
        let conf = dir.path().join("slurm.conf");
        let cluster = Self { dir, conf };
        assert!(
            out.status.success(),
            "scripts/slurm_local.sh start failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Some(cluster)
    }

    /// `pipe ARGS` in `root`, with this cluster's config.
    fn pipe(&self, root: &Path, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_pipe"));
        command.args(args).current_dir(root).env("SLURM_CONF", &self.conf);
        command
    }

    fn tool(&self, program: &str, args: &[&str]) -> Output {
        Command::new(program).args(args).env("SLURM_CONF", &self.conf).output().unwrap()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new(repo().join("scripts/slurm_local.sh"))
            .args(["stop", self.dir.path().to_str().unwrap()])
            .output();
    }
}

/// A port whose successor is free too (slurmctld and slurmd).
fn free_port_pair() -> u16 {
    loop {
        let first = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = first.local_addr().unwrap().port();
        if port < u16::MAX && TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stderr), String::from_utf8_lossy(&out.stdout))
}

fn ok(out: Output) -> String {
    let text = text(&out);
    assert!(out.status.success(), "failed:\n{text}");
    text
}

/// The folder of the latest submission of a workspace.
fn latest_submission(root: &Path) -> Option<PathBuf> {
    let slurm = root.join("data/.pipe/slurm");
    let name = fs::read_to_string(slurm.join("latest")).ok()?;
    Some(slurm.join(name.trim()))
}

/// The line a shard's log ends with: how many images it computed and reused.
fn shard_line(submission: &Path, stage: &str, index: usize) -> String {
    let log = fs::read_to_string(submission.join(format!("{stage}.shard-{index}.log"))).unwrap();
    log.lines().find(|line| line.contains("distinct images:")).unwrap_or_default().to_string()
}

#[test]
fn slurm_runs_the_pipeline_as_jobs_and_a_cancelled_shard_is_all_a_rerun_computes() {
    let Some(cluster) = Cluster::start() else { return };

    // The whole default pipeline plus archive captioning of its images (5 chunks: the 4
    // shards get 1, 1, 1 and 2), features and the archive in 4 array tasks each, against a
    // local run.
    let (local, remote) = (project(), project());
    for root in [local.path(), remote.path()] {
        add_archive_caption_stage(root);
    }
    let mut args = vec!["run"];
    args.extend(SIZE);
    ok(Command::new(env!("CARGO_BIN_EXE_pipe")).args(&args).current_dir(local.path()).output().unwrap());
    let mut args = vec!["run", "--executor", "slurm", "--shards", "4"];
    args.extend(SIZE);
    let log = ok(cluster.pipe(remote.path(), &args).output().unwrap());
    assert!(log.contains("queued  features shards 0-3 (job array"), "{log}");
    assert!(log.contains("queued  caption_archive shards 0-3 (job array"), "{log}");
    assert!(log.contains("9 stages: 0 ran, 9 cached"), "the submitting run finds every job's work:\n{log}");
    assert_eq!(output_hashes(remote.path()), output_hashes(local.path()), "byte-identical to the local run");
    assert_eq!(lock_without_timings(remote.path()), lock_without_timings(local.path()));
    let submission = latest_submission(remote.path()).unwrap();
    for index in 0..4 {
        let line = shard_line(&submission, "features", index);
        assert!(line.contains(&format!("shard {index}/4: 40 of 160 distinct images: 40 computed")), "{line}");
    }
    let merge = fs::read_to_string(submission.join("features.log")).unwrap();
    assert!(merge.contains("0 computed, 160 reused from cache"), "{merge}");
    for (index, parts) in [1, 1, 1, 2].into_iter().enumerate() {
        let log = fs::read_to_string(submission.join(format!("caption_archive.shard-{index}.log"))).unwrap();
        assert!(log.contains(&format!("shard {index}/4: {parts} parts computed, 0 found done")), "{log}");
    }
    let merge = fs::read_to_string(submission.join("caption_archive.log")).unwrap();
    assert!(
        merge.contains("160 captioned, 0 skipped, 5 parts resumed"),
        "the merge computes nothing:\n{merge}"
    );
    let status = ok(cluster.pipe(remote.path(), &["status"]).output().unwrap());
    assert!(status.contains("features shards 0-3 (job array") && status.contains("4 done"), "{status}");

    // Held jobs, so that shard 3 can be cancelled before it starts; its siblings finish.
    // Other images (another seed), none of them in the feature cache yet.
    let more = ["-S", "synth.images=240", "-S", "synth.size=64", "-S", "params.seed=7"];
    let mut args = vec!["run", "features", "--executor", "slurm", "--shards", "4", "--slurm-arg=--hold"];
    args.extend(more);
    let child =
        cluster.pipe(remote.path(), &args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let started = Instant::now();
    let held = loop {
        match latest_submission(remote.path()) {
            Some(dir) if dir != submission && dir.join("jobs.json").exists() => break dir,
            _ => assert!(started.elapsed() < Duration::from_secs(60), "no submission appeared"),
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let jobs: serde_json::Value = serde_json::from_slice(&fs::read(held.join("jobs.json")).unwrap()).unwrap();
    let jobs = jobs["jobs"].as_array().unwrap();
    let array = jobs.iter().find(|job| !job["shards"].is_null()).unwrap()["job_id"].as_str().unwrap();
    ok(cluster.tool("scancel", &[&format!("{array}_3")]));
    let ids: Vec<&str> = jobs.iter().map(|job| job["job_id"].as_str().unwrap()).collect();
    ok(cluster.tool("scontrol", &[&["release"], ids.as_slice()].concat()));
    let failed = child.wait_with_output().unwrap();
    let report = text(&failed);
    assert_eq!(failed.status.code(), Some(3), "{report}");
    assert!(report.contains("stage `features` shard 3/4"), "{report}");
    assert!(report.contains(&format!("({array}_3)")), "names the task:\n{report}");
    for index in 0..3 {
        let line = shard_line(&held, "features", index);
        assert!(line.contains("images: 60 computed, 0 reused"), "shard {index} finished: {line}");
    }

    // The rerun computes shard 3's images only.
    let mut args = vec!["run", "features", "--executor", "slurm", "--shards", "4"];
    args.extend(more);
    ok(cluster.pipe(remote.path(), &args).output().unwrap());
    let rerun = latest_submission(remote.path()).unwrap();
    for index in 0..3 {
        let line = shard_line(&rerun, "features", index);
        assert!(line.contains("images: 0 computed, 60 reused"), "shard {index}: {line}");
    }
    let line = shard_line(&rerun, "features", 3);
    assert!(line.contains("images: 60 computed, 0 reused"), "{line}");
    let mut args = vec!["run", "features"];
    args.extend(more);
    ok(Command::new(env!("CARGO_BIN_EXE_pipe")).args(&args).current_dir(local.path()).output().unwrap());
    let features = |root: &Path| fs::read(root.join("data/out/features/features.arrow")).unwrap();
    assert!(features(remote.path()) == features(local.path()), "sharded features equal the local run's");
}

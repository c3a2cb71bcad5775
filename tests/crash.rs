//! The crash campaign (issue 16). `pipe run` of the default pipeline, at reduced size and
//! with an archive-mode caption stage added (its resumable part files), is
//! killed with SIGKILL at seeded random moments, and stopped at every named failpoint
//! (`pipe_engine::failpoint`) so that the narrow windows of a commit are hit on purpose.
//! After each kill: no `pipe-torch` worker outlives the run, `pipe verify` finds nothing
//! damaged, and the run that completes leaves outputs, lock file and store byte-identical
//! to an uninterrupted run's, with no temp file left behind.
//!
//! The test suite runs a slice: 10 random kills (seed 1) and each failpoint at two hits.
//! `scripts/crash_campaign.sh` runs the full campaign with these variables:
//! `PIPE_CRASH_KILLS` (random kills), `PIPE_CRASH_SEED`, `PIPE_CRASH_HITS` (the largest hit
//! count tried per failpoint; a point stops once a run no longer reaches it), and
//! `PIPE_CRASH_KEEP` (a folder where failing workspaces are kept for inspection).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};

mod common;
use common::{add_archive_caption_stage, alive, lock_without_timings, output_hashes, project_at};

/// Small enough that one run takes seconds, large enough that every stage takes a while.
const SIZE: &[&str] =
    &["-S", "synth.images=160", "-S", "synth.size=64", "-S", "train.epochs=3", "-S", "caption.beam_width=3"];

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// A workspace holding the repository's pipeline.yaml and its exported backbone.
struct Workspace {
    root: PathBuf,
}

impl Workspace {
    fn new(root: PathBuf) -> Self {
        project_at(&root);
        // Archive-mode captioning too, in small chunks, so kills land among its part writes.
        add_archive_caption_stage(&root);
        Self { root }
    }

    /// Back to a workspace that never ran: no store, cache, views, lock or run state.
    fn wipe(&self) {
        for rel in ["data/store", "data/cache", "data/out", "data/.pipe", "pipe.lock"] {
            let path = self.root.join(rel);
            if path.is_dir() {
                fs::remove_dir_all(&path).unwrap();
            } else if path.exists() {
                fs::remove_file(&path).unwrap();
            }
        }
    }

    fn command(&self, extra: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_pipe"));
        command.arg("run").args(SIZE).args(extra).current_dir(&self.root);
        command
    }

    /// Runs `pipe run` to completion; its output when it fails.
    fn complete(&self) -> Result<(), String> {
        let out = self.command(&[]).output().unwrap();
        if out.status.success() {
            Ok(())
        } else {
            Err(format!("the completing run failed: {}", String::from_utf8_lossy(&out.stderr)))
        }
    }

    /// Starts `pipe run` (with `env` set) and kills it after `delay`; returns the stage it
    /// was running, or `None` when the run ended first.
    fn run_and_kill(&self, delay: Duration) -> Option<String> {
        let log = self.root.join("killed-run.log");
        let mut child =
            self.command(&[]).stdout(Stdio::null()).stderr(fs::File::create(&log).unwrap()).spawn().unwrap();
        let started = Instant::now();
        while started.elapsed() < delay {
            if child.try_wait().unwrap().is_some() {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        child.kill().unwrap();
        child.wait().unwrap();
        Some(last_started_stage(&fs::read_to_string(&log).unwrap_or_default()))
    }

    /// Runs `pipe run` with a failpoint armed; `None` when the run never reached it.
    fn run_to_failpoint(&self, point: &str, hit: u64) -> Option<String> {
        let out = self.command(&[]).env("PIPE_FAILPOINT", format!("{point}:{hit}")).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !stderr.contains(&format!("failpoint {point}")) {
            assert!(out.status.success(), "a run without its failpoint failed:\n{stderr}");
            return None;
        }
        Some(last_started_stage(&stderr))
    }

    /// What must hold after any kill, before anything else runs.
    fn check_after_kill(&self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while let Some(pid) = worker_in(&self.root) {
            if Instant::now() > deadline {
                return Err(format!("pipe-torch {pid} outlived its killed parent"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let out =
            Command::new(env!("CARGO_BIN_EXE_pipe")).arg("verify").current_dir(&self.root).output().unwrap();
        let text =
            format!("{}{}", String::from_utf8_lossy(&out.stderr), String::from_utf8_lossy(&out.stdout));
        if !out.status.success() || !text.contains(", 0 damaged") {
            return Err(format!("pipe verify after the kill: {text}"));
        }
        Ok(())
    }

    /// What must hold once a run completed after kills.
    fn check_completed(&self, reference: &Outcome) -> Result<(), String> {
        let outcome = Outcome::of(&self.root);
        let differing: Vec<&String> = reference
            .outputs
            .keys()
            .chain(outcome.outputs.keys())
            .filter(|name| reference.outputs.get(*name) != outcome.outputs.get(*name))
            .collect();
        if !differing.is_empty() {
            return Err(format!("outputs differ from the uninterrupted run: {differing:?}"));
        }
        if outcome.lock != reference.lock {
            return Err("pipe.lock differs from the uninterrupted run's".into());
        }
        let leftovers = temp_files(&self.root);
        if !leftovers.is_empty() {
            return Err(format!("temp files left behind: {leftovers:?}"));
        }
        Ok(())
    }
}

/// What an uninterrupted run leaves: every output file's hash, and the lock file without
/// its timings.
struct Outcome {
    outputs: BTreeMap<String, String>,
    lock: String,
}

impl Outcome {
    fn of(root: &Path) -> Self {
        Self { outputs: output_hashes(root), lock: lock_without_timings(root) }
    }
}

/// The stage named by the last "run STAGE" line of a run's log.
fn last_started_stage(log: &str) -> String {
    log.lines()
        .rev()
        .filter_map(|line| line.trim_start().strip_prefix("run "))
        .find_map(|rest| rest.split_whitespace().next())
        .unwrap_or("-")
        .to_string()
}

/// A `pipe-torch` process working in `root`, if one runs.
fn worker_in(root: &Path) -> Option<u32> {
    fs::read_dir("/proc").ok()?.flatten().find_map(|entry| {
        let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
        let comm = fs::read_to_string(entry.path().join("comm")).ok()?;
        let cwd = fs::read_link(entry.path().join("cwd")).ok()?;
        (comm.trim() == "pipe-torch" && cwd == root && alive(pid)).then_some(pid)
    })
}

/// Files named like a killed writer's temp file (`.NAME.HOST_PID.tmp`), and entries under the
/// store's `.tmp/`, anywhere in the workspace.
fn temp_files(root: &Path) -> Vec<String> {
    let mut found = Vec::new();
    for entry in walkdir::WalkDir::new(root).into_iter().flatten() {
        let rel = entry.path().strip_prefix(root).unwrap().to_string_lossy().into_owned();
        let name = entry.file_name().to_string_lossy();
        // `.NAME.HOST_PID.tmp`: the pid after the last `_` of the part before `.tmp`.
        let owner =
            name.strip_prefix('.').and_then(|n| n.strip_suffix(".tmp")).and_then(|n| n.rsplit_once('.'));
        let pid = owner.map(|(_, owner)| owner.rsplit_once('_').map_or(owner, |(_, pid)| pid));
        let temp = pid.is_some_and(|pid| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()));
        if temp || (rel.starts_with("data/store/.tmp/") && entry.depth() == 4) {
            found.push(rel);
        }
    }
    found
}

/// One round's verdict, printed as a table row.
fn report(round: &str, what: &str, stage: &str, result: &Result<(), String>) {
    let verdict = match result {
        Ok(()) => "ok".to_string(),
        Err(err) => format!("FAILED: {err}"),
    };
    eprintln!("{round:>8}  {what:<40} {stage:<10} {verdict}");
}

#[test]
fn killed_runs_leave_a_consistent_store_and_complete_to_the_same_bytes() {
    let kills = env_number("PIPE_CRASH_KILLS", 10);
    let seed = env_number("PIPE_CRASH_SEED", 1);
    let max_hits = env_number("PIPE_CRASH_HITS", 2);
    let keep = std::env::var_os("PIPE_CRASH_KEEP").map(PathBuf::from);
    let dir = tempfile::tempdir().unwrap();

    let reference_ws = Workspace::new(dir.path().join("reference"));
    let started = Instant::now();
    reference_ws.complete().unwrap();
    let run_time = started.elapsed();
    let reference = Outcome::of(&reference_ws.root);
    assert!(reference.outputs.len() > 100, "{} output files", reference.outputs.len());
    eprintln!("uninterrupted run: {:.1} s, {} output files", run_time.as_secs_f64(), reference.outputs.len());

    let ws = Workspace::new(dir.path().join("killed"));
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut failures: Vec<String> = Vec::new();
    let mut fired = 0;
    let record_failure = |label: String, ws: &Workspace, failures: &mut Vec<String>| {
        if let Some(keep) = &keep {
            let kept = keep.join(label.replace([' ', ':'], "_"));
            let _ = Command::new("cp").arg("-a").arg(&ws.root).arg(&kept).status();
            eprintln!("          kept the workspace in {}", kept.display());
        }
        failures.push(label);
    };

    // Random kills: from an empty workspace, one kill, or (every third round) a second kill
    // of the resumed run, then a run to completion.
    for round in 0..kills {
        ws.wipe();
        let mut stages = Vec::new();
        let mut result = Ok(());
        for _ in 0..if round % 3 == 2 { 2 } else { 1 } {
            let delay = run_time.mul_f64(rng.random_range(0.0..1.0));
            let Some(stage) = ws.run_and_kill(delay) else { break };
            stages.push(format!("{stage}@{}ms", delay.as_millis()));
            fired += 1;
            result = ws.check_after_kill();
            if result.is_err() {
                break;
            }
        }
        let result = result.and_then(|()| ws.complete()).and_then(|()| ws.check_completed(&reference));
        report(&format!("kill {round}"), &format!("seed {seed}"), &stages.join(","), &result);
        if result.is_err() {
            record_failure(format!("seed {seed} round {round}"), &ws, &mut failures);
        }
    }

    // Failpoints: each named point at its 1st, 2nd, ... hit, until a run no longer reaches it.
    for point in pipe_engine::failpoint::POINTS {
        for hit in 1..=max_hits {
            ws.wipe();
            let Some(stage) = ws.run_to_failpoint(point, hit) else { break };
            fired += 1;
            let result = ws
                .check_after_kill()
                .and_then(|()| ws.complete())
                .and_then(|()| ws.check_completed(&reference));
            report("point", &format!("{point}:{hit}"), &stage, &result);
            if result.is_err() {
                record_failure(format!("{point}:{hit}"), &ws, &mut failures);
            }
        }
    }

    eprintln!("crash campaign: {fired} kills, {} failed {failures:?}", failures.len());
    assert!(failures.is_empty(), "failed rounds: {failures:?}");
}

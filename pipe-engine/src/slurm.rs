//! The Slurm executor: every stale stage of a run becomes an `sbatch` job that runs
//! `pipe run STAGE` on the cluster, chained with `--dependency=afterok`, all submitted at
//! once; a sharded stage becomes a job array of `pipe shard STAGE` tasks and then its
//! normal job, which finds the shards' work in its kind's cache. pipe then follows the
//! jobs until they end (unless detached).
//!
//! Jobs share the workspace through the filesystem: the store's locks and atomic renames
//! are what keep concurrent jobs apart, as for concurrent local runs. Each submission
//! keeps its scripts' logs and exit codes under `data/.pipe/slurm/<submission>/`.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::fsutil::write_json_atomic;
use crate::reporter::Reporter;
use crate::runner::{Runner, StageFailed, StageState};
use crate::spec::Pipeline;
use crate::workspace::Workspace;

/// What the user asked of the cluster.
#[derive(Debug, Clone, Default)]
pub struct SlurmOptions {
    pub partition: Option<String>,
    /// Passed to every `sbatch` as given (`--time=1:00:00`, `--gres=gpu:1`, ...).
    pub sbatch_args: Vec<String>,
    /// Shards for every shardable stage, instead of its `shards:`.
    pub shards: Option<usize>,
    /// Submit and return without following the jobs.
    pub detach: bool,
}

/// How a job starts pipe: the program, its global arguments (`-C ROOT -f FILE`) and the
/// run's `-S` overrides.
#[derive(Debug, Clone)]
pub struct PipeCommand {
    pub program: PathBuf,
    pub global_args: Vec<String>,
    pub overrides: Vec<String>,
}

/// One submitted job: a stage's run, or the array of its shards.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SubmittedJob {
    pub stage: String,
    pub job_id: String,
    /// Tasks of a shard array; `None` for a stage's own job.
    pub shards: Option<usize>,
}

impl SubmittedJob {
    fn label(&self) -> String {
        match self.shards {
            Some(count) => format!("{} shards 0-{} (job array {})", self.stage, count - 1, self.job_id),
            None => format!("{} (job {})", self.stage, self.job_id),
        }
    }

    /// The job's task names as squeue prints them, with the file each writes its exit code to.
    fn tasks(&self, dir: &Path) -> Vec<Task> {
        match self.shards {
            None => vec![Task {
                id: self.job_id.clone(),
                what: format!("stage `{}`", self.stage),
                rc_file: dir.join(format!("{}.rc", self.stage)),
                log: dir.join(format!("{}.log", self.stage)),
            }],
            Some(count) => (0..count)
                .map(|index| Task {
                    id: format!("{}_{index}", self.job_id),
                    what: format!("stage `{}` shard {index}/{count}", self.stage),
                    rc_file: dir.join(format!("{}.shard-{index}.rc", self.stage)),
                    log: dir.join(format!("{}.shard-{index}.log", self.stage)),
                })
                .collect(),
        }
    }
}

/// One Slurm task to follow.
struct Task {
    id: String,
    what: String,
    rc_file: PathBuf,
    log: PathBuf,
}

/// What one `pipe run --executor slurm` submitted (saved as `jobs.json` in its folder).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Submission {
    pub dir: PathBuf,
    pub jobs: Vec<SubmittedJob>,
}

/// The folder of the latest submission is named in this file, beside the submissions.
const LATEST: &str = "latest";

/// Submits every stale stage among `targets` (and what they need) and, unless detached,
/// follows the jobs until all have ended. Returns `None` when nothing was stale.
pub fn run(
    workspace: &Workspace,
    pipeline: &Pipeline,
    targets: &[String],
    command: &PipeCommand,
    options: &SlurmOptions,
    reporter: &Reporter,
) -> Result<Option<Submission>> {
    let stale: Vec<String> = Runner::new(workspace, pipeline, reporter.clone())?
        .status(targets)?
        .into_iter()
        .filter_map(|(name, state)| matches!(state, StageState::Stale { .. }).then_some(name))
        .collect();
    if stale.is_empty() {
        return Ok(None);
    }
    let submission = submit(workspace, pipeline, &stale, command, options, reporter)?;
    if !options.detach {
        follow(&submission, reporter)?;
    }
    Ok(Some(submission))
}

fn submit(
    workspace: &Workspace,
    pipeline: &Pipeline,
    stale: &[String],
    command: &PipeCommand,
    options: &SlurmOptions,
    reporter: &Reporter,
) -> Result<Submission> {
    let root = workspace.state_dir().join("slurm");
    let name = format!("{}-{}", unix_seconds(), std::process::id());
    let dir = root.join(&name);
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut submission = Submission { dir: dir.clone(), jobs: Vec::new() };
    let mut job_of: HashMap<&str, String> = HashMap::new();
    for name in stale {
        let stage = pipeline.stage(name).expect("status names stages of the pipeline");
        let mut after: Vec<String> =
            pipeline.dag.upstream[name].iter().filter_map(|up| job_of.get(up.as_str()).cloned()).collect();
        let shards = match options.shards {
            Some(count) if stage.kind.shardable(&stage.params) => count,
            _ => stage.shards,
        };
        if shards > 1 {
            let script = write_script(
                &dir,
                &format!("{name}.shards"),
                command,
                &["shard", name, "--of", &shards.to_string()],
                &format!("{name}.shard-$SLURM_ARRAY_TASK_ID.rc"),
            )?;
            let mut args = vec![
                format!("--array=0-{}", shards - 1),
                format!("--output={}", dir.join(format!("{name}.shard-%a.log")).display()),
            ];
            args.extend(dependency(&after));
            let job_id = sbatch(&format!("pipe-{name}-shards"), &args, &script, options)?;
            let job = SubmittedJob { stage: name.clone(), job_id: job_id.clone(), shards: Some(shards) };
            reporter.println(&format!("  queued  {}", job.label()));
            submission.jobs.push(job);
            after = vec![job_id];
        }
        let script = write_script(&dir, name, command, &["run", "--no-record", name], &format!("{name}.rc"))?;
        let mut args = vec![format!("--output={}", dir.join(format!("{name}.log")).display())];
        args.extend(dependency(&after));
        let job_id = sbatch(&format!("pipe-{name}"), &args, &script, options)?;
        let job = SubmittedJob { stage: name.clone(), job_id: job_id.clone(), shards: None };
        reporter.println(&format!("  queued  {}", job.label()));
        submission.jobs.push(job);
        job_of.insert(name.as_str(), job_id);
    }
    write_json_atomic(&dir.join("jobs.json"), &submission)?;
    fs::write(root.join(LATEST), &name)
        .with_context(|| format!("writing {}", root.join(LATEST).display()))?;
    Ok(submission)
}

/// `--dependency=afterok:…` on the given jobs; a job whose dependency fails is cancelled
/// rather than left pending forever.
fn dependency(after: &[String]) -> Vec<String> {
    if after.is_empty() {
        return Vec::new();
    }
    vec![format!("--dependency=afterok:{}", after.join(":")), "--kill-on-invalid-dep=yes".to_string()]
}

/// A job script that runs pipe with `args` and leaves its exit code in `rc_file` (inside
/// `dir`; it may name `$SLURM_ARRAY_TASK_ID`), so that the executor knows how it ended
/// without Slurm's accounting.
fn write_script(
    dir: &Path,
    name: &str,
    command: &PipeCommand,
    args: &[&str],
    rc_file: &str,
) -> Result<PathBuf> {
    let mut line = vec![shell_quote(&command.program.to_string_lossy())];
    line.extend(command.global_args.iter().map(|arg| shell_quote(arg)));
    line.extend(args.iter().map(|arg| shell_quote(arg)));
    for set in &command.overrides {
        line.push("-S".to_string());
        line.push(shell_quote(set));
    }
    let rc = format!("{}/{rc_file}", shell_quote(&dir.to_string_lossy()));
    let text = format!(
        "#!/bin/sh\n# Written by `pipe run --executor slurm`.\n{}\nrc=$?\necho $rc > {rc}.tmp && mv {rc}.tmp {rc}\nexit $rc\n",
        line.join(" ")
    );
    let path = dir.join(format!("{name}.sh"));
    fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// Single-quotes a word for sh.
fn shell_quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

fn sbatch(job_name: &str, args: &[String], script: &Path, options: &SlurmOptions) -> Result<String> {
    let mut command = Command::new("sbatch");
    command.arg("--parsable").arg(format!("--job-name={job_name}"));
    if let Some(partition) = &options.partition {
        command.arg(format!("--partition={partition}"));
    }
    command.args(args).args(&options.sbatch_args).arg(script);
    let out = command.output().context("running sbatch (is Slurm's client installed and on PATH?)")?;
    if !out.status.success() {
        bail!("sbatch refused job {job_name}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    // --parsable prints "ID" or "ID;CLUSTER".
    let text = String::from_utf8_lossy(&out.stdout);
    let id = text.trim().split(';').next().unwrap_or_default().to_string();
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_digit()) {
        bail!("sbatch printed no job id for {job_name}: `{}`", text.trim());
    }
    Ok(id)
}

/// Slurm's states of a job that ended without success.
const FAILED_STATES: [&str; 8] =
    ["BOOT_FAIL", "CANCELLED", "DEADLINE", "FAILED", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "TIMEOUT"];

/// Follows a submission's jobs until every task has ended. A failed task does not stop
/// the others: its siblings finish and keep their work (a rerun redoes only what is
/// missing), while Slurm cancels what depended on it. Then fails naming the first failed
/// task, with its log's tail.
pub fn follow(submission: &Submission, reporter: &Reporter) -> Result<()> {
    let tasks: Vec<Task> = submission.jobs.iter().flat_map(|job| job.tasks(&submission.dir)).collect();
    let mut announced: HashMap<String, &'static str> = HashMap::new();
    let mut missing_since: HashMap<String, Instant> = HashMap::new();
    let mut failures: Vec<(&Task, String)> = Vec::new();
    let started = Instant::now();
    loop {
        let queue = squeue(&submission.jobs)?;
        let mut open = 0;
        for task in &tasks {
            if failures.iter().any(|(failed, _)| failed.id == task.id) {
                continue;
            }
            let mut announce = |state: &'static str| {
                if announced.insert(task.id.clone(), state) != Some(state) {
                    reporter.println(&format!("  {state:<7} {} ({})", task.what, task.id));
                }
            };
            let failed = match read_rc(&task.rc_file) {
                Some(0) => {
                    announce("done");
                    continue;
                }
                Some(rc) => Some(format!("exited with {rc}")),
                None => match queue.get(&task.id) {
                    Some((state, _)) if FAILED_STATES.iter().any(|s| state.starts_with(s)) => {
                        Some(format!("ended {state}"))
                    }
                    Some((state, reason))
                        if state == "PENDING" && reason.contains("DependencyNeverSatisfied") =>
                    {
                        let _ = Command::new("scancel").arg(&task.id).output();
                        Some("was cancelled: a job it needs failed".to_string())
                    }
                    Some((state, _)) => {
                        if state == "RUNNING" {
                            announce("running");
                        }
                        None
                    }
                    // Pending array tasks are listed as one `ID_[a-b]` line; a task that is in
                    // no line and wrote no exit code ended without running its script.
                    None if queue.keys().any(|id| pending_array_has(id, &task.id)) => None,
                    None => {
                        let since = *missing_since.entry(task.id.clone()).or_insert_with(Instant::now);
                        (since.elapsed() > Duration::from_secs(10)).then(|| {
                            "was cancelled or lost: it left the queue without an exit code".to_string()
                        })
                    }
                },
            };
            match failed {
                Some(why) => {
                    reporter.println(&format!("  FAILED  {} ({}): {why}", task.what, task.id));
                    failures.push((task, why));
                }
                None => open += 1,
            }
        }
        if open == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let seconds = started.elapsed().as_secs_f64();
    let Some((first, why)) = failures.first() else {
        reporter.println(&format!(
            "  all {} Slurm jobs of this run ended well in {seconds:.1}s",
            submission.jobs.len()
        ));
        return Ok(());
    };
    let others: Vec<String> = failures[1..].iter().map(|(task, _)| task.what.clone()).collect();
    Err(StageFailed(anyhow::anyhow!(
        "{} {why} (task {}); its log, {}, ends:\n{}\n{}Run again to compute only what is missing.",
        first.what,
        first.id,
        first.log.display(),
        log_tail(&first.log, 20),
        if others.is_empty() { String::new() } else { format!("Also not done: {}.\n", others.join(", ")) }
    ))
    .into())
}

/// Is `task` (`ID_N`) among the pending tasks of an `ID_[a-b,c]` line of squeue?
fn pending_array_has(line_id: &str, task: &str) -> bool {
    let (Some((job, ranges)), Some((task_job, index))) = (line_id.split_once("_["), task.split_once('_'))
    else {
        return false;
    };
    let Ok(index) = index.parse::<usize>() else { return false };
    job == task_job
        && ranges.trim_end_matches(']').split(',').any(|range| {
            let range = range.split('%').next().unwrap_or(range);
            match range.split_once('-') {
                Some((a, b)) => {
                    a.parse().is_ok_and(|a: usize| a <= index) && b.parse().is_ok_and(|b: usize| index <= b)
                }
                None => range.parse() == Ok(index),
            }
        })
}

/// Task id → (state, reason), for the submission's jobs that Slurm still lists.
fn squeue(jobs: &[SubmittedJob]) -> Result<BTreeMap<String, (String, String)>> {
    let ids: Vec<&str> = jobs.iter().map(|job| job.job_id.as_str()).collect();
    let out = Command::new("squeue")
        .args(["--noheader", "--states=all", "--format=%i|%T|%r", &format!("--jobs={}", ids.join(","))])
        .output()
        .context("running squeue")?;
    // squeue fails when none of the jobs is known any more: then none is listed.
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .lines()
        .filter_map(|line| {
            let mut fields = line.trim().splitn(3, '|');
            let id = fields.next()?.to_string();
            let state = fields.next()?.to_string();
            Some((id, (state, fields.next().unwrap_or_default().to_string())))
        })
        .collect())
}

fn read_rc(path: &Path) -> Option<i32> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn log_tail(path: &Path, lines: usize) -> String {
    match fs::read_to_string(path) {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..]
                .iter()
                .map(|line| format!("    {line}"))
                .collect::<Vec<_>>()
                .join("\n")
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            "    (no log: the task never started)".to_string()
        }
        Err(err) => format!("    (unreadable: {err})"),
    }
}

/// The latest submission of this workspace and the state of each of its tasks (Slurm's,
/// or how its script ended), for `pipe status`.
pub fn describe_latest(workspace: &Workspace) -> Option<Vec<String>> {
    let root = workspace.state_dir().join("slurm");
    let name = fs::read_to_string(root.join(LATEST)).ok()?;
    let submission: Submission =
        serde_json::from_slice(&fs::read(root.join(name.trim()).join("jobs.json")).ok()?).ok()?;
    let queue = squeue(&submission.jobs).unwrap_or_default();
    let mut lines = Vec::new();
    for job in &submission.jobs {
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for task in job.tasks(&submission.dir) {
            let state = match read_rc(&task.rc_file) {
                Some(0) => "done".to_string(),
                Some(rc) => format!("failed (exit {rc})"),
                None => match queue.get(&task.id) {
                    Some((state, _)) => state.to_lowercase(),
                    None if queue.keys().any(|id| pending_array_has(id, &task.id)) => "pending".to_string(),
                    None => "gone".to_string(),
                },
            };
            *counts.entry(state).or_default() += 1;
        }
        let states: Vec<String> = counts
            .into_iter()
            .map(|(state, n)| if job.shards.is_some() { format!("{n} {state}") } else { state })
            .collect();
        lines.push(format!("{}: {}", job.label(), states.join(", ")));
    }
    Some(lines)
}

fn unix_seconds() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_array_lines_name_their_tasks() {
        assert!(pending_array_has("12_[0-3]", "12_2"));
        assert!(pending_array_has("12_[1,3-5%2]", "12_4"));
        assert!(!pending_array_has("12_[1,3-5]", "12_2"));
        assert!(!pending_array_has("13_[0-3]", "12_2"));
        assert!(!pending_array_has("12_2", "12_2"));
    }

    #[test]
    fn scripts_quote_what_they_pass() {
        let dir = tempfile::tempdir().unwrap();
        let command = PipeCommand {
            program: PathBuf::from("/opt/pipe it/pipe"),
            global_args: vec!["-C".into(), "/w's".into()],
            overrides: vec!["train.name=it's".into()],
        };
        let script = write_script(dir.path(), "x", &command, &["run", "x"], "x.rc").unwrap();
        let text = fs::read_to_string(script).unwrap();
        assert!(
            text.contains(r"'/opt/pipe it/pipe' '-C' '/w'\''s' 'run' 'x' -S 'train.name=it'\''s'"),
            "{text}"
        );
    }
}

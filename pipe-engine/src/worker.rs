//! Runs a stage kind in a worker process.
//!
//! Some kinds need heavy native libraries: libtorch's static initialisers alone cost about
//! 0.3 s in every process that loads it. Such a kind declares
//! [`Execution::Worker`](crate::stage::Execution), the runner calls [`run_in_worker`], and
//! its computation lives in a worker binary built from another crate, so the front end
//! never links those libraries and engine commands (`status`, `dag`, a fully cached `run`)
//! start in milliseconds. Only a stage that actually runs starts the worker.
//!
//! Protocol: the parent writes one [`StageJob`] as JSON on the worker's stdin. The worker
//! answers with [`WorkerMessage`] JSON lines on stdout (progress-bar states, log lines, and
//! the error if the stage failed); its stderr is the parent's. The worker dies with its
//! parent (`PR_SET_PDEATHSIG`), so a killed run leaves no orphan writing into the store.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, ExitCode, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use indicatif::ProgressBar;
use serde::{Deserialize, Serialize};

use crate::reporter::Reporter;
use crate::stage::StageContext;

/// Set by the parent to its pid, so a worker can tell that its parent already died.
const PARENT_PID_ENV: &str = "PIPE_WORKER_PARENT";
/// How often a worker reports its progress bars.
const BAR_INTERVAL: Duration = Duration::from_millis(100);

/// The path of a worker binary installed beside the current executable.
pub fn worker_program(program: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the running executable")?;
    let path = exe.with_file_name(program);
    if !path.is_file() {
        bail!(
            "{} not found: it is built together with {} (`cargo build --release`) and must be installed beside it",
            path.display(),
            exe.display()
        );
    }
    Ok(path)
}

/// What the parent sends: the kind to run, and the stage's context but its progress sink.
#[derive(Deserialize)]
pub struct StageJob {
    pub kind: String,
    pub context: StageContext,
}

/// One line a worker writes on stdout.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum WorkerMessage {
    Bar { index: usize, len: u64, pos: u64, message: String, finished: bool },
    Log(String),
    Error(String),
}

/// Runs `kind` for `ctx` in the worker binary `program` (found beside the current
/// executable), relaying its progress bars and log lines; its error becomes ours.
pub fn run_in_worker(program: &str, kind: &str, ctx: &StageContext) -> Result<()> {
    let program = worker_program(program)?;
    let program = program.as_path();
    let mut child = Command::new(program)
        .arg("stage")
        .env(PARENT_PID_ENV, std::process::id().to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting {}", program.display()))?;
    {
        let mut stdin = child.stdin.take().expect("piped stdin");
        serde_json::to_writer(&mut stdin, &serde_json::json!({"kind": kind, "context": ctx}))
            .context("sending the job to the worker")?;
    } // dropping stdin tells the worker the job is complete

    let mut bars: Vec<ProgressBar> = Vec::new();
    let mut error = None;
    for line in BufReader::new(child.stdout.take().expect("piped stdout")).lines() {
        let line = line.context("reading the worker's output")?;
        match serde_json::from_str::<WorkerMessage>(&line) {
            Ok(WorkerMessage::Bar { index, len, pos, message, finished }) => {
                // Bars arrive in creation order, so a new index is the next one.
                while bars.len() <= index {
                    bars.push(ctx.progress_bar(len, &message));
                }
                let bar = &bars[index];
                bar.set_length(len);
                bar.set_position(pos);
                bar.set_message(message);
                if finished {
                    bar.finish_and_clear();
                }
            }
            Ok(WorkerMessage::Log(text)) => ctx.reporter.println(&text),
            Ok(WorkerMessage::Error(message)) => error = Some(message),
            // Native libraries may print on stdout; keep it visible.
            Err(_) => ctx.log(&line),
        }
    }
    let status = child.wait().context("waiting for the worker")?;
    for bar in bars {
        bar.finish_and_clear();
    }
    match error {
        Some(message) => Err(anyhow!(message)),
        None if status.success() => Ok(()),
        None => bail!("worker {} {}", program.display(), describe(status)),
    }
}

fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(signal)) => format!("was killed by signal {signal}"),
        _ => format!("ended with {status}"),
    }
}

/// What a worker does for one kind.
pub type StageRun = fn(&StageContext) -> Result<()>;

/// A worker binary's `stage` command: reads a [`StageJob`] on stdin, runs it with
/// `lookup(kind)`, and reports on stdout as the protocol says.
pub fn serve_stage(lookup: impl Fn(&str) -> Option<StageRun>) -> ExitCode {
    die_with_parent();
    let stdout = Arc::new(Mutex::new(std::io::stdout()));
    let send = {
        let stdout = stdout.clone();
        move |message: &WorkerMessage| {
            let mut out = stdout.lock().expect("stdout lock");
            // A parent that stopped reading is gone; the death signal ends us.
            let _ = serde_json::to_writer(&mut *out, message);
            let _ = out.write_all(b"\n");
            let _ = out.flush();
        }
    };
    match serve(&lookup, &send) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            send(&WorkerMessage::Error(format!("{err:#}")));
            ExitCode::FAILURE
        }
    }
}

fn serve(
    lookup: &impl Fn(&str) -> Option<StageRun>,
    send: &(impl Fn(&WorkerMessage) + Send + Sync + Clone + 'static),
) -> Result<()> {
    let job: StageJob =
        serde_json::from_reader(std::io::stdin().lock()).context("reading the stage job on stdin")?;
    let run = lookup(&job.kind).ok_or_else(|| anyhow!("this worker has no kind `{}`", job.kind))?;
    let log = send.clone();
    let progress =
        Reporter::forwarding(Arc::new(move |line: &str| log(&WorkerMessage::Log(line.to_string()))));
    let ctx = StageContext { reporter: progress.clone(), ..job.context };

    let (stop, stopped) = mpsc::channel::<()>();
    let reporter = {
        let send = send.clone();
        std::thread::spawn(move || {
            let mut sent = Vec::new();
            loop {
                let done =
                    !matches!(stopped.recv_timeout(BAR_INTERVAL), Err(mpsc::RecvTimeoutError::Timeout));
                report_bars(&progress, &mut sent, &send);
                if done {
                    break;
                }
            }
        })
    };
    let result = run(&ctx);
    drop(stop);
    let _ = reporter.join();
    result
}

/// Sends the state of every bar that changed since the last call.
fn report_bars(progress: &Reporter, sent: &mut Vec<WorkerMessage>, send: &impl Fn(&WorkerMessage)) {
    for (index, bar) in progress.bars().iter().enumerate() {
        let state = WorkerMessage::Bar {
            index,
            len: bar.length().unwrap_or(0),
            pos: bar.position(),
            message: bar.message(),
            finished: bar.is_finished(),
        };
        if sent.get(index) != Some(&state) {
            send(&state);
            if index < sent.len() {
                sent[index] = state;
            } else {
                sent.push(state);
            }
        }
    }
}

/// Asks the kernel to kill this process when its parent dies, and exits at once if the
/// parent is already gone (it may have died before the request was made).
fn die_with_parent() {
    // SAFETY: prctl with PR_SET_PDEATHSIG takes a signal number and no pointers.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
    }
    let expected = std::env::var(PARENT_PID_ENV).ok().and_then(|pid| pid.parse::<i32>().ok());
    // SAFETY: getppid has no preconditions.
    let parent = unsafe { libc::getppid() };
    if expected.is_some_and(|pid| pid != parent) {
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;

    #[test]
    fn messages_are_one_json_line_each_and_read_back() {
        let messages = [
            WorkerMessage::Bar { index: 2, len: 10, pos: 3, message: "epoch 1/5".into(), finished: false },
            WorkerMessage::Log("  train: epoch 1: train 3.1\nsecond line".into()),
            WorkerMessage::Error("stage train: no train captions".into()),
        ];
        for message in messages {
            let line = serde_json::to_string(&message).unwrap();
            assert!(!line.contains('\n'), "{line}");
            assert_eq!(serde_json::from_str::<WorkerMessage>(&line).unwrap(), message);
        }
    }

    #[test]
    fn only_changed_bars_are_reported() {
        let progress = Reporter::hidden();
        let first = progress.add(ProgressBar::new(10));
        let sent_lines = RefCell::new(Vec::new());
        let send =
            |message: &WorkerMessage| sent_lines.borrow_mut().push(serde_json::to_string(message).unwrap());
        let mut sent = Vec::new();

        report_bars(&progress, &mut sent, &send);
        assert_eq!(sent_lines.borrow().len(), 1);
        report_bars(&progress, &mut sent, &send);
        assert_eq!(sent_lines.borrow().len(), 1, "nothing changed, nothing sent");

        first.inc(4);
        let second = progress.add(ProgressBar::new(3));
        second.finish();
        report_bars(&progress, &mut sent, &send);
        let lines = sent_lines.borrow();
        assert_eq!(lines.len(), 3);
        assert_eq!(
            serde_json::from_str::<WorkerMessage>(&lines[1]).unwrap(),
            WorkerMessage::Bar { index: 0, len: 10, pos: 4, message: String::new(), finished: false }
        );
        assert!(matches!(
            serde_json::from_str::<WorkerMessage>(&lines[2]).unwrap(),
            WorkerMessage::Bar { index: 1, finished: true, .. }
        ));
    }

    #[test]
    fn a_missing_worker_is_a_clear_error() {
        let err = worker_program("no-such-pipe-worker").unwrap_err().to_string();
        assert!(err.contains("no-such-pipe-worker not found"), "{err}");
    }
}

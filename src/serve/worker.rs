//! The long-lived `pipe-torch serve` worker and the queue in front of it.
//!
//! Requests wait in a bounded queue (full: the caller answers 503). One task takes them
//! off: it takes every request already waiting (and, with a batching window, waits that
//! long for more), groups what it has by model and decoding, and sends each group to the
//! worker as one batch (one backbone pass, one beam search). If the worker dies, the batch
//! in flight fails and a new worker is started.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::contract::serve::{write_request, CaptionRequest, CaptionResponse, ImageOutcome, Ready};

/// How requests are grouped into batches.
#[derive(Debug, Clone, Copy)]
pub struct Batching {
    /// How long the first request of a batch waits for others to arrive (zero: it takes
    /// only those already waiting).
    pub window: Duration,
    /// Most images in one batch.
    pub max_images: usize,
}

/// One image to caption.
pub struct Job {
    pub model: String,
    pub beam_width: usize,
    pub attention: bool,
    pub image: axum::body::Bytes,
    pub reply: oneshot::Sender<Result<ImageOutcome, String>>,
}

#[derive(Clone)]
pub struct Pool {
    queue: mpsc::Sender<Job>,
}

/// The queue is full: the caller should retry later.
pub struct Busy;

impl Pool {
    /// Starts the worker, waits for it to load the models, and starts the batching task.
    pub async fn start(
        program: PathBuf,
        config: PathBuf,
        batching: Batching,
        queue: usize,
    ) -> Result<(Self, Ready)> {
        let (worker, ready) = Worker::spawn(&program, &config).await?;
        let (sender, receiver) = mpsc::channel(queue.max(1));
        tokio::spawn(batch_loop(receiver, worker, program, config, batching));
        Ok((Self { queue: sender }, ready))
    }

    /// Queues a job, or says the queue is full.
    pub fn submit(&self, job: Job) -> std::result::Result<(), Busy> {
        self.queue.try_send(job).map_err(|_| Busy)
    }
}

struct Worker {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    next_id: u64,
}

impl Worker {
    async fn spawn(program: &Path, config: &Path) -> Result<(Self, Ready)> {
        let mut child = Command::new(program)
            .arg("serve")
            .arg("--config")
            .arg(config)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", program.display()))?;
        let stdin = child.stdin.take().context("worker stdin")?;
        let mut stdout = BufReader::new(child.stdout.take().context("worker stdout")?);
        let mut line = String::new();
        if stdout.read_line(&mut line).await? == 0 {
            let status = child.wait().await?;
            bail!("the worker exited ({status}) before loading its models; its error is above");
        }
        let ready: Ready =
            serde_json::from_str(&line).with_context(|| format!("the worker's first line: {line}"))?;
        Ok((Self { child, stdin, stdout, next_id: 0 }, ready))
    }

    /// Sends one batch and reads its answer. An error means the worker is gone.
    async fn caption(&mut self, jobs: &[Job]) -> Result<CaptionResponse> {
        self.next_id += 1;
        let request = CaptionRequest {
            id: self.next_id,
            model: jobs[0].model.clone(),
            beam_width: jobs[0].beam_width,
            attention: jobs[0].attention,
            sizes: jobs.iter().map(|j| j.image.len()).collect(),
        };
        let images: Vec<&[u8]> = jobs.iter().map(|j| j.image.as_ref()).collect();
        let mut bytes = Vec::with_capacity(images.iter().map(|i| i.len()).sum::<usize>() + 256);
        write_request(&mut bytes, &request, &images)?;
        self.stdin.write_all(&bytes).await.context("writing to the worker")?;
        self.stdin.flush().await.context("writing to the worker")?;
        let mut line = String::new();
        if self.stdout.read_line(&mut line).await.context("reading from the worker")? == 0 {
            let status = self.child.wait().await?;
            bail!("the worker exited ({status})");
        }
        let response: CaptionResponse = serde_json::from_str(&line).context("a worker answer")?;
        if response.id != request.id {
            bail!("the worker answered request {} to request {}", response.id, request.id);
        }
        Ok(response)
    }
}

async fn batch_loop(
    mut queue: mpsc::Receiver<Job>,
    mut worker: Worker,
    program: PathBuf,
    config: PathBuf,
    batching: Batching,
) {
    while let Some(first) = queue.recv().await {
        let mut jobs = vec![first];
        let most = batching.max_images.max(1);
        // What queued while the worker was busy joins at once: under load batches fill
        // themselves, and a lone request does not wait.
        while jobs.len() < most {
            match queue.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        let deadline = Instant::now() + batching.window;
        while jobs.len() < most && !batching.window.is_zero() {
            match tokio::time::timeout_at(deadline, queue.recv()).await {
                Ok(Some(job)) => jobs.push(job),
                _ => break,
            }
        }
        for group in group_jobs(jobs) {
            match worker.caption(&group).await {
                Ok(response) => answer(group, response),
                Err(err) => {
                    eprintln!("pipe serve: the worker failed ({err:#}); starting a new one");
                    for job in group {
                        let _ =
                            job.reply.send(Err("the caption worker failed; it is being restarted".into()));
                    }
                    worker = respawn(&program, &config).await;
                }
            }
        }
    }
}

/// Jobs with the same model and decoding, in arrival order of each group's first job.
fn group_jobs(jobs: Vec<Job>) -> Vec<Vec<Job>> {
    let mut groups: Vec<Vec<Job>> = Vec::new();
    for job in jobs {
        let same = |g: &Vec<Job>| {
            g[0].model == job.model && g[0].beam_width == job.beam_width && g[0].attention == job.attention
        };
        match groups.iter_mut().find(|g| same(g)) {
            Some(group) => group.push(job),
            None => groups.push(vec![job]),
        }
    }
    groups
}

fn answer(group: Vec<Job>, response: CaptionResponse) {
    if let Some(error) = response.error {
        for job in group {
            let _ = job.reply.send(Err(error.clone()));
        }
        return;
    }
    let count = response.results.len();
    let mut results = response.results.into_iter();
    for job in group {
        let outcome = results.next().ok_or_else(|| format!("the worker answered {count} images of a batch"));
        let _ = job.reply.send(outcome);
    }
}

/// Starts a new worker, retrying with a growing pause until one loads.
async fn respawn(program: &Path, config: &Path) -> Worker {
    let mut pause = Duration::from_millis(200);
    loop {
        match Worker::spawn(program, config).await {
            Ok((worker, _)) => {
                eprintln!("pipe serve: a new worker is ready");
                return worker;
            }
            Err(err) => {
                eprintln!("pipe serve: could not start a worker ({err:#}); retrying in {pause:?}");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(10));
            }
        }
    }
}

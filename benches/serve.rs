//! `pipe serve` under load: `POST /api/caption` latency and throughput, with and without
//! dynamic batching, side by side in one run (issue 13).
//!
//! ```text
//! cargo bench --bench serve -- WORKSPACE [--file PIPELINE] [--image JPEG] [--query Q]
//!     [--requests N] [--clients C] [--rounds R]
//! ```
//! WORKSPACE has run its pipeline (a caption stage in its lock file). For each round and
//! each batching setting (`--max-batch 1`: none; the default: what queued while the worker
//! was busy; `--batch-window-ms 5`: also wait 5 ms for more) it starts `pipe serve` on a
//! free port, sends 5 warm-up requests, then N requests one after the other
//! (latency: p50 and p95) and then N requests from C clients at once (throughput, and the
//! latencies under load). Each request is its own HTTP/1.1 connection with the image as
//! the body (default: tests/fixtures/photos/chelsea.jpg, 500×333 px, beam 5). Figures go in
//! docs/BENCHMARKS.md; nothing here asserts a time.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// The settings compared: a label and `pipe serve`'s flags.
const BATCHING: [(&str, &[&str]); 3] =
    [("off", &["--max-batch", "1"]), ("queued", &[]), ("5 ms", &["--batch-window-ms", "5"])];

struct Options {
    workspace: PathBuf,
    file: Option<String>,
    image: PathBuf,
    query: String,
    requests: usize,
    clients: usize,
    rounds: usize,
}

fn main() -> Result<()> {
    let options = parse_args()?;
    let image =
        std::fs::read(&options.image).with_context(|| format!("reading {}", options.image.display()))?;
    println!(
        "pipe serve in {}: {} ({} bytes), query `{}`, {} requests, {} clients, {} cores",
        options.workspace.display(),
        options.image.display(),
        image.len(),
        options.query,
        options.requests,
        options.clients,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!(
        "{:<6} {:<10} {:>9} {:>9} {:>11} {:>12} {:>12} {:>11}",
        "round", "batching", "p50 ms", "p95 ms", "1 client/s", "load p50 ms", "load p95 ms", "C clients/s"
    );
    for round in 1..=options.rounds {
        for (label, batching) in BATCHING {
            let server = Server::start(&options, batching)?;
            let path = format!("/api/caption?{}", options.query);
            for _ in 0..5 {
                post(server.address, &path, &image)?;
            }
            let started = Instant::now();
            let mut alone = Vec::new();
            for _ in 0..options.requests {
                alone.push(post(server.address, &path, &image)?);
            }
            let alone_rate = options.requests as f64 / started.elapsed().as_secs_f64();
            let started = Instant::now();
            let mut loaded = load(server.address, &path, &image, options.requests, options.clients)?;
            let load_rate = options.requests as f64 / started.elapsed().as_secs_f64();
            println!(
                "{round:<6} {label:<10} {:>9.1} {:>9.1} {alone_rate:>11.1} {:>12.1} {:>12.1} {load_rate:>11.1}",
                percentile(&mut alone, 0.50),
                percentile(&mut alone, 0.95),
                percentile(&mut loaded, 0.50),
                percentile(&mut loaded, 0.95),
            );
        }
    }
    Ok(())
}

fn parse_args() -> Result<Options> {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let value = |flag: &str| args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1)).cloned();
    let number = |flag: &str, default: usize| -> Result<usize> {
        value(flag).map_or(Ok(default), |v| v.parse().with_context(|| format!("{flag} {v}")))
    };
    let mut positional = Vec::new();
    let mut skip = false;
    for arg in &args {
        if std::mem::take(&mut skip) {
            continue;
        }
        if arg.starts_with("--") {
            skip = true;
        } else {
            positional.push(arg.clone());
        }
    }
    let Some(workspace) = positional.first() else {
        bail!("usage: cargo bench --bench serve -- WORKSPACE [--file PIPELINE] [--image JPEG] [--query Q] [--requests N] [--clients C] [--rounds R]");
    };
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    Ok(Options {
        workspace: PathBuf::from(workspace),
        file: value("--file"),
        image: value("--image").map_or_else(|| repo.join("tests/fixtures/photos/chelsea.jpg"), PathBuf::from),
        query: value("--query").unwrap_or_else(|| "beam=5".to_string()),
        requests: number("--requests", 200)?,
        clients: number("--clients", 8)?,
        rounds: number("--rounds", 2)?,
    })
}

/// A `pipe serve` on a free port, stopped on drop.
struct Server {
    child: Child,
    address: SocketAddr,
}

impl Server {
    fn start(options: &Options, batching: &[&str]) -> Result<Self> {
        let mut command = Command::new(env!("CARGO_BIN_EXE_pipe"));
        command.arg("-C").arg(&options.workspace);
        if let Some(file) = &options.file {
            command.args(["-f", file]);
        }
        // A queue as deep as the clients: this measures throughput, not refusals.
        let queue = (options.clients * 2).to_string();
        let mut child = command
            .args(["serve", "--port", "0", "--queue", &queue])
            .args(batching)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting pipe serve")?;
        let mut lines = BufReader::new(child.stderr.take().context("stderr")?).lines();
        let address = loop {
            let Some(line) = lines.next() else {
                let _ = child.wait();
                bail!("pipe serve exited before listening");
            };
            if let Some(rest) = line?.strip_prefix("pipe serve: http://") {
                break rest.split_whitespace().next().unwrap_or_default().parse()?;
            }
        };
        // Keep draining its log so that it never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        Ok(Self { child, address })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `requests` POSTs shared among `clients` threads; each request's latency in ms.
fn load(address: SocketAddr, path: &str, image: &[u8], requests: usize, clients: usize) -> Result<Vec<f64>> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..clients)
            .map(|_| {
                scope.spawn(|| {
                    let mut latencies = Vec::new();
                    while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < requests {
                        latencies.push(post(address, path, image)?);
                    }
                    Ok::<_, anyhow::Error>(latencies)
                })
            })
            .collect();
        let mut all = Vec::new();
        for worker in workers {
            all.extend(worker.join().expect("a client thread panicked")?);
        }
        Ok(all)
    })
}

/// One POST on its own connection; its latency in ms. Anything but 200 is an error.
fn post(address: SocketAddr, path: &str, body: &[u8]) -> Result<f64> {
    let started = Instant::now();
    let mut stream = TcpStream::connect(address)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(120)))?;
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\nContent-Type: image/jpeg\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer)?;
    let elapsed = started.elapsed().as_secs_f64() * 1000.0;
    let text = String::from_utf8_lossy(&answer);
    if !text.starts_with("HTTP/1.1 200") {
        bail!("the server answered: {}", text.lines().next().unwrap_or("nothing"));
    }
    Ok(elapsed)
}

fn percentile(values: &mut [f64], q: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    values[((values.len() as f64 * q).ceil() as usize).saturating_sub(1).min(values.len() - 1)]
}

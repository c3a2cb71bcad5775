//! The libtorch worker behind `pipe`. The front end starts it for the stages that need
//! libtorch (features, train, caption) and for `pipe caption`; it is not meant to be run
//! by hand. Keeping libtorch out of `pipe` makes engine commands start in milliseconds.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use pipe::contract::device::Precision;
use pipe::stages::caption::CaptionParams;
use pipe_torch::caption::{caption_images, CaptionImagesOptions, DecodeSettings};

#[derive(Parser)]
#[command(version, about = "libtorch worker for pipe (started by `pipe`; not meant to be run by hand)")]
struct Cli {
    #[command(subcommand)]
    command: WorkerCommand,
}

#[derive(Subcommand)]
enum WorkerCommand {
    /// Run one stage: a JSON job on stdin, JSON lines (progress, logs, error) on stdout.
    Stage,
    /// Caption images with a trained model (the work behind `pipe caption`).
    Caption(CaptionImagesArgs),
    /// Serve caption requests on stdin/stdout (the worker behind `pipe serve`).
    Serve {
        /// The models to load (a `pipe::contract::serve::ServeConfig`, JSON).
        #[arg(long)]
        config: PathBuf,
    },
}

/// What `pipe caption` hands the worker: paths it resolved from the lock file.
#[derive(Args)]
struct CaptionImagesArgs {
    #[arg(required = true)]
    images: Vec<PathBuf>,
    /// The train stage's output directory; repeated for an ensemble.
    #[arg(long, required = true)]
    model_dir: Vec<PathBuf>,
    #[arg(long)]
    vocab: PathBuf,
    /// The backbone directory (model.pt and its sidecar).
    #[arg(long)]
    backbone: PathBuf,
    /// The precision of the features the model was trained on.
    #[arg(long, default_value = "fp32")]
    precision: String,
    /// The caption stage's params (JSON), which say how to decode and on which device.
    #[arg(long)]
    params: String,
}

fn main() -> ExitCode {
    pipe_torch::numerics::reproducible_cpu_maths();
    pipe_torch::memory::keep_freed_memory_in_the_heap();
    match Cli::parse().command {
        WorkerCommand::Stage => pipe_engine::worker::serve_stage(pipe_torch::stage_run),
        WorkerCommand::Caption(args) => report(caption(&args)),
        WorkerCommand::Serve { config } => report(serve(&config)),
    }
}

fn report(result: Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve(config: &std::path::Path) -> Result<()> {
    let text = std::fs::read_to_string(config).with_context(|| format!("reading {}", config.display()))?;
    let config: pipe::contract::serve::ServeConfig =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", config.display()))?;
    let (stdin, stdout) = (std::io::stdin(), std::io::stdout());
    pipe_torch::caption::serve::serve(&config, &mut stdin.lock(), &mut stdout.lock())
}

/// Prints one tab-separated line per image: path, caption, log-probability.
fn caption(args: &CaptionImagesArgs) -> Result<()> {
    let params: CaptionParams = serde_json::from_str(&args.params).context("--params")?;
    let precision: Precision = serde_json::from_value(serde_json::Value::String(args.precision.clone()))
        .with_context(|| format!("--precision {}", args.precision))?;
    let options =
        CaptionImagesOptions { settings: DecodeSettings::from(&params), device: params.device, precision };
    for (path, caption, log_prob) in
        caption_images(&args.model_dir, &args.vocab, &args.backbone, &args.images, &options)?
    {
        println!("{}\t{caption}\t(log p {log_prob:.2})", path.display());
    }
    Ok(())
}

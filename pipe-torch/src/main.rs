//! The libtorch worker behind `pipe`. The front end starts it for the stages that need
//! libtorch (features, train, caption) and for `pipe caption`; it is not meant to be run
//! by hand. Keeping libtorch out of `pipe` makes engine commands start in milliseconds.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use pipe::stages::caption::{DecodeSettings, DecoderKind};
use pipe::stages::device::DeviceChoice;
use pipe_torch::caption::{caption_images, CaptionImagesOptions};

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
}

/// What `pipe caption` hands the worker: paths it resolved from the lock file.
#[derive(Args)]
struct CaptionImagesArgs {
    #[arg(required = true)]
    images: Vec<PathBuf>,
    /// The train stage's output directory.
    #[arg(long)]
    model_dir: PathBuf,
    #[arg(long)]
    vocab: PathBuf,
    /// The backbone directory (model.pt and its sidecar).
    #[arg(long)]
    backbone: PathBuf,
    #[arg(long, default_value_t = 5)]
    beam: usize,
    #[arg(long, default_value = "auto")]
    device: DeviceChoice,
}

fn main() -> ExitCode {
    match Cli::parse().command {
        WorkerCommand::Stage => pipe::engine::worker::serve_stage(pipe_torch::stage_run),
        WorkerCommand::Caption(args) => match caption(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("error: {err:#}");
                ExitCode::FAILURE
            }
        },
    }
}

/// Prints one tab-separated line per image: path, caption, log-probability.
fn caption(args: &CaptionImagesArgs) -> Result<()> {
    let decoder = if args.beam <= 1 { DecoderKind::Greedy } else { DecoderKind::Beam };
    let settings = DecodeSettings { decoder, beam_width: args.beam.max(1), ..DecodeSettings::default() };
    let options = CaptionImagesOptions { settings, device: args.device };
    for (path, caption, log_prob) in
        caption_images(&args.model_dir, &args.vocab, &args.backbone, &args.images, &options)?
    {
        println!("{}\t{caption}\t(log p {log_prob:.2})", path.display());
    }
    Ok(())
}

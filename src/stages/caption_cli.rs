//! `pipe caption IMAGE...`: caption a few images with the pipeline's trained model.

use anyhow::{bail, Result};
use clap::Args;

use crate::engine::spec::Pipeline;
use crate::engine::workspace::Workspace;

#[derive(Args)]
pub struct CaptionArgs {
    /// Image files to caption.
    #[arg(required = true)]
    pub images: Vec<std::path::PathBuf>,
}

pub fn run(_workspace: &Workspace, _pipeline: &Pipeline, _args: &CaptionArgs) -> Result<u8> {
    bail!("`pipe caption` needs the train and caption stages, which are not wired in yet")
}

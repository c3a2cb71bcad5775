//! Built-in stage kinds, one module each. Adding a kind means adding its module and one
//! line in `registry`; a kind that runs in the libtorch worker also adds its compute
//! module to `pipe-torch/src` and one line to `pipe_torch::COMPUTE` (docs/ARCHITECTURE.md).

use std::sync::Arc;

use pipe_engine::stage::StageKind;

pub mod caption;
pub mod cmd;
pub mod features;
pub mod ingest;
pub mod report;
pub mod score;
pub mod scst;
pub mod synth;
pub mod tokenize;
pub mod train;

/// The worker binary (the `pipe-torch` crate) that runs the kinds needing libtorch:
/// features, train, scst and caption. This crate declares those kinds; `pipe` never links
/// libtorch, whose static initialisers cost ~0.3 s per start (see `engine::worker`).
pub const TORCH_WORKER: &str = "pipe-torch";

/// Every built-in kind, by `kind:` name.
pub fn registry() -> Vec<Arc<dyn StageKind>> {
    let mut kinds: Vec<Arc<dyn StageKind>> = vec![Arc::new(cmd::Cmd)];
    kinds.push(Arc::new(synth::Synth));
    kinds.push(Arc::new(ingest::Ingest));
    kinds.push(Arc::new(tokenize::Tokenize));
    kinds.push(Arc::new(features::Features));
    kinds.push(Arc::new(train::Train));
    kinds.push(Arc::new(scst::Scst));
    kinds.push(Arc::new(caption::Caption));
    kinds.push(Arc::new(score::Score));
    kinds.push(Arc::new(report::Report));
    if std::env::var_os("PIPE_TEST_KINDS").is_some() {
        kinds.push(Arc::new(cmd::TestConcat));
    }
    kinds
}

//! The libtorch half of pipe: the frozen image backbone and the caption decoder
//! ([`model`]), and the computation of the `features`, `train` and `caption` kinds, which
//! the `pipe` crate declares and runs in this crate's `pipe-torch` worker binary.

pub mod caption;
pub mod features;
pub mod model;
pub mod train;

use pipe::engine::worker::StageRun;

/// The computation behind each kind this worker serves.
pub fn stage_run(kind: &str) -> Option<StageRun> {
    match kind {
        "features" => Some(features::run),
        "train" => Some(train::run),
        "caption" => Some(caption::run),
        _ => None,
    }
}

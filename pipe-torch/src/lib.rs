//! The libtorch half of pipe: the frozen image backbone and the caption decoder
//! ([`model`]), and the compute of the kinds that `pipe` declares as running in this
//! crate's worker binary (`pipe::stages::{features, train, scst, caption}`).

pub mod caption;
pub mod features;
pub mod memory;
pub mod model;
pub mod numerics;
pub mod scst;
pub mod train;

use pipe_engine::worker::StageRun;

/// The compute of each worker kind, keyed by the kind's declared name. A test checks
/// that this list and the worker kinds of `pipe::stages::registry` are the same set.
pub const COMPUTE: &[(&str, StageRun)] = &[
    (pipe::stages::features::KIND, features::run),
    (pipe::stages::train::KIND, train::run),
    (pipe::stages::scst::KIND, scst::run),
    (pipe::stages::caption::KIND, caption::run),
];

/// The compute behind a kind this worker serves.
pub fn stage_run(kind: &str) -> Option<StageRun> {
    COMPUTE.iter().find(|(name, _)| *name == kind).map(|(_, run)| *run)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use pipe_engine::stage::Execution;

    #[test]
    fn every_declared_worker_kind_has_compute_and_nothing_else_does() {
        let declared: BTreeSet<&str> = pipe::stages::registry()
            .iter()
            .filter(|kind| kind.execution() == Execution::Worker(pipe::stages::TORCH_WORKER))
            .map(|kind| kind.name())
            .collect();
        let computed: BTreeSet<&str> = super::COMPUTE.iter().map(|(name, _)| *name).collect();
        assert_eq!(declared, computed);
    }
}

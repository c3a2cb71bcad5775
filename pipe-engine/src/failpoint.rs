//! Named crash points, for the crash campaign (`tests/crash.rs`,
//! `scripts/crash_campaign.sh`): random SIGKILLs rarely land in the narrow windows of a
//! commit, so the campaign also stops a run exactly there.
//!
//! `PIPE_FAILPOINT=NAME:N` makes a process kill itself with SIGKILL the N-th time it
//! reaches the point NAME (N defaults to 1): no destructor, no cleanup, as a kill or a
//! power loss would stop it. Worker processes inherit the variable and count their own
//! hits. Unset, as in normal use, a point costs one initialised-once lookup.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

/// The environment variable that arms a point.
pub const ENV: &str = "PIPE_FAILPOINT";

/// Every point, for the campaign to iterate over.
pub const POINTS: &[&str] = &[
    // fsutil::write_atomic_with: lock file, manifests, JSON outputs, feature-cache shards,
    // archive parts, the experiment log.
    "atomic-write:before-rename",
    "atomic-write:after-rename",
    // Store::commit: outputs hashed, manifest written; the artifact not yet in place.
    "store-commit:before-rename",
    // The runner: an artifact in the store, its lock entry and view not yet written.
    "runner:before-lock",
    // Workspace::update_view: the new symlink made, not yet renamed over the old one.
    "view:before-rename",
];

static ARMED: OnceLock<Option<(String, usize)>> = OnceLock::new();
static HITS: AtomicUsize = AtomicUsize::new(0);

/// Kills this process here if `PIPE_FAILPOINT` names this point and this is the hit it asks for.
pub fn point(name: &str) {
    let Some((armed, at)) = ARMED.get_or_init(armed_point) else { return };
    if armed == name && HITS.fetch_add(1, Ordering::SeqCst) + 1 == *at {
        eprintln!("failpoint {name} (hit {at}): killing this process");
        // SAFETY: kill(2) on our own pid takes no pointers.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
}

fn armed_point() -> Option<(String, usize)> {
    let spec = std::env::var(ENV).ok()?;
    let (name, at) = match spec.rsplit_once(':') {
        Some((name, n)) if n.chars().all(|c| c.is_ascii_digit()) && !n.is_empty() => {
            (name.to_string(), n.parse().ok()?)
        }
        _ => (spec.clone(), 1),
    };
    Some((name, at))
}

//! The one trait every stage kind implements, and the context a running stage sees.
//!
//! A kind is told its normalized params, the paths of its declared inputs and an empty
//! output directory. It writes its declared outputs there and returns. It never learns
//! where the store is, what the DAG looks like, or which other stages exist.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::reporter::Reporter;

/// One input a kind reads: its name under `deps:` and whether it must be given.
#[derive(Debug, Clone, Copy)]
pub struct InputSpec {
    pub name: &'static str,
    pub required: bool,
}

impl InputSpec {
    pub const fn required(name: &'static str) -> Self {
        Self { name, required: true }
    }
    pub const fn optional(name: &'static str) -> Self {
        Self { name, required: false }
    }
}

/// The inputs a kind accepts under `deps:`.
#[derive(Debug, Clone, Copy)]
pub enum Inputs {
    /// Exactly these names (the required ones must be given).
    Named(&'static [InputSpec]),
    /// Any names: the kind passes them on without reading them itself (a shell command).
    Any,
}

/// Where a kind's [`StageKind::run`] happens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Execution {
    /// In the `pipe` process.
    InProcess,
    /// In the named worker binary, installed beside `pipe` (see [`crate::worker`]). The
    /// runner starts it; the kind's own `run` is never called in the front end.
    Worker(&'static str),
}

/// A stage kind: given inputs and params, it writes its outputs.
pub trait StageKind: Send + Sync {
    /// The name used as `kind:` in pipeline.yaml.
    fn name(&self) -> &'static str;

    /// Implementation version, part of every fingerprint. Bump it whenever the same
    /// inputs and params would now produce different outputs.
    fn version(&self) -> u32;

    /// Validates `params` and returns them with defaults filled in. The result is what
    /// gets hashed, so spelling out a default does not change a fingerprint.
    fn normalize_params(&self, params: &Value) -> Result<Value>;

    /// The inputs this kind reads.
    fn inputs(&self) -> Inputs;

    /// Output names (files or directories inside the output directory), given normalized params.
    fn outputs(&self, params: &Value) -> Vec<String>;

    /// Keys this kind accepts on the stage itself, beside `kind`, `desc`, `params` and
    /// `deps` (DVC's `cmd:` and `outs:`). They are moved into its params before
    /// [`Self::normalize_params`], so they are validated and hashed like any param.
    fn stage_keys(&self) -> &'static [&'static str] {
        &[]
    }

    /// Where [`Self::run`] happens.
    fn execution(&self) -> Execution {
        Execution::InProcess
    }

    /// Does the work. Outputs go under `ctx.out_dir`. Worker kinds leave the default:
    /// their work is registered in the worker binary under the kind's name.
    fn run(&self, ctx: &StageContext) -> Result<()> {
        Err(anyhow!("stage {}: kind `{}` runs in a worker, not in this process", ctx.stage, self.name()))
    }

    /// A resumable kind is handed back the partial output directory of an interrupted
    /// run with the same fingerprint, instead of an empty one.
    fn resumable(&self) -> bool {
        false
    }

    /// A shardable kind (with these params), handed a [`Shard`] in its context, computes
    /// only that slice of its work into its cache (`ctx.cache_dir`) and writes no outputs;
    /// a later normal run finds the work there. The slice must not depend on what the cache
    /// already holds.
    fn shardable(&self, _params: &Value) -> bool {
        false
    }
}

/// One slice of a sharded stage: `index` of `count` (0-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl Shard {
    /// The half-open range of `len` items that this shard takes: contiguous, balanced,
    /// and the same for every process that asks.
    pub fn range(&self, len: usize) -> std::ops::Range<usize> {
        let start = len * self.index / self.count;
        let end = len * (self.index + 1) / self.count;
        start..end
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// Deserializes params into a typed struct (unknown keys are errors, with their path)
/// and serializes them back, filling defaults. Kinds call this from `normalize_params`.
pub fn normalize_typed<P: DeserializeOwned + Serialize>(params: &Value) -> Result<Value> {
    let typed: P = parse_params(params)?;
    Ok(serde_json::to_value(typed)?)
}

/// Deserializes params, naming the offending key path on error.
pub fn parse_params<P: DeserializeOwned>(params: &Value) -> Result<P> {
    let value = if params.is_null() { Value::Object(Default::default()) } else { params.clone() };
    serde_path_to_error::deserialize(value).map_err(|err| {
        let path = err.path().to_string();
        if path == "." || path.is_empty() {
            anyhow!("{}", err.inner())
        } else {
            anyhow!("{path}: {}", err.inner())
        }
    })
}

/// What a running stage sees. It crosses to a worker process as JSON (see [`crate::worker`]);
/// the reporter stays behind.
#[derive(Serialize, Deserialize)]
pub struct StageContext {
    pub stage: String,
    /// Normalized params (see [`StageKind::normalize_params`]).
    pub params: Value,
    /// Declared inputs, by name, resolved to readable paths.
    pub inputs: BTreeMap<String, PathBuf>,
    /// Where outputs go. Empty at start, unless the kind is resumable and a run was interrupted.
    pub out_dir: PathBuf,
    /// A persistent cache private to this kind (for example per-image features).
    pub cache_dir: PathBuf,
    /// The project root, for resolving user-given paths in params.
    pub workspace: PathBuf,
    /// The stages upstream of this one, in run order (for reports).
    pub lineage: Vec<LineageEntry>,
    /// Where the stage may record how this run went (timings, throughput, what came from
    /// its cache) with [`Self::record_run`]: kept beside the artifact, outside its outputs
    /// and their hashes, so that outputs stay a pure function of the fingerprint.
    pub run_record: PathBuf,
    /// The stage's fingerprint: what its cache work may be keyed by, so that shards and
    /// the merging run of one artifact find each other's work.
    #[serde(default)]
    pub fingerprint: String,
    /// Set when only one slice of the work is asked for (see [`StageKind::shardable`]).
    #[serde(default)]
    pub shard: Option<Shard>,
    #[serde(skip)]
    pub reporter: Reporter,
}

/// What the runner knows about an upstream stage: handed forward, never looked up. Only
/// what the fingerprint determines: how long a stage took, or whether it came from the
/// store, differs between runs of the same inputs and must not reach an output.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LineageEntry {
    pub stage: String,
    pub kind: String,
    pub fingerprint: String,
}

impl StageContext {
    pub fn params<P: DeserializeOwned>(&self) -> Result<P> {
        parse_params(&self.params).with_context(|| format!("stage {}: params", self.stage))
    }

    /// The path of a declared input.
    pub fn input(&self, name: &str) -> Result<&Path> {
        self.inputs
            .get(name)
            .map(PathBuf::as_path)
            .ok_or_else(|| anyhow!("stage {}: missing input `{name}`", self.stage))
    }

    pub fn optional_input(&self, name: &str) -> Option<&Path> {
        self.inputs.get(name).map(PathBuf::as_path)
    }

    pub fn output(&self, name: &str) -> PathBuf {
        self.out_dir.join(name)
    }

    /// A progress bar drawn under the runner's own lines (hidden when not a terminal).
    pub fn progress_bar(&self, len: u64, message: &str) -> ProgressBar {
        let bar = self.reporter.add(ProgressBar::new(len));
        bar.set_style(
            ProgressStyle::with_template(
                "  {prefix} {msg:<18} [{bar:30}] {pos}/{len} ({per_sec}, eta {eta})",
            )
            .expect("static template")
            .progress_chars("=> "),
        );
        bar.set_prefix(self.stage.clone());
        bar.set_message(message.to_string());
        bar
    }

    /// Writes this run's record (see [`Self::run_record`]): figures that differ between
    /// runs of the same inputs. `pipe show STAGE` prints it.
    pub fn record_run(&self, figures: &impl Serialize) -> Result<()> {
        crate::fsutil::write_json_atomic(&self.run_record, figures)
            .with_context(|| format!("stage {}: writing its run record", self.stage))
    }

    /// Prints a line without tearing progress bars.
    pub fn log(&self, line: impl AsRef<str>) {
        self.reporter.println(&format!("  {}: {}", self.stage, line.as_ref()));
    }
}

//! The one trait every stage kind implements, and the context a running stage sees.
//!
//! A kind is told its normalized params, the paths of its declared inputs and an empty
//! output directory. It writes its declared outputs there and returns. It never learns
//! where the store is, what the DAG looks like, or which other stages exist.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use std::sync::{Arc, Mutex};

use anyhow::{anyhow, Context, Result};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

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

    /// The inputs this kind reads. `None` means any names are accepted (the `cmd` kind).
    fn inputs(&self) -> Option<&'static [InputSpec]>;

    /// Output names (files or directories inside the output directory), given normalized params.
    fn outputs(&self, params: &Value) -> Vec<String>;

    /// Does the work. Outputs go under `ctx.out_dir`.
    fn run(&self, ctx: &StageContext) -> Result<()>;

    /// A resumable kind is handed back the partial output directory of an interrupted
    /// run with the same fingerprint, instead of an empty one.
    fn resumable(&self) -> bool {
        false
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

/// What a running stage sees. It crosses to a worker process as JSON (see `engine::worker`);
/// the progress sink stays behind.
#[derive(Serialize, serde::Deserialize)]
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
    /// The stages upstream of this one, in run order (for reports; not hashed).
    pub lineage: Vec<LineageEntry>,
    #[serde(skip)]
    pub progress: Progress,
}

/// Where a stage's progress bars and log lines go: the terminal, nowhere (not a
/// terminal, or a test), or the parent process of a worker (see `engine::worker`).
#[derive(Clone)]
pub struct Progress {
    multi: MultiProgress,
    /// Every bar handed out, so a worker can forward their state.
    bars: Arc<Mutex<Vec<ProgressBar>>>,
    forward_logs: Option<LogSink>,
}

/// Where a worker's log lines go instead of stderr.
pub type LogSink = Arc<dyn Fn(&str) + Send + Sync>;

impl Default for Progress {
    fn default() -> Self {
        Self::hidden()
    }
}

impl Progress {
    /// Bars on stderr when it is a terminal; log lines on stderr otherwise.
    pub fn stderr() -> Self {
        let multi = MultiProgress::new();
        if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            multi.set_draw_target(ProgressDrawTarget::hidden());
        }
        Self { multi, bars: Default::default(), forward_logs: None }
    }

    /// No bars; log lines still go to stderr.
    pub fn hidden() -> Self {
        Self {
            multi: MultiProgress::with_draw_target(ProgressDrawTarget::hidden()),
            bars: Default::default(),
            forward_logs: None,
        }
    }

    /// No bars drawn here; log lines go to `forward`, and bars are read back with [`Self::bars`].
    pub fn forwarding(forward: LogSink) -> Self {
        Self { forward_logs: Some(forward), ..Self::hidden() }
    }

    pub fn add(&self, bar: ProgressBar) -> ProgressBar {
        let bar = self.multi.add(bar);
        self.bars.lock().expect("progress bars lock").push(bar.clone());
        bar
    }

    /// The bars handed out so far, oldest first.
    pub fn bars(&self) -> Vec<ProgressBar> {
        self.bars.lock().expect("progress bars lock").clone()
    }

    /// Prints a line above the bars without tearing them.
    pub fn println(&self, line: &str) {
        if let Some(forward) = &self.forward_logs {
            forward(line);
        } else if self.multi.is_hidden() {
            eprintln!("{line}");
        } else {
            let _ = self.multi.println(line);
        }
    }
}

/// What the runner knows about an upstream stage: handed forward, never looked up.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct LineageEntry {
    pub stage: String,
    pub kind: String,
    pub fingerprint: String,
    pub seconds: f64,
    pub cached: bool,
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
        let bar = self.progress.add(ProgressBar::new(len));
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

    /// Prints a line without tearing progress bars.
    pub fn log(&self, line: impl AsRef<str>) {
        self.progress.println(&format!("  {}: {}", self.stage, line.as_ref()));
    }
}

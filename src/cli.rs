//! The `pipe` command line: argument parsing, then thin calls into the engine.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};

use pipe_engine::lockfile::LockFile;
use pipe_engine::query::Results;
use pipe_engine::reporter::Reporter;
use pipe_engine::runner::{RunOptions, Runner, StageFailed, StageState};
use pipe_engine::slurm::{PipeCommand, SlurmOptions};
use pipe_engine::spec::{self, KindRegistry, Override, Pipeline, SpecError};
use pipe_engine::stage::Shard;
use pipe_engine::store::{disk_usage, Store};
use pipe_engine::workspace::{LockMode, Workspace, WorkspaceBusy};

/// Exit codes, distinct per failure class.
pub mod exit {
    pub const OK: u8 = 0;
    pub const ERROR: u8 = 1;
    /// Bad command line or invalid pipeline file (clap also uses 2).
    pub const INVALID: u8 = 2;
    pub const STAGE_FAILED: u8 = 3;
    pub const BUSY: u8 = 4;
    pub const DAMAGED: u8 = 5;
}

#[derive(Parser)]
#[command(
    name = "pipe",
    version,
    about = "Reproducible image-captioning pipelines: content-hashed stages from YAML to BLEU",
    after_help = "Exit codes: 0 ok, 1 error, 2 invalid usage or pipeline, 3 a stage failed, \
                  4 workspace busy (--no-wait), 5 damaged artifacts found by verify."
)]
pub struct Cli {
    /// Project root (default: the current directory).
    #[arg(short = 'C', long, global = true, value_name = "DIR")]
    root: Option<PathBuf>,
    /// Pipeline file, relative to the root.
    #[arg(short = 'f', long = "file", global = true, default_value = "pipeline.yaml", value_name = "FILE")]
    file: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the named stages and what they depend on (default: all); fresh stages are skipped.
    Run(RunArgs),
    /// List stale stages and why they are stale.
    Status(StatusArgs),
    /// Print the stage graph.
    Dag {
        /// Graphviz output.
        #[arg(long)]
        dot: bool,
    },
    /// Remove store artifacts that no lock file and no recorded experiment references.
    Gc {
        /// Only list what would be removed.
        #[arg(long)]
        dry_run: bool,
        /// Keep only what lock files reference: recorded experiments lose their artifacts.
        #[arg(long)]
        ignore_experiments: bool,
    },
    /// Recorded experiments: every completed `pipe run` (and each point of a sweep).
    #[command(subcommand)]
    Exp(ExpCommand),
    /// Rehash every artifact in the store and report damaged ones.
    Verify {
        /// Delete damaged artifacts, so that `pipe run` recomputes them.
        #[arg(long)]
        remove: bool,
    },
    /// Show metrics (outputs named metrics.json) of the current run, or compare with a git revision.
    Metrics {
        /// Compare with the lock file at this git revision (e.g. HEAD~1).
        #[arg(long, value_name = "REV")]
        diff: Option<String>,
    },
    /// What each stage's current artifact is and how its run went: fingerprint, seconds,
    /// output hashes, and the figures the stage recorded (images/s, epoch times...).
    Show {
        /// Stages to show. Default: all that have run.
        stages: Vec<String>,
        /// One JSON object, stage → record.
        #[arg(long)]
        json: bool,
    },
    /// Upload the current artifacts of the stages (default: all) to the remote store
    /// (`$PIPE_REMOTE` or `remote:` in .pipe/config.yaml: s3://bucket/prefix or file:///path).
    Push { stages: Vec<String> },
    /// Download the current artifacts of the stages (default: all) from the remote store,
    /// checking every file against its hash, and point data/out at them.
    Pull { stages: Vec<String> },
    /// Write a sharded stage as Kubernetes Jobs (an Indexed Job of shards, then a merge),
    /// with the store on S3.
    #[command(subcommand)]
    Export(ExportCommand),
    /// Compute one shard of a shardable stage (`features`, archive-mode `caption`) into its
    /// kind's cache: what a cluster's array task runs. The stage's normal run, after all
    /// shards, finds the work cached and writes the same bytes as a run on one machine.
    Shard(ShardArgs),
    /// Print the content hash of files or directories, as the engine computes it (no stat cache).
    Hash {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Caption a few images as the pipeline's `caption` stage would (its model and settings).
    Caption(crate::cli_caption::CaptionArgs),
    /// A local web app and HTTP API over the trained models: caption your own photos,
    /// browse a scored gallery, compare experiments (see the README for the API).
    Serve(crate::serve::ServeArgs),
}

#[derive(Subcommand)]
enum ExpCommand {
    /// Every experiment of this pipeline file: its params (the -S and --sweep values),
    /// metrics, time and whether its artifacts are still in the store.
    Show {
        /// Output format.
        #[arg(long, value_enum, default_value = "table")]
        format: crate::cli_exp::ShowFormat,
        /// Shorthand for --format csv.
        #[arg(long, conflicts_with = "format")]
        csv: bool,
        /// Shorthand for --format json.
        #[arg(long, conflicts_with_all = ["format", "csv"])]
        json: bool,
    },
    /// Make an experiment the current run: rerun the pipeline with its params (cache hits
    /// while its artifacts are in the store), so the lock file and data/out show it.
    Apply {
        name: String,
        /// Independent stages to run at once.
        #[arg(long, short = 'j', default_value_t = 1)]
        jobs: usize,
    },
}

#[derive(Args)]
struct RunArgs {
    /// Stages to run (with their upstream stages). Default: all.
    stages: Vec<String>,
    /// Override a param: STAGE.KEY=VALUE or params.KEY=VALUE (repeatable).
    #[arg(short = 'S', long = "set", value_name = "KEY=VALUE")]
    set: Vec<Override>,
    /// Rerun the selected stages even if fresh.
    #[arg(long)]
    force: bool,
    /// Show what would run, and why, without running it.
    #[arg(long, short = 'n')]
    dry_run: bool,
    /// Independent stages to run at once.
    #[arg(long, short = 'j', default_value_t = 1)]
    jobs: usize,
    /// Fail at once if another pipe holds the workspace, instead of waiting.
    #[arg(long)]
    no_wait: bool,
    /// Run a grid of settings: KEY=V1,V2,… (repeatable; every combination runs, one after
    /// another, each recorded as an experiment; the workspace ends at the last one).
    #[arg(long, value_name = "KEY=V1,V2")]
    sweep: Vec<String>,
    /// Name the recorded experiment (sweep points get NAME-1, NAME-2, …). Default: a
    /// name derived from the stages' fingerprints.
    #[arg(long)]
    name: Option<String>,
    /// Where stale stages run: here, or as Slurm jobs (`sbatch`, chained with
    /// afterok dependencies, all submitted at once; a sharded stage as a job array).
    #[arg(long, value_enum, default_value = "local")]
    executor: Executor,
    /// Slurm partition for every job (--executor slurm).
    #[arg(long, value_name = "P")]
    partition: Option<String>,
    /// An extra `sbatch` argument for every job, such as --slurm-arg=--time=2:00:00 (repeatable).
    #[arg(long = "slurm-arg", value_name = "ARG", allow_hyphen_values = true)]
    slurm_args: Vec<String>,
    /// Split every shardable stage (features, archive-mode caption) into N array tasks,
    /// instead of its `shards:`.
    #[arg(long, value_name = "N")]
    shards: Option<usize>,
    /// Submit the jobs and return; `pipe status` shows them.
    #[arg(long)]
    detach: bool,
    /// Fetch a stale stage from the remote store when it holds its fingerprint, instead of
    /// computing it.
    #[arg(long)]
    pull: bool,
    /// Upload every artifact this run computes to the remote store.
    #[arg(long)]
    push: bool,
    /// Record no experiment (each Slurm job runs one stage; the submitting run records).
    #[arg(long, hide = true)]
    no_record: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Executor {
    Local,
    Slurm,
}

#[derive(Subcommand)]
enum ExportCommand {
    /// An Indexed Job of `pipe shard` pods and the merge Job, as YAML for `kubectl apply`.
    K8s(K8sArgs),
}

#[derive(Args)]
struct K8sArgs {
    /// The stage to shard (features, or caption in archive mode).
    stage: String,
    /// Pods, one slice each.
    #[arg(long = "shards", value_name = "N")]
    shards: usize,
    /// The container image holding `pipe` and this project.
    #[arg(long)]
    image: String,
    /// The project root inside the image.
    #[arg(long, default_value = "/workspace")]
    workdir: String,
    /// The remote store the pods share (default: this workspace's, from $PIPE_REMOTE or
    /// .pipe/config.yaml).
    #[arg(long, value_name = "s3://BUCKET/PREFIX")]
    remote: Option<String>,
    /// The Secret holding the AWS variables, passed to the pods as environment.
    #[arg(long, default_value = "pipe-aws")]
    aws_secret: String,
    /// Override a param, as for `run` (passed to the pods).
    #[arg(short = 'S', long = "set", value_name = "KEY=VALUE")]
    set: Vec<Override>,
    /// Write to FILE instead of standard output.
    #[arg(short = 'o', long, value_name = "FILE")]
    output: Option<PathBuf>,
}

#[derive(Args)]
struct ShardArgs {
    /// The stage to shard.
    stage: String,
    /// This shard's index, 0-based. Default: $SLURM_ARRAY_TASK_ID or $JOB_COMPLETION_INDEX
    /// (a Kubernetes Indexed Job).
    #[arg(long)]
    index: Option<usize>,
    /// How many shards the stage is split into.
    #[arg(long = "of", value_name = "N")]
    count: usize,
    /// Override a param, as for `run`.
    #[arg(short = 'S', long = "set", value_name = "KEY=VALUE")]
    set: Vec<Override>,
    /// Fail at once, instead of waiting, if another pipe computes a stage this one needs.
    #[arg(long)]
    no_wait: bool,
    /// Fetch the stages it needs, and the kind's cache, from the remote store.
    #[arg(long)]
    pull: bool,
    /// Upload the shard's cache work to the remote store (for a merge on another machine).
    #[arg(long)]
    push: bool,
}

#[derive(Args)]
struct StatusArgs {
    /// Stages to check (with their upstream stages). Default: all.
    stages: Vec<String>,
    /// Override a param, as for `run`.
    #[arg(short = 'S', long = "set", value_name = "KEY=VALUE")]
    set: Vec<Override>,
}

/// Parses arguments, runs the command, and maps errors to exit codes.
pub fn main(registry: KindRegistry) -> ExitCode {
    let cli = Cli::parse();
    match dispatch(cli, &registry) {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(exit_code(&err))
        }
    }
}

fn exit_code(err: &anyhow::Error) -> u8 {
    if err.downcast_ref::<StageFailed>().is_some() {
        exit::STAGE_FAILED
    } else if err.downcast_ref::<WorkspaceBusy>().is_some() {
        exit::BUSY
    } else if err.downcast_ref::<SpecError>().is_some() {
        exit::INVALID
    } else {
        exit::ERROR
    }
}

fn dispatch(cli: Cli, registry: &KindRegistry) -> Result<u8> {
    let root = match &cli.root {
        Some(root) => root.clone(),
        None => std::env::current_dir()?,
    };
    let root = root.canonicalize().with_context(|| format!("project root {}", root.display()))?;
    let workspace = Workspace::new(root, cli.file.clone());
    let reporter = Reporter::stderr();
    let load = |overrides: &[Override]| -> Result<Pipeline> {
        Ok(spec::load(&workspace.root, &workspace.pipeline_file, registry, overrides)?)
    };
    match cli.command {
        Command::Run(args) => {
            let _lock = if args.dry_run {
                None
            } else {
                Some(workspace.lock(LockMode::Shared, !args.no_wait, &reporter)?)
            };
            let options = RunOptions {
                targets: args.stages.clone(),
                force: args.force,
                dry_run: args.dry_run,
                jobs: args.jobs,
                no_wait: args.no_wait,
                pull: args.pull,
                push: args.push,
            };
            if args.executor == Executor::Slurm {
                return run_on_slurm(&workspace, &load, &args, &options, &reporter);
            }
            if args.partition.is_some() || !args.slurm_args.is_empty() || args.shards.is_some() || args.detach
            {
                bail!("--partition, --slurm-arg, --shards and --detach go with --executor slurm");
            }
            if args.no_record {
                crate::cli_exp::runner(&workspace, &load(&args.set)?, &options, &reporter)?.run(&options)?;
            } else if args.sweep.is_empty() {
                crate::cli_exp::run_and_record(
                    &workspace,
                    &load,
                    &args.set,
                    &options,
                    args.name.as_deref(),
                    &reporter,
                )?;
            } else {
                crate::cli_exp::sweep(
                    &workspace,
                    &load,
                    &args.set,
                    &args.sweep,
                    &options,
                    args.name.as_deref(),
                    &reporter,
                )?;
            }
            Ok(exit::OK)
        }
        Command::Status(args) => {
            let pipeline = load(&args.set)?;
            status(&workspace, &pipeline, &args.stages, reporter)
        }
        Command::Dag { dot } => {
            let pipeline = load(&[])?;
            print_dag(&pipeline, dot)
        }
        Command::Push { stages } => {
            let _lock = workspace.lock(LockMode::Shared, true, &reporter)?;
            crate::cli_remote::push(&workspace, &load(&[])?, &stages, reporter)?;
            Ok(exit::OK)
        }
        Command::Pull { stages } => {
            let _lock = workspace.lock(LockMode::Shared, true, &reporter)?;
            crate::cli_remote::pull(&workspace, &load(&[])?, &stages, reporter)?;
            Ok(exit::OK)
        }
        Command::Export(ExportCommand::K8s(args)) => {
            let pipeline = load(&args.set)?;
            let remote = match args.remote {
                Some(remote) => remote,
                None => pipe_engine::remote::Remote::required(&workspace)?.url().to_string(),
            };
            let export = pipe_engine::kubernetes::K8sExport {
                stage: args.stage,
                shards: args.shards,
                image: args.image,
                workdir: args.workdir,
                remote,
                aws_secret: args.aws_secret,
                pipeline_file: workspace.pipeline_file.to_string_lossy().into_owned(),
                overrides: args.set.iter().map(ToString::to_string).collect(),
            };
            let yaml = pipe_engine::kubernetes::export(&pipeline, &export)?;
            match args.output {
                Some(path) => pipe_engine::fsutil::write_atomic(&path, yaml.as_bytes())?,
                None => print!("{yaml}"),
            }
            Ok(exit::OK)
        }
        Command::Shard(args) => {
            let _lock = workspace.lock(LockMode::Shared, !args.no_wait, &reporter)?;
            let index = match args.index {
                Some(index) => index,
                None => shard_index_from_env()?,
            };
            let pipeline = load(&args.set)?;
            let options = RunOptions {
                no_wait: args.no_wait,
                pull: args.pull,
                push: args.push,
                ..RunOptions::default()
            };
            crate::cli_exp::runner(&workspace, &pipeline, &options, &reporter)?.run_shard(
                &args.stage,
                Shard { index, count: args.count },
                &options,
            )?;
            Ok(exit::OK)
        }
        Command::Gc { dry_run, ignore_experiments } => {
            let _lock = workspace.lock(LockMode::Exclusive, true, &reporter)?;
            gc(&workspace, dry_run, ignore_experiments, reporter)
        }
        Command::Exp(ExpCommand::Show { format, csv, json }) => {
            use crate::cli_exp::ShowFormat;
            let format = if csv {
                ShowFormat::Csv
            } else if json {
                ShowFormat::Json
            } else {
                format
            };
            crate::cli_exp::show(&workspace, format, &reporter)
        }
        Command::Exp(ExpCommand::Apply { name, jobs }) => {
            let _lock = workspace.lock(LockMode::Shared, true, &reporter)?;
            crate::cli_exp::apply(&workspace, &load, &name, jobs, &reporter)
        }
        Command::Verify { remove } => {
            // Rehashing alone can share the workspace with runs; deleting cannot.
            let mode = if remove { LockMode::Exclusive } else { LockMode::Shared };
            let _lock = workspace.lock(mode, true, &reporter)?;
            verify(&workspace, remove, reporter)
        }
        Command::Show { stages, json } => {
            let pipeline = load(&[])?;
            show(&workspace, &pipeline, &stages, json, reporter)
        }
        Command::Hash { paths } => hash(&paths),
        Command::Metrics { diff } => crate::cli_metrics::show(&workspace, diff.as_deref(), reporter),
        Command::Serve(args) => {
            let pipeline = load(&[])?;
            crate::serve::run(&workspace, &pipeline, &load, &args)
        }
        Command::Caption(args) => {
            let pipeline = load(&[])?;
            let results = Results::open(&workspace, &pipeline, reporter)?;
            crate::cli_caption::run(&results, &pipeline, &args)
        }
    }
}

/// `pipe run --executor slurm`: submits the stale stages, follows the jobs, then records
/// the run as a local run would (every stage is then a cache hit).
fn run_on_slurm(
    workspace: &Workspace,
    load: &crate::cli_exp::LoadPipeline,
    args: &RunArgs,
    options: &RunOptions,
    reporter: &Reporter,
) -> Result<u8> {
    if !args.sweep.is_empty() || args.dry_run || args.force || args.jobs != 1 {
        bail!("--executor slurm takes no --sweep, --dry-run, --force or --jobs (Slurm runs independent stages at once)");
    }
    if args.shards == Some(0) {
        bail!("--shards must be at least 1");
    }
    let pipeline = load(&args.set)?;
    let command = PipeCommand {
        program: std::env::current_exe().context("finding the pipe executable")?,
        global_args: vec![
            "-C".into(),
            workspace.root.to_string_lossy().into_owned(),
            "-f".into(),
            workspace.pipeline_file.to_string_lossy().into_owned(),
        ],
        overrides: args.set.iter().map(ToString::to_string).collect(),
    };
    let slurm = SlurmOptions {
        partition: args.partition.clone(),
        sbatch_args: args.slurm_args.clone(),
        shards: args.shards,
        detach: args.detach,
    };
    let submission = pipe_engine::slurm::run(workspace, &pipeline, &args.stages, &command, &slurm, reporter)?;
    if let (Some(submission), true) = (&submission, args.detach) {
        eprintln!(
            "{} jobs submitted (records in {}); `pipe status` shows them",
            submission.jobs.len(),
            display_relative(&submission.dir, &workspace.root)
        );
        return Ok(exit::OK);
    }
    crate::cli_exp::run_and_record(workspace, load, &args.set, options, args.name.as_deref(), reporter)?;
    Ok(exit::OK)
}

/// A shard's index from the cluster's environment.
fn shard_index_from_env() -> Result<usize> {
    for var in ["SLURM_ARRAY_TASK_ID", "JOB_COMPLETION_INDEX"] {
        if let Ok(value) = std::env::var(var) {
            return value.trim().parse().with_context(|| format!("${var} is `{value}`, not a shard index"));
        }
    }
    bail!("no --index given, and neither $SLURM_ARRAY_TASK_ID nor $JOB_COMPLETION_INDEX is set")
}

fn show(
    workspace: &Workspace,
    pipeline: &Pipeline,
    stages: &[String],
    json: bool,
    reporter: Reporter,
) -> Result<u8> {
    let lock = LockFile::load(&workspace.lock_file_path())?;
    let store = Store::new(workspace.store_dir(), reporter);
    let mut shown = serde_json::Map::new();
    for name in pipeline.dag.select(stages)? {
        let Some(locked) = lock.stages.get(&name) else {
            if stages.contains(&name) {
                bail!(
                    "stage `{name}` has not run yet (no entry in {})",
                    workspace.lock_file_path().display()
                );
            }
            continue;
        };
        let run = store.run_record(&locked.fingerprint).unwrap_or(serde_json::Value::Null);
        if json {
            let record = serde_json::json!({
                "fingerprint": locked.fingerprint,
                "seconds": locked.seconds,
                "in_store": store.manifest(&locked.fingerprint).is_some(),
                "outputs": locked.outs,
                "run": run,
            });
            shown.insert(name, record);
            continue;
        }
        println!("{name}  {}  {:.1} s", &locked.fingerprint[..12], locked.seconds);
        for (output, hash) in &locked.outs {
            println!("  {output}  {}", &hash[..hash.len().min(12)]);
        }
        if let serde_json::Value::Object(figures) = &run {
            for (key, value) in figures {
                println!("  run.{key}: {}", compact_figure(value));
            }
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&shown)?);
    }
    Ok(exit::OK)
}

/// A run-record value on one line: floats to 4 significant places, lists of records cut short.
fn compact_figure(value: &serde_json::Value) -> String {
    use serde_json::Value;
    match value {
        Value::Number(n) if n.is_f64() => format!("{:.4}", n.as_f64().unwrap_or(f64::NAN)),
        Value::Array(items) if items.len() > 4 => {
            let head: Vec<String> = items[..3].iter().map(compact_figure).collect();
            format!("[{}, … {} in all]", head.join(", "), items.len())
        }
        Value::Array(items) => {
            format!("[{}]", items.iter().map(compact_figure).collect::<Vec<_>>().join(", "))
        }
        Value::Object(map) => {
            let fields: Vec<String> =
                map.iter().map(|(k, v)| format!("{k}: {}", compact_figure(v))).collect();
            format!("{{{}}}", fields.join(", "))
        }
        other => other.to_string(),
    }
}

fn hash(paths: &[PathBuf]) -> Result<u8> {
    for path in paths {
        let started = std::time::Instant::now();
        let digest = pipe_engine::hashing::hash_uncached(path)?;
        let seconds = started.elapsed().as_secs_f64();
        let bytes = disk_usage(path);
        println!(
            "{digest}  {}  ({:.1} MB in {seconds:.3}s, {:.2} GB/s)",
            path.display(),
            bytes as f64 / 1e6,
            bytes as f64 / 1e9 / seconds.max(1e-9)
        );
    }
    Ok(exit::OK)
}

pub(crate) fn display_relative(path: &Path, root: &Path) -> String {
    path.strip_prefix(root).unwrap_or(path).display().to_string()
}

fn status(workspace: &Workspace, pipeline: &Pipeline, targets: &[String], reporter: Reporter) -> Result<u8> {
    let states = Runner::new(workspace, pipeline, reporter)?.status(targets)?;
    let mut stale = 0;
    for (name, state) in states {
        match state {
            StageState::Fresh { restored_from_cache: false, .. } => println!("{name}: up to date"),
            StageState::Fresh { restored_from_cache: true, .. } => {
                println!("{name}: up to date (in the run-cache; `pipe run` restores it)")
            }
            StageState::Stale { reasons } => {
                stale += 1;
                let why: Vec<String> = reasons.iter().map(ToString::to_string).collect();
                println!("{name}: {}", why.join("; "));
            }
        }
    }
    if stale == 0 {
        println!("Everything is up to date.");
    }
    if let Some(jobs) = pipe_engine::slurm::describe_latest(workspace) {
        println!("Slurm jobs of the last `pipe run --executor slurm`:");
        for line in jobs {
            println!("  {line}");
        }
    }
    Ok(exit::OK)
}

fn print_dag(pipeline: &Pipeline, dot: bool) -> Result<u8> {
    let dag = &pipeline.dag;
    if dot {
        print!("{}", dag.to_dot());
        return Ok(exit::OK);
    }
    for name in &dag.order {
        let stage = pipeline.stage(name).expect("dag names pipeline stages");
        let deps: Vec<String> = stage.deps.iter().map(|dep| format!("{}={}", dep.name, dep.source)).collect();
        if deps.is_empty() {
            println!("{name} ({})", stage.kind.name());
        } else {
            println!("{name} ({}) <- {}", stage.kind.name(), deps.join(", "));
        }
    }
    Ok(exit::OK)
}

fn gc(workspace: &Workspace, dry_run: bool, ignore_experiments: bool, reporter: Reporter) -> Result<u8> {
    let store = Store::new(workspace.store_dir(), reporter);
    let mut referenced = referenced_fingerprints(workspace)?;
    if !ignore_experiments {
        referenced.extend(crate::cli_exp::referenced(workspace)?);
    }
    let mut freed = 0;
    let mut removed = 0;
    for fingerprint in store.list()? {
        if referenced.contains(&fingerprint) {
            continue;
        }
        freed += disk_usage(&store.artifact_dir(&fingerprint));
        removed += 1;
        if dry_run {
            println!("would remove {fingerprint}");
        } else {
            store.remove(&fingerprint)?;
        }
    }
    let interrupted = if dry_run { 0 } else { store.clear_tmp()? };
    let forgotten = if dry_run {
        0
    } else {
        pipe_engine::hashing::StatCache::load(&workspace.stat_cache_path()).prune(&workspace.root)?
    };
    let verb = if dry_run { "would free" } else { "freed" };
    println!(
        "{removed} unreferenced artifacts, {verb} {:.1} MB; {interrupted} interrupted writes removed; \
         {forgotten} stat cache entries of files that are gone",
        freed as f64 / 1e6
    );
    Ok(exit::OK)
}

/// Fingerprints named by any lock file in the project root or `pipelines/`.
fn referenced_fingerprints(workspace: &Workspace) -> Result<std::collections::HashSet<String>> {
    let mut lock_files = vec![workspace.root.join("pipe.lock"), workspace.lock_file_path()];
    for dir in [workspace.root.clone(), workspace.root.join("pipelines")] {
        if let Ok(entries) = std::fs::read_dir(&dir) {
            lock_files.extend(
                entries
                    .filter_map(Result::ok)
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|ext| ext == "lock")),
            );
        }
    }
    let mut referenced = std::collections::HashSet::new();
    for path in lock_files {
        let lock = LockFile::load(&path)?;
        referenced.extend(lock.stages.into_values().map(|stage| stage.fingerprint));
    }
    Ok(referenced)
}

fn verify(workspace: &Workspace, remove: bool, reporter: Reporter) -> Result<u8> {
    let store = Store::new(workspace.store_dir(), reporter);
    let fingerprints = store.list()?;
    let mut damaged = 0;
    for fingerprint in &fingerprints {
        let problems = store.verify(fingerprint);
        if !problems.is_empty() {
            damaged += 1;
            println!("DAMAGED {fingerprint}: {}", problems.join("; "));
            if remove {
                store.remove(fingerprint)?;
            }
        }
    }
    println!("{} artifacts checked, {damaged} damaged", fingerprints.len());
    if damaged > 0 && remove {
        println!("Removed them; `pipe run` recomputes them.");
    } else if damaged > 0 {
        println!("Run `pipe verify --remove` to delete them; `pipe run` then recomputes them.");
        return Ok(exit::DAMAGED);
    }
    Ok(exit::OK)
}

//! Decides which stages are fresh, runs the stale ones, and records the results.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::fingerprint::{DirtyReason, Fingerprint};
use crate::hashing::{hash_uncached, StatCache};
use crate::lockfile::{LockFile, LockedStage};
use crate::remote::Remote;
use crate::reporter::Reporter;
use crate::spec::{DepSource, Pipeline, StageSpec};
use crate::stage::{Execution, LineageEntry, Shard, StageContext};
use crate::store::{Committed, Manifest, Store};
use crate::worker::run_in_worker;
use crate::workspace::{RunLock, Workspace, WorkspaceBusy};

/// What `pipe status` reports for one stage.
#[derive(Debug)]
pub enum StageState {
    Fresh { fingerprint: String, restored_from_cache: bool },
    Stale { reasons: Vec<DirtyReason> },
}

/// How one stage of a run ended.
#[derive(Debug, Clone)]
pub struct StageOutcome {
    pub stage: String,
    pub fingerprint: String,
    pub ran: bool,
    pub seconds: f64,
}

#[derive(Debug, Default, Clone)]
pub struct RunOptions {
    pub targets: Vec<String>,
    pub force: bool,
    pub dry_run: bool,
    pub jobs: usize,
    /// Fail at once, rather than wait, when another run is computing a stage this one needs.
    pub no_wait: bool,
    /// Fetch a stale stage's artifact from the remote store when it holds it, instead of
    /// computing it (see [`Runner::with_remote`]), and the kind's cache before computing one.
    pub pull: bool,
    /// Upload each artifact this run computes to the remote store (and a shard's cache work).
    pub push: bool,
}

/// A completed (run or cached) upstream stage.
#[derive(Clone)]
struct Done {
    manifest: Manifest,
    output_dir: PathBuf,
}

/// A stage's inputs, once every upstream stage is done.
struct ResolvedInputs {
    fingerprint: Fingerprint,
    paths: BTreeMap<String, PathBuf>,
    labels: BTreeMap<String, String>,
}

pub struct Runner<'a> {
    workspace: &'a Workspace,
    pipeline: &'a Pipeline,
    store: Store,
    stat_cache: StatCache,
    lock: LockFile,
    reporter: Reporter,
    remote: Option<Remote>,
}

/// The bookkeeping of one `run`: what is done, what waits, what runs, what failed.
struct RunState {
    selected: Vec<String>,
    pending: Vec<String>,
    running: HashSet<String>,
    done: HashMap<String, Done>,
    outcomes: Vec<StageOutcome>,
    failure: Option<anyhow::Error>,
    /// Ready stages whose artifact another process is computing; retried as the run goes.
    busy: Vec<String>,
    /// Stages whose wait was announced.
    announced: HashSet<String>,
}

impl RunState {
    fn new(selected: Vec<String>) -> Self {
        Self {
            pending: selected.clone(),
            selected,
            busy: Vec::new(),
            announced: HashSet::new(),
            running: HashSet::new(),
            done: HashMap::new(),
            outcomes: Vec::new(),
            failure: None,
        }
    }
}

/// What a stage thread sends back when it ends.
type Finished = (String, ResolvedInputs, Result<Committed>);

/// How often a run retries stages whose artifact another process is computing.
const BUSY_RETRY: Duration = Duration::from_millis(200);

/// What [`Runner::start_or_reuse`] did with a ready stage.
enum Start<'a> {
    /// It is stale: this job computes it.
    Job(Box<Job<'a>>),
    /// It was complete in the store (or the remote).
    Reused,
    /// Another process holds its artifact's lock: try again later.
    Busy,
}

/// A stale stage, ready to run on its own thread.
struct Job<'a> {
    stage: &'a StageSpec,
    resolved: ResolvedInputs,
    fingerprint: String,
    context: StageContext,
    store: Store,
    /// This artifact's lock, held until it is committed.
    _entry_lock: RunLock,
}

impl Job<'_> {
    fn run(self) -> Finished {
        let result = execute(self.stage, &self.store, &self.fingerprint, self.context);
        (self.stage.name.clone(), self.resolved, result)
    }
}

impl<'a> Runner<'a> {
    pub fn new(workspace: &'a Workspace, pipeline: &'a Pipeline, reporter: Reporter) -> Result<Self> {
        Ok(Self {
            workspace,
            pipeline,
            store: Store::new(workspace.store_dir(), reporter.clone()),
            stat_cache: StatCache::load(&workspace.stat_cache_path()),
            lock: LockFile::load(&workspace.lock_file_path())?,
            reporter,
            remote: None,
        })
    }

    /// The remote store that `RunOptions::pull` fetches from.
    pub fn with_remote(mut self, remote: Remote) -> Self {
        self.remote = Some(remote);
        self
    }

    fn stage(&self, name: &str) -> &'a StageSpec {
        self.pipeline.stage(name).expect("the DAG only names stages of the pipeline")
    }

    /// Resolves a stage's inputs; `None` when an upstream stage is not done.
    fn resolve(&self, stage: &StageSpec, done: &HashMap<String, Done>) -> Result<Option<ResolvedInputs>> {
        let mut inputs = BTreeMap::new();
        let mut paths = BTreeMap::new();
        let mut labels = BTreeMap::new();
        for dep in &stage.deps {
            let (hash, path) = match &dep.source {
                DepSource::Workspace(rel) => {
                    let hash = self.stat_cache.hash_path(&self.workspace.root, rel)?;
                    (hash, self.workspace.root.join(rel))
                }
                DepSource::Stage { stage: upstream, path } => {
                    let Some(up) = done.get(upstream) else { return Ok(None) };
                    match path {
                        None => (up.manifest.tree_hash.clone(), up.output_dir.clone()),
                        Some(inner) => {
                            let full = up.output_dir.join(inner);
                            let hash = match up.manifest.outputs.get(&inner.to_string_lossy().into_owned()) {
                                Some(hash) => hash.clone(),
                                None => hash_uncached(&full)
                                    .with_context(|| format!("stage {}: dep {}", stage.name, dep.source))?,
                            };
                            (hash, full)
                        }
                    }
                }
            };
            inputs.insert(dep.name.clone(), hash);
            paths.insert(dep.name.clone(), path);
            labels.insert(dep.name.clone(), dep.source.to_string());
        }
        let fingerprint = Fingerprint {
            kind: stage.kind.name().to_string(),
            kind_version: stage.kind.version(),
            params: stage.params.clone(),
            inputs,
        };
        Ok(Some(ResolvedInputs { fingerprint, paths, labels }))
    }

    /// Why a stage with these (possibly unknown) inputs is stale, judged against the lock file.
    fn reasons(
        &self,
        stage: &StageSpec,
        resolved: Option<&ResolvedInputs>,
        stale_upstream: &[String],
    ) -> Vec<DirtyReason> {
        let Some(locked) = self.lock.stages.get(&stage.name) else {
            return vec![DirtyReason::NeverRun];
        };
        let mut reasons: Vec<DirtyReason> =
            stale_upstream.iter().map(|up| DirtyReason::UpstreamStale { stage: up.clone() }).collect();
        match resolved {
            Some(resolved) => {
                reasons.extend(resolved.fingerprint.diff(&locked.inputs, &resolved.labels));
                if reasons.is_empty() {
                    reasons.push(DirtyReason::ArtifactMissing);
                }
            }
            None => {
                // Inputs are unknown until upstream runs; params and kind can still be compared.
                let mut partial = locked.inputs.clone();
                partial.kind = stage.kind.name().to_string();
                partial.kind_version = stage.kind.version();
                partial.params = stage.params.clone();
                reasons.extend(partial.diff(&locked.inputs, &BTreeMap::new()));
            }
        }
        reasons
    }

    /// The state of each selected stage, without running anything.
    pub fn status(&self, targets: &[String]) -> Result<Vec<(String, StageState)>> {
        let mut done = HashMap::new();
        let mut states = Vec::new();
        for name in self.pipeline.dag.select(targets)? {
            let stage = self.stage(&name);
            let mut stale_upstream: Vec<String> = Vec::new();
            for up in stage.upstream().filter(|up| !done.contains_key(*up)) {
                if !stale_upstream.iter().any(|seen| seen == up) {
                    stale_upstream.push(up.to_string()); // once per stage, however many deps
                }
            }
            let resolved = if stale_upstream.is_empty() { self.resolve(stage, &done)? } else { None };
            let fingerprint = resolved.as_ref().map(|r| r.fingerprint.digest());
            let manifest = fingerprint.as_deref().and_then(|fp| self.store.manifest(fp));
            let state = match (fingerprint, manifest) {
                (Some(fingerprint), Some(manifest)) => {
                    let restored_from_cache = self
                        .lock
                        .stages
                        .get(&name)
                        .map(|locked| locked.fingerprint != fingerprint)
                        .unwrap_or(true);
                    let output_dir = self.store.output_dir(&fingerprint);
                    done.insert(name.clone(), Done { manifest, output_dir });
                    StageState::Fresh { fingerprint, restored_from_cache }
                }
                _ => StageState::Stale { reasons: self.reasons(stage, resolved.as_ref(), &stale_upstream) },
            };
            states.push((name, state));
        }
        self.save_stat_cache();
        Ok(states)
    }

    /// Runs the selected stages that are stale. Prints one line per stage.
    pub fn run(&mut self, options: &RunOptions) -> Result<Vec<StageOutcome>> {
        if options.dry_run {
            return self.dry_run(&options.targets);
        }
        let state = self.run_selected(self.pipeline.dag.select(&options.targets)?, options)?;
        match state.failure {
            Some(err) => Err(StageFailed(err).into()),
            None => Ok(state.outcomes),
        }
    }

    /// Computes one shard of a stage (see [`crate::stage::StageKind::shardable`]) into its
    /// kind's cache, after bringing the stages it needs up to date. Nothing is committed:
    /// the stage's normal run, later, finds the shards' work in the cache. Returns false
    /// when there was nothing to do (the stage's artifact is already stored).
    pub fn run_shard(&mut self, name: &str, shard: Shard, options: &RunOptions) -> Result<bool> {
        let stage = self.pipeline.stage(name).ok_or_else(|| anyhow!("no stage named `{name}`"))?;
        if !stage.kind.shardable(&stage.params) {
            bail!("stage {name}: kind `{}` cannot be split into shards with these params", stage.kind.name());
        }
        if shard.count == 0 || shard.index >= shard.count {
            bail!("shard {shard}: the index must be below the count");
        }
        let upstream: Vec<String> = stage.upstream().map(str::to_string).collect();
        let state = if upstream.is_empty() {
            RunState::new(Vec::new())
        } else {
            self.run_selected(self.pipeline.dag.select(&upstream)?, options)?
        };
        if let Some(err) = state.failure {
            return Err(StageFailed(err).into());
        }
        let resolved = self.resolve_selected(stage, &state.done)?;
        let fingerprint = resolved.fingerprint.digest();
        if !options.force && self.intact_artifact(name, &fingerprint)?.is_some() {
            self.say(format!("  cached  {:<12} {} (no shard to compute)", name, &fingerprint[..12]));
            return Ok(false);
        }
        self.say(format!("  run     {name:<12} shard {shard}"));
        self.pull_cache(stage, options)?;
        let started = Instant::now();
        let out_dir = self.store.begin_shard(&fingerprint, shard)?;
        let mut context = self.context_in(stage, &resolved, &fingerprint, &state.done, out_dir.clone())?;
        context.run_record = out_dir.join("run.json");
        context.shard = Some(shard);
        let result = run_kind(stage, &context);
        self.store.end_shard(&out_dir)?;
        result.map_err(|err| StageFailed(err.context(format!("stage `{name}` shard {shard} failed"))))?;
        self.say(format!("  ran     {name:<12} shard {shard} {:.1}s", started.elapsed().as_secs_f64()));
        if let (true, Some(remote)) = (options.push, &self.remote) {
            let cache = self.workspace.kind_cache_dir(stage.kind.name());
            let uploaded =
                remote.push_cache(stage.kind.name(), &cache).context("pushing the shard's cache")?;
            self.say(format!(
                "  pushed  {name:<12} shard {shard}: {uploaded} cache files to {}",
                remote.url()
            ));
        }
        Ok(true)
    }

    /// Runs `selected` (in DAG order), reusing what is stored.
    fn run_selected(&mut self, selected: Vec<String>, options: &RunOptions) -> Result<RunState> {
        // Only the temp files of processes that are gone: concurrent runs keep theirs.
        self.workspace.remove_stale_temps()?;
        let mut state = RunState::new(selected);
        let (sender, receiver) = mpsc::channel::<Finished>();
        std::thread::scope(|scope| -> Result<()> {
            loop {
                while state.failure.is_none() && state.running.len() < options.jobs.max(1) {
                    let Some(name) = self.next_ready(&mut state) else { break };
                    match self.start_or_reuse(&name, options, &mut state)? {
                        Start::Job(job) => {
                            let sender = sender.clone();
                            scope.spawn(move || {
                                let _ = sender.send(job.run());
                            });
                        }
                        Start::Reused => {}
                        Start::Busy => state.busy.push(name),
                    }
                }
                // A stage another process is computing does not hold up the ready stages
                // behind it: it goes back to the front of the queue and is retried while
                // this run's own stages compute.
                let waiting = !state.busy.is_empty() && state.failure.is_none();
                state.pending.splice(0..0, std::mem::take(&mut state.busy));
                if state.running.is_empty() {
                    if !waiting {
                        break;
                    }
                    std::thread::sleep(BUSY_RETRY);
                    continue;
                }
                let finished = if waiting {
                    match receiver.recv_timeout(BUSY_RETRY) {
                        Ok(finished) => finished,
                        Err(_) => continue,
                    }
                } else {
                    receiver.recv().expect("a running stage always reports")
                };
                self.finish(finished, options, &mut state)?;
            }
            Ok(())
        })?;
        self.save_stat_cache();
        Ok(state)
    }

    /// Takes the first pending stage whose selected upstream stages are all done.
    fn next_ready(&self, state: &mut RunState) -> Option<String> {
        let index = state.pending.iter().position(|name| {
            self.pipeline.dag.upstream[name]
                .iter()
                .all(|up| state.done.contains_key(up) || !state.selected.contains(up))
        })?;
        Some(state.pending.remove(index))
    }

    /// Completes a stage from the store when its artifact exists (and the run is not
    /// forced); otherwise locks the artifact, prepares its output directory and returns
    /// the job to run. When another process is computing the artifact, says so once and
    /// returns [`Start::Busy`] (with `--no-wait`, fails): the run tries again later and
    /// then reuses what the other committed.
    fn start_or_reuse(
        &mut self,
        name: &str,
        options: &RunOptions,
        state: &mut RunState,
    ) -> Result<Start<'a>> {
        let stage = self.stage(name);
        let resolved = self.resolve_selected(stage, &state.done)?;
        let fingerprint = resolved.fingerprint.digest();
        if !options.force {
            if let Some(manifest) = self.intact_artifact(name, &fingerprint)? {
                self.reuse(stage, &resolved, manifest, state)?;
                return Ok(Start::Reused);
            }
        }
        let entry_lock = match self.store.lock_entry(&fingerprint, false) {
            Ok(lock) => lock,
            Err(err) => match err.downcast_ref::<WorkspaceBusy>() {
                Some(busy) if !options.no_wait => {
                    if state.announced.insert(name.to_string()) {
                        self.say(format!("  waiting {name:<12} (pid {} is computing it)", busy.holder));
                    }
                    return Ok(Start::Busy);
                }
                _ => return Err(err),
            },
        };
        if !options.force {
            if let Some(manifest) = self.intact_artifact(name, &fingerprint)? {
                self.reuse(stage, &resolved, manifest, state)?;
                return Ok(Start::Reused);
            }
            if let Some(manifest) = self.pull(name, &fingerprint, options)? {
                self.reuse(stage, &resolved, manifest, state)?;
                return Ok(Start::Reused);
            }
        }
        let why = if options.force {
            DirtyReason::Forced.to_string()
        } else {
            let reasons = self.reasons(stage, Some(&resolved), &[]);
            reasons.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
        };
        self.say(format!("  run     {:<12} ({why})", name));
        self.pull_cache(stage, options)?;
        let context = self.context(stage, &resolved, &fingerprint, &state.done)?;
        state.running.insert(name.to_string());
        Ok(Start::Job(Box::new(Job {
            stage,
            resolved,
            fingerprint,
            context,
            store: self.store.clone(),
            _entry_lock: entry_lock,
        })))
    }

    /// The artifact fetched from the remote store, when `--pull` asks for it and the remote
    /// holds it. A remote copy that fails its checks is reported, and the stage computed here.
    fn pull(&self, name: &str, fingerprint: &str, options: &RunOptions) -> Result<Option<Manifest>> {
        let (true, Some(remote)) = (options.pull, &self.remote) else { return Ok(None) };
        match remote.pull(&self.store, fingerprint) {
            Ok(Some(Committed { manifest, files })) => {
                self.say(format!("  pulled  {name:<12} {} from {}", &fingerprint[..12], remote.url()));
                let out = self.store_relative(fingerprint);
                self.stat_cache.remember_files(&self.workspace.root, &out, &files);
                Ok(Some(manifest))
            }
            Ok(None) => Ok(None),
            Err(err) => {
                self.reporter.warn(&format!("stage {name}: {err:#}; computing it here"));
                Ok(None)
            }
        }
    }

    /// With `--pull`, fetches what the remote holds of the kind's cache (the work of shards
    /// that ran elsewhere) before the stage computes.
    fn pull_cache(&self, stage: &StageSpec, options: &RunOptions) -> Result<()> {
        let (true, Some(remote)) = (options.pull, &self.remote) else { return Ok(()) };
        let kind = stage.kind.name();
        let added = remote
            .pull_cache(kind, &self.workspace.kind_cache_dir(kind), |line| self.reporter.warn(&line))
            .with_context(|| format!("stage {}: fetching the {kind} cache", stage.name))?;
        if added > 0 {
            self.say(format!("  pulled  {:<12} {added} cache files from {}", stage.name, remote.url()));
        }
        Ok(())
    }

    /// Completes a stage from its stored artifact.
    fn reuse(
        &mut self,
        stage: &StageSpec,
        resolved: &ResolvedInputs,
        manifest: Manifest,
        state: &mut RunState,
    ) -> Result<()> {
        self.record(stage, resolved, &manifest)?;
        self.say(format!("  cached  {:<12} {}", stage.name, &manifest.fingerprint[..12]));
        state.outcomes.push(StageOutcome {
            stage: stage.name.clone(),
            fingerprint: manifest.fingerprint.clone(),
            ran: false,
            seconds: 0.0,
        });
        let output_dir = self.store.output_dir(&manifest.fingerprint);
        state.done.insert(stage.name.clone(), Done { manifest, output_dir });
        Ok(())
    }

    /// The manifest of the stage's artifact, unless the artifact is missing or was changed
    /// after it was committed: then it is reported and removed, and the stage runs again
    /// instead of feeding a damaged file downstream. Unchanged files cost a stat each.
    fn intact_artifact(&self, stage: &str, fingerprint: &str) -> Result<Option<Manifest>> {
        let Some(manifest) = self.store.manifest(fingerprint) else { return Ok(None) };
        let out = self.store_relative(fingerprint);
        let intact = match self.stat_cache.hash_path(&self.workspace.root, &out) {
            Ok(hash) => hash == manifest.tree_hash,
            Err(_) => false,
        };
        if intact {
            return Ok(Some(manifest));
        }
        let problems = self.store.verify(fingerprint);
        self.reporter.warn(&format!(
            "stage {stage}: its stored artifact {} was changed after it was written ({}); running it again",
            &fingerprint[..12.min(fingerprint.len())],
            if problems.is_empty() { "its files differ".to_string() } else { problems.join("; ") }
        ));
        self.store.remove(fingerprint)?;
        Ok(None)
    }

    /// An artifact's `out/` folder, relative to the workspace root (the stat cache's key).
    fn store_relative(&self, fingerprint: &str) -> PathBuf {
        let out = self.store.output_dir(fingerprint);
        out.strip_prefix(&self.workspace.root).map(Path::to_path_buf).unwrap_or(out)
    }

    /// Records a stage that ended: into the lock file and `done`, or as the run's failure.
    fn finish(
        &mut self,
        (name, resolved, result): Finished,
        options: &RunOptions,
        state: &mut RunState,
    ) -> Result<()> {
        state.running.remove(&name);
        match result {
            Ok(Committed { manifest, files }) => {
                crate::failpoint::point("runner:before-lock");
                // The stage may have written into the workspace: hash its paths afresh.
                self.stat_cache.forget_run();
                // So that a later run notices an edited artifact file with a stat, not a read.
                let out = self.store_relative(&manifest.fingerprint);
                self.stat_cache.remember_files(&self.workspace.root, &out, &files);
                self.record(self.stage(&name), &resolved, &manifest)?;
                self.say(format!("  ran     {:<12} {:.1}s", name, manifest.seconds));
                if let (true, Some(remote)) = (options.push, &self.remote) {
                    remote
                        .push(&self.store, &manifest.fingerprint)
                        .with_context(|| format!("stage {name}: pushing"))?;
                    self.say(format!(
                        "  pushed  {:<12} {} to {}",
                        name,
                        &manifest.fingerprint[..12],
                        remote.url()
                    ));
                }
                state.outcomes.push(StageOutcome {
                    stage: name.clone(),
                    fingerprint: manifest.fingerprint.clone(),
                    ran: true,
                    seconds: manifest.seconds,
                });
                let output_dir = self.store.output_dir(&manifest.fingerprint);
                state.done.insert(name, Done { manifest, output_dir });
            }
            Err(err) => {
                self.say(format!("  FAILED  {name}"));
                state.failure.get_or_insert(err.context(format!("stage `{name}` failed")));
            }
        }
        Ok(())
    }

    /// `resolve` for a stage whose upstream stages are all done (the selection includes them).
    fn resolve_selected(&self, stage: &StageSpec, done: &HashMap<String, Done>) -> Result<ResolvedInputs> {
        self.resolve(stage, done)?
            .ok_or_else(|| anyhow!("stage {}: an upstream stage has not run", stage.name))
    }

    fn dry_run(&self, targets: &[String]) -> Result<Vec<StageOutcome>> {
        for (name, state) in self.status(targets)? {
            match state {
                StageState::Fresh { .. } => println!("  cached  {name}"),
                StageState::Stale { reasons } => {
                    let why: Vec<String> = reasons.iter().map(ToString::to_string).collect();
                    println!("  would run {name} ({})", why.join("; "));
                }
            }
        }
        Ok(Vec::new())
    }

    fn context(
        &self,
        stage: &StageSpec,
        resolved: &ResolvedInputs,
        fingerprint: &str,
        done: &HashMap<String, Done>,
    ) -> Result<StageContext> {
        let out_dir = self.store.begin(fingerprint, stage.kind.resumable())?;
        self.context_in(stage, resolved, fingerprint, done, out_dir)
    }

    /// The context of a stage writing into `out_dir`.
    fn context_in(
        &self,
        stage: &StageSpec,
        resolved: &ResolvedInputs,
        fingerprint: &str,
        done: &HashMap<String, Done>,
        out_dir: PathBuf,
    ) -> Result<StageContext> {
        let ancestors = self.pipeline.dag.select(std::slice::from_ref(&stage.name))?;
        let lineage = ancestors
            .iter()
            .filter(|name| **name != stage.name)
            .filter_map(|name| {
                let up = done.get(name)?;
                Some(LineageEntry {
                    stage: name.clone(),
                    kind: up.manifest.kind.clone(),
                    fingerprint: up.manifest.fingerprint.clone(),
                })
            })
            .collect();
        Ok(StageContext {
            stage: stage.name.clone(),
            params: stage.params.clone(),
            inputs: resolved.paths.clone(),
            out_dir,
            cache_dir: self.workspace.kind_cache_dir(stage.kind.name()),
            workspace: self.workspace.root.clone(),
            lineage,
            run_record: self.store.run_record_path(fingerprint),
            fingerprint: fingerprint.to_string(),
            shard: None,
            reporter: self.reporter.clone(),
        })
    }

    /// Writes the stage's entry into the lock file and points its view at the artifact.
    fn record(&mut self, stage: &StageSpec, resolved: &ResolvedInputs, manifest: &Manifest) -> Result<()> {
        let seconds = match self.lock.stages.get(&stage.name) {
            Some(old) if old.fingerprint == manifest.fingerprint => old.seconds,
            _ => manifest.seconds,
        };
        let entry = LockedStage {
            fingerprint: manifest.fingerprint.clone(),
            inputs: resolved.fingerprint.clone(),
            deps: resolved.labels.clone(),
            outs: manifest.outputs.clone(),
            seconds,
        };
        // A no-op run writes nothing: neither the lock file nor the views change.
        if self.lock.stages.get(&stage.name) != Some(&entry) {
            // Other runs of this pipeline may have recorded their stages since this one
            // read the file: reread it under the edit lock and add this stage to it.
            let _guard = self.workspace.lock_file_guard()?;
            let path = self.workspace.lock_file_path();
            let mut current = LockFile::load(&path)?;
            current.stages.insert(stage.name.clone(), entry);
            current.save(&path)?;
            self.lock = current;
        }
        self.workspace.update_view(&stage.name, &self.store.output_dir(&manifest.fingerprint))
    }

    /// The stat cache only saves work: failing to write it (a full disk) is a warning,
    /// not a failed run.
    fn save_stat_cache(&self) {
        if let Err(err) = self.stat_cache.save() {
            self.reporter.warn(&format!("{err:#} (the next run rehashes what it would have remembered)"));
        }
    }

    fn say(&self, line: String) {
        self.reporter.println(&line);
    }
}

/// A stage's own failure (as opposed to a problem with the pipeline or workspace).
#[derive(Debug, thiserror::Error)]
#[error("{0:#}")]
pub struct StageFailed(pub anyhow::Error);

fn execute(stage: &StageSpec, store: &Store, fingerprint: &str, context: StageContext) -> Result<Committed> {
    let started = Instant::now();
    run_kind(stage, &context)?;
    store.commit(fingerprint, stage.kind.name(), &stage.outputs, started.elapsed().as_secs_f64())
}

/// Runs a stage's kind on `context`, in this process or in its worker.
fn run_kind(stage: &StageSpec, context: &StageContext) -> Result<()> {
    match stage.kind.execution() {
        Execution::InProcess => stage.kind.run(context),
        Execution::Worker(program) => run_in_worker(program, stage.kind.name(), context),
    }
}

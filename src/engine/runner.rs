//! Decides which stages are fresh, runs the stale ones, and records the results.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Instant;

use anyhow::{anyhow, Context, Result};

use crate::engine::dag::Dag;
use crate::engine::fingerprint::{DirtyReason, Fingerprint};
use crate::engine::hashing::{hash_uncached, StatCache};
use crate::engine::lockfile::{LockFile, LockedStage};
use crate::engine::spec::{DepSource, Pipeline, StageSpec};
use crate::engine::stage::{LineageEntry, Progress, StageContext};
use crate::engine::store::{Manifest, Store};
use crate::engine::workspace::Workspace;

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
}

/// A completed (run or cached) upstream stage.
#[derive(Clone)]
struct Done {
    manifest: Manifest,
    output_dir: PathBuf,
    ran: bool,
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
    dag: Dag,
    store: Store,
    stat_cache: StatCache,
    lock: LockFile,
    progress: Progress,
}

impl<'a> Runner<'a> {
    pub fn new(workspace: &'a Workspace, pipeline: &'a Pipeline) -> Result<Self> {
        let progress = Progress::stderr();
        Ok(Self {
            workspace,
            pipeline,
            dag: Dag::new(pipeline)?,
            store: Store::new(workspace.store_dir()),
            stat_cache: StatCache::load(&workspace.stat_cache_path()),
            lock: LockFile::load(&workspace.lock_file_path())?,
            progress,
        })
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
        for name in self.dag.select(targets)? {
            let stage = self.stage(&name);
            let stale_upstream: Vec<String> =
                stage.upstream().filter(|up| !done.contains_key(*up)).map(str::to_string).collect();
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
                    done.insert(name.clone(), Done { manifest, output_dir, ran: false });
                    StageState::Fresh { fingerprint, restored_from_cache }
                }
                _ => StageState::Stale { reasons: self.reasons(stage, resolved.as_ref(), &stale_upstream) },
            };
            states.push((name, state));
        }
        self.stat_cache.save()?;
        Ok(states)
    }

    /// Runs the selected stages that are stale. Prints one line per stage.
    pub fn run(&mut self, options: &RunOptions) -> Result<Vec<StageOutcome>> {
        if options.dry_run {
            return self.dry_run(&options.targets);
        }
        let selected = self.dag.select(&options.targets)?;
        let jobs = options.jobs.max(1);
        let mut done: HashMap<String, Done> = HashMap::new();
        let mut outcomes = Vec::new();
        let mut pending: Vec<String> = selected.clone();
        let mut failure: Option<anyhow::Error> = None;
        let (sender, receiver) = mpsc::channel::<(String, ResolvedInputs, Result<Manifest>)>();

        std::thread::scope(|scope| -> Result<()> {
            let mut running: HashSet<String> = HashSet::new();
            loop {
                // Start every ready stage (cached ones complete immediately).
                while failure.is_none() && running.len() < jobs {
                    let Some(index) = pending.iter().position(|name| {
                        self.dag.upstream[name]
                            .iter()
                            .all(|up| done.contains_key(up) || !selected.contains(up))
                    }) else {
                        break;
                    };
                    let name = pending.remove(index);
                    let stage = self.stage(&name);
                    let resolved = self.resolve_selected(stage, &done)?;
                    let fingerprint = resolved.fingerprint.digest();
                    if !options.force {
                        if let Some(manifest) = self.store.manifest(&fingerprint) {
                            let output_dir = self.store.output_dir(&fingerprint);
                            self.record(stage, &resolved, &manifest)?;
                            self.say(format!("  cached  {:<12} {}", name, &fingerprint[..12]));
                            outcomes.push(StageOutcome {
                                stage: name.clone(),
                                fingerprint,
                                ran: false,
                                seconds: 0.0,
                            });
                            done.insert(name, Done { manifest, output_dir, ran: false });
                            continue;
                        }
                    }
                    let why = if options.force {
                        DirtyReason::Forced.to_string()
                    } else {
                        self.reasons(stage, Some(&resolved), &[])
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join("; ")
                    };
                    self.say(format!("  run     {:<12} ({why})", name));
                    let context = self.context(stage, &resolved, &fingerprint, &done)?;
                    let sender = sender.clone();
                    let store = self.store.clone();
                    running.insert(name.clone());
                    scope.spawn(move || {
                        let result = execute(stage, &store, &fingerprint, context);
                        let _ = sender.send((stage.name.clone(), resolved, result));
                    });
                }
                if running.is_empty() {
                    break;
                }
                let (name, resolved, result) = receiver.recv().expect("a running stage always reports");
                running.remove(&name);
                match result {
                    Ok(manifest) => {
                        let stage = self.stage(&name);
                        self.record(stage, &resolved, &manifest)?;
                        self.say(format!("  ran     {:<12} {:.1}s", name, manifest.seconds));
                        outcomes.push(StageOutcome {
                            stage: name.clone(),
                            fingerprint: manifest.fingerprint.clone(),
                            ran: true,
                            seconds: manifest.seconds,
                        });
                        let output_dir = self.store.output_dir(&manifest.fingerprint);
                        done.insert(name, Done { manifest, output_dir, ran: true });
                    }
                    Err(err) => {
                        self.say(format!("  FAILED  {name}"));
                        failure.get_or_insert(err.context(format!("stage `{name}` failed")));
                    }
                }
            }
            Ok(())
        })?;
        self.stat_cache.save()?;
        match failure {
            Some(err) => Err(StageFailed(err).into()),
            None => Ok(outcomes),
        }
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
        let ancestors = self.dag.select(std::slice::from_ref(&stage.name))?;
        let lineage = ancestors
            .iter()
            .filter(|name| **name != stage.name)
            .filter_map(|name| {
                let up = done.get(name)?;
                Some(LineageEntry {
                    stage: name.clone(),
                    kind: up.manifest.kind.clone(),
                    fingerprint: up.manifest.fingerprint.clone(),
                    seconds: up.manifest.seconds,
                    cached: !up.ran,
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
            progress: self.progress.clone(),
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
        self.lock.stages.insert(stage.name.clone(), entry);
        self.lock.save(&self.workspace.lock_file_path())?;
        self.workspace.update_view(&stage.name, &self.store.output_dir(&manifest.fingerprint))
    }

    fn say(&self, line: String) {
        self.progress.println(&line);
    }
}

/// A stage's own failure (as opposed to a problem with the pipeline or workspace).
#[derive(Debug, thiserror::Error)]
#[error("{0:#}")]
pub struct StageFailed(pub anyhow::Error);

fn execute(stage: &StageSpec, store: &Store, fingerprint: &str, context: StageContext) -> Result<Manifest> {
    let started = Instant::now();
    stage.kind.run(&context)?;
    store.commit(fingerprint, stage.kind.name(), &stage.outputs, started.elapsed().as_secs_f64())
}

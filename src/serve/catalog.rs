//! What `pipe serve` offers, resolved once at start from the lock file, the experiment log
//! and the store: the models (every caption stage of the current run and of each recorded
//! experiment still in the store), the scored galleries, and the experiments.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::OnceLock;

use anyhow::{bail, Context, Result};
use serde::Serialize;
use serde_json::Value;

use pipe_engine::experiments::{Experiment, ExperimentLog};
use pipe_engine::lockfile::LockFile;
use pipe_engine::query::Results;
use pipe_engine::reporter::Reporter;
use pipe_engine::spec::Pipeline;
use pipe_engine::stage::parse_params;
use pipe_engine::store::Store;
use pipe_engine::workspace::Workspace;

use crate::cli_exp::LoadPipeline;
use crate::cli_metrics::read_numbers;
use crate::contract::device::DeviceChoice;
use crate::contract::serve::ServeModel;
use crate::data::split::Split;
use crate::metrics::{self, cider::CiderReward, Convention};
use crate::stages::caption::{self, DecoderKind};
use crate::stages::report::read_history;
use crate::stages::score::{self, pair_up, read_hypotheses, read_references, ScoreParams};

/// A model as the pages and `GET /api/models` show it.
#[derive(Debug, Clone, Serialize)]
pub struct ModelEntry {
    /// The caption stage, or `STAGE@EXPERIMENT` for a recorded experiment's model.
    pub name: String,
    /// The experiment it comes from (none: the current run).
    pub experiment: Option<String>,
    /// That experiment's `-S`/`--sweep` params.
    pub params: BTreeMap<String, Value>,
    /// Filled in from the worker's ready line.
    pub decoder: String,
    pub attention: bool,
    pub grid: Option<[u32; 2]>,
    /// The stage's own decoding: its beam width (1 for greedy).
    pub beam_width: usize,
    /// The metrics of the score stages that read this stage's captions: `STAGE.METRIC`.
    pub metrics: BTreeMap<String, Value>,
}

/// A scored split of one caption stage: where its rows come from.
struct GallerySource {
    hypotheses: PathBuf,
    references: PathBuf,
    split: Split,
    convention: Convention,
    images: PathBuf,
    rows: OnceLock<std::result::Result<Vec<GalleryRow>, String>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct GalleryRow {
    pub id: usize,
    pub image: String,
    pub caption: String,
    pub references: Vec<String>,
    pub cider_d: f64,
}

pub struct Catalog {
    pub models: Vec<ModelEntry>,
    pub specs: Vec<ServeModel>,
    galleries: BTreeMap<String, GallerySource>,
    experiments: ExperimentLog,
    pipeline_file: PathBuf,
    store: Store,
}

impl Catalog {
    /// The models of the current run (named by their caption stage), then those of every
    /// recorded experiment whose artifacts are still in the store (`STAGE@EXPERIMENT`),
    /// each model once.
    pub fn open(
        workspace: &Workspace,
        pipeline: &Pipeline,
        load: &LoadPipeline,
        device: Option<DeviceChoice>,
        reporter: &Reporter,
    ) -> Result<Self> {
        let experiments = ExperimentLog::new(workspace.experiments_path());
        let recorded = experiments.latest().unwrap_or_else(|err| {
            reporter.warn(&format!("not serving experiments' models: {err:#}"));
            Vec::new()
        });
        // Newest first, each with the pipeline as that run loaded it (its -S params).
        let mut runs = Vec::new();
        for exp in recorded.into_iter().rev().filter(|e| e.pipeline == workspace.pipeline_file) {
            match load(&exp.overrides()) {
                Ok(exp_pipeline) => runs.push((exp, exp_pipeline)),
                Err(err) => reporter.warn(&format!("not serving experiment {}: {err:#}", exp.name)),
            }
        }

        let mut found = Found { device, ..Found::default() };
        // The current run's models, with the params of the run that made them.
        let current = Results::open(workspace, pipeline, reporter.clone())?;
        for stage in pipeline.stages_of_kind(caption::KIND) {
            let Some(fingerprint) = current.fingerprint(&stage.name) else { continue };
            let made_by = runs.iter().find(|(exp, _)| {
                exp.stages.get(&stage.name).is_some_and(|locked| locked.fingerprint == fingerprint)
            });
            match made_by {
                Some(run) => {
                    let results = recorded_results(workspace, run, reporter);
                    found.add(&results, &run.1, &stage.name, stage.name.clone(), Some(&run.0), reporter)?
                }
                None => found.add(&current, pipeline, &stage.name, stage.name.clone(), None, reporter)?,
            }
        }
        // Then every experiment's, while its artifacts are in the store.
        for run in &runs {
            let results = recorded_results(workspace, run, reporter);
            for stage in run.1.stages_of_kind(caption::KIND) {
                let name = format!("{}@{}", stage.name, run.0.name);
                found.add(&results, &run.1, &stage.name, name, Some(&run.0), reporter)?;
            }
        }
        if found.models.is_empty() {
            bail!(
                "{} has no caption stage that has run: run `pipe run` first (`pipe serve` serves the \
                 models the lock file and the recorded experiments name)",
                pipeline.file.display()
            );
        }
        Ok(Self {
            models: found.models,
            specs: found.specs,
            galleries: found.galleries,
            experiments,
            pipeline_file: workspace.pipeline_file.clone(),
            store: Store::new(workspace.store_dir(), reporter.clone()),
        })
    }

    pub fn model(&self, name: &str) -> Option<&ModelEntry> {
        self.models.iter().find(|m| m.name == name)
    }

    /// Caption stages with a scored gallery.
    pub fn gallery_stages(&self) -> Vec<&str> {
        self.galleries.keys().map(String::as_str).collect()
    }

    /// The rows of one stage's gallery, scored on first use.
    pub fn gallery(&self, stage: &str) -> Option<std::result::Result<&[GalleryRow], String>> {
        let source = self.galleries.get(stage)?;
        Some(
            source
                .rows
                .get_or_init(|| source.load().map_err(|e| format!("{e:#}")))
                .as_deref()
                .map_err(Clone::clone),
        )
    }

    /// The file of gallery row `id` of `stage`, which must lie inside the images folder.
    pub fn gallery_image(&self, stage: &str, id: usize) -> Option<PathBuf> {
        let source = self.galleries.get(stage)?;
        let row = self.gallery(stage)?.ok()?.get(id)?;
        let root = source.images.canonicalize().ok()?;
        let path = root.join(&row.image).canonicalize().ok()?;
        path.starts_with(&root).then_some(path)
    }

    /// The experiments of this pipeline file, with the loss curves of their train stages.
    pub fn experiments(&self) -> Result<Value> {
        let mut rows = Vec::new();
        for exp in self.experiments.latest()?.into_iter().filter(|e| e.pipeline == self.pipeline_file) {
            let mut curves = BTreeMap::new();
            for (stage, locked) in &exp.stages {
                if !locked.outs.contains_key("history.json") {
                    continue;
                }
                let path = self.store.output_dir(&locked.fingerprint).join("history.json");
                if let Ok(history) = read_history(&path) {
                    curves.insert(stage.clone(), history);
                }
            }
            let in_store = exp.fingerprints().all(|fp| self.store.manifest(fp).is_some());
            let mut row = serde_json::to_value(&exp)?;
            row["in_store"] = Value::from(in_store);
            row["curves"] = serde_json::to_value(curves)?;
            row.as_object_mut().expect("an experiment is an object").remove("stages");
            rows.push(row);
        }
        Ok(Value::from(rows))
    }
}

/// What an experiment's run recorded, read from the store.
fn recorded_results<'a>(
    workspace: &'a Workspace,
    (exp, exp_pipeline): &'a (Experiment, Pipeline),
    reporter: &Reporter,
) -> Results<'a> {
    let lock = LockFile { stages: exp.stages.clone(), ..LockFile::default() };
    Results::with_lock(workspace, exp_pipeline, lock, reporter.clone())
}

/// What the catalog gathers from one run's results.
#[derive(Default)]
struct Found {
    models: Vec<ModelEntry>,
    specs: Vec<ServeModel>,
    galleries: BTreeMap<String, GallerySource>,
    /// Caption stage fingerprints already served: a model is listed once.
    served: BTreeSet<String>,
    device: Option<DeviceChoice>,
}

impl Found {
    /// Caption stage `stage` of `results` as model `name`, unless its model is already
    /// listed or its artifacts are gone.
    fn add(
        &mut self,
        results: &Results,
        pipeline: &Pipeline,
        stage: &str,
        name: String,
        experiment: Option<&Experiment>,
        reporter: &Reporter,
    ) -> Result<()> {
        let (Some(fingerprint), Some(stage)) = (results.fingerprint(stage), pipeline.stage(stage)) else {
            return Ok(());
        };
        if self.served.contains(fingerprint) {
            return Ok(());
        }
        let resolved = match crate::cli_caption::resolve(results, stage) {
            Ok(resolved) => resolved,
            // An old experiment's artifacts may have been collected: not worth a warning.
            Err(_) if name != stage.name => return Ok(()),
            Err(err) => {
                reporter.warn(&format!("not serving stage {}: {err:#}", stage.name));
                return Ok(());
            }
        };
        self.served.insert(fingerprint.to_string());
        let mut params = resolved.params;
        if let Some(device) = self.device {
            params.device = device;
        }
        let mut metrics = BTreeMap::new();
        for scorer in pipeline.stages_of_kind(score::KIND) {
            if results.input_stage(scorer, "hypotheses").map(|s| s.name.as_str()) != Some(stage.name.as_str())
            {
                continue;
            }
            if let Ok(dir) = results.stage_output(&scorer.name) {
                if let Ok(numbers) = read_numbers(&dir.join(score::METRICS_FILE)) {
                    metrics.extend(
                        numbers
                            .into_iter()
                            .filter(|(_, v)| v.is_number())
                            .map(|(k, v)| (format!("{}.{k}", scorer.name), v)),
                    );
                }
            }
            if let Some(source) = gallery_source(results, scorer)? {
                self.galleries.entry(name.clone()).or_insert(source);
            }
        }
        self.models.push(ModelEntry {
            name: name.clone(),
            experiment: experiment.map(|e| e.name.clone()),
            params: experiment.map(|e| e.params.clone()).unwrap_or_default(),
            decoder: String::new(),
            attention: false,
            grid: None,
            beam_width: if params.decoder == DecoderKind::Greedy { 1 } else { params.beam_width },
            metrics,
        });
        self.specs.push(ServeModel {
            name,
            model_dirs: resolved.model_dirs,
            vocab: resolved.vocab,
            backbone: resolved.backbone,
            precision: resolved.precision,
            params,
        });
        Ok(())
    }
}

/// Where a score stage's hypotheses, references and images are, when all have run.
fn gallery_source(results: &Results, scorer: &pipe_engine::spec::StageSpec) -> Result<Option<GallerySource>> {
    let params: ScoreParams =
        parse_params(&scorer.params).with_context(|| format!("stage {}", scorer.name))?;
    let (Ok(hypotheses), Ok(references)) =
        (results.input_path(scorer, "hypotheses"), results.input_path(scorer, "references"))
    else {
        return Ok(None);
    };
    let Some(ingest) = results.input_stage(scorer, "references") else { return Ok(None) };
    let Ok(images) = results.input_path(ingest, "images") else { return Ok(None) };
    Ok(Some(GallerySource {
        hypotheses,
        references,
        split: params.split,
        convention: params.convention,
        images,
        rows: OnceLock::new(),
    }))
}

impl GallerySource {
    /// Each image's caption, references and CIDEr-D (document frequencies over the split's
    /// references, as the corpus score uses: the mean of these is the stage's CIDEr-D).
    fn load(&self) -> Result<Vec<GalleryRow>> {
        let sets =
            pair_up(read_hypotheses(&self.hypotheses)?, read_references(&self.references, self.split)?)?;
        let tokenized = metrics::tokenize(&sets, self.convention);
        let reward = CiderReward::new(tokenized.iter().map(|t| t.references.clone()).collect());
        Ok(sets
            .into_iter()
            .zip(&tokenized)
            .enumerate()
            .map(|(id, (set, tokens))| GalleryRow {
                id,
                image: set.image,
                caption: set.hypothesis,
                references: set.references,
                cider_d: reward.score(id, &tokens.hypothesis),
            })
            .collect())
    }
}

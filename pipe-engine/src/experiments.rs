//! The experiment log: one record per completed `pipe run` (each point of a sweep is
//! one), in `data/.pipe/experiments.jsonl`. Records are only ever added (a rerun that
//! changed nothing adds none), and every write replaces the file atomically under an edit
//! lock, so a killed run leaves the log as it was and concurrent runs lose no record.
//!
//! A record names the params given on the command line (what differs from the pipeline
//! file), the lock entries of the stages it ran or reused (so its artifacts can be found,
//! kept by `gc` and restored), and the metrics the caller collected from them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::fsutil::write_atomic;
use crate::lockfile::LockedStage;
use crate::spec::Override;
use crate::workspace::edit_lock;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Experiment {
    /// `exp-` and the start of a hash of the stages' fingerprints (the same settings on
    /// the same inputs and code give the same name), unless the user named it.
    pub name: String,
    /// The pipeline file, relative to the project root.
    pub pipeline: PathBuf,
    /// When the run finished (RFC 3339, UTC).
    pub finished: String,
    /// Wall time of the run.
    pub seconds: f64,
    /// `STAGE.KEY` or `params.NAME` → value, as given with `-S` or `--sweep`.
    pub params: BTreeMap<String, Value>,
    /// The lock entries of the stages the run covered.
    pub stages: BTreeMap<String, LockedStage>,
    /// `STAGE.METRIC` → value.
    pub metrics: BTreeMap<String, Value>,
}

impl Experiment {
    /// The default name: the same fingerprints give the same name.
    pub fn default_name(stages: &BTreeMap<String, LockedStage>) -> String {
        let mut hasher = blake3::Hasher::new();
        for (name, stage) in stages {
            hasher.update(name.as_bytes()).update(b"\0").update(stage.fingerprint.as_bytes()).update(b"\n");
        }
        format!("exp-{}", &hasher.finalize().to_hex()[..7])
    }

    /// The overrides that reproduce this experiment's params.
    pub fn overrides(&self) -> Vec<Override> {
        self.params
            .iter()
            .map(|(key, value)| Override {
                path: key.split('.').map(str::to_string).collect(),
                value: value.clone(),
            })
            .collect()
    }

    /// The same run of the same settings: everything but when it finished and how long
    /// it took.
    pub fn same_result(&self, other: &Experiment) -> bool {
        (&self.pipeline, &self.params, &self.stages, &self.metrics)
            == (&other.pipeline, &other.params, &other.stages, &other.metrics)
    }

    /// Every artifact the experiment references.
    pub fn fingerprints(&self) -> impl Iterator<Item = &str> {
        self.stages.values().map(|stage| stage.fingerprint.as_str())
    }
}

/// `KEY=VALUE` as a user would type it (strings bare, everything else as JSON).
pub fn format_param(key: &str, value: &Value) -> String {
    match value {
        Value::String(text) => format!("{key}={text}"),
        other => format!("{key}={other}"),
    }
}

/// The params of overrides as an experiment records them (a later override of the same
/// key wins, as it does when the pipeline is loaded).
pub fn params_of(overrides: &[Override]) -> BTreeMap<String, Value> {
    overrides.iter().map(|o| (o.path.join("."), o.value.clone())).collect()
}

pub struct ExperimentLog {
    path: PathBuf,
}

impl ExperimentLog {
    pub fn new(path: PathBuf) -> Self {
        Self { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every record, oldest first. A line that does not parse is an error naming it.
    pub fn load(&self) -> Result<Vec<Experiment>> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(err) => return Err(err).with_context(|| format!("reading {}", self.path.display())),
        };
        text.lines()
            .enumerate()
            .filter(|(_, line)| !line.trim().is_empty())
            .map(|(i, line)| {
                serde_json::from_str(line)
                    .with_context(|| format!("{}:{}: not an experiment record", self.path.display(), i + 1))
            })
            .collect()
    }

    /// The latest record of each name, oldest first.
    pub fn latest(&self) -> Result<Vec<Experiment>> {
        let all = self.load()?;
        let mut seen = BTreeSet::new();
        let mut latest: Vec<Experiment> =
            all.into_iter().rev().filter(|exp| seen.insert(exp.name.clone())).collect();
        latest.reverse();
        Ok(latest)
    }

    /// The latest record named `name`.
    pub fn find(&self, name: &str) -> Result<Experiment> {
        let latest = self.latest()?;
        if let Some(found) = latest.iter().find(|exp| exp.name == name) {
            return Ok(found.clone());
        }
        let names: Vec<&str> = latest.iter().map(|exp| exp.name.as_str()).collect();
        if names.is_empty() {
            bail!("no experiment `{name}`: none recorded yet in {}", self.path.display());
        }
        bail!("no experiment `{name}`; recorded: {}", names.join(", "))
    }

    /// Adds `experiment`, unless the latest record of its name already says the same (a
    /// rerun that changed nothing writes nothing). The whole log is rewritten to a temp
    /// file and renamed over the old one; concurrent runs take turns under an edit lock,
    /// so none is lost. Returns whether it wrote.
    pub fn append(&self, experiment: &Experiment) -> Result<bool> {
        let _turn = edit_lock(&self.path)?;
        let mut text = match std::fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(err) => return Err(err).with_context(|| format!("reading {}", self.path.display())),
        };
        if latest_line_named(&text, &experiment.name)
            .and_then(|line| serde_json::from_str::<Experiment>(line).ok())
            .is_some_and(|previous| previous.same_result(experiment))
        {
            return Ok(false);
        }
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str(&serde_json::to_string(experiment)?);
        text.push('\n');
        write_atomic(&self.path, text.as_bytes())?;
        Ok(true)
    }
}

/// The last line of the log that records `name`, found without parsing the others
/// (records are written with their name first).
fn latest_line_named<'t>(text: &'t str, name: &str) -> Option<&'t str> {
    let prefix = format!("{{\"name\":{},", serde_json::to_string(name).ok()?);
    text.lines().rev().find(|line| line.starts_with(&prefix))
}

/// The current time as RFC 3339 (UTC, seconds).
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: &str, loss: f64) -> Experiment {
        Experiment {
            name: name.to_string(),
            pipeline: PathBuf::from("pipeline.yaml"),
            finished: now_rfc3339(),
            seconds: 1.5,
            params: BTreeMap::from([("train.lr".to_string(), Value::from(0.1))]),
            stages: BTreeMap::new(),
            metrics: BTreeMap::from([("score.loss".to_string(), Value::from(loss))]),
        }
    }

    #[test]
    fn records_append_and_the_latest_of_a_name_wins() {
        let dir = tempfile::tempdir().unwrap();
        let log = ExperimentLog::new(dir.path().join(".pipe/experiments.jsonl"));
        assert!(log.load().unwrap().is_empty());
        log.append(&record("a", 1.0)).unwrap();
        log.append(&record("b", 2.0)).unwrap();
        log.append(&record("a", 3.0)).unwrap();
        assert_eq!(log.load().unwrap().len(), 3);
        let latest = log.latest().unwrap();
        assert_eq!(latest.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(), ["b", "a"]);
        assert_eq!(log.find("a").unwrap().metrics["score.loss"], Value::from(3.0));
        let missing = log.find("c").unwrap_err().to_string();
        assert!(missing.contains("recorded: b, a"), "{missing}");
    }

    #[test]
    fn a_rerun_that_changed_nothing_adds_no_record() {
        let dir = tempfile::tempdir().unwrap();
        let log = ExperimentLog::new(dir.path().join("experiments.jsonl"));
        let quoted = "say \"a\", b";
        let mut first = record(quoted, 1.0);
        assert!(log.append(&first).unwrap());
        assert!(log.append(&record("b", 2.0)).unwrap());
        first.finished = "2030-01-01T00:00:00Z".into();
        first.seconds = 0.01;
        assert!(!log.append(&first).unwrap(), "only the time differs");
        assert_eq!(log.load().unwrap().len(), 2);
        assert!(log.append(&record(quoted, 4.0)).unwrap(), "other metrics");
        assert!(!log.append(&record("b", 2.0)).unwrap(), "b's latest record is found past a's");
        assert_eq!(log.load().unwrap().len(), 3);
        assert_eq!(log.find(quoted).unwrap().metrics["score.loss"], Value::from(4.0));
    }

    #[test]
    fn a_damaged_line_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let log = ExperimentLog::new(dir.path().join("experiments.jsonl"));
        log.append(&record("a", 1.0)).unwrap();
        std::fs::write(log.path(), format!("{}{{half a rec\n", std::fs::read_to_string(log.path()).unwrap()))
            .unwrap();
        let err = format!("{:#}", log.load().unwrap_err());
        assert!(err.contains("experiments.jsonl:2"), "{err}");
    }

    #[test]
    fn params_round_trip_through_overrides() {
        let exp = record("a", 1.0);
        let again = params_of(&exp.overrides());
        assert_eq!(again, exp.params);
        assert_eq!(format_param("train.decoder", &Value::from("merge")), "train.decoder=merge");
        assert_eq!(format_param("train.lr", &Value::from(0.1)), "train.lr=0.1");
    }
}

//! Experiments: every completed `pipe run` is recorded (its `-S` params, the artifacts it
//! used and their metrics); `pipe run --sweep` runs a grid of settings; `pipe exp show`
//! puts them side by side and `pipe exp apply` makes one the workspace's current run.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use pipe_engine::experiments::{format_param, now_rfc3339, params_of, Experiment, ExperimentLog};
use pipe_engine::lockfile::LockFile;
use pipe_engine::reporter::Reporter;
use pipe_engine::runner::{RunOptions, Runner, StageFailed, StageOutcome};
use pipe_engine::spec::{Override, Pipeline, SpecError};
use pipe_engine::store::Store;
use pipe_engine::workspace::Workspace;

use crate::cli::display_relative;

/// Loads the pipeline with overrides (the CLI's closure over the kind registry).
pub type LoadPipeline<'a> = dyn Fn(&[Override]) -> Result<Pipeline> + 'a;

/// Runs the pipeline with `overrides` and, unless it was a dry run, records the
/// experiment (named `name` or by its fingerprints). Returns the stage outcomes.
/// A runner for `options`: with the workspace's remote store when they pull or push.
pub fn runner<'a>(
    workspace: &'a Workspace,
    pipeline: &'a Pipeline,
    options: &RunOptions,
    reporter: &Reporter,
) -> Result<Runner<'a>> {
    let runner = Runner::new(workspace, pipeline, reporter.clone())?;
    Ok(if options.pull || options.push {
        runner.with_remote(pipe_engine::remote::Remote::required(workspace)?)
    } else {
        runner
    })
}

pub fn run_and_record(
    workspace: &Workspace,
    load: &LoadPipeline,
    overrides: &[Override],
    options: &RunOptions,
    name: Option<&str>,
    reporter: &Reporter,
) -> Result<(Vec<StageOutcome>, Option<Experiment>)> {
    let pipeline = load(overrides)?;
    let started = Instant::now();
    let outcomes = runner(workspace, &pipeline, options, reporter)?.run(options)?;
    if options.dry_run {
        return Ok((outcomes, None));
    }
    let seconds = started.elapsed().as_secs_f64();
    let ran = outcomes.iter().filter(|o| o.ran).count();
    eprintln!(
        "{} stages: {ran} ran, {} cached, in {seconds:.2}s. Outputs: {}",
        outcomes.len(),
        outcomes.len() - ran,
        display_relative(&workspace.views_dir(), &workspace.root)
    );
    let experiment = record(workspace, overrides, &outcomes, seconds, name, reporter)?;
    Ok((outcomes, Some(experiment)))
}

fn record(
    workspace: &Workspace,
    overrides: &[Override],
    outcomes: &[StageOutcome],
    seconds: f64,
    name: Option<&str>,
    reporter: &Reporter,
) -> Result<Experiment> {
    let lock = LockFile::load(&workspace.lock_file_path())?;
    let stages: BTreeMap<_, _> = outcomes
        .iter()
        .filter_map(|o| lock.stages.get(&o.stage).map(|locked| (o.stage.clone(), locked.clone())))
        .collect();
    let store = Store::new(workspace.store_dir(), reporter.clone());
    let covered = LockFile { version: lock.version, stages: stages.clone() };
    let metrics = crate::cli_metrics::collect(&covered, &store, reporter)?
        .into_iter()
        .flat_map(|(stage, metrics)| {
            metrics.into_iter().map(move |(name, value)| (format!("{stage}.{name}"), value))
        })
        .collect();
    let experiment = Experiment {
        name: name.map_or_else(|| Experiment::default_name(&stages), str::to_string),
        pipeline: workspace.pipeline_file.clone(),
        finished: now_rfc3339(),
        seconds,
        params: params_of(overrides),
        stages,
        metrics,
    };
    ExperimentLog::new(workspace.experiments_path()).append(&experiment)?;
    Ok(experiment)
}

/// `--sweep KEY=V1,V2,…` flags → every combination of their values, the first flag
/// varying slowest. Each value is parsed as `-S KEY=VALUE` would be.
pub fn sweep_points(sweeps: &[String]) -> Result<Vec<Vec<Override>>> {
    let mut axes = Vec::new();
    for sweep in sweeps {
        let (key, values) =
            sweep.split_once('=').with_context(|| format!("--sweep {sweep}: expected KEY=V1,V2,…"))?;
        let values: Vec<&str> = values.split(',').map(str::trim).collect();
        if values.iter().any(|v| v.is_empty()) {
            bail!("--sweep {sweep}: an empty value (values are separated by commas)");
        }
        let parsed = values
            .iter()
            .map(|v| format!("{key}={v}").parse::<Override>())
            .collect::<Result<Vec<_>>>()
            .with_context(|| format!("--sweep {sweep}"))?;
        axes.push(parsed);
    }
    let mut points: Vec<Vec<Override>> = vec![Vec::new()];
    for axis in axes {
        points = points
            .iter()
            .flat_map(|point| {
                axis.iter().map(move |value| {
                    let mut next = point.clone();
                    next.push(value.clone());
                    next
                })
            })
            .collect();
    }
    Ok(points)
}

/// Runs every point of a sweep in turn (each on top of `base`, the `-S` flags), recording
/// each as an experiment; a failed point is reported and the others still run. The
/// workspace ends at the last point; `pipe exp apply` returns to any other.
pub fn sweep(
    workspace: &Workspace,
    load: &LoadPipeline,
    base: &[Override],
    sweeps: &[String],
    options: &RunOptions,
    name: Option<&str>,
    reporter: &Reporter,
) -> Result<()> {
    let points = sweep_points(sweeps)?;
    let mut recorded = Vec::new();
    let mut failed = Vec::new();
    for (i, point) in points.iter().enumerate() {
        let label: Vec<String> = point.iter().map(|o| format_param(&o.path.join("."), &o.value)).collect();
        reporter.println(&format!("sweep {}/{}: {}", i + 1, points.len(), label.join(" ")));
        let overrides: Vec<Override> = base.iter().chain(point).cloned().collect();
        let point_name = name.map(|n| format!("{n}-{}", i + 1));
        match run_and_record(workspace, load, &overrides, options, point_name.as_deref(), reporter) {
            Ok((_, Some(experiment))) => recorded.push(experiment),
            Ok((_, None)) => {}
            // An invalid key or value is wrong for every point: stop at once.
            Err(err) if err.downcast_ref::<SpecError>().is_some() => return Err(err),
            Err(err) => {
                reporter.warn(&format!("sweep point {} ({}) failed: {err:#}", i + 1, label.join(" ")));
                failed.push(label.join(" "));
            }
        }
    }
    if !recorded.is_empty() {
        println!();
        print_table(&recorded, &Store::new(workspace.store_dir(), reporter.clone()));
    }
    if !failed.is_empty() {
        return Err(StageFailed(anyhow::anyhow!(
            "{} of {} sweep points failed: {}",
            failed.len(),
            points.len(),
            failed.join("; ")
        ))
        .into());
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ShowFormat {
    Table,
    Csv,
    Json,
}

/// `pipe exp show`: the latest record of every experiment of this pipeline file.
pub fn show(workspace: &Workspace, format: ShowFormat, reporter: &Reporter) -> Result<u8> {
    let log = ExperimentLog::new(workspace.experiments_path());
    let experiments: Vec<Experiment> =
        log.latest()?.into_iter().filter(|exp| exp.pipeline == workspace.pipeline_file).collect();
    if experiments.is_empty() {
        bail!(
            "no experiments recorded for {} yet: `pipe run` records one each time it completes",
            workspace.pipeline_file.display()
        );
    }
    let store = Store::new(workspace.store_dir(), reporter.clone());
    match format {
        ShowFormat::Table => print_table(&experiments, &store),
        ShowFormat::Csv => print_csv(&experiments, &store)?,
        ShowFormat::Json => {
            let rows: Vec<Value> = experiments
                .iter()
                .map(|exp| {
                    let mut row = serde_json::to_value(exp).expect("an experiment serializes");
                    row["in_store"] = Value::from(in_store(exp, &store));
                    row
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&rows)?);
        }
    }
    Ok(0)
}

/// `pipe exp apply NAME`: runs the pipeline with the experiment's params, so the lock
/// file and `data/out` show it (a cache hit for every stage whose artifact is still in
/// the store). Returns how many stages had to run again.
pub fn apply(
    workspace: &Workspace,
    load: &LoadPipeline,
    name: &str,
    jobs: usize,
    reporter: &Reporter,
) -> Result<u8> {
    let experiment = ExperimentLog::new(workspace.experiments_path()).find(name)?;
    if experiment.pipeline != workspace.pipeline_file {
        bail!(
            "experiment `{name}` ran {}; apply it with `pipe -f {} exp apply {name}`",
            experiment.pipeline.display(),
            experiment.pipeline.display()
        );
    }
    let options =
        RunOptions { targets: experiment.stages.keys().cloned().collect(), jobs, ..RunOptions::default() };
    let (outcomes, _) =
        run_and_record(workspace, load, &experiment.overrides(), &options, Some(name), reporter)?;
    let ran: Vec<&str> = outcomes.iter().filter(|o| o.ran).map(|o| o.stage.as_str()).collect();
    let params: Vec<String> = experiment.params.iter().map(|(k, v)| format_param(k, v)).collect();
    println!(
        "applied `{name}` ({}): {} is its lock now{}",
        if params.is_empty() { "the pipeline file's params".to_string() } else { params.join(" ") },
        display_relative(&workspace.lock_file_path(), &workspace.root),
        if ran.is_empty() {
            String::new()
        } else {
            format!("; {} ran again (their artifacts were gone or their inputs changed)", ran.join(", "))
        }
    );
    Ok(0)
}

/// Fingerprints that recorded experiments reference (kept by `pipe gc`).
pub fn referenced(workspace: &Workspace) -> Result<HashSet<String>> {
    Ok(ExperimentLog::new(workspace.experiments_path())
        .load()?
        .iter()
        .flat_map(|exp| exp.fingerprints().map(str::to_string).collect::<Vec<_>>())
        .collect())
}

fn in_store(experiment: &Experiment, store: &Store) -> &'static str {
    let present = experiment.fingerprints().filter(|fp| store.manifest(fp).is_some()).count();
    match present {
        0 => "no",
        n if n == experiment.stages.len() => "yes",
        _ => "partly",
    }
}

/// The numeric metrics any of `experiments` has, in name order: the table's columns.
fn metric_columns(experiments: &[Experiment]) -> Vec<String> {
    experiments
        .iter()
        .flat_map(|exp| exp.metrics.iter().filter(|(_, v)| v.is_number()).map(|(k, _)| k.clone()))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

fn format_metric(value: Option<&Value>) -> String {
    match value {
        Some(v) if v.is_f64() => format!("{:.4}", v.as_f64().unwrap_or_default()),
        Some(v) => v.to_string(),
        None => "-".to_string(),
    }
}

fn rows(experiments: &[Experiment], store: &Store) -> (Vec<String>, Vec<Vec<String>>) {
    let metrics = metric_columns(experiments);
    let mut header: Vec<String> = ["experiment", "finished", "seconds", "params"].map(String::from).to_vec();
    header.extend(metrics.iter().cloned());
    header.push("in store".to_string());
    let rows = experiments
        .iter()
        .map(|exp| {
            let params: Vec<String> = exp.params.iter().map(|(k, v)| format_param(k, v)).collect();
            let mut row = vec![
                exp.name.clone(),
                exp.finished.replace('T', " ").trim_end_matches('Z').to_string(),
                format!("{:.1}", exp.seconds),
                if params.is_empty() { "-".to_string() } else { params.join(" ") },
            ];
            row.extend(metrics.iter().map(|m| format_metric(exp.metrics.get(m))));
            row.push(in_store(exp, store).to_string());
            row
        })
        .collect();
    (header, rows)
}

fn print_table(experiments: &[Experiment], store: &Store) {
    let (header, rows) = rows(experiments, store);
    let widths: Vec<usize> = (0..header.len())
        .map(|c| {
            rows.iter().map(|r| r[c].chars().count()).chain([header[c].chars().count()]).max().unwrap_or(0)
        })
        .collect();
    let line = |cells: &[String]| {
        let padded: Vec<String> = cells.iter().zip(&widths).map(|(cell, w)| format!("{cell:<w$}")).collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(&header);
    for row in &rows {
        line(row);
    }
}

fn print_csv(experiments: &[Experiment], store: &Store) -> Result<()> {
    let (header, rows) = rows(experiments, store);
    let mut out = csv::Writer::from_writer(std::io::stdout());
    out.write_record(&header)?;
    for row in rows {
        out.write_record(&row)?;
    }
    out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sweeps_expand_to_every_combination_first_flag_slowest() {
        let points =
            sweep_points(&["train.decoder=merge,attention".into(), "train.hidden=256, 512".into()]).unwrap();
        let labels: Vec<String> = points
            .iter()
            .map(|p| {
                p.iter().map(|o| format_param(&o.path.join("."), &o.value)).collect::<Vec<_>>().join(" ")
            })
            .collect();
        assert_eq!(
            labels,
            [
                "train.decoder=merge train.hidden=256",
                "train.decoder=merge train.hidden=512",
                "train.decoder=attention train.hidden=256",
                "train.decoder=attention train.hidden=512"
            ]
        );
        assert_eq!(points[1][1].value, Value::from(512));
        for bad in ["train.hidden", "train.hidden=1,,2", "hidden=1"] {
            assert!(sweep_points(&[bad.to_string()]).is_err(), "{bad}");
        }
    }
}

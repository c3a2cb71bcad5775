//! `pipe metrics`: every stage output named `metrics.json`, flattened to numbers, and a
//! comparison with the lock file of an earlier git revision (like `dvc metrics diff`).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use pipe_engine::lockfile::LockFile;
use pipe_engine::reporter::Reporter;
use pipe_engine::spec::flatten_params;
use pipe_engine::store::Store;
use pipe_engine::workspace::Workspace;

const METRICS_FILE: &str = "metrics.json";

/// `stage → (metric → value)` for every metrics output the lock file names.
pub(crate) type MetricTable = BTreeMap<String, BTreeMap<String, Value>>;

pub fn show(workspace: &Workspace, diff: Option<&str>, reporter: Reporter) -> Result<u8> {
    let store = Store::new(workspace.store_dir(), reporter.clone());
    let current = collect(&LockFile::load(&workspace.lock_file_path())?, &store, &reporter)?;
    if current.is_empty() {
        bail!("no stage has produced {METRICS_FILE} yet: run `pipe run` first");
    }
    match diff {
        None => print_current(&current),
        Some(rev) => {
            let old_lock = lock_at_revision(workspace, rev)?;
            print_diff(&collect(&old_lock, &store, &reporter)?, &current, rev);
        }
    }
    Ok(0)
}

pub(crate) fn collect(lock: &LockFile, store: &Store, reporter: &Reporter) -> Result<MetricTable> {
    let mut table = MetricTable::new();
    for (stage, locked) in &lock.stages {
        if !locked.outs.contains_key(METRICS_FILE) {
            continue;
        }
        let path = store.output_dir(&locked.fingerprint).join(METRICS_FILE);
        if !path.exists() {
            reporter.warn(&format!(
                "{stage}: artifact {} is not in the store (removed by gc?)",
                &locked.fingerprint[..12]
            ));
            continue;
        }
        let numbers = read_numbers(&path)?;
        table.insert(stage.clone(), numbers);
    }
    Ok(table)
}

/// A metrics file flattened to `a.b` keys, keeping its numbers and strings.
pub(crate) fn read_numbers(path: &Path) -> Result<BTreeMap<String, Value>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let metrics: Value =
        serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", path.display()))?;
    Ok(flatten_params(&metrics).into_iter().filter(|(_, v)| v.is_number() || v.is_string()).collect())
}

fn lock_at_revision(workspace: &Workspace, rev: &str) -> Result<LockFile> {
    let lock_path = workspace.lock_file_path();
    let relative = lock_path.strip_prefix(&workspace.root).unwrap_or(Path::new("pipe.lock"));
    let output = Command::new("git")
        .arg("-C")
        .arg(&workspace.root)
        .arg("show")
        .arg(format!("{rev}:{}", relative.display()))
        .output()
        .context("running git")?;
    if !output.status.success() {
        bail!("git show {rev}:{}: {}", relative.display(), String::from_utf8_lossy(&output.stderr).trim());
    }
    LockFile::parse(&String::from_utf8_lossy(&output.stdout))
        .with_context(|| format!("{} at {rev}", relative.display()))
}

fn format_value(value: &Value) -> String {
    match value.as_f64() {
        Some(number) if value.is_f64() => format!("{number:.4}"),
        _ => value.to_string().trim_matches('"').to_string(),
    }
}

fn print_current(table: &MetricTable) {
    println!("{:<12} {:<16} {:>10}", "stage", "metric", "value");
    for (stage, metrics) in table {
        for (name, value) in metrics {
            println!("{stage:<12} {name:<16} {:>10}", format_value(value));
        }
    }
}

fn print_diff(old: &MetricTable, new: &MetricTable, rev: &str) {
    println!("{:<12} {:<16} {:>10} {:>10} {:>10}", "stage", "metric", rev, "workspace", "change");
    let stages: std::collections::BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    for stage in stages {
        let (before, after) = (old.get(stage), new.get(stage));
        let names: std::collections::BTreeSet<&String> =
            before.into_iter().chain(after).flat_map(|m| m.keys()).collect();
        for name in names {
            let a = before.and_then(|m| m.get(name));
            let b = after.and_then(|m| m.get(name));
            let change = match (a.and_then(Value::as_f64), b.and_then(Value::as_f64)) {
                (Some(x), Some(y)) => format!("{:+.4}", y - x),
                _ => "-".to_string(),
            };
            let show = |v: Option<&Value>| v.map(format_value).unwrap_or_else(|| "-".to_string());
            println!("{stage:<12} {name:<16} {:>10} {:>10} {change:>10}", show(a), show(b));
        }
    }
}

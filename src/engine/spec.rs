//! `pipeline.yaml` → a validated [`Pipeline`].
//!
//! Parsing is strict: unknown keys are rejected by serde with the file, line and column;
//! semantic errors (unknown kind, missing dep, bad params) name the key path, such as
//! `stages.train.deps.features`. Validation happens in full before anything runs.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use indexmap::IndexMap;
use serde::Deserialize;
use serde_json::Value;

use crate::engine::stage::StageKind;

/// The set of stage kinds a pipeline may use, by name.
#[derive(Clone, Default)]
pub struct KindRegistry {
    kinds: HashMap<&'static str, Arc<dyn StageKind>>,
}

impl KindRegistry {
    pub fn new(kinds: impl IntoIterator<Item = Arc<dyn StageKind>>) -> Self {
        Self { kinds: kinds.into_iter().map(|kind| (kind.name(), kind)).collect() }
    }

    pub fn get(&self, name: &str) -> Option<&Arc<dyn StageKind>> {
        self.kinds.get(name)
    }

    pub fn names(&self) -> Vec<&'static str> {
        let mut names: Vec<_> = self.kinds.keys().copied().collect();
        names.sort();
        names
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPipeline {
    #[serde(default)]
    params: serde_yaml::Value,
    stages: IndexMap<String, RawStage>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStage {
    kind: String,
    #[serde(default)]
    desc: Option<String>,
    #[serde(default)]
    params: serde_yaml::Value,
    #[serde(default)]
    deps: RawDeps,
    /// Only for `kind: cmd`.
    #[serde(default)]
    cmd: Option<String>,
    /// Only for `kind: cmd`.
    #[serde(default)]
    outs: Option<Vec<String>>,
}

#[derive(Deserialize, Default)]
#[serde(untagged)]
enum RawDeps {
    #[default]
    None,
    /// `deps: [a, b]`: each path is its own input name (used by `cmd` stages).
    List(Vec<String>),
    /// `deps: {name: path}`.
    Map(IndexMap<String, String>),
}

/// Where a stage input comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DepSource {
    /// An output of another stage: the whole output directory, or a path inside it.
    Stage { stage: String, path: Option<PathBuf> },
    /// A file or directory in the workspace, relative to the project root.
    Workspace(PathBuf),
}

impl fmt::Display for DepSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DepSource::Stage { stage, path: None } => write!(f, "{stage}"),
            DepSource::Stage { stage, path: Some(path) } => write!(f, "{stage}/{}", path.display()),
            DepSource::Workspace(path) => write!(f, "{}", path.display()),
        }
    }
}

#[derive(Debug, Clone)]
pub struct DepSpec {
    pub name: String,
    pub source: DepSource,
}

#[derive(Clone)]
pub struct StageSpec {
    pub name: String,
    pub kind: Arc<dyn StageKind>,
    pub desc: Option<String>,
    /// Normalized by the kind: defaults filled, unknown keys rejected.
    pub params: Value,
    pub deps: Vec<DepSpec>,
    pub outputs: Vec<String>,
}

impl StageSpec {
    pub fn upstream(&self) -> impl Iterator<Item = &str> {
        self.deps.iter().filter_map(|dep| match &dep.source {
            DepSource::Stage { stage, .. } => Some(stage.as_str()),
            DepSource::Workspace(_) => None,
        })
    }
}

pub struct Pipeline {
    /// The pipeline file, relative to the workspace root when it lies inside it.
    pub file: PathBuf,
    pub params: Value,
    /// In file order.
    pub stages: Vec<StageSpec>,
}

impl Pipeline {
    pub fn stage(&self, name: &str) -> Option<&StageSpec> {
        self.stages.iter().find(|stage| stage.name == name)
    }
}

/// A `-S key=value` override: `stage.param.path=value`, or `params.name=value` for the
/// top-level params block. Values are parsed as YAML scalars (`10`, `0.5`, `true`, `x`).
#[derive(Debug, Clone)]
pub struct Override {
    pub path: Vec<String>,
    pub value: Value,
}

impl std::str::FromStr for Override {
    type Err = anyhow::Error;

    fn from_str(text: &str) -> Result<Self> {
        let (key, raw) = text.split_once('=').ok_or_else(|| anyhow!("expected KEY=VALUE, got `{text}`"))?;
        let path: Vec<String> = key.split('.').map(str::to_string).collect();
        if path.len() < 2 || path.iter().any(String::is_empty) {
            bail!("`{key}`: expected STAGE.PARAM or params.NAME");
        }
        let yaml: serde_yaml::Value =
            serde_yaml::from_str(raw).with_context(|| format!("`{key}`: value `{raw}` is not valid YAML"))?;
        let value = serde_json::to_value(yaml).with_context(|| format!("`{key}`: unsupported value"))?;
        Ok(Self { path, value })
    }
}

/// Loads and validates a pipeline file. `root` is the workspace root, against which
/// workspace deps are resolved.
pub fn load(root: &Path, file: &Path, registry: &KindRegistry, overrides: &[Override]) -> Result<Pipeline> {
    let full = root.join(file);
    let text = std::fs::read_to_string(&full).with_context(|| format!("reading {}", full.display()))?;
    parse(root, file, &text, registry, overrides)
}

pub fn parse(
    root: &Path,
    file: &Path,
    text: &str,
    registry: &KindRegistry,
    overrides: &[Override],
) -> Result<Pipeline> {
    let raw: RawPipeline = serde_yaml::from_str(text).map_err(|err| located_error(file, &err))?;
    let mut params = yaml_to_json(raw.params, "params")?;
    if params.is_null() {
        params = Value::Object(Default::default());
    }
    let mut stage_params: IndexMap<String, Value> = IndexMap::new();
    for (name, stage) in &raw.stages {
        validate_stage_name(name)?;
        stage_params
            .insert(name.clone(), yaml_to_json(stage.params.clone(), &format!("stages.{name}.params"))?);
    }
    apply_overrides(&mut params, &mut stage_params, overrides)?;

    let stage_names: Vec<String> = raw.stages.keys().cloned().collect();
    let stage_names: Vec<&str> = stage_names.iter().map(String::as_str).collect();
    let mut stages = Vec::with_capacity(raw.stages.len());
    for (name, stage) in raw.stages {
        let params = interpolate(&stage_params[&name], &params, &format!("stages.{name}.params"))?;
        stages.push(validate_stage(root, name, stage, params, &stage_names, registry)?);
    }
    let pipeline = Pipeline { file: file.to_path_buf(), params, stages };
    crate::engine::dag::Dag::new(&pipeline)?; // rejects cycles with the stages involved
    Ok(pipeline)
}

fn located_error(file: &Path, err: &serde_yaml::Error) -> anyhow::Error {
    match err.location() {
        Some(loc) => anyhow!("{}:{}:{}: {}", file.display(), loc.line(), loc.column(), strip_location(err)),
        None => anyhow!("{}: {err}", file.display()),
    }
}

/// serde_yaml appends " at line L column C" to its messages; we print the location first.
fn strip_location(err: &serde_yaml::Error) -> String {
    let text = err.to_string();
    match text.rfind(" at line ") {
        Some(index) => text[..index].to_string(),
        None => text,
    }
}

fn yaml_to_json(value: serde_yaml::Value, key: &str) -> Result<Value> {
    serde_json::to_value(value).with_context(|| format!("{key}: keys must be strings"))
}

fn validate_stage_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        && name != "params";
    if !ok {
        bail!("stages.{name}: stage names use letters, digits, '_' and '-' (and `params` is reserved)");
    }
    Ok(())
}

fn validate_stage(
    root: &Path,
    name: String,
    raw: RawStage,
    mut params: Value,
    stage_names: &[&str],
    registry: &KindRegistry,
) -> Result<StageSpec> {
    let key = format!("stages.{name}");
    let kind = registry.get(&raw.kind).cloned().ok_or_else(|| {
        anyhow!("{key}.kind: unknown kind `{}` (known kinds: {})", raw.kind, registry.names().join(", "))
    })?;
    if params.is_null() {
        params = Value::Object(Default::default());
    }
    if raw.cmd.is_some() || raw.outs.is_some() {
        if kind.name() != "cmd" {
            bail!("{key}: `cmd` and `outs` belong to `kind: cmd` stages only");
        }
        let object = params.as_object_mut().ok_or_else(|| anyhow!("{key}.params: expected a mapping"))?;
        if let Some(cmd) = raw.cmd {
            object.insert("cmd".into(), Value::String(cmd));
        }
        if let Some(outs) = raw.outs {
            object.insert("outs".into(), serde_json::to_value(outs)?);
        }
    }
    let params = kind.normalize_params(&params).map_err(|err| anyhow!("{key}.params.{err:#}"))?;
    let deps = validate_deps(root, &key, raw.deps, stage_names)?;
    if let Some(inputs) = kind.inputs() {
        for dep in &deps {
            if !inputs.iter().any(|input| input.name == dep.name) {
                let known: Vec<_> = inputs.iter().map(|input| input.name).collect();
                bail!(
                    "{key}.deps.{}: kind `{}` has no input of that name (inputs: {})",
                    dep.name,
                    kind.name(),
                    known.join(", ")
                );
            }
        }
        for input in inputs.iter().filter(|input| input.required) {
            if !deps.iter().any(|dep| dep.name == input.name) {
                bail!("{key}.deps: kind `{}` needs input `{}`", kind.name(), input.name);
            }
        }
    }
    let outputs = kind.outputs(&params);
    Ok(StageSpec { name, kind, desc: raw.desc, params, deps, outputs })
}

fn validate_deps(root: &Path, key: &str, raw: RawDeps, stage_names: &[&str]) -> Result<Vec<DepSpec>> {
    let pairs: Vec<(String, String)> = match raw {
        RawDeps::None => Vec::new(),
        RawDeps::List(paths) => paths.into_iter().map(|path| (path.clone(), path)).collect(),
        RawDeps::Map(map) => map.into_iter().collect(),
    };
    pairs
        .into_iter()
        .map(|(name, target)| {
            let source =
                resolve_dep(root, &target, stage_names).with_context(|| format!("{key}.deps.{name}"))?;
            Ok(DepSpec { name, source })
        })
        .collect()
}

/// A dep whose first path component names a stage refers to that stage's outputs;
/// anything else must be an existing path inside the workspace.
fn resolve_dep(root: &Path, target: &str, stage_names: &[&str]) -> Result<DepSource> {
    let path = Path::new(target);
    if path.is_absolute() || path.components().any(|c| matches!(c, Component::ParentDir)) {
        bail!("`{target}` must be a path inside the workspace (no absolute paths, no `..`)");
    }
    let mut components = path.components();
    let first = components.next().map(|c| c.as_os_str().to_string_lossy().into_owned()).unwrap_or_default();
    if stage_names.contains(&first.as_str()) {
        if root.join(&first).exists() {
            bail!("`{target}` is ambiguous: `{first}` is both a stage and a workspace path");
        }
        let rest: PathBuf = components.collect();
        let path = (!rest.as_os_str().is_empty()).then_some(rest);
        return Ok(DepSource::Stage { stage: first, path });
    }
    if !root.join(path).exists() {
        bail!("`{target}` is neither a stage nor an existing path in the workspace");
    }
    Ok(DepSource::Workspace(path.to_path_buf()))
}

fn apply_overrides(
    params: &mut Value,
    stage_params: &mut IndexMap<String, Value>,
    overrides: &[Override],
) -> Result<()> {
    for item in overrides {
        let (head, rest) = item.path.split_first().expect("validated in from_str");
        let target = if head == "params" {
            &mut *params
        } else {
            stage_params
                .get_mut(head)
                .ok_or_else(|| anyhow!("-S {}: no stage `{head}`", item.path.join(".")))?
        };
        set_path(target, rest, item.value.clone()).with_context(|| format!("-S {}", item.path.join(".")))?;
    }
    Ok(())
}

fn set_path(target: &mut Value, path: &[String], value: Value) -> Result<()> {
    if target.is_null() {
        *target = Value::Object(Default::default());
    }
    let object = target.as_object_mut().ok_or_else(|| anyhow!("cannot set a key inside a non-mapping"))?;
    match path {
        [last] => {
            object.insert(last.clone(), value);
            Ok(())
        }
        [first, rest @ ..] => set_path(object.entry(first.clone()).or_insert(Value::Null), rest, value),
        [] => unreachable!("override paths have at least one key"),
    }
}

/// Replaces `${name}` references to top-level params. A string that is exactly one
/// reference takes the param's value and type; otherwise references are spliced as text.
fn interpolate(value: &Value, params: &Value, key: &str) -> Result<Value> {
    Ok(match value {
        Value::String(text) => interpolate_string(text, params).with_context(|| key.to_string())?,
        Value::Array(items) => Value::Array(
            items
                .iter()
                .enumerate()
                .map(|(i, item)| interpolate(item, params, &format!("{key}[{i}]")))
                .collect::<Result<_>>()?,
        ),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| Ok((k.clone(), interpolate(v, params, &format!("{key}.{k}"))?)))
                .collect::<Result<_>>()?,
        ),
        other => other.clone(),
    })
}

fn interpolate_string(text: &str, params: &Value) -> Result<Value> {
    if let Some(name) = text.strip_prefix("${").and_then(|rest| rest.strip_suffix('}')) {
        if !name.contains("${") {
            return lookup_param(params, name).cloned();
        }
    }
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let end = rest[start..].find('}').ok_or_else(|| anyhow!("unterminated `${{` in `{text}`"))? + start;
        match lookup_param(params, &rest[start + 2..end])? {
            Value::String(s) => out.push_str(s),
            other => out.push_str(&other.to_string()),
        }
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    Ok(Value::String(out))
}

fn lookup_param<'a>(params: &'a Value, name: &str) -> Result<&'a Value> {
    name.split('.')
        .try_fold(params, |value, key| value.get(key))
        .ok_or_else(|| anyhow!("`${{{name}}}` refers to no entry of the top-level params"))
}

/// Flattens params into `a.b.c → value` pairs, for explaining what changed.
pub fn flatten_params(value: &Value) -> BTreeMap<String, Value> {
    fn walk(prefix: &str, value: &Value, out: &mut BTreeMap<String, Value>) {
        match value {
            Value::Object(map) if !map.is_empty() => {
                for (key, inner) in map {
                    let path = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
                    walk(&path, inner, out);
                }
            }
            other => {
                out.insert(prefix.to_string(), other.clone());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk("", value, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn overrides_parse_yaml_scalars() {
        let item: Override = "train.epochs=20".parse().unwrap();
        assert_eq!(item.path, ["train", "epochs"]);
        assert_eq!(item.value, json!(20));
        let item: Override = "params.name=abc".parse().unwrap();
        assert_eq!(item.value, json!("abc"));
        assert!("epochs=3".parse::<Override>().is_err());
    }

    #[test]
    fn interpolation_keeps_types_and_splices_text() {
        let params = json!({"seed": 7, "model": {"name": "lite0"}});
        let value = json!({"a": "${seed}", "b": "m-${model.name}-${seed}", "c": ["${seed}"]});
        let out = interpolate(&value, &params, "k").unwrap();
        assert_eq!(out, json!({"a": 7, "b": "m-lite0-7", "c": [7]}));
        assert!(interpolate(&json!("${nope}"), &params, "k").is_err());
    }

    #[test]
    fn flatten_names_leaves() {
        let flat = flatten_params(&json!({"a": 1, "b": {"c": 2}}));
        assert_eq!(flat["a"], json!(1));
        assert_eq!(flat["b.c"], json!(2));
    }
}

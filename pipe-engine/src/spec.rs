//! `pipeline.yaml` → a validated [`Pipeline`].
//!
//! Parsing is strict: unknown keys are rejected by serde with the file, line and column;
//! semantic errors (unknown kind, missing dep, bad params) name the key path, such as
//! `stages.train.deps.features`. Validation happens in full before anything runs.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use indexmap::IndexMap;
use serde::de::{self, DeserializeSeed, MapAccess, Visitor};
use serde_json::Value;

use crate::dag::{Cycle, Dag};
use crate::stage::{Inputs, StageKind};

/// Why a pipeline file cannot be used. Every variant names the file, and where it can
/// the line and column or the key path (`stages.train.deps.features`).
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("reading {}: {source}", file.display())]
    Read { file: PathBuf, source: std::io::Error },
    #[error("{}:{line}:{column}: {message}", file.display())]
    Syntax { file: PathBuf, line: usize, column: usize, message: String },
    #[error("{}: {key}: {message}", file.display())]
    Invalid { file: PathBuf, key: String, message: String },
    #[error("{}: the file declares no stages (add some under `stages:`)", file.display())]
    NoStages { file: PathBuf },
    #[error("{}: {cycle}", file.display())]
    Cycle { file: PathBuf, cycle: Cycle },
}

/// A semantic error at a key path, before the file is known.
struct KeyError {
    key: String,
    message: String,
}

impl KeyError {
    fn new(key: impl Into<String>, message: impl fmt::Display) -> Self {
        Self { key: key.into(), message: message.to_string() }
    }

    /// For errors from code that returns anyhow: the whole chain becomes the message.
    fn from_anyhow(key: impl Into<String>, err: anyhow::Error) -> Self {
        Self::new(key, format!("{err:#}"))
    }

    fn in_file(self, file: &Path) -> SpecError {
        SpecError::Invalid { file: file.to_path_buf(), key: self.key, message: self.message }
    }
}

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

    pub fn kinds(&self) -> impl Iterator<Item = &Arc<dyn StageKind>> {
        self.kinds.values()
    }

    /// Every stage key some kind declares (see [`StageKind::stage_keys`]).
    fn stage_keys(&self) -> BTreeSet<&'static str> {
        self.kinds.values().flat_map(|kind| kind.stage_keys().iter().copied()).collect()
    }
}

/// The keys every stage has.
const STAGE_FIELDS: [&str; 5] = ["kind", "desc", "params", "deps", "shards"];

/// The most shards a stage may be split into.
pub const MAX_SHARDS: usize = 10_000;

struct RawPipeline {
    params: serde_yaml::Value,
    stages: IndexMap<String, RawStage>,
}

struct RawStage {
    kind: String,
    desc: Option<String>,
    params: serde_yaml::Value,
    deps: RawDeps,
    shards: Option<usize>,
    /// Keys some kind declares as its own (`cmd:`, `outs:`), checked against this
    /// stage's kind once it is known.
    kind_keys: IndexMap<String, serde_yaml::Value>,
}

#[derive(Default)]
enum RawDeps {
    #[default]
    None,
    /// `deps: [a, b]`: each path is its own input name (used by `cmd` stages).
    List(Vec<String>),
    /// `deps: {name: path}`.
    Map(Vec<(String, String)>),
}

/// Reads the file's mappings strictly: unknown keys, repeated keys and repeated stage
/// names are errors at their line, not silently merged (YAML requires unique keys).
struct PipelineSeed<'a> {
    kind_keys: &'a BTreeSet<&'static str>,
}

impl<'de> DeserializeSeed<'de> for PipelineSeed<'_> {
    type Value = RawPipeline;
    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<RawPipeline, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for PipelineSeed<'_> {
    type Value = RawPipeline;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a mapping with `stages` and optional `params`")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawPipeline, A::Error> {
        let (mut params, mut stages) = (None, None);
        let mut seen = BTreeSet::new();
        let allowed = ["params", "stages"];
        while let Some(key) =
            map.next_key_seed(KeySeed { seen: &seen, allowed: Some(&allowed), repeated: duplicate_field })?
        {
            match key.as_str() {
                "params" => params = Some(map.next_value()?),
                _ => stages = Some(map.next_value_seed(StagesSeed { kind_keys: self.kind_keys })?),
            }
            seen.insert(key);
        }
        let stages = stages.ok_or_else(|| de::Error::missing_field("stages"))?;
        Ok(RawPipeline { params: params.unwrap_or_default(), stages })
    }
}

/// One mapping key, checked while it is read so that an error carries the key's own
/// line: a key already seen in this mapping, or one not in `allowed`, is refused.
struct KeySeed<'a> {
    seen: &'a BTreeSet<String>,
    allowed: Option<&'a [&'a str]>,
    /// Says what a repeated key is: "stage `a` is declared twice", "duplicate field `deps`".
    repeated: fn(&str) -> String,
}

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = String;
    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<String, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed<'_> {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string key")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<String, E> {
        if let Some(allowed) = self.allowed {
            if !allowed.contains(&key) {
                return Err(E::custom(format!(
                    "unknown field `{key}`, expected one of `{}`",
                    allowed.join("`, `")
                )));
            }
        }
        if self.seen.contains(key) {
            return Err(E::custom((self.repeated)(key)));
        }
        Ok(key.to_string())
    }
}

fn duplicate_field(key: &str) -> String {
    format!("duplicate field `{key}`")
}

struct StagesSeed<'a> {
    kind_keys: &'a BTreeSet<&'static str>,
}

impl<'de> DeserializeSeed<'de> for StagesSeed<'_> {
    type Value = IndexMap<String, RawStage>;
    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for StagesSeed<'_> {
    type Value = IndexMap<String, RawStage>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a mapping of stage names to stages")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut stages = IndexMap::new();
        let mut seen = BTreeSet::new();
        let repeated = |name: &str| format!("stage `{name}` is declared twice (rename the copy)");
        while let Some(name) = map.next_key_seed(KeySeed { seen: &seen, allowed: None, repeated })? {
            let stage = map.next_value_seed(StageSeed { kind_keys: self.kind_keys })?;
            seen.insert(name.clone());
            stages.insert(name, stage);
        }
        Ok(stages)
    }
}

struct StageSeed<'a> {
    kind_keys: &'a BTreeSet<&'static str>,
}

impl<'de> DeserializeSeed<'de> for StageSeed<'_> {
    type Value = RawStage;
    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<RawStage, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for StageSeed<'_> {
    type Value = RawStage;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a stage: a mapping with `kind` and optional `desc`, `params`, `deps`")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawStage, A::Error> {
        let (mut kind, mut desc, mut params, mut deps, mut shards) = (None, None, None, None, None);
        let mut kind_keys = IndexMap::new();
        let allowed: Vec<&str> = STAGE_FIELDS.iter().chain(self.kind_keys.iter()).copied().collect();
        let mut seen = BTreeSet::new();
        while let Some(key) =
            map.next_key_seed(KeySeed { seen: &seen, allowed: Some(&allowed), repeated: duplicate_field })?
        {
            match key.as_str() {
                "kind" => kind = Some(map.next_value::<String>()?),
                "desc" => desc = map.next_value::<Option<String>>()?,
                "params" => params = Some(map.next_value::<serde_yaml::Value>()?),
                "deps" => deps = Some(raw_deps(map.next_value::<serde_yaml::Value>()?)?),
                "shards" => shards = Some(map.next_value::<usize>()?),
                _ => {
                    kind_keys.insert(key.clone(), map.next_value::<serde_yaml::Value>()?);
                }
            }
            seen.insert(key);
        }
        Ok(RawStage {
            kind: kind.ok_or_else(|| de::Error::missing_field("kind"))?,
            desc,
            params: params.unwrap_or_default(),
            deps: deps.unwrap_or_default(),
            shards,
            kind_keys,
        })
    }
}

/// `deps:` is a list of paths or a mapping of input names to paths. Repeated names were
/// already refused while reading the mapping.
fn raw_deps<E: de::Error>(value: serde_yaml::Value) -> Result<RawDeps, E> {
    let text = |value: serde_yaml::Value| -> Result<String, E> {
        match value {
            serde_yaml::Value::String(text) => Ok(text),
            other => Err(de::Error::custom(format!("deps: expected a path, got {other:?}"))),
        }
    };
    match value {
        serde_yaml::Value::Null => Ok(RawDeps::None),
        serde_yaml::Value::Sequence(items) => {
            Ok(RawDeps::List(items.into_iter().map(text).collect::<Result<_, E>>()?))
        }
        serde_yaml::Value::Mapping(pairs) => Ok(RawDeps::Map(
            pairs.into_iter().map(|(name, path)| Ok((text(name)?, text(path)?))).collect::<Result<_, E>>()?,
        )),
        _ => Err(de::Error::custom("deps: expected a list of paths or a mapping of input names to paths")),
    }
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
    /// Into how many slices a cluster executor splits the stage (`shards:`; 1 = not
    /// split). Not a param: how work is spread never changes what it produces.
    pub shards: usize,
}

impl StageSpec {
    pub fn upstream(&self) -> impl Iterator<Item = &str> {
        self.deps.iter().filter_map(|dep| match &dep.source {
            DepSource::Stage { stage, .. } => Some(stage.as_str()),
            DepSource::Workspace(_) => None,
        })
    }

    /// The dep bound to input `name`.
    pub fn dep(&self, name: &str) -> Option<&DepSpec> {
        self.deps.iter().find(|dep| dep.name == name)
    }
}

/// A validated pipeline and its stage graph, built once.
pub struct Pipeline {
    /// The pipeline file, relative to the workspace root when it lies inside it.
    pub file: PathBuf,
    pub params: Value,
    /// In file order.
    pub stages: Vec<StageSpec>,
    pub dag: Dag,
}

impl Pipeline {
    pub fn stage(&self, name: &str) -> Option<&StageSpec> {
        self.stages.iter().find(|stage| stage.name == name)
    }

    /// The stages of one kind, in file order.
    pub fn stages_of_kind<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a StageSpec> + 'a {
        self.stages.iter().filter(move |stage| stage.kind.name() == kind)
    }
}

/// A `-S key=value` override: `stage.param.path=value`, or `params.name=value` for the
/// top-level params block. Values are parsed as YAML scalars (`10`, `0.5`, `true`, `x`).
#[derive(Debug, Clone)]
pub struct Override {
    pub path: Vec<String>,
    pub value: Value,
}

/// Written back as `-S` takes it (the value as JSON, which YAML reads the same).
impl fmt::Display for Override {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{}={}", self.path.join("."), self.value)
    }
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
pub fn load(
    root: &Path,
    file: &Path,
    registry: &KindRegistry,
    overrides: &[Override],
) -> Result<Pipeline, SpecError> {
    let full = root.join(file);
    let text = std::fs::read_to_string(&full).map_err(|source| SpecError::Read { file: full, source })?;
    parse(root, file, &text, registry, overrides)
}

pub fn parse(
    root: &Path,
    file: &Path,
    text: &str,
    registry: &KindRegistry,
    overrides: &[Override],
) -> Result<Pipeline, SpecError> {
    let kind_keys = registry.stage_keys();
    let deserializer = serde_yaml::Deserializer::from_str(text);
    let raw = PipelineSeed { kind_keys: &kind_keys }
        .deserialize(deserializer)
        .map_err(|err| located_error(file, &err))?;
    if raw.stages.is_empty() {
        return Err(SpecError::NoStages { file: file.to_path_buf() });
    }
    let (params, stages) =
        validate_stages(root, raw, registry, overrides).map_err(|err| err.in_file(file))?;
    let graph = stages
        .iter()
        .map(|stage| (stage.name.clone(), stage.upstream().map(str::to_string).collect()))
        .collect();
    let dag = Dag::new(graph).map_err(|cycle| SpecError::Cycle { file: file.to_path_buf(), cycle })?;
    Ok(Pipeline { file: file.to_path_buf(), params, stages, dag })
}

fn validate_stages(
    root: &Path,
    raw: RawPipeline,
    registry: &KindRegistry,
    overrides: &[Override],
) -> Result<(Value, Vec<StageSpec>), KeyError> {
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
        let key = format!("stages.{name}.params");
        let stage_params =
            interpolate(&stage_params[&name], &params, &key).map_err(|e| KeyError::from_anyhow(key, e))?;
        stages.push(validate_stage(root, name, stage, stage_params, &stage_names, registry)?);
    }
    Ok((params, stages))
}

fn located_error(file: &Path, err: &serde_yaml::Error) -> SpecError {
    match err.location() {
        Some(loc) => SpecError::Syntax {
            file: file.to_path_buf(),
            line: loc.line(),
            column: loc.column(),
            message: strip_location(err),
        },
        None => {
            SpecError::Invalid { file: file.to_path_buf(), key: "(file)".into(), message: err.to_string() }
        }
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

fn yaml_to_json(value: serde_yaml::Value, key: &str) -> Result<Value, KeyError> {
    serde_json::to_value(value).map_err(|_| KeyError::new(key, "keys must be strings"))
}

fn validate_stage_name(name: &str) -> Result<(), KeyError> {
    let ok = !name.is_empty()
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        && name != "params";
    if !ok {
        return Err(KeyError::new(
            format!("stages.{name}"),
            "stage names use letters, digits, '_' and '-' (and `params` is reserved)",
        ));
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
) -> Result<StageSpec, KeyError> {
    let key = format!("stages.{name}");
    let kind = registry.get(&raw.kind).cloned().ok_or_else(|| {
        KeyError::new(
            format!("{key}.kind"),
            format!("unknown kind `{}` (known kinds: {})", raw.kind, registry.names().join(", ")),
        )
    })?;
    if params.is_null() {
        params = Value::Object(Default::default());
    }
    for (stage_key, value) in raw.kind_keys {
        if !kind.stage_keys().contains(&stage_key.as_str()) {
            return Err(KeyError::new(
                format!("{key}.{stage_key}"),
                format!(
                    "kind `{}` takes no `{stage_key}` key (put its settings under `params:`)",
                    kind.name()
                ),
            ));
        }
        let object = params
            .as_object_mut()
            .ok_or_else(|| KeyError::new(format!("{key}.params"), "expected a mapping"))?;
        object.insert(stage_key.clone(), yaml_to_json(value, &format!("{key}.{stage_key}"))?);
    }
    let params =
        kind.normalize_params(&params).map_err(|err| KeyError::from_anyhow(format!("{key}.params"), err))?;
    let deps = validate_deps(root, &key, raw.deps, stage_names)?;
    if let Inputs::Named(inputs) = kind.inputs() {
        for dep in &deps {
            if !inputs.iter().any(|input| input.name == dep.name) {
                let known: Vec<_> = inputs.iter().map(|input| input.name).collect();
                return Err(KeyError::new(
                    format!("{key}.deps.{}", dep.name),
                    format!(
                        "kind `{}` has no input of that name (inputs: {})",
                        kind.name(),
                        known.join(", ")
                    ),
                ));
            }
        }
        for input in inputs.iter().filter(|input| input.required) {
            if !deps.iter().any(|dep| dep.name == input.name) {
                return Err(KeyError::new(
                    format!("{key}.deps"),
                    format!("kind `{}` needs input `{}`", kind.name(), input.name),
                ));
            }
        }
    }
    let outputs = kind.outputs(&params);
    let shards = raw.shards.unwrap_or(1);
    if !(1..=MAX_SHARDS).contains(&shards) {
        return Err(KeyError::new(
            format!("{key}.shards"),
            format!("must be 1..={MAX_SHARDS}, not {shards}"),
        ));
    }
    if shards > 1 && !kind.shardable(&params) {
        return Err(KeyError::new(
            format!("{key}.shards"),
            format!("kind `{}` cannot be split into shards with these params", kind.name()),
        ));
    }
    Ok(StageSpec { name, kind, desc: raw.desc, params, deps, outputs, shards })
}

fn validate_deps(
    root: &Path,
    key: &str,
    raw: RawDeps,
    stage_names: &[&str],
) -> Result<Vec<DepSpec>, KeyError> {
    let pairs: Vec<(String, String)> = match raw {
        RawDeps::None => Vec::new(),
        RawDeps::List(paths) => paths.into_iter().map(|path| (path.clone(), path)).collect(),
        RawDeps::Map(pairs) => pairs,
    };
    let mut seen = BTreeSet::new();
    pairs
        .into_iter()
        .map(|(name, target)| {
            let dep_key = format!("{key}.deps.{name}");
            if !seen.insert(name.clone()) {
                return Err(KeyError::new(dep_key, "listed twice"));
            }
            let source =
                resolve_dep(root, &target, stage_names).map_err(|e| KeyError::from_anyhow(dep_key, e))?;
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
) -> Result<(), KeyError> {
    for item in overrides {
        let key = format!("-S {}", item.path.join("."));
        let (head, rest) = item.path.split_first().expect("validated in from_str");
        let target = if head == "params" {
            &mut *params
        } else {
            stage_params.get_mut(head).ok_or_else(|| KeyError::new(&key, format!("no stage `{head}`")))?
        };
        set_path(target, rest, item.value.clone()).map_err(|e| KeyError::from_anyhow(key, e))?;
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

    fn parse_text(text: &str) -> Result<Pipeline, SpecError> {
        struct Noop;
        impl StageKind for Noop {
            fn name(&self) -> &'static str {
                "noop"
            }
            fn version(&self) -> u32 {
                1
            }
            fn normalize_params(&self, params: &Value) -> Result<Value> {
                Ok(params.clone())
            }
            fn inputs(&self) -> Inputs {
                Inputs::Any
            }
            fn outputs(&self, _params: &Value) -> Vec<String> {
                Vec::new()
            }
        }
        let registry = KindRegistry::new([Arc::new(Noop) as Arc<dyn StageKind>]);
        let root = tempfile::tempdir().unwrap();
        parse(root.path(), Path::new("p.yaml"), text, &registry, &[])
    }

    #[test]
    fn repeated_stage_names_and_keys_are_errors_at_their_line() {
        let err = parse_text("stages:\n  a:\n    kind: noop\n  a:\n    kind: noop\n").err().unwrap();
        assert!(err.to_string().starts_with("p.yaml:4:"), "{err}");
        assert!(err.to_string().contains("stage `a` is declared twice"), "{err}");
        let err = parse_text("stages:\n  a:\n    kind: noop\n    kind: noop\n").err().unwrap();
        assert!(
            err.to_string().contains("p.yaml:4:") && err.to_string().contains("duplicate field `kind`"),
            "{err}"
        );
        let err = parse_text("stages:\n  a:\n    kind: noop\n    params: {x: 1, x: 2}\n").err().unwrap();
        assert!(err.to_string().contains("p.yaml:4:") && err.to_string().contains("x"), "{err}");
        let err = parse_text("params: {s: 1}\nparams: {s: 2}\nstages:\n  a: {kind: noop}\n").err().unwrap();
        assert!(
            err.to_string().contains("p.yaml:2:") && err.to_string().contains("duplicate field `params`"),
            "{err}"
        );
        let err = parse_text("stages:\n  a:\n    kind: noop\n    deps: {x: a, x: a}\n").err().unwrap();
        assert!(err.to_string().contains("p.yaml:4:"), "{err}");
    }

    #[test]
    fn a_file_without_stages_is_an_error() {
        assert!(matches!(parse_text("stages: {}\n"), Err(SpecError::NoStages { .. })));
        assert!(parse_text("params: {}\n").err().unwrap().to_string().contains("missing field `stages`"));
    }
}

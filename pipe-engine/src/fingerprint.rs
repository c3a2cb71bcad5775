//! Stage fingerprints: when is a stage fresh?
//!
//! A stage is **fresh** when the store holds a complete artifact under its fingerprint.
//! The fingerprint is blake3 over the canonical JSON of a [`Fingerprint`]:
//!
//! | hashed                          | why                                              |
//! |---------------------------------|--------------------------------------------------|
//! | the kind's name                 | a different kind is different work               |
//! | the kind's implementation version | code changes that alter outputs                |
//! | the normalized params           | defaults filled in, keys sorted                  |
//! | each input's name and content hash | files by bytes, directories by sorted (path, hash) |
//!
//! Deliberately **not** hashed: modification times, absolute paths, the stage's name,
//! its position in the file, the host, and anything about how long it took. Two stages
//! with the same kind, params and input contents share one artifact, and going back to
//! earlier params finds the earlier artifact again (the run-cache).
//!
//! An input produced by another stage is hashed by the content of that output, not by
//! the upstream fingerprint, so an upstream rerun that produces identical bytes leaves
//! downstream stages fresh (early cut-off).
//!
//! The cheap check is whether `store/<fingerprint>` exists. Explaining *why* a stage is
//! stale compares the fingerprint's parts with what `pipe.lock` recorded for the stage
//! last time, giving one [`DirtyReason`] per difference.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::spec::flatten_params;

/// Everything that decides a stage's outputs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fingerprint {
    /// The stage kind, e.g. `train`.
    pub kind: String,
    /// [`crate::stage::StageKind::version`].
    pub kind_version: u32,
    /// Normalized params.
    pub params: Value,
    /// Input name → content hash of what it points at.
    pub inputs: BTreeMap<String, String>,
}

impl Fingerprint {
    /// The hex digest naming this stage's artifact in the store.
    pub fn digest(&self) -> String {
        let mut hasher = blake3::Hasher::new();
        hasher.update(b"pipe-fingerprint-v1\n");
        hasher.update(canonical_json(&serde_json::to_value(self).expect("plain data")).as_bytes());
        hasher.finalize().to_hex().to_string()
    }

    /// Why `self` differs from the fingerprint recorded for the last run.
    pub fn diff(&self, old: &Fingerprint, dep_labels: &BTreeMap<String, String>) -> Vec<DirtyReason> {
        let mut reasons = Vec::new();
        if self.kind != old.kind {
            reasons.push(DirtyReason::KindChanged { old: old.kind.clone(), new: self.kind.clone() });
        } else if self.kind_version != old.kind_version {
            reasons.push(DirtyReason::KindVersionChanged { old: old.kind_version, new: self.kind_version });
        }
        let (old_params, new_params) = (flatten_params(&old.params), flatten_params(&self.params));
        let keys: std::collections::BTreeSet<&String> = old_params.keys().chain(new_params.keys()).collect();
        for key in keys {
            let (before, after) = (old_params.get(key), new_params.get(key));
            if before != after {
                reasons.push(DirtyReason::ParamChanged {
                    key: key.clone(),
                    old: before.map(short_value),
                    new: after.map(short_value),
                });
            }
        }
        let names: std::collections::BTreeSet<&String> =
            old.inputs.keys().chain(self.inputs.keys()).collect();
        for name in names {
            let label = dep_labels.get(name).cloned().unwrap_or_else(|| name.clone());
            match (old.inputs.get(name), self.inputs.get(name)) {
                (Some(_), None) => reasons.push(DirtyReason::DepRemoved { dep: label }),
                (None, Some(_)) => reasons.push(DirtyReason::DepAdded { dep: label }),
                (Some(a), Some(b)) if a != b => reasons.push(DirtyReason::DepChanged { dep: label }),
                _ => {}
            }
        }
        reasons
    }
}

/// One cause of a stage being stale, printed by `pipe status` and `pipe run`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirtyReason {
    NeverRun,
    KindChanged {
        old: String,
        new: String,
    },
    KindVersionChanged {
        old: u32,
        new: u32,
    },
    ParamChanged {
        key: String,
        old: Option<String>,
        new: Option<String>,
    },
    DepAdded {
        dep: String,
    },
    DepRemoved {
        dep: String,
    },
    DepChanged {
        dep: String,
    },
    /// An upstream stage will run first, so this stage's inputs are not known yet.
    UpstreamStale {
        stage: String,
    },
    /// The lock file names an artifact that is no longer in the store.
    ArtifactMissing,
    Forced,
}

impl fmt::Display for DirtyReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DirtyReason::NeverRun => write!(f, "never run"),
            DirtyReason::KindChanged { old, new } => write!(f, "kind changed ({old} → {new})"),
            DirtyReason::KindVersionChanged { old, new } => {
                write!(f, "kind implementation changed (v{old} → v{new})")
            }
            DirtyReason::ParamChanged { key, old: Some(old), new: Some(new) } => {
                write!(f, "params.{key} changed ({old} → {new})")
            }
            DirtyReason::ParamChanged { key, old: None, new: Some(new) } => {
                write!(f, "params.{key} added ({new})")
            }
            DirtyReason::ParamChanged { key, old: Some(old), new: None } => {
                write!(f, "params.{key} removed (was {old})")
            }
            DirtyReason::ParamChanged { key, .. } => write!(f, "params.{key} changed"),
            DirtyReason::DepAdded { dep } => write!(f, "new dependency {dep}"),
            DirtyReason::DepRemoved { dep } => write!(f, "dependency {dep} removed"),
            DirtyReason::DepChanged { dep } => write!(f, "{dep} changed"),
            DirtyReason::UpstreamStale { stage } => write!(f, "upstream stage {stage} will run first"),
            DirtyReason::ArtifactMissing => write!(f, "its artifact is missing from the store"),
            DirtyReason::Forced => write!(f, "forced"),
        }
    }
}

fn short_value(value: &Value) -> String {
    let text = match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    if text.chars().count() > 40 {
        format!("{}…", text.chars().take(39).collect::<String>())
    } else {
        text
    }
}

/// JSON with object keys sorted at every level, whatever map type serde_json was built with.
pub fn canonical_json(value: &Value) -> String {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            let body: Vec<String> = keys
                .into_iter()
                .map(|key| format!("{}:{}", Value::String(key.clone()), canonical_json(&map[key])))
                .collect();
            format!("{{{}}}", body.join(","))
        }
        Value::Array(items) => {
            format!("[{}]", items.iter().map(canonical_json).collect::<Vec<_>>().join(","))
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fingerprint(params: Value, input: &str) -> Fingerprint {
        Fingerprint {
            kind: "train".into(),
            kind_version: 1,
            params,
            inputs: BTreeMap::from([("tokens".to_string(), input.to_string())]),
        }
    }

    #[test]
    fn digest_ignores_key_order_but_not_values() {
        let a = fingerprint(json!({"epochs": 10, "lr": 0.001}), "h1");
        let mut b = a.clone();
        b.params = serde_json::from_str(r#"{"lr": 0.001, "epochs": 10}"#).unwrap();
        assert_eq!(a.digest(), b.digest());
        assert_ne!(a.digest(), fingerprint(json!({"epochs": 20, "lr": 0.001}), "h1").digest());
        assert_ne!(a.digest(), fingerprint(json!({"epochs": 10, "lr": 0.001}), "h2").digest());
    }

    #[test]
    fn diff_explains_param_and_dep_changes() {
        let old = fingerprint(json!({"epochs": 10}), "h1");
        let new = fingerprint(json!({"epochs": 20}), "h2");
        let labels = BTreeMap::from([("tokens".to_string(), "tokenize/tokens.parquet".to_string())]);
        let reasons: Vec<String> = new.diff(&old, &labels).iter().map(ToString::to_string).collect();
        assert_eq!(reasons, ["params.epochs changed (10 → 20)", "tokenize/tokens.parquet changed"]);
    }
}

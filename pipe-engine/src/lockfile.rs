//! `pipe.lock`: what each stage last ran with and produced. Committed to git, it pins
//! an experiment: the fingerprints name the artifacts, and `pipe metrics --diff REV`
//! reads an older copy to compare results.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::fingerprint::Fingerprint;
use crate::fsutil::write_atomic;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LockFile {
    /// Bumped if the layout of this file changes.
    pub version: u32,
    pub stages: BTreeMap<String, LockedStage>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LockedStage {
    pub fingerprint: String,
    #[serde(flatten)]
    pub inputs: Fingerprint,
    /// Input name → what it pointed at (for messages).
    pub deps: BTreeMap<String, String>,
    /// Output name → content hash.
    pub outs: BTreeMap<String, String>,
    /// How long the stage took when it last actually ran.
    pub seconds: f64,
}

impl LockFile {
    pub fn load(path: &Path) -> Result<Self> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(&text).with_context(|| format!("reading {}", path.display())),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(err) => Err(err).with_context(|| format!("reading {}", path.display())),
        }
    }

    pub fn parse(text: &str) -> Result<Self> {
        Ok(serde_yaml::from_str(text)?)
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        let mut text = String::from("# Written by `pipe run`. Commit it to pin this experiment.\n");
        text.push_str(&serde_yaml::to_string(&LockFile { version: 1, stages: self.stages.clone() })?);
        write_atomic(path, text.as_bytes())
    }
}

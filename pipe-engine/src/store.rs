//! The content-addressed artifact store under `data/store/`.
//!
//! ```text
//! data/store/<fingerprint>/out/             the stage's outputs
//! data/store/<fingerprint>/manifest.json    output hashes, written last
//! data/store/<fingerprint>/run.json         how the run went (timings); not hashed
//! data/store/.tmp/<fingerprint>/out/        a stage being written
//! ```
//!
//! A stage writes into `.tmp/<fingerprint>/out`. Only when it succeeds are its outputs
//! hashed, the manifest written, and the whole directory renamed into place, so an
//! artifact directory that exists is complete. A run killed at any point leaves at most
//! a `.tmp` directory, which is never trusted: it is wiped before the stage runs again,
//! or handed back to a kind that declared itself resumable.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::fsutil::{remove_path, remove_stale_temps, sync_dir, write_json_atomic};
use crate::hashing::{combine_tree, hash_tree_files, hash_uncached};
use crate::reporter::Reporter;
use crate::stage::Shard;
use crate::workspace::{take_lock, LockMode, RunLock};

/// What a complete artifact records about itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub fingerprint: String,
    pub kind: String,
    /// Output name → content hash.
    pub outputs: BTreeMap<String, String>,
    /// Hash of the whole `out/` directory (for deps on a stage as a whole).
    pub tree_hash: String,
    pub seconds: f64,
}

/// Beside the manifest: what a stage recorded about its run (see `StageContext::record_run`).
const RUN_RECORD_FILE: &str = "run.json";

/// A committed artifact: its manifest, and each file below `out/` with its hash (relative
/// path, blake3 hex), as read once at commit.
#[derive(Debug)]
pub struct Committed {
    pub manifest: Manifest,
    pub files: Vec<(String, String)>,
}

#[derive(Clone)]
pub struct Store {
    root: PathBuf,
    reporter: Reporter,
}

impl Store {
    pub fn new(root: PathBuf, reporter: Reporter) -> Self {
        Self { root, reporter }
    }

    pub fn artifact_dir(&self, fingerprint: &str) -> PathBuf {
        self.root.join(fingerprint)
    }

    pub fn output_dir(&self, fingerprint: &str) -> PathBuf {
        self.artifact_dir(fingerprint).join("out")
    }

    fn tmp_dir(&self, fingerprint: &str) -> PathBuf {
        self.root.join(".tmp").join(fingerprint)
    }

    /// Where a running stage writes its run record; committed with the artifact.
    pub fn run_record_path(&self, fingerprint: &str) -> PathBuf {
        self.tmp_dir(fingerprint).join(RUN_RECORD_FILE)
    }

    /// The run record of a complete artifact, if its stage wrote one.
    pub fn run_record(&self, fingerprint: &str) -> Option<serde_json::Value> {
        let bytes = fs::read(self.artifact_dir(fingerprint).join(RUN_RECORD_FILE)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// The manifest of a complete artifact, or `None`. A damaged manifest is reported
    /// and treated as absent, so the stage simply runs again.
    pub fn manifest(&self, fingerprint: &str) -> Option<Manifest> {
        let path = self.artifact_dir(fingerprint).join("manifest.json");
        let bytes = fs::read(&path).ok()?;
        match serde_json::from_slice::<Manifest>(&bytes) {
            Ok(manifest) if manifest.fingerprint == fingerprint => Some(manifest),
            _ => {
                self.reporter.warn(&format!("ignoring damaged store entry {}", path.display()));
                None
            }
        }
    }

    /// Locks one artifact for computing, so that two runs wanting it do not both compute
    /// it: the second waits (or, without `wait`, fails with [`crate::workspace::WorkspaceBusy`]) and then
    /// finds it committed. Hold it from [`Self::begin`] through [`Self::commit`].
    pub fn lock_entry(&self, fingerprint: &str, wait: bool) -> Result<RunLock> {
        let dir = self.root.join(".locks");
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(RunLock::from(take_lock(
            &dir.join(format!("{fingerprint}.lock")),
            LockMode::Exclusive,
            wait,
            |_| {},
        )?))
    }

    /// A scratch output directory for one shard of a stage: what it writes there is
    /// thrown away (a shard's work goes to its kind's cache).
    pub fn begin_shard(&self, fingerprint: &str, shard: Shard) -> Result<PathBuf> {
        let dir =
            self.root.join(".tmp").join(format!("{fingerprint}.shard-{}-of-{}", shard.index, shard.count));
        remove_path(&dir)?;
        let out = dir.join("out");
        fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
        Ok(out)
    }

    /// Removes a shard's scratch directory (see [`Self::begin_shard`]).
    pub fn end_shard(&self, out: &Path) -> Result<()> {
        remove_path(out.parent().unwrap_or(out))
    }

    /// An empty (or, when `resume`, possibly partial) directory to write outputs into.
    pub fn begin(&self, fingerprint: &str, resume: bool) -> Result<PathBuf> {
        let tmp = self.tmp_dir(fingerprint);
        if resume {
            // A half-written file of the interrupted run would otherwise be committed.
            remove_stale_temps(&tmp, true)?;
        } else {
            remove_path(&tmp)?;
        }
        remove_path(&tmp.join(RUN_RECORD_FILE))?; // an interrupted run's figures are not this run's
        let out = tmp.join("out");
        fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
        Ok(out)
    }

    /// Hashes the outputs, writes the manifest and moves the artifact into place.
    pub fn commit(
        &self,
        fingerprint: &str,
        kind: &str,
        outputs: &[String],
        seconds: f64,
    ) -> Result<Committed> {
        let tmp = self.tmp_dir(fingerprint);
        let out = tmp.join("out");
        // Every file is read once; output hashes and the tree hash are derived from the list.
        let files = hash_tree_files(&out)?;
        let mut hashes = BTreeMap::new();
        for name in outputs {
            let path = out.join(name);
            if !path.exists() {
                bail!("the stage did not write its declared output `{name}`");
            }
            hashes.insert(name.clone(), output_hash(&files, name, &path)?);
        }
        let manifest = Manifest {
            fingerprint: fingerprint.to_string(),
            kind: kind.to_string(),
            outputs: hashes,
            tree_hash: combine_tree(&files),
            seconds,
        };
        write_json_atomic(&tmp.join("manifest.json"), &manifest)?;
        crate::failpoint::point("store-commit:before-rename");
        let dest = self.artifact_dir(fingerprint);
        remove_path(&dest)?; // a damaged entry we decided not to trust
        fs::rename(&tmp, &dest).with_context(|| format!("moving {} into the store", tmp.display()))?;
        sync_dir(&self.root)?;
        Ok(Committed { manifest, files })
    }

    /// Fingerprints of all complete-looking artifacts.
    pub fn list(&self) -> Result<Vec<String>> {
        let Ok(entries) = fs::read_dir(&self.root) else { return Ok(Vec::new()) };
        let mut names = Vec::new();
        for entry in entries {
            let name = entry?.file_name().to_string_lossy().into_owned();
            if !name.starts_with('.') {
                names.push(name);
            }
        }
        names.sort();
        Ok(names)
    }

    /// Rehashes an artifact; returns what does not match its manifest.
    pub fn verify(&self, fingerprint: &str) -> Vec<String> {
        let Some(manifest) = self.manifest(fingerprint) else {
            return vec!["manifest missing or unreadable".to_string()];
        };
        let out = self.output_dir(fingerprint);
        let mut problems = Vec::new();
        for (name, expected) in &manifest.outputs {
            match hash_uncached(&out.join(name)) {
                Ok(actual) if &actual == expected => {}
                Ok(_) => problems.push(format!("{name}: content changed")),
                Err(err) => problems.push(format!("{name}: {err:#}")),
            }
        }
        if problems.is_empty() && hash_uncached(&out).ok().as_deref() != Some(manifest.tree_hash.as_str()) {
            problems.push("extra or missing files in out/".to_string());
        }
        problems
    }

    /// Removes an artifact (and any interrupted write) from the store.
    pub fn remove(&self, fingerprint: &str) -> Result<()> {
        remove_path(&self.artifact_dir(fingerprint))
    }

    /// Removes every interrupted write (and the artifacts' lock files). Only safe while
    /// holding the workspace lock alone.
    pub fn clear_tmp(&self) -> Result<usize> {
        let tmp_root = self.root.join(".tmp");
        let count = fs::read_dir(&tmp_root).map(|entries| entries.count()).unwrap_or(0);
        remove_path(&tmp_root)?;
        remove_path(&self.root.join(".locks"))?;
        Ok(count)
    }
}

/// The hash of one declared output, taken from the already hashed files of `out/`: a
/// file's own hash, or a directory's tree hash over its files relative to it.
fn output_hash(files: &[(String, String)], name: &str, path: &Path) -> Result<String> {
    if path.is_dir() {
        let prefix = format!("{}/", name.trim_end_matches('/'));
        let inner: Vec<(String, String)> = files
            .iter()
            .filter_map(|(file, hash)| Some((file.strip_prefix(&prefix)?.to_string(), hash.clone())))
            .collect();
        return Ok(combine_tree(&inner));
    }
    match files.iter().find(|(file, _)| file == name) {
        Some((_, hash)) => Ok(hash.clone()),
        None => hash_uncached(path),
    }
}

/// Disk usage of a path, in bytes.
pub fn disk_usage(path: &Path) -> u64 {
    walkdir::WalkDir::new(path)
        .into_iter()
        .filter_map(Result::ok)
        .filter_map(|entry| entry.metadata().ok())
        .filter(|meta| meta.is_file())
        .map(|meta| meta.len())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_is_all_or_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::new(tmp.path().join("store"), Reporter::hidden());
        let out = store.begin("fp1", false).unwrap();
        fs::write(out.join("a.txt"), "hello").unwrap();
        assert!(store.manifest("fp1").is_none(), "nothing is visible before commit");
        let err = store.commit("fp1", "k", &["a.txt".into(), "missing".into()], 0.0).unwrap_err();
        assert!(err.to_string().contains("missing"));
        assert!(store.manifest("fp1").is_none());

        fs::create_dir_all(out.join("dir/sub")).unwrap();
        fs::write(out.join("dir/sub/b.txt"), "beta").unwrap();
        fs::write(out.join("dir/c.txt"), "gamma").unwrap();
        let manifest = store.commit("fp1", "k", &["a.txt".into(), "dir".into()], 0.5).unwrap().manifest;
        assert_eq!(store.manifest("fp1"), Some(manifest.clone()));
        let committed = store.output_dir("fp1");
        assert_eq!(manifest.outputs["a.txt"], hash_uncached(&committed.join("a.txt")).unwrap());
        assert_eq!(manifest.outputs["dir"], hash_uncached(&committed.join("dir")).unwrap());
        assert_eq!(manifest.tree_hash, hash_uncached(&committed).unwrap());
        assert!(store.verify("fp1").is_empty());
        fs::write(store.output_dir("fp1").join("a.txt"), "tampered").unwrap();
        assert_eq!(store.verify("fp1"), ["a.txt: content changed"]);
    }

    #[test]
    fn the_run_record_travels_with_the_artifact_outside_its_hashes() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::new(tmp.path().to_path_buf(), Reporter::hidden());
        let out = store.begin("fp", false).unwrap();
        fs::write(out.join("a.txt"), "a").unwrap();
        fs::write(store.run_record_path("fp"), r#"{"seconds": 1.5}"#).unwrap();
        let manifest = store.commit("fp", "k", &["a.txt".into()], 1.5).unwrap().manifest;
        assert_eq!(store.run_record("fp"), Some(serde_json::json!({"seconds": 1.5})));
        assert_eq!(manifest.tree_hash, hash_uncached(&store.output_dir("fp")).unwrap());
        assert!(store.verify("fp").is_empty());
        // A resumed run starts without the interrupted run's record.
        store.begin("fp2", false).unwrap();
        fs::write(store.run_record_path("fp2"), "{}").unwrap();
        store.begin("fp2", true).unwrap();
        assert!(!store.run_record_path("fp2").exists());
    }

    #[test]
    fn begin_wipes_unless_resuming() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::new(tmp.path().to_path_buf(), Reporter::hidden());
        let out = store.begin("fp", false).unwrap();
        fs::write(out.join("part-0"), "x").unwrap();
        assert!(store.begin("fp", true).unwrap().join("part-0").exists());
        assert!(!store.begin("fp", false).unwrap().join("part-0").exists());
    }
}

//! A remote store shared by workspaces and cluster nodes: S3 (or a local folder) through
//! the `object_store` crate.
//!
//! ```text
//! <prefix>/<fingerprint>/out/<file>       the artifact's files
//! <prefix>/<fingerprint>/files.json       each file with its blake3 hash
//! <prefix>/<fingerprint>/run.json         the run record, if the stage wrote one
//! <prefix>/<fingerprint>/manifest.json    written last, only if absent
//! ```
//!
//! A reader trusts an artifact only once its manifest exists, and the manifest is put
//! last, so a half-pushed artifact is invisible. The manifest is put with create-if-absent
//! (`If-None-Match: *` on S3), so two writers of one fingerprint never clobber each other:
//! the second finds it there and is done (the files they both wrote are the same bytes,
//! an artifact being a pure function of its fingerprint). Every downloaded file is checked
//! against its hash in `files.json`, and the list against the manifest's tree hash, before
//! anything enters the local store.
//!
//! The remote is `remote:` in `.pipe/config.yaml`, or `$PIPE_REMOTE`: `s3://bucket/prefix`
//! or `file:///path`. S3 credentials, region and endpoint come from the standard AWS
//! variables (`AWS_ACCESS_KEY_ID`, `AWS_REGION`, `AWS_ENDPOINT_URL`, ...) or, failing them,
//! the `[default]` (or `$AWS_PROFILE`) section of `~/.aws/credentials` and `~/.aws/config`.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::Deserialize;

use crate::hashing::{combine_tree, hash_tree_files};
use crate::store::{Committed, Manifest, Store};
use crate::workspace::Workspace;

/// The environment variable that names the remote, over the config file.
pub const REMOTE_ENV: &str = "PIPE_REMOTE";

/// The project's config file, beside the pipeline files.
pub const CONFIG_FILE: &str = ".pipe/config.yaml";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    remote: Option<String>,
}

/// What [`Remote::push`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Pushed {
    /// Uploaded `files` files, `bytes` bytes.
    Uploaded { files: usize, bytes: u64 },
    /// The remote already held this artifact.
    AlreadyThere,
}

pub struct Remote {
    url: String,
    store: Arc<dyn ObjectStore>,
    prefix: ObjectPath,
    runtime: tokio::runtime::Runtime,
}

impl Remote {
    /// The workspace's remote: `$PIPE_REMOTE`, else `remote:` in `.pipe/config.yaml`.
    pub fn for_workspace(workspace: &Workspace) -> Result<Option<Self>> {
        if let Ok(url) = std::env::var(REMOTE_ENV) {
            if !url.trim().is_empty() {
                return Self::open(url.trim()).with_context(|| format!("${REMOTE_ENV}")).map(Some);
            }
        }
        let path = workspace.root.join(CONFIG_FILE);
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(err).with_context(|| format!("reading {}", path.display())),
        };
        let config: Config =
            serde_yaml::from_str(&text).with_context(|| format!("reading {}", path.display()))?;
        match config.remote {
            Some(url) => Self::open(&url).with_context(|| format!("{}: remote", path.display())).map(Some),
            None => Ok(None),
        }
    }

    /// [`Self::for_workspace`], failing when none is configured.
    pub fn required(workspace: &Workspace) -> Result<Self> {
        Self::for_workspace(workspace)?.ok_or_else(|| {
            anyhow!("no remote store: set {REMOTE_ENV}=s3://bucket/prefix, or `remote:` in {CONFIG_FILE}")
        })
    }

    /// Opens `s3://bucket/prefix` or `file:///absolute/path`.
    pub fn open(url: &str) -> Result<Self> {
        let (store, prefix): (Arc<dyn ObjectStore>, String) = if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                bail!("`{url}`: no bucket (expected s3://bucket/prefix)");
            }
            let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
            builder = aws_files_fallback(builder);
            if std::env::var("AWS_ENDPOINT_URL").is_ok_and(|e| e.starts_with("http://")) {
                builder = builder.with_allow_http(true);
            }
            let store = builder.build().with_context(|| format!("configuring S3 for `{url}`"))?;
            (Arc::new(store), prefix.to_string())
        } else if let Some(path) = url.strip_prefix("file://") {
            if !path.starts_with('/') {
                bail!("`{url}`: a file remote needs an absolute path (file:///path)");
            }
            fs::create_dir_all(path).with_context(|| format!("creating {path}"))?;
            (Arc::new(LocalFileSystem::new_with_prefix(path)?), String::new())
        } else {
            bail!("`{url}`: a remote is s3://bucket/prefix or file:///path");
        };
        Self::with_store(url, store, &prefix)
    }

    /// A remote over any object store (under `prefix`); `url` is what messages call it.
    fn with_store(url: &str, store: Arc<dyn ObjectStore>, prefix: &str) -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the remote store's I/O runtime")?;
        Ok(Self { url: url.to_string(), store, prefix: ObjectPath::from(prefix.trim_matches('/')), runtime })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    fn key(&self, fingerprint: &str, rel: &str) -> ObjectPath {
        let mut key = self.prefix.clone();
        for part in fingerprint.split('/').chain(rel.split('/')) {
            key = key.join(part);
        }
        key
    }

    fn get(&self, key: &ObjectPath) -> Result<Option<bytes::Bytes>> {
        self.runtime.block_on(async {
            match self.store.get(key).await {
                Ok(result) => Ok(Some(result.bytes().await.with_context(|| format!("reading {key}"))?)),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(err) => Err(anyhow::Error::new(err).context(format!("reading {key} from {}", self.url))),
            }
        })
    }

    fn put(&self, key: &ObjectPath, bytes: Vec<u8>) -> Result<()> {
        self.runtime
            .block_on(self.store.put(key, PutPayload::from(bytes)))
            .with_context(|| format!("writing {key} to {}", self.url))?;
        Ok(())
    }

    /// The manifest of a complete remote artifact, if the remote holds one.
    pub fn manifest(&self, fingerprint: &str) -> Result<Option<Manifest>> {
        let key = self.key(fingerprint, "manifest.json");
        let Some(bytes) = self.get(&key)? else { return Ok(None) };
        let manifest: Manifest = serde_json::from_slice(&bytes)
            .with_context(|| format!("{} in {}: not a manifest", key, self.url))?;
        if manifest.fingerprint != fingerprint {
            bail!("{key} in {} names another fingerprint ({})", self.url, manifest.fingerprint);
        }
        Ok(Some(manifest))
    }

    /// Uploads a complete local artifact, its files first and its manifest last (only if
    /// absent). A local artifact that no longer matches its manifest is refused.
    pub fn push(&self, store: &Store, fingerprint: &str) -> Result<Pushed> {
        let manifest = store
            .manifest(fingerprint)
            .ok_or_else(|| anyhow!("artifact {fingerprint} is not in the local store"))?;
        if self.manifest(fingerprint)?.is_some() {
            return Ok(Pushed::AlreadyThere);
        }
        let out = store.output_dir(fingerprint);
        let files = hash_tree_files(&out)?;
        if combine_tree(&files) != manifest.tree_hash {
            bail!("artifact {fingerprint} was changed after it was written (`pipe verify` names the files); not pushed");
        }
        let mut bytes = 0;
        for (rel, _) in &files {
            let content =
                fs::read(out.join(rel)).with_context(|| format!("reading {}", out.join(rel).display()))?;
            bytes += content.len() as u64;
            self.put(&self.key(fingerprint, &format!("out/{rel}")), content)?;
        }
        self.put(&self.key(fingerprint, "files.json"), serde_json::to_vec(&files)?)?;
        if let Some(record) = store.run_record(fingerprint) {
            self.put(&self.key(fingerprint, "run.json"), serde_json::to_vec_pretty(&record)?)?;
        }
        let key = self.key(fingerprint, "manifest.json");
        let body = PutPayload::from(serde_json::to_vec_pretty(&manifest)?);
        let created =
            self.runtime.block_on(self.store.put_opts(&key, body, PutOptions::from(PutMode::Create)));
        match created {
            Ok(_) => Ok(Pushed::Uploaded { files: files.len(), bytes }),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(Pushed::AlreadyThere),
            Err(object_store::Error::NotImplemented { .. }) => {
                // A store without conditional puts: check, then put. Two writers racing here
                // both write the same manifest of the same bytes.
                if self.manifest(fingerprint)?.is_some() {
                    return Ok(Pushed::AlreadyThere);
                }
                self.put(&key, serde_json::to_vec_pretty(&manifest)?)?;
                Ok(Pushed::Uploaded { files: files.len(), bytes })
            }
            Err(err) => Err(anyhow::Error::new(err).context(format!("writing {key} to {}", self.url))),
        }
    }

    /// Downloads a remote artifact into the local store, checking every file against its
    /// hash and the file list against the manifest first. Returns `None` when the remote
    /// does not hold it. The caller holds the artifact's lock ([`Store::lock_entry`]).
    pub fn pull(&self, store: &Store, fingerprint: &str) -> Result<Option<Committed>> {
        let Some(manifest) = self.manifest(fingerprint)? else { return Ok(None) };
        let list_key = self.key(fingerprint, "files.json");
        let list = self.get(&list_key)?.ok_or_else(|| anyhow!("{list_key} is missing from {}", self.url))?;
        let files: Vec<(String, String)> =
            serde_json::from_slice(&list).with_context(|| format!("{list_key} in {}", self.url))?;
        if combine_tree(&files) != manifest.tree_hash {
            bail!("{list_key} in {} does not match the artifact's manifest: refused", self.url);
        }
        let out = store.begin(fingerprint, false)?;
        for (rel, expected) in &files {
            if rel.split('/').any(|part| part.is_empty() || part == "." || part == "..") {
                bail!("{list_key} in {} names a file outside the artifact (`{rel}`): refused", self.url);
            }
            let key = self.key(fingerprint, &format!("out/{rel}"));
            let bytes = self.get(&key)?.ok_or_else(|| anyhow!("{key} is missing from {}", self.url))?;
            let actual = blake3::hash(&bytes).to_hex().to_string();
            if &actual != expected {
                bail!(
                    "{key} in {} does not match its manifest (blake3 {actual}, expected {expected}): refused",
                    self.url
                );
            }
            let path = out.join(rel);
            if let Some(parent) = path.parent() {
                fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
            }
            fs::write(&path, &bytes).with_context(|| format!("writing {}", path.display()))?;
        }
        if let Some(record) = self.get(&self.key(fingerprint, "run.json"))? {
            fs::write(store.run_record_path(fingerprint), record)?;
        }
        let outputs: Vec<String> = manifest.outputs.keys().cloned().collect();
        let committed = store.commit(fingerprint, &manifest.kind, &outputs, manifest.seconds)?;
        if committed.manifest.outputs != manifest.outputs
            || committed.manifest.tree_hash != manifest.tree_hash
        {
            store.remove(fingerprint)?;
            bail!(
                "artifact {fingerprint} from {} does not match its manifest after download: refused",
                self.url
            );
        }
        Ok(Some(committed))
    }
}

impl Remote {
    /// Uploads the files of a kind's cache folder that the remote lacks (cache files are
    /// never rewritten under the same name), each followed by a `.blake3` object naming
    /// its hash. Returns how many were uploaded.
    pub fn push_cache(&self, kind: &str, dir: &Path) -> Result<usize> {
        let there = self.list(&format!("cache/{kind}"))?;
        let mut uploaded = 0;
        for rel in crate::hashing::list_files(dir)? {
            let rel = rel.to_string_lossy().into_owned();
            if rel.split('/').any(|part| part.starts_with('.')) || there.contains(&format!("{rel}.blake3")) {
                continue; // a temp file, or already there
            }
            let bytes =
                fs::read(dir.join(&rel)).with_context(|| format!("reading {}", dir.join(&rel).display()))?;
            let hash = blake3::hash(&bytes).to_hex().to_string();
            self.put(&self.key("cache", &format!("{kind}/{rel}")), bytes)?;
            self.put(&self.key("cache", &format!("{kind}/{rel}.blake3")), hash.into_bytes())?;
            uploaded += 1;
        }
        Ok(uploaded)
    }

    /// Downloads the files of a kind's remote cache that `dir` lacks, each checked against
    /// its `.blake3` object (one that fails is skipped with a warning: a cache only saves
    /// work). Returns how many were added.
    pub fn pull_cache(&self, kind: &str, dir: &Path, warn: impl Fn(String)) -> Result<usize> {
        let mut added = 0;
        for rel in self.list(&format!("cache/{kind}"))? {
            let Some(name) = rel.strip_suffix(".blake3") else { continue };
            let path = dir.join(name);
            if path.exists() || name.split('/').any(|part| part.is_empty() || part.starts_with('.')) {
                continue;
            }
            let key = self.key("cache", &format!("{kind}/{name}"));
            let (Some(bytes), Some(expected)) =
                (self.get(&key)?, self.get(&self.key("cache", &format!("{kind}/{rel}")))?)
            else {
                continue;
            };
            if blake3::hash(&bytes).to_hex().as_bytes() != expected.as_ref() {
                warn(format!("{key} in {} does not match its hash: not used", self.url));
                continue;
            }
            crate::fsutil::write_atomic(&path, &bytes)?;
            added += 1;
        }
        Ok(added)
    }

    /// Every object below `<prefix>/<rel>`, as paths relative to it.
    fn list(&self, rel: &str) -> Result<std::collections::BTreeSet<String>> {
        use futures_util::TryStreamExt;
        let mut base = self.prefix.clone();
        for part in rel.split('/') {
            base = base.join(part);
        }
        let objects: Vec<object_store::ObjectMeta> = self
            .runtime
            .block_on(self.store.list(Some(&base)).try_collect())
            .with_context(|| format!("listing {base} in {}", self.url))?;
        Ok(objects
            .into_iter()
            .filter_map(|meta| {
                meta.location
                    .prefix_match(&base)
                    .map(|parts| parts.map(|p| p.as_ref().to_string()).collect::<Vec<_>>().join("/"))
            })
            .collect())
    }
}

/// Fills S3 credentials and region from `~/.aws/credentials` and `~/.aws/config` (the
/// `$AWS_PROFILE` section, else `default`) where the environment gives none.
fn aws_files_fallback(mut builder: AmazonS3Builder) -> AmazonS3Builder {
    use object_store::aws::AmazonS3ConfigKey as Key;
    let Some(home) = std::env::var_os("HOME").map(PathBuf::from) else { return builder };
    let profile = std::env::var("AWS_PROFILE").unwrap_or_else(|_| "default".to_string());
    let credentials = ini_section(&home.join(".aws/credentials"), &profile);
    let config_section = if profile == "default" { profile.clone() } else { format!("profile {profile}") };
    let config = ini_section(&home.join(".aws/config"), &config_section);
    let missing =
        |key: Key, builder: &AmazonS3Builder| builder.get_config_value(&key).is_none_or(|v| v.is_empty());
    for (key, name, section) in [
        (Key::AccessKeyId, "aws_access_key_id", &credentials),
        (Key::SecretAccessKey, "aws_secret_access_key", &credentials),
        (Key::Token, "aws_session_token", &credentials),
        (Key::Region, "region", &config),
    ] {
        if let (true, Some(value)) = (missing(key, &builder), section.get(name)) {
            builder = builder.with_config(key, value);
        }
    }
    builder
}

/// The `key = value` pairs of one `[section]` of an INI file (empty if absent).
fn ini_section(path: &Path, section: &str) -> BTreeMap<String, String> {
    let Ok(text) = fs::read_to_string(path) else { return BTreeMap::new() };
    let mut current = String::new();
    let mut values = BTreeMap::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') && line.ends_with(']') {
            current = line[1..line.len() - 1].trim().to_string();
        } else if current == section {
            if let Some((key, value)) = line.split_once('=') {
                values.insert(key.trim().to_string(), value.trim().to_string());
            }
        }
    }
    values
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reporter::Reporter;

    fn artifact(store: &Store, fingerprint: &str) {
        let out = store.begin(fingerprint, false).unwrap();
        fs::create_dir_all(out.join("dir")).unwrap();
        fs::write(out.join("a.txt"), "alpha").unwrap();
        fs::write(out.join("dir/b.txt"), "beta").unwrap();
        store.commit(fingerprint, "k", &["a.txt".into(), "dir".into()], 1.0).unwrap();
    }

    #[test]
    fn push_then_pull_gives_the_same_artifact_and_a_damaged_object_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let remote_dir = tmp.path().join("remote");
        let remote = Remote::open(&format!("file://{}", remote_dir.display())).unwrap();
        let here = Store::new(tmp.path().join("here"), Reporter::hidden());
        artifact(&here, "fp");
        assert!(matches!(remote.push(&here, "fp").unwrap(), Pushed::Uploaded { files: 2, .. }));
        assert_eq!(remote.push(&here, "fp").unwrap(), Pushed::AlreadyThere);

        let there = Store::new(tmp.path().join("there"), Reporter::hidden());
        let pulled = remote.pull(&there, "fp").unwrap().unwrap().manifest;
        assert_eq!(Some(pulled), here.manifest("fp"));
        assert!(there.verify("fp").is_empty());
        assert!(remote.pull(&there, "other").unwrap().is_none());

        fs::write(remote_dir.join("fp/out/dir/b.txt"), "bent").unwrap();
        let third = Store::new(tmp.path().join("third"), Reporter::hidden());
        let err = remote.pull(&third, "fp").unwrap_err().to_string();
        assert!(err.contains("fp/out/dir/b.txt") && err.contains("does not match its manifest"), "{err}");
        assert!(third.manifest("fp").is_none(), "nothing of a refused artifact is kept");
    }

    /// A store without conditional puts, as some S3-compatible servers are: a put with
    /// `PutMode::Create` is NotImplemented; everything else goes to a folder.
    #[derive(Debug)]
    struct NoConditionalPuts(LocalFileSystem);

    impl std::fmt::Display for NoConditionalPuts {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "NoConditionalPuts({})", self.0)
        }
    }

    #[async_trait::async_trait]
    impl ObjectStore for NoConditionalPuts {
        async fn put_opts(
            &self,
            location: &ObjectPath,
            payload: PutPayload,
            opts: PutOptions,
        ) -> object_store::Result<object_store::PutResult> {
            if matches!(opts.mode, PutMode::Create) {
                return Err(object_store::Error::NotImplemented {
                    operation: "put_opts with PutMode::Create".into(),
                    implementer: "NoConditionalPuts".into(),
                });
            }
            self.0.put_opts(location, payload, opts).await
        }

        async fn put_multipart_opts(
            &self,
            location: &ObjectPath,
            opts: object_store::PutMultipartOptions,
        ) -> object_store::Result<Box<dyn object_store::MultipartUpload>> {
            self.0.put_multipart_opts(location, opts).await
        }

        async fn get_opts(
            &self,
            location: &ObjectPath,
            options: object_store::GetOptions,
        ) -> object_store::Result<object_store::GetResult> {
            self.0.get_opts(location, options).await
        }

        fn delete_stream(
            &self,
            locations: futures_util::stream::BoxStream<'static, object_store::Result<ObjectPath>>,
        ) -> futures_util::stream::BoxStream<'static, object_store::Result<ObjectPath>> {
            self.0.delete_stream(locations)
        }

        fn list(
            &self,
            prefix: Option<&ObjectPath>,
        ) -> futures_util::stream::BoxStream<'static, object_store::Result<object_store::ObjectMeta>>
        {
            self.0.list(prefix)
        }

        async fn list_with_delimiter(
            &self,
            prefix: Option<&ObjectPath>,
        ) -> object_store::Result<object_store::ListResult> {
            self.0.list_with_delimiter(prefix).await
        }

        async fn copy_opts(
            &self,
            from: &ObjectPath,
            to: &ObjectPath,
            options: object_store::CopyOptions,
        ) -> object_store::Result<()> {
            self.0.copy_opts(from, to, options).await
        }
    }

    /// Without conditional puts the manifest is checked for, then put: pushes (two at once,
    /// too) succeed and leave one artifact that pulls and verifies clean.
    #[test]
    fn a_store_without_conditional_puts_gets_a_check_then_put() {
        let tmp = tempfile::tempdir().unwrap();
        let remote_dir = tmp.path().join("remote");
        fs::create_dir_all(&remote_dir).unwrap();
        let open = || {
            let store = NoConditionalPuts(LocalFileSystem::new_with_prefix(&remote_dir).unwrap());
            Remote::with_store("test://no-conditional-puts", Arc::new(store), "prefix").unwrap()
        };
        let here = Store::new(tmp.path().join("here"), Reporter::hidden());
        artifact(&here, "fp");
        artifact(&here, "fp2");
        assert!(matches!(open().push(&here, "fp").unwrap(), Pushed::Uploaded { files: 2, .. }));
        assert_eq!(open().push(&here, "fp").unwrap(), Pushed::AlreadyThere);
        let pushes: Vec<_> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..2).map(|_| scope.spawn(|| open().push(&here, "fp2"))).collect();
            handles.into_iter().map(|h| h.join().unwrap().unwrap()).collect()
        });
        assert!(pushes.iter().any(|p| matches!(p, Pushed::Uploaded { .. })), "{pushes:?}");
        for fingerprint in ["fp", "fp2"] {
            let there = Store::new(tmp.path().join(format!("there-{fingerprint}")), Reporter::hidden());
            let pulled = open().pull(&there, fingerprint).unwrap().unwrap().manifest;
            assert_eq!(Some(pulled), here.manifest(fingerprint));
            assert!(there.verify(fingerprint).is_empty());
        }
    }

    #[test]
    fn ini_sections_are_read_by_name() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("credentials");
        fs::write(&path, "[default]\naws_access_key_id = A\n[profile x]\nregion=eu-west-1\n").unwrap();
        assert_eq!(ini_section(&path, "default")["aws_access_key_id"], "A");
        assert_eq!(ini_section(&path, "profile x")["region"], "eu-west-1");
        assert!(ini_section(&path, "none").is_empty());
    }
}

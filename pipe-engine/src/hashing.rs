//! Content hashing of workspace files and directories, with a stat cache.
//!
//! A file's hash is blake3 over its bytes. A directory's hash is blake3 over the sorted
//! list of `(relative path, file hash)` pairs, so renaming a file inside it changes the
//! hash but touching it does not. The stat cache remembers `(size, mtime, inode)` per
//! relative path, as DVC's state DB and cargo's mtime checks do: when all three match,
//! the stored hash is reused without reading the file. The cache only ever saves work;
//! it is never the source of truth for anything but "this file was not rewritten".

use std::collections::HashMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};

use anyhow::{bail, Context, Result};
use rayon::prelude::*;

/// Files above this size are hashed with blake3's multi-threaded mmap path.
const LARGE_FILE: u64 = 4 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
struct StatEntry {
    size: u64,
    mtime_ns: i128,
    inode: u64,
    /// blake3 hex, 64 characters.
    hash: String,
}

impl StatEntry {
    fn new(meta: &fs::Metadata, hash: String) -> Self {
        Self { size: meta.len(), mtime_ns: mtime_ns(meta), inode: meta.ino(), hash }
    }

    fn matches(&self, meta: &fs::Metadata) -> bool {
        self.size == meta.len() && self.mtime_ns == mtime_ns(meta) && self.inode == meta.ino()
    }
}

fn mtime_ns(meta: &fs::Metadata) -> i128 {
    meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128
}

/// Maps workspace-relative paths to their last known stat and content hash, and
/// remembers, for one run, the hash of every workspace path already hashed, so that a
/// folder read by several stages is walked once.
#[derive(Default)]
pub struct StatCache {
    /// Read by every file of a walk at once, written only for files that changed.
    entries: RwLock<HashMap<String, StatEntry>>,
    dirty: Mutex<bool>,
    path: Option<PathBuf>,
    /// Hashes of whole workspace paths (files or directories) taken in this run.
    this_run: Mutex<HashMap<PathBuf, String>>,
}

/// The cache file starts with this line; anything else is ignored and rebuilt.
const STAT_CACHE_MAGIC: &[u8] = b"pipe stat cache v2\n";

impl StatCache {
    /// Loads the cache; a missing, unreadable or older-format cache file is an empty cache.
    pub fn load(path: &Path) -> Self {
        let entries = fs::read(path).ok().and_then(|bytes| decode_entries(&bytes)).unwrap_or_default();
        Self { entries: RwLock::new(entries), path: Some(path.to_path_buf()), ..Self::default() }
    }

    /// A cache that remembers nothing across runs (for tests and benchmarks).
    pub fn in_memory() -> Self {
        Self::default()
    }

    /// Writes the cache back if anything changed (temp file, then rename).
    pub fn save(&self) -> Result<()> {
        let (Some(path), true) = (&self.path, *self.dirty.lock().unwrap()) else {
            return Ok(());
        };
        let bytes = encode_entries(&self.entries.read().unwrap());
        crate::fsutil::write_atomic(path, &bytes)
    }

    /// Drops the entries of files that no longer exist under `root` (removed artifacts,
    /// deleted inputs), so the cache does not grow forever; saves if any went. Returns
    /// how many.
    pub fn prune(&self, root: &Path) -> Result<usize> {
        let before = {
            let mut entries = self.entries.write().unwrap();
            let before = entries.len();
            entries.retain(|key, _| fs::symlink_metadata(root.join(key)).is_ok());
            before - entries.len()
        };
        if before > 0 {
            *self.dirty.lock().unwrap() = true;
            self.save()?;
        }
        Ok(before)
    }

    /// Forgets the whole-path hashes of this run. The runner calls it after a stage ran,
    /// since a stage may have written into the workspace.
    pub fn forget_run(&self) {
        self.this_run.lock().unwrap().clear();
    }

    /// Records the hashes of files just written and hashed elsewhere (a committed
    /// artifact's), with their current stat, so later checks of them cost a stat. `dir`
    /// is relative to `root`; `files` are (path relative to `dir`, hash).
    pub fn remember_files(&self, root: &Path, dir: &Path, files: &[(String, String)]) {
        let mut entries = self.entries.write().unwrap();
        for (file, hash) in files {
            let key = dir.join(file);
            let Ok(meta) = fs::metadata(root.join(&key)) else { continue };
            entries.insert(key.to_string_lossy().into_owned(), StatEntry::new(&meta, hash.clone()));
        }
        *self.dirty.lock().unwrap() = true;
    }

    /// Hashes a workspace path (file or directory). `root` is the workspace root and
    /// `rel` the path relative to it, which is the cache key.
    pub fn hash_path(&self, root: &Path, rel: &Path) -> Result<String> {
        if let Some(hash) = self.this_run.lock().unwrap().get(rel) {
            return Ok(hash.clone());
        }
        let full = root.join(rel);
        let meta = fs::metadata(&full).with_context(|| format!("reading {}", rel.display()))?;
        let hash = if meta.is_dir() {
            self.hash_dir(root, rel)?
        } else {
            self.hash_file(&full, &rel.to_string_lossy(), &meta)?
        };
        self.this_run.lock().unwrap().insert(rel.to_path_buf(), hash.clone());
        Ok(hash)
    }

    fn hash_file(&self, full: &Path, key: &str, meta: &fs::Metadata) -> Result<String> {
        if let Some(entry) = self.entries.read().unwrap().get(key) {
            if entry.matches(meta) {
                return Ok(entry.hash.clone());
            }
        }
        let hash = hash_file(full)?;
        self.entries.write().unwrap().insert(key.to_string(), StatEntry::new(meta, hash.clone()));
        *self.dirty.lock().unwrap() = true;
        Ok(hash)
    }

    fn hash_dir(&self, root: &Path, rel: &Path) -> Result<String> {
        let dir = root.join(rel);
        let files = walk_files(&dir)?;
        let hashes: Vec<(String, String)> = files
            .par_iter()
            .map(|file| {
                let full = dir.join(&file.path);
                let meta = file.metadata().with_context(|| format!("reading {}", full.display()))?;
                let key = rel.join(&file.path).to_string_lossy().into_owned();
                Ok((file.path.to_string_lossy().into_owned(), self.hash_file(&full, &key, &meta)?))
            })
            .collect::<Result<_>>()?;
        Ok(combine_tree(&hashes))
    }
}

/// The cache file: the magic line, then per entry the path's length (u32) and bytes,
/// size (u64), mtime in ns (i128), inode (u64) and the 64-character hex hash, all
/// little-endian. A flat format: 8,000 entries load in about a millisecond, where JSON
/// took tens.
fn encode_entries(entries: &HashMap<String, StatEntry>) -> Vec<u8> {
    let mut out = Vec::with_capacity(STAT_CACHE_MAGIC.len() + entries.len() * 160);
    out.extend_from_slice(STAT_CACHE_MAGIC);
    // In path order, so that the same entries always give the same file.
    let mut sorted: Vec<_> = entries.iter().collect();
    sorted.sort_unstable_by(|a, b| a.0.cmp(b.0));
    for (path, entry) in sorted {
        out.extend_from_slice(&(path.len() as u32).to_le_bytes());
        out.extend_from_slice(path.as_bytes());
        out.extend_from_slice(&entry.size.to_le_bytes());
        out.extend_from_slice(&entry.mtime_ns.to_le_bytes());
        out.extend_from_slice(&entry.inode.to_le_bytes());
        out.extend_from_slice(entry.hash.as_bytes());
    }
    out
}

/// The inverse of [`encode_entries`]; `None` for anything malformed (the cache is then
/// rebuilt: it only ever saves work).
fn decode_entries(bytes: &[u8]) -> Option<HashMap<String, StatEntry>> {
    let mut at = STAT_CACHE_MAGIC.len();
    if !bytes.starts_with(STAT_CACHE_MAGIC) {
        return None;
    }
    let mut take = |n: usize| -> Option<&[u8]> {
        let field = bytes.get(at..at + n)?;
        at += n;
        Some(field)
    };
    // About 160 bytes an entry: one allocation for the table, not a rehash per doubling.
    let mut entries = HashMap::with_capacity(bytes.len() / 128);
    while let Some(len) = take(4) {
        let len = u32::from_le_bytes(len.try_into().ok()?) as usize;
        let path = std::str::from_utf8(take(len)?).ok()?.to_string();
        let size = u64::from_le_bytes(take(8)?.try_into().ok()?);
        let mtime_ns = i128::from_le_bytes(take(16)?.try_into().ok()?);
        let inode = u64::from_le_bytes(take(8)?.try_into().ok()?);
        let hash = std::str::from_utf8(take(64)?).ok()?.to_string();
        entries.insert(path, StatEntry { size, mtime_ns, inode, hash });
    }
    // `take(4)` fails at the end, or on 1 to 3 stray bytes: only the first is whole.
    (at == bytes.len()).then_some(entries)
}

/// Hashes any path without a cache: used for immutable store artifacts.
pub fn hash_uncached(path: &Path) -> Result<String> {
    let meta = fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    if !meta.is_dir() {
        return hash_file(path);
    }
    Ok(combine_tree(&hash_tree_files(path)?))
}

/// `(relative path, content hash)` of every file below `dir`, in [`list_files`] order.
pub fn hash_tree_files(dir: &Path) -> Result<Vec<(String, String)>> {
    list_files(dir)?
        .par_iter()
        .map(|inner| Ok((inner.to_string_lossy().into_owned(), hash_file(&dir.join(inner))?)))
        .collect()
}

/// blake3 of a file's bytes, as hex.
pub fn hash_file(path: &Path) -> Result<String> {
    let mut hasher = blake3::Hasher::new();
    let len = fs::metadata(path).with_context(|| format!("reading {}", path.display()))?.len();
    if len >= LARGE_FILE {
        hasher.update_mmap_rayon(path).with_context(|| format!("hashing {}", path.display()))?;
    } else {
        let mut bytes = Vec::with_capacity(len as usize);
        fs::File::open(path)
            .and_then(|mut file| file.read_to_end(&mut bytes))
            .with_context(|| format!("hashing {}", path.display()))?;
        hasher.update(&bytes);
    }
    Ok(hasher.finalize().to_hex().to_string())
}

/// Relative paths of all files below `dir`, sorted, following symlinks: the order every
/// tree hash uses, cached ([`StatCache`]) or not.
pub fn list_files(dir: &Path) -> Result<Vec<PathBuf>> {
    Ok(walk_files(dir)?.into_iter().map(|file| file.path).collect())
}

/// A file found by [`walk_files`]; its metadata is read on demand, so that callers can
/// read it in parallel.
pub struct WalkedFile {
    /// Relative to the walked directory.
    pub path: PathBuf,
    found: Found,
}

enum Found {
    /// A regular file: `stat` it through its directory entry (no path lookup).
    Entry(fs::DirEntry),
    /// A symlink, already followed to find out that it names a file.
    Followed(fs::Metadata),
}

impl WalkedFile {
    pub fn metadata(&self) -> std::io::Result<fs::Metadata> {
        match &self.found {
            Found::Entry(entry) => entry.metadata(),
            Found::Followed(meta) => Ok(meta.clone()),
        }
    }
}

/// The files below `dir`, following symlinks, depth first with siblings by name, without
/// `stat`ing regular files: the no-op `pipe run` over a 10,000-file input is mostly these
/// calls, so callers make them in parallel through [`WalkedFile::metadata`].
pub fn walk_files(dir: &Path) -> Result<Vec<WalkedFile>> {
    let mut files = Vec::new();
    let top = fs::metadata(dir).with_context(|| format!("listing {}", dir.display()))?;
    walk_into(dir, Path::new(""), &mut vec![(top.dev(), top.ino())], &mut files)?;
    Ok(files)
}

/// Depth-first, siblings by name: walkdir's `sort_by_file_name` order. `ancestors` holds
/// the (device, inode) of the directories being walked, to refuse symlink loops.
fn walk_into(
    root: &Path,
    rel: &Path,
    ancestors: &mut Vec<(u64, u64)>,
    files: &mut Vec<WalkedFile>,
) -> Result<()> {
    let dir = root.join(rel);
    let mut entries = fs::read_dir(&dir)
        .and_then(|entries| entries.collect::<std::io::Result<Vec<_>>>())
        .with_context(|| format!("listing {}", dir.display()))?;
    entries.sort_by_cached_key(|entry| entry.file_name()); // one name per entry, not per comparison
    for entry in entries {
        let path = rel.join(entry.file_name());
        let kind = entry.file_type().with_context(|| format!("listing {}", dir.display()))?;
        if kind.is_file() {
            files.push(WalkedFile { path, found: Found::Entry(entry) });
            continue;
        }
        if !kind.is_dir() && !kind.is_symlink() {
            continue;
        }
        let meta =
            fs::metadata(entry.path()).with_context(|| format!("reading {}", root.join(&path).display()))?;
        if meta.is_dir() {
            let id = (meta.dev(), meta.ino());
            if ancestors.contains(&id) {
                bail!("symlink loop at {}", root.join(&path).display());
            }
            ancestors.push(id);
            walk_into(root, &path, ancestors, files)?;
            ancestors.pop();
        } else if meta.is_file() {
            files.push(WalkedFile { path, found: Found::Followed(meta) });
        }
    }
    Ok(())
}

/// The hash of a tree: blake3 over its sorted `path\0hash\n` lines.
pub fn combine_tree(entries: &[(String, String)]) -> String {
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"tree\n");
    for (path, hash) in entries {
        hasher.update(path.as_bytes());
        hasher.update(b"\0");
        hasher.update(hash.as_bytes());
        hasher.update(b"\n");
    }
    hasher.finalize().to_hex().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_files_follows_links_in_walkdirs_order_and_refuses_loops() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["a/x", "a/y/z", "a.txt", "a-b", "B", "b/c", "é"] {
            let path = dir.path().join(name);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(&path, name).unwrap();
        }
        std::os::unix::fs::symlink(dir.path().join("b"), dir.path().join("linked")).unwrap();
        // The order tree hashes were defined with: walkdir's, following links, by file name.
        let walkdir_order: Vec<PathBuf> = walkdir::WalkDir::new(dir.path())
            .follow_links(true)
            .sort_by_file_name()
            .into_iter()
            .map(|entry| entry.unwrap())
            .filter(|entry| entry.file_type().is_file())
            .map(|entry| entry.path().strip_prefix(dir.path()).unwrap().to_path_buf())
            .collect();
        let walked = list_files(dir.path()).unwrap();
        assert_eq!(walked, walkdir_order);
        assert!(walked.contains(&PathBuf::from("linked/c")));
        std::os::unix::fs::symlink(dir.path(), dir.path().join("a/loop")).unwrap();
        assert!(walk_files(dir.path()).is_err());
    }

    #[test]
    fn dir_hash_depends_on_content_and_names_not_mtime() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        fs::create_dir_all(root.join("d/sub")).unwrap();
        fs::write(root.join("d/a.txt"), "alpha").unwrap();
        fs::write(root.join("d/sub/b.txt"), "beta").unwrap();
        let cache = StatCache::in_memory();
        let first = cache.hash_path(root, Path::new("d")).unwrap();
        assert_eq!(first, hash_uncached(&root.join("d")).unwrap());

        // Each change below is seen by a later run (the cache forgets whole-path hashes
        // between runs). Rewriting identical bytes (new mtime) keeps the hash.
        fs::write(root.join("d/a.txt"), "alpha").unwrap();
        cache.forget_run();
        assert_eq!(cache.hash_path(root, Path::new("d")).unwrap(), first);

        fs::write(root.join("d/a.txt"), "alpha!").unwrap();
        cache.forget_run();
        let changed = cache.hash_path(root, Path::new("d")).unwrap();
        assert_ne!(changed, first);

        fs::rename(root.join("d/sub/b.txt"), root.join("d/sub/c.txt")).unwrap();
        cache.forget_run();
        assert_ne!(cache.hash_path(root, Path::new("d")).unwrap(), changed);
    }

    #[test]
    fn stat_cache_survives_save_and_load() {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join("f"), "x").unwrap();
        let cache_path = tmp.path().join("cache.json");
        let cache = StatCache::load(&cache_path);
        let hash = cache.hash_path(tmp.path(), Path::new("f")).unwrap();
        cache.save().unwrap();
        let reloaded = StatCache::load(&cache_path);
        assert_eq!(reloaded.entries.read().unwrap()["f"].hash, hash);
        let mut bytes = fs::read(&cache_path).unwrap();
        bytes.pop();
        assert!(decode_entries(&bytes).is_none(), "a torn cache file is ignored, not half-read");
    }

    #[test]
    fn pruning_drops_the_entries_of_files_that_are_gone() {
        let tmp = tempfile::tempdir().unwrap();
        fs::create_dir(tmp.path().join("d")).unwrap();
        for name in ["a", "b", "c"] {
            fs::write(tmp.path().join("d").join(name), name).unwrap();
        }
        let cache_path = tmp.path().join("cache.bin");
        let cache = StatCache::load(&cache_path);
        cache.hash_path(tmp.path(), Path::new("d")).unwrap();
        cache.save().unwrap();
        fs::remove_file(tmp.path().join("d/b")).unwrap();
        assert_eq!(cache.prune(tmp.path()).unwrap(), 1);
        assert_eq!(cache.prune(tmp.path()).unwrap(), 0);
        let reloaded = StatCache::load(&cache_path);
        let mut kept: Vec<String> = reloaded.entries.read().unwrap().keys().cloned().collect();
        kept.sort();
        assert_eq!(kept, ["d/a", "d/c"]);
    }

    #[test]
    fn a_path_is_hashed_once_per_run_until_a_stage_runs() {
        let tmp = tempfile::tempdir().unwrap();
        fs::create_dir(tmp.path().join("d")).unwrap();
        fs::write(tmp.path().join("d/f"), "one").unwrap();
        let cache = StatCache::in_memory();
        let first = cache.hash_path(tmp.path(), Path::new("d")).unwrap();
        fs::write(tmp.path().join("d/f"), "two, longer").unwrap();
        assert_eq!(cache.hash_path(tmp.path(), Path::new("d")).unwrap(), first, "memoized within the run");
        cache.forget_run();
        assert_ne!(cache.hash_path(tmp.path(), Path::new("d")).unwrap(), first, "rehashed after a stage ran");
    }
}

//! `pipe push` and `pipe pull`: the current artifacts of a pipeline's stages to and from
//! the remote store (see `pipe_engine::remote`).

use anyhow::{bail, Result};

use pipe_engine::lockfile::LockFile;
use pipe_engine::remote::{Pushed, Remote};
use pipe_engine::reporter::Reporter;
use pipe_engine::spec::Pipeline;
use pipe_engine::store::Store;
use pipe_engine::workspace::Workspace;

/// The selected stages (default: all) that the lock file records, with their fingerprints.
fn recorded(workspace: &Workspace, pipeline: &Pipeline, stages: &[String]) -> Result<Vec<(String, String)>> {
    let lock = LockFile::load(&workspace.lock_file_path())?;
    let mut found = Vec::new();
    for name in pipeline.dag.select(stages)? {
        match lock.stages.get(&name) {
            Some(locked) => found.push((name, locked.fingerprint.clone())),
            None if stages.contains(&name) => {
                bail!("stage `{name}` has not run yet (no entry in {})", workspace.lock_file_path().display())
            }
            None => {}
        }
    }
    if found.is_empty() {
        bail!("{} records no stage of this pipeline yet: run it first", workspace.lock_file_path().display());
    }
    Ok(found)
}

/// Uploads the current artifact of each selected stage.
pub fn push(workspace: &Workspace, pipeline: &Pipeline, stages: &[String], reporter: Reporter) -> Result<()> {
    let remote = Remote::required(workspace)?;
    let store = Store::new(workspace.store_dir(), reporter);
    let (mut uploaded, mut there, mut bytes) = (0, 0, 0);
    for (name, fingerprint) in recorded(workspace, pipeline, stages)? {
        if store.manifest(&fingerprint).is_none() {
            bail!(
                "stage `{name}`: its artifact {} is not in the local store (run it, or `pipe pull` it)",
                &fingerprint[..12]
            );
        }
        match remote.push(&store, &fingerprint)? {
            Pushed::Uploaded { files, bytes: size } => {
                println!(
                    "  pushed  {name:<12} {} ({files} files, {:.1} MB)",
                    &fingerprint[..12],
                    size as f64 / 1e6
                );
                uploaded += 1;
                bytes += size;
            }
            Pushed::AlreadyThere => {
                println!("  remote  {name:<12} {} (already there)", &fingerprint[..12]);
                there += 1;
            }
        }
    }
    eprintln!("{uploaded} pushed ({:.1} MB), {there} already in {}", bytes as f64 / 1e6, remote.url());
    Ok(())
}

/// Downloads the current artifact of each selected stage that the local store lacks, and
/// points the stages' views at them.
pub fn pull(workspace: &Workspace, pipeline: &Pipeline, stages: &[String], reporter: Reporter) -> Result<()> {
    let remote = Remote::required(workspace)?;
    let store = Store::new(workspace.store_dir(), reporter);
    let (mut pulled, mut local) = (0, 0);
    for (name, fingerprint) in recorded(workspace, pipeline, stages)? {
        let _entry = store.lock_entry(&fingerprint, true)?;
        if store.manifest(&fingerprint).is_some() {
            local += 1;
        } else {
            match remote.pull(&store, &fingerprint)? {
                Some(_) => {
                    println!("  pulled  {name:<12} {}", &fingerprint[..12]);
                    pulled += 1;
                }
                None => bail!("stage `{name}`: {} is not in {}", &fingerprint[..12], remote.url()),
            }
        }
        workspace.update_view(&name, &store.output_dir(&fingerprint))?;
    }
    eprintln!("{pulled} pulled from {}, {local} already here", remote.url());
    Ok(())
}

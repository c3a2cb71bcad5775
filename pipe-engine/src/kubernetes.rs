//! `pipe export k8s`: a sharded stage as Kubernetes Jobs, with the store on S3.
//!
//! Two Jobs: an Indexed Job of N pods, each `pipe shard STAGE --of N --pull --push` (its
//! index from `JOB_COMPLETION_INDEX`), which fetch what the stage needs from the remote
//! store and upload their slice of the kind's cache; then one pod, `pipe run STAGE --pull
//! --push`, which fetches the slices, writes the artifact and uploads it. Kubernetes has no
//! dependencies between Jobs: apply the second once the first completes (the file's
//! header says how). The container image holds `pipe` and the project (its pipeline file
//! and the workspace paths the stages read).

use anyhow::{bail, Result};
use serde_json::{json, Value};

use crate::spec::Pipeline;

/// What the user names for the export.
#[derive(Debug, Clone)]
pub struct K8sExport {
    pub stage: String,
    pub shards: usize,
    /// The container image holding `pipe` and the project.
    pub image: String,
    /// The project root inside the image.
    pub workdir: String,
    /// The remote store (`s3://bucket/prefix`).
    pub remote: String,
    /// A Secret with the AWS variables (`AWS_ACCESS_KEY_ID`, ...), passed as environment.
    pub aws_secret: String,
    /// The pipeline file, relative to the project root.
    pub pipeline_file: String,
    /// `-S` overrides, as given.
    pub overrides: Vec<String>,
}

/// The YAML of both Jobs, with a header saying how to apply them.
pub fn export(pipeline: &Pipeline, export: &K8sExport) -> Result<String> {
    let Some(stage) = pipeline.stage(&export.stage) else {
        bail!("no stage named `{}`", export.stage);
    };
    if !stage.kind.shardable(&stage.params) {
        bail!("stage {}: kind `{}` cannot be split into shards", stage.name, stage.kind.name());
    }
    if export.shards == 0 {
        bail!("--shards must be at least 1");
    }
    if !export.remote.starts_with("s3://") {
        bail!("`{}`: pods share their work through an S3 remote (s3://bucket/prefix)", export.remote);
    }
    let name = kubernetes_name(&format!("pipe-{}", stage.name));
    let shards = export.shards.to_string();
    let mut shard_args =
        vec!["-f", &export.pipeline_file, "shard", &stage.name, "--of", &shards, "--pull", "--push"];
    let mut merge_args = vec!["-f", &export.pipeline_file, "run", &stage.name, "--pull", "--push"];
    for set in &export.overrides {
        for args in [&mut shard_args, &mut merge_args] {
            args.extend(["-S", set.as_str()]);
        }
    }
    let shard_job = job(export, &format!("{name}-shards"), &shard_args, Some(export.shards));
    let merge_job = job(export, &name, &merge_args, None);
    let mut text = format!(
        "# Written by `pipe export k8s {stage} --shards {shards}`. Apply the shards, wait, then the merge:\n\
         #   kubectl apply -f FILE -l pipe/part=shards\n\
         #   kubectl wait --for=condition=complete --timeout=24h job/{name}-shards\n\
         #   kubectl apply -f FILE -l pipe/part=merge\n\
         # Both need the Secret `{secret}` with the AWS variables for {remote}.\n",
        stage = stage.name,
        secret = export.aws_secret,
        remote = export.remote,
    );
    text.push_str("---\n");
    text.push_str(&serde_yaml::to_string(&shard_job)?);
    text.push_str("---\n");
    text.push_str(&serde_yaml::to_string(&merge_job)?);
    Ok(text)
}

fn job(export: &K8sExport, name: &str, args: &[&str], indexed: Option<usize>) -> Value {
    let part = if indexed.is_some() { "shards" } else { "merge" };
    let labels = json!({"app.kubernetes.io/name": "pipe", "pipe/stage": export.stage, "pipe/part": part});
    let container = json!({
        "name": part,
        "image": export.image,
        "workingDir": export.workdir,
        "command": ["pipe"],
        "args": args,
        "env": [{"name": "PIPE_REMOTE", "value": export.remote}],
        "envFrom": [{"secretRef": {"name": export.aws_secret}}],
    });
    let mut spec = json!({
        "backoffLimit": 3,
        "template": {
            "metadata": {"labels": labels},
            "spec": {"restartPolicy": "Never", "containers": [container]},
        },
    });
    if let Some(count) = indexed {
        let object = spec.as_object_mut().expect("a JSON object");
        object.insert("completionMode".into(), json!("Indexed"));
        object.insert("completions".into(), json!(count));
        object.insert("parallelism".into(), json!(count));
        // A failed pod is retried on its own index; the others keep their work.
        object.insert("backoffLimitPerIndex".into(), json!(3));
        object.remove("backoffLimit");
    }
    json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "labels": labels},
        "spec": spec,
    })
}

/// A DNS-1123 name: lower case, digits and '-', at most 63 characters.
fn kubernetes_name(raw: &str) -> String {
    let mut name: String =
        raw.to_ascii_lowercase().chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect();
    name.truncate(55); // room for "-shards"
    name.trim_matches('-').to_string()
}

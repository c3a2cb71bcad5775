//! `pipe export k8s` (issue 14): the Jobs it writes match a golden file, and the commands
//! in them, run as the pods would (each in a fresh copy of the project, its index in
//! `JOB_COMPLETION_INDEX`, sharing only a remote store), produce the artifact a single
//! machine does; where kubectl is installed, it accepts the Jobs. No cluster is needed
//! (nor can one be had here: `kubectl apply --dry-run=client` asks an API server to map
//! the kinds, so the test serves API discovery itself).

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

mod common;
use common::{project, repo, which};

const SIZE: &[&str] = &["-S", "synth.images=120", "-S", "synth.size=64"];

fn pipe(root: &Path, env: &[(&str, String)], args: &[&str]) -> Output {
    pipe_on(None, root, env, args)
}

/// [`pipe`], pinned to `cpu` with taskset when one is given: torch then has one thread.
fn pipe_on(cpu: Option<&str>, root: &Path, env: &[(&str, String)], args: &[&str]) -> Output {
    let mut command = match cpu {
        Some(cpu) => {
            let mut taskset = Command::new("taskset");
            taskset.args(["-c", cpu, env!("CARGO_BIN_EXE_pipe")]);
            taskset
        }
        None => Command::new(env!("CARGO_BIN_EXE_pipe")),
    };
    command.args(args).current_dir(root).env_remove("PIPE_REMOTE").env_remove("JOB_COMPLETION_INDEX");
    command.envs(env.iter().map(|(k, v)| (*k, v.as_str())));
    command.output().unwrap()
}

fn ok(out: Output) -> String {
    let text = format!("{}{}", String::from_utf8_lossy(&out.stderr), String::from_utf8_lossy(&out.stdout));
    assert!(out.status.success(), "failed:\n{text}");
    text
}

#[test]
fn the_exported_jobs_match_the_golden_file() {
    let root = project();
    let mut args = vec![
        "export",
        "k8s",
        "features",
        "--shards",
        "4",
        "--image",
        "registry.example/pipe:1.0",
        "--remote",
        "s3://team-bucket/pipe",
    ];
    args.extend(SIZE);
    let yaml = ok(pipe(root.path(), &[], &args));
    let golden = repo().join("tests/fixtures/k8s/features-4.yaml");
    if std::env::var_os("PIPE_UPDATE_GOLDEN").is_some() {
        fs::write(&golden, &yaml).unwrap();
    }
    assert_eq!(
        yaml,
        fs::read_to_string(&golden).unwrap(),
        "PIPE_UPDATE_GOLDEN=1 rewrites {}",
        golden.display()
    );
    let refused = pipe(
        root.path(),
        &[],
        &["export", "k8s", "train", "--shards", "2", "--image", "x", "--remote", "s3://b/p"],
    );
    assert!(String::from_utf8_lossy(&refused.stderr).contains("cannot be split into shards"));
}

/// kubectl, where installed, accepts the golden Jobs: it decodes them into its typed
/// batch/v1 Job (a mistyped field fails, as the mutated copy shows), and `kubectl apply
/// --dry-run=client` maps and creates them against a discovery-only API endpoint served
/// here (there is no cluster; `--validate=false`, since schema validation would need the
/// server's OpenAPI document).
#[test]
fn kubectl_accepts_the_exported_jobs() {
    let Some(kubectl) = which(&["kubectl"]) else {
        eprintln!("SKIPPED: kubectl is not installed; the golden-file test still checks the Jobs");
        return;
    };
    let golden = repo().join("tests/fixtures/k8s/features-4.yaml");
    let dir = tempfile::tempdir().unwrap();
    let kubectl = |args: &[&str]| {
        Command::new(&kubectl).args(args).env("KUBECONFIG", dir.path().join("kubeconfig")).output().unwrap()
    };
    let typed = ok(kubectl(&["set", "env", "--local", "-o", "name", "-f", golden.to_str().unwrap(), "X=1"]));
    assert_eq!(
        typed.lines().collect::<Vec<_>>(),
        ["job.batch/pipe-features-shards", "job.batch/pipe-features"]
    );
    let mistyped = dir.path().join("mistyped.yaml");
    let yaml = fs::read_to_string(&golden).unwrap();
    assert!(yaml.contains("completions: 4"));
    fs::write(&mistyped, yaml.replacen("completions: 4", "completions: four", 1)).unwrap();
    let refused = kubectl(&["set", "env", "--local", "-o", "name", "-f", mistyped.to_str().unwrap(), "X=1"]);
    assert!(!refused.status.success() && String::from_utf8_lossy(&refused.stderr).contains("completions"));

    let port = serve_discovery();
    fs::write(
        dir.path().join("kubeconfig"),
        format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: c, cluster: {{server: 'http://127.0.0.1:{port}'}}}}]\n\
             users: [{{name: u, user: {{}}}}]\ncontexts: [{{name: c, context: {{cluster: c, user: u, namespace: ns}}}}]\n\
             current-context: c\n"
        ),
    )
    .unwrap();
    let applied =
        ok(kubectl(&["apply", "--dry-run=client", "--validate=false", "-f", golden.to_str().unwrap()]));
    assert!(applied.contains("job.batch/pipe-features-shards created (dry run)"), "{applied}");
    assert!(applied.contains("job.batch/pipe-features created (dry run)"), "{applied}");
}

/// A local HTTP endpoint that answers Kubernetes API discovery (the core group and
/// batch/v1 with its `jobs`) and 404 to everything else, as an empty cluster would for a
/// Job that does not exist. Returns its port; serves until the test process ends.
fn serve_discovery() -> u16 {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream);
            let mut request = String::new();
            let _ = reader.read_line(&mut request);
            loop {
                let mut header = String::new();
                if reader.read_line(&mut header).map_or(true, |n| n == 0) || header == "\r\n" {
                    break;
                }
            }
            let path = request.split_whitespace().nth(1).unwrap_or("").split('?').next().unwrap_or("");
            let body = match path {
                "/api" => r#"{"kind":"APIVersions","versions":["v1"],"serverAddressByClientCIDRs":[]}"#,
                "/api/v1" => r#"{"kind":"APIResourceList","groupVersion":"v1","resources":[]}"#,
                "/apis" => {
                    r#"{"kind":"APIGroupList","apiVersion":"v1","groups":[{"name":"batch","versions":[{"groupVersion":"batch/v1","version":"v1"}],"preferredVersion":{"groupVersion":"batch/v1","version":"v1"}}]}"#
                }
                "/apis/batch/v1" => {
                    r#"{"kind":"APIResourceList","groupVersion":"batch/v1","resources":[{"name":"jobs","singularName":"job","namespaced":true,"kind":"Job","verbs":["create","get","list","patch","delete"]}]}"#
                }
                _ => "",
            };
            let status = if body.is_empty() { "404 Not Found" } else { "200 OK" };
            let _ = write!(
                reader.get_mut(),
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    port
}

/// The first CPU this process may run on (Linux's `Cpus_allowed_list`), for taskset.
fn first_allowed_cpu() -> Option<String> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let list = status.lines().find_map(|line| line.strip_prefix("Cpus_allowed_list:"))?;
    Some(list.trim().split([',', '-']).next()?.to_string())
}

/// Each Job's container args, from the exported YAML.
fn job_args(yaml: &str) -> Vec<Vec<String>> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|doc| {
            let job = serde_yaml::Value::deserialize(doc).unwrap();
            let args = &job["spec"]["template"]["spec"]["containers"][0]["args"];
            args.as_sequence().unwrap().iter().map(|arg| arg.as_str().unwrap().to_string()).collect()
        })
        .collect()
}

use serde::Deserialize;

#[test]
fn the_exported_commands_shard_through_a_remote_store_to_the_single_machine_bytes() {
    let remote = tempfile::tempdir().unwrap();
    let env = vec![("PIPE_REMOTE", format!("file://{}", remote.path().display()))];
    // The submitter computes what the shards need and pushes it.
    let origin = project();
    let mut args = vec!["run", "ingest", "--push"];
    args.extend(SIZE);
    ok(pipe(origin.path(), &env, &args));
    let mut args = vec!["export", "k8s", "features", "--shards", "3", "--image", "x", "--remote", "s3://b/p"];
    args.extend(SIZE);
    let jobs = job_args(&ok(pipe(origin.path(), &[], &args)));
    assert_eq!(jobs.len(), 2);

    // Three shard pods and a merge pod, each in its own copy of the project. The first
    // pod has one CPU, as a small pod would: its tail batch of 8 images must still give
    // the bytes a batch of 32 on every core gives.
    let one_cpu = which(&["taskset"]).and_then(|_| first_allowed_cpu());
    if one_cpu.is_none() {
        eprintln!("taskset (util-linux) or /proc/self/status missing: every pod runs on every core");
    }
    for index in 0..3 {
        let pod = project();
        let mut env = env.clone();
        env.push(("JOB_COMPLETION_INDEX", index.to_string()));
        let args: Vec<&str> = jobs[0].iter().map(String::as_str).collect();
        let cpu = if index == 0 { one_cpu.as_deref() } else { None };
        let log = ok(pipe_on(cpu, pod.path(), &env, &args));
        assert!(log.contains(&format!("shard {index}/3: 40 of 120 distinct images: 40 computed")), "{log}");
        assert!(log.contains("  pulled  ingest"), "the pod fetched its inputs: {log}");
    }
    let merge = project();
    let args: Vec<&str> = jobs[1].iter().map(String::as_str).collect();
    let log = ok(pipe(merge.path(), &env, &args));
    assert!(log.contains("0 computed, 120 reused from cache"), "{log}");
    assert!(log.contains("  pushed  features"), "{log}");

    let mut args = vec!["run", "features"];
    args.extend(SIZE);
    ok(pipe(origin.path(), &[], &args));
    let features = |root: &Path| fs::read(root.join("data/out/features/features.arrow")).unwrap();
    assert!(features(merge.path()) == features(origin.path()), "sharded on pods = one machine");
}

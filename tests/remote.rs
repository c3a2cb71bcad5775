//! The remote store (issue 14), against a folder remote and against a real S3-compatible
//! server (moto's server mode, started here; `.ci/run` installs `moto[server]`): push from
//! one workspace, and `run --pull` in a fresh one computes nothing and ends with the same
//! bytes; a damaged remote object is refused and the stage computed here; two concurrent
//! pushes of one artifact both succeed and leave one valid copy.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{output_hashes, project, which};

const SIZE: &[&str] =
    &["-S", "synth.images=160", "-S", "synth.size=64", "-S", "train.epochs=3", "-S", "caption.beam_width=3"];

/// How pipe reaches the remote: environment variables, and a way to damage one object.
trait Remote {
    fn env(&self, prefix: &str) -> Vec<(String, String)>;
    fn damage(&self, prefix: &str, key: &str);
}

struct Folder(tempfile::TempDir);

impl Remote for Folder {
    fn env(&self, prefix: &str) -> Vec<(String, String)> {
        vec![("PIPE_REMOTE".into(), format!("file://{}/{prefix}", self.0.path().display()))]
    }
    fn damage(&self, prefix: &str, key: &str) {
        std::fs::write(self.0.path().join(prefix).join(key), b"damaged").unwrap();
    }
}

/// moto's S3 server on a free port, with one bucket; stopped when dropped.
struct Moto {
    child: Child,
    port: u16,
    /// The Python beside moto_server, which has boto3 (a dependency of moto).
    python: PathBuf,
}

impl Moto {
    fn start() -> Option<Self> {
        let program = std::env::var_os("PIPE_MOTO_SERVER")
            .map(PathBuf::from)
            .filter(|path| path.exists())
            .or_else(|| which(&["moto_server"]));
        let Some(program) = program else {
            eprintln!("SKIPPED (S3 half): moto_server not found; .ci/run installs moto[server] (or set PIPE_MOTO_SERVER)");
            return None;
        };
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new(&program)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let python = program.with_file_name("python");
        let moto = Self { child, port, python };
        let started = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(started.elapsed() < Duration::from_secs(30), "moto_server did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(moto.http("PUT", "/pipe", b"").starts_with("HTTP/1.1 200"), "creating the bucket");
        Some(moto)
    }

    /// One unsigned request (moto takes any credentials); returns the response's head.
    fn http(&self, method: &str, path: &str, body: &[u8]) -> String {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            self.port,
            body.len()
        );
        stream.write_all(head.as_bytes()).unwrap();
        stream.write_all(body).unwrap();
        let mut response = String::new();
        let _ = stream.read_to_string(&mut response);
        response
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Remote for Moto {
    fn env(&self, prefix: &str) -> Vec<(String, String)> {
        [
            ("PIPE_REMOTE", format!("s3://pipe/{prefix}")),
            ("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{}", self.port)),
            ("AWS_ACCESS_KEY_ID", "testing".into()),
            ("AWS_SECRET_ACCESS_KEY", "testing-secret".into()),
            ("AWS_REGION", "us-east-1".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }
    /// A signed put (moto refuses unsigned object writes), with boto3.
    fn damage(&self, prefix: &str, key: &str) {
        let script = format!(
            "import boto3; boto3.client('s3', endpoint_url='http://127.0.0.1:{}', region_name='us-east-1', \
             aws_access_key_id='testing', aws_secret_access_key='testing-secret')\
             .put_object(Bucket='pipe', Key='{prefix}/{key}', Body=b'damaged')",
            self.port
        );
        let out = Command::new(&self.python).args(["-c", &script]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
}

fn pipe(root: &Path, env: &[(String, String)], args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_pipe"));
    command.args(args).current_dir(root).env_remove("PIPE_REMOTE");
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().unwrap()
}

fn ok(out: Output) -> String {
    let text = format!("{}{}", String::from_utf8_lossy(&out.stderr), String::from_utf8_lossy(&out.stdout));
    assert!(out.status.success(), "failed:\n{text}");
    text
}

fn run_args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["run"];
    args.extend(extra);
    args.extend(SIZE);
    args
}

/// The fingerprint of a stage, from a workspace's lock file.
fn fingerprint(root: &Path, stage: &str) -> String {
    let lock = std::fs::read_to_string(root.join("pipe.lock")).unwrap();
    let start = lock.find(&format!("\n  {stage}:\n")).unwrap();
    let line = lock[start..].lines().find(|line| line.trim_start().starts_with("fingerprint:")).unwrap();
    line.split(':').nth(1).unwrap().trim().to_string()
}

fn scenario(remote: &dyn Remote, computed: &Path) {
    let env = remote.env("cache");
    let pushed = ok(pipe(computed, &env, &["push"]));
    assert!(pushed.contains("8 pushed"), "{pushed}");
    assert!(ok(pipe(computed, &env, &["push"])).contains("0 pushed"), "a second push uploads nothing");

    // A fresh clone fetches everything and computes nothing.
    let fresh = project();
    let log = ok(pipe(fresh.path(), &env, &run_args(&["--pull"])));
    assert!(log.contains("8 stages: 0 ran, 8 cached"), "{log}");
    assert_eq!(log.matches("  pulled  ").count(), 8, "{log}");
    assert_eq!(output_hashes(fresh.path()), output_hashes(computed));
    assert!(ok(pipe(fresh.path(), &[], &["verify"])).contains(", 0 damaged"));

    // A damaged object is refused: the stage is computed here, to the same bytes.
    let features = fingerprint(computed, "features");
    remote.damage("cache", &format!("{features}/out/features.arrow"));
    let damaged = project();
    let log = ok(pipe(damaged.path(), &env, &run_args(&["--pull"])));
    assert!(log.contains("features.arrow") && log.contains("does not match its manifest"), "{log}");
    assert!(log.contains("computing it here") && log.contains("  ran     features"), "{log}");
    assert_eq!(output_hashes(damaged.path()), output_hashes(computed));
    let refused = pipe(project().path(), &env, &["pull"]);
    assert!(!refused.status.success(), "`pipe pull` of nothing recorded fails");

    // Two pushes of the same artifacts at once: both succeed, and one valid copy is left.
    let env = remote.env("shared");
    let pushes: Vec<Child> = [computed, fresh.path()]
        .iter()
        .map(|root| {
            let mut command = Command::new(env!("CARGO_BIN_EXE_pipe"));
            command.arg("push").current_dir(root).stdout(Stdio::piped()).stderr(Stdio::piped());
            command.envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
            command.spawn().unwrap()
        })
        .collect();
    for push in pushes {
        ok(push.wait_with_output().unwrap());
    }
    let clone = project();
    std::fs::copy(computed.join("pipe.lock"), clone.path().join("pipe.lock")).unwrap();
    let pulled = ok(pipe(clone.path(), &env, &["pull"]));
    assert!(pulled.contains("8 pulled"), "{pulled}");
    assert_eq!(output_hashes(clone.path()), output_hashes(computed));
    assert!(ok(pipe(clone.path(), &[], &["verify"])).contains(", 0 damaged"));
}

#[test]
fn artifacts_travel_through_a_remote_store_checked_on_the_way() {
    let computed = project();
    ok(pipe(computed.path(), &[], &run_args(&[])));
    scenario(&Folder(tempfile::tempdir().unwrap()), computed.path());
    if let Some(moto) = Moto::start() {
        scenario(&moto, computed.path());
    }
}

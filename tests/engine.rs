//! The engine, driven through the `pipe` binary as a user would, in temp directories.
//! Uses `cmd` stages and the test-only `test-concat` kind (it logs each execution to
//! `runs.log`, so tests can count what actually ran).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

struct Project {
    dir: tempfile::TempDir,
}

impl Project {
    fn new(pipeline: &str) -> Self {
        let project = Self { dir: tempfile::tempdir().unwrap() };
        project.write("pipeline.yaml", pipeline);
        project
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    fn write(&self, rel: &str, text: &str) {
        let path = self.root().join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
    }

    fn read(&self, rel: &str) -> String {
        fs::read_to_string(self.root().join(rel)).unwrap_or_else(|e| panic!("reading {rel}: {e}"))
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_pipe"));
        command
            .args(args)
            .current_dir(self.root())
            .env("PIPE_TEST_KINDS", "1")
            .env_remove("PIPE_TEST_SLEEP_MS");
        command
    }

    fn pipe(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    /// Runs pipe, asserts success, returns stderr + stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.pipe(args);
        let text =
            format!("{}{}", String::from_utf8_lossy(&out.stderr), String::from_utf8_lossy(&out.stdout));
        assert!(out.status.success(), "pipe {args:?} failed:\n{text}");
        text
    }

    fn runs(&self) -> Vec<String> {
        fs::read_to_string(self.root().join("runs.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }
}

const CHAIN: &str = r#"
params:
  greeting: hello
stages:
  a:
    kind: test-concat
    deps: {src: input.txt}
    params: {tag: "${greeting}"}
  b:
    kind: test-concat
    deps: {up: a/out.txt}
    params: {tag: one}
  c:
    kind: test-concat
    deps: {up: b/out.txt}
  other:
    kind: cmd
    cmd: cp side.txt "$PIPE_OUT/copy.txt"
    deps: [side.txt]
    outs: [copy.txt]
"#;

fn chain() -> Project {
    let project = Project::new(CHAIN);
    project.write("input.txt", "first");
    project.write("side.txt", "side");
    project
}

#[test]
fn second_run_is_fully_cached() {
    let project = chain();
    let first = project.ok(&["run"]);
    assert!(first.contains("4 stages: 4 ran, 0 cached"), "{first}");
    assert_eq!(project.runs(), ["a", "b", "c"]);
    assert_eq!(project.read("data/out/c/out.txt"), "up=up=src=first\ntag=hello\ntag=one\ntag=\n");
    assert_eq!(project.read("data/out/other/copy.txt"), "side");

    let second = project.ok(&["run"]);
    assert!(second.contains("4 stages: 0 ran, 4 cached"), "{second}");
    assert_eq!(project.runs().len(), 3);
    assert!(project.ok(&["status"]).contains("Everything is up to date."));
}

#[test]
fn content_change_reruns_but_mtime_change_does_not() {
    let project = chain();
    project.ok(&["run"]);
    // Same bytes, new mtime: nothing reruns.
    let file = fs::File::options().write(true).open(project.root().join("input.txt")).unwrap();
    file.set_modified(std::time::SystemTime::now() + Duration::from_secs(60)).unwrap();
    drop(file);
    project.write("side.txt", "side");
    assert!(project.ok(&["run"]).contains("0 ran, 4 cached"));
    // New content: a and everything downstream of it rerun, `other` does not.
    project.write("input.txt", "second");
    let out = project.ok(&["run"]);
    assert!(out.contains("3 ran, 1 cached"), "{out}");
    assert!(out.contains("input.txt changed"), "{out}");
    assert_eq!(&project.runs()[3..], ["a", "b", "c"]);
}

#[test]
fn only_downstream_stages_rerun() {
    let project = chain();
    project.ok(&["run"]);
    project.write("pipeline.yaml", &CHAIN.replace("tag: one", "tag: two"));
    let status = project.ok(&["status"]);
    assert!(status.contains("a: up to date"), "{status}");
    assert!(status.contains("b: params.tag changed (one → two)"), "{status}");
    assert!(status.contains("c: upstream stage b will run first"), "{status}");
    project.ok(&["run"]);
    assert_eq!(&project.runs()[3..], ["b", "c"]);
}

#[test]
fn override_reruns_and_reverting_is_a_cache_hit() {
    let project = chain();
    project.ok(&["run"]);
    let out = project.ok(&["run", "c", "-S", "b.tag=changed"]);
    assert!(out.contains("params.tag changed (one → changed)"), "{out}");
    assert_eq!(&project.runs()[3..], ["b", "c"]);
    assert!(project.read("data/out/c/out.txt").contains("tag=changed"));

    let status = project.ok(&["status"]);
    assert!(status.contains("b: up to date (in the run-cache"), "{status}");
    let back = project.ok(&["run"]);
    assert!(back.contains("0 ran, 4 cached"), "{back}");
    assert_eq!(project.runs().len(), 5, "reverting must not rerun anything");
    assert!(project.read("data/out/c/out.txt").contains("tag=one"));

    // Top-level params reach stages through ${...}.
    project.ok(&["run", "-S", "params.greeting=hi"]);
    assert!(project.read("data/out/a/out.txt").contains("tag=hi"));
}

#[test]
fn dry_run_runs_nothing() {
    let project = chain();
    let out = project.ok(&["run", "--dry-run"]);
    assert!(out.contains("would run a (never run)"), "{out}");
    assert!(project.runs().is_empty());
    assert!(!project.root().join("pipe.lock").exists());
}

fn invalid(pipeline: &str) -> String {
    let project = Project::new(pipeline);
    project.write("input.txt", "x");
    let out = project.pipe(&["run"]);
    assert_eq!(out.status.code(), Some(2), "invalid pipelines exit with 2");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn invalid_pipelines_are_reported_with_locations() {
    let unknown_key = invalid("stages:\n  a:\n    kind: test-concat\n    parms: {}\n");
    assert!(unknown_key.contains("pipeline.yaml:4:5"), "{unknown_key}");
    assert!(unknown_key.contains("unknown field `parms`"), "{unknown_key}");

    let cycle = invalid(
        "stages:\n  a:\n    kind: test-concat\n    deps: {x: b/out.txt}\n  b:\n    kind: test-concat\n    deps: {x: a/out.txt}\n",
    );
    assert!(
        cycle.contains("dependency cycle: a -> b -> a") || cycle.contains("dependency cycle: b -> a -> b"),
        "{cycle}"
    );

    let missing = invalid("stages:\n  a:\n    kind: test-concat\n    deps: {src: nothere.txt}\n");
    assert!(missing.contains("stages.a.deps.src"), "{missing}");
    assert!(missing.contains("`nothere.txt` is neither a stage nor an existing path"), "{missing}");

    let copied = invalid("stages:\n  a:\n    kind: test-concat\n  a:\n    kind: test-concat\n");
    assert!(
        copied.contains("pipeline.yaml:4:") && copied.contains("stage `a` is declared twice"),
        "{copied}"
    );

    let empty = invalid("stages: {}\n");
    assert!(empty.contains("declares no stages"), "{empty}");

    let cmd_key = invalid("stages:\n  a:\n    kind: test-concat\n    cmd: echo hi\n");
    assert!(cmd_key.contains("stages.a.cmd: kind `test-concat` takes no `cmd` key"), "{cmd_key}");

    let kind = invalid("stages:\n  a:\n    kind: tarin\n");
    assert!(kind.contains("stages.a.kind: unknown kind `tarin`"), "{kind}");

    let param = invalid("stages:\n  a:\n    kind: test-concat\n    params: {tagg: 1}\n");
    assert!(param.contains("stages.a.params.tagg") || param.contains("unknown field `tagg`"), "{param}");
}

#[test]
fn failed_stage_exits_3_and_keeps_earlier_results() {
    let project = Project::new(&CHAIN.replace("tag: one", "tag: one, fail: true"));
    project.write("input.txt", "first");
    project.write("side.txt", "side");
    let out = project.pipe(&["run"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("stage `b` failed"));
    assert!(project.ok(&["status"]).contains("a: up to date"));
}

fn wait_for(mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn tmp_outputs(root: &Path) -> Vec<PathBuf> {
    walk(&root.join("data/store/.tmp"))
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                found.extend(walk(&path));
            } else {
                found.push(path);
            }
        }
    }
    found
}

fn spawn_sleeping(project: &Project, args: &[&str], sleep_ms: u32) -> Child {
    project
        .command(args)
        .env("PIPE_TEST_SLEEP_MS", sleep_ms.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn sigkill_mid_stage_leaves_nothing_trusted_and_next_run_completes() {
    let project = chain();
    let mut child = spawn_sleeping(&project, &["run", "b"], 5000);
    // Wait until b has written half of its output, then kill -9.
    wait_for(|| project.runs().contains(&"b".to_string()) && !tmp_outputs(project.root()).is_empty());
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(project.ok(&["status"]).contains("b: "), "b must not be up to date");
    assert!(!project.ok(&["status"]).contains("b: up to date"));

    project.ok(&["run"]);
    assert_eq!(project.read("data/out/b/out.txt"), "up=src=first\ntag=hello\ntag=one\n");
    assert!(project.ok(&["verify"]).contains("0 damaged"));
}

/// Two runs that want the same stage: one computes it, the other waits for it (or, with
/// --no-wait, fails at once) and reuses it.
#[test]
fn concurrent_runs_wait_for_each_other() {
    let project = chain();
    let first = spawn_sleeping(&project, &["run"], 1000);
    wait_for(|| !project.runs().is_empty());
    let busy = project.pipe(&["run", "--no-wait"]);
    assert_eq!(busy.status.code(), Some(4), "{}", String::from_utf8_lossy(&busy.stderr));
    assert!(String::from_utf8_lossy(&busy.stderr).contains("another `pipe` process"));

    let second = spawn_sleeping(&project, &["run"], 1000);
    for child in [first, second] {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    assert_eq!(project.runs(), ["a", "b", "c"], "the waiting run finds everything cached");
    assert_eq!(project.ok(&["status"]).lines().filter(|line| line.ends_with(": up to date")).count(), 4);
}

/// The lock is per artifact, not per workspace (DVC's #7419): stages that a running
/// pipeline is not computing run at once, from this pipeline file or another, and every
/// run's stages end up in the lock file.
#[test]
fn runs_that_share_no_stage_run_at_the_same_time() {
    let project = chain();
    project.write("solo.yaml", "stages:\n  solo:\n    kind: test-concat\n    deps: {src: side.txt}\n");
    let mut slow = spawn_sleeping(&project, &["run", "a"], 2000);
    wait_for(|| !project.runs().is_empty());
    for args in [&["run", "other"][..], &["-f", "solo.yaml", "run"]] {
        let out = spawn_sleeping(&project, args, 0).wait_with_output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    assert!(slow.try_wait().unwrap().is_none(), "both ended while stage a was still being computed");
    let out = slow.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // The slow run read pipe.lock before `other` was added to it, and wrote it after.
    let lock = project.read("pipe.lock");
    assert!(lock.contains("\n  a:") && lock.contains("\n  other:"), "{lock}");
    assert!(project.ok(&["-f", "solo.yaml", "run"]).contains("0 ran"));
}

/// A stage whose artifact another run is computing does not hold up the stages behind it
/// in the queue: with `-j 2`, `other` runs and finishes while the run waits for `a`.
#[test]
fn a_stage_another_run_is_computing_does_not_stall_the_ready_stages() {
    let project = chain();
    let slow = spawn_sleeping(&project, &["run", "a"], 2500);
    wait_for(|| !project.runs().is_empty());
    let out = spawn_sleeping(&project, &["run", "-j", "2"], 0).wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    let line = |prefix: &str| text.lines().position(|l| l.trim_start().starts_with(prefix));
    let (ran_other, cached_a) = (line("ran     other"), line("cached  a"));
    assert!(line("waiting a").is_some(), "{text}");
    assert!(ran_other.is_some() && cached_a.is_some() && ran_other < cached_a, "{text}");
    assert!(slow.wait_with_output().unwrap().status.success());
    assert_eq!(project.runs(), ["a", "b", "c"], "a ran once; the waiting run reused it");
}

/// The concurrency campaign's slice: `pipe gc` and `pipe verify --remove` started while a
/// run is committing wait for it and delete nothing it made or needs.
#[test]
fn gc_and_verify_during_a_run_wait_and_delete_nothing_it_needs() {
    let project = chain();
    project.ok(&["run"]);
    project.write("solo.yaml", "stages:\n  solo:\n    kind: test-concat\n    deps: {src: side.txt}\n");
    let run = spawn_sleeping(&project, &["run", "-S", "b.tag=other"], 1500);
    wait_for(|| project.runs().len() > 3);
    let gc = spawn_sleeping(&project, &["gc", "--ignore-experiments"], 0);
    let verify = spawn_sleeping(&project, &["verify", "--remove"], 0);
    let other = spawn_sleeping(&project, &["-f", "solo.yaml", "run"], 0);
    for child in [run, gc, verify, other] {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    assert!(project.ok(&["run", "-S", "b.tag=other"]).contains("0 ran"), "gc kept what the run made");
    assert!(project.ok(&["-f", "solo.yaml", "run"]).contains("0 ran"));
    assert!(project.ok(&["verify"]).contains(", 0 damaged"));

    // A pipeline file named like a stage of pipeline.yaml would write its views through
    // that stage's view into the store; it is refused instead.
    project.write("other.yaml", "stages:\n  solo:\n    kind: test-concat\n    deps: {src: side.txt}\n");
    let refused = project.pipe(&["-f", "other.yaml", "run"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("data/out/other is the view of a stage"));
    assert!(project.ok(&["verify"]).contains(", 0 damaged"));
}

#[test]
fn gc_removes_unreferenced_and_verify_finds_damage() {
    let project = chain();
    project.ok(&["run"]);
    project.ok(&["run", "-S", "b.tag=other"]);
    // The first run is a recorded experiment: plain gc keeps its artifacts.
    assert!(project.ok(&["gc"]).contains("0 unreferenced artifacts"));
    let gc = project.ok(&["gc", "--ignore-experiments"]);
    assert!(gc.contains("2 unreferenced artifacts"), "{gc}");
    // The stat cache forgets the removed artifacts' files (it would otherwise only grow).
    let forgotten = |out: &str| -> usize {
        let before = out.split(" stat cache entries").next().unwrap();
        before.rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert!(forgotten(&gc) >= 2, "{gc}");
    assert_eq!(forgotten(&project.ok(&["gc", "--ignore-experiments"])), 0);
    assert!(project.ok(&["run", "-S", "b.tag=other"]).contains("0 ran"));

    fs::write(project.root().join("data/out/c/out.txt"), "tampered").unwrap_or_else(|_| {
        // Artifacts may be read-only in the future; write through the store path instead.
        panic!("could not tamper")
    });
    let out = project.pipe(&["verify"]);
    assert_eq!(out.status.code(), Some(5));
    assert!(String::from_utf8_lossy(&out.stdout).contains("out.txt: content changed"));
    project.ok(&["verify", "--remove"]);
    project.ok(&["run", "-S", "b.tag=other"]);
    assert!(project.ok(&["verify"]).contains("0 damaged"));
}

/// An artifact edited or deleted in the store after it was committed is noticed by the
/// next run (a stat per file, no read), reported with the file's name, and recomputed
/// instead of being fed downstream.
#[test]
fn a_run_notices_a_changed_artifact_and_recomputes_it() {
    let project = chain();
    project.ok(&["run"]);
    assert_eq!(project.runs(), ["a", "b", "c"]);

    fs::write(project.root().join("data/out/b/out.txt"), "tampered").unwrap();
    let rerun = project.ok(&["run"]);
    assert!(
        rerun.contains("stage b: its stored artifact") && rerun.contains("out.txt: content changed"),
        "{rerun}"
    );
    assert!(rerun.contains("1 ran"), "only b reruns; c's inputs are b's real outputs again:\n{rerun}");
    assert_eq!(project.runs(), ["a", "b", "c", "b"]);
    assert_eq!(project.read("data/out/c/out.txt"), "up=up=src=first\ntag=hello\ntag=one\ntag=\n");

    fs::remove_file(project.root().join("data/out/a/out.txt")).unwrap();
    let rerun = project.ok(&["run"]);
    assert!(rerun.contains("stage a: its stored artifact"), "{rerun}");
    assert_eq!(project.runs(), ["a", "b", "c", "b", "a"]);
    assert!(project.ok(&["run"]).contains("0 ran"));
    assert!(project.ok(&["verify"]).contains("0 damaged"));
}

#[test]
fn dag_prints_text_and_dot() {
    let project = chain();
    let text = project.ok(&["dag"]);
    assert!(text.contains("b (test-concat) <- up=a/out.txt"), "{text}");
    let dot = project.ok(&["dag", "--dot"]);
    assert!(dot.contains("\"a\" -> \"b\""), "{dot}");
}

/// `a` feeds `score`, whose metrics.json holds `value` = the top-level `scale` param.
const SCORED: &str = r#"
params:
  scale: 1
stages:
  a:
    kind: test-concat
    deps: {src: input.txt}
    params: {tag: "s${scale}"}
  score:
    kind: cmd
    cmd: "printf '{\"value\": %s}' \"${SCALE#v}\" > \"$PIPE_OUT/metrics.json\""
    deps: {up: a/out.txt}
    outs: [metrics.json]
    params: {env: {SCALE: "v${scale}"}}
"#;

fn scored() -> Project {
    let project = Project::new(SCORED);
    project.write("input.txt", "first");
    project
}

#[test]
fn runs_are_recorded_and_a_sweep_runs_every_point_once() {
    let project = scored();
    let missing = project.pipe(&["exp", "show"]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no experiments recorded"));

    project.ok(&["run", "--name", "base"]);
    let out = project.ok(&["run", "--sweep", "params.scale=1,2,3", "--sweep", "a.tag=x,y"]);
    assert_eq!(out.matches("sweep ").count(), 6, "{out}");
    // Six points, but `a` reads only its tag (a.tag replaces "s${scale}"): it runs once
    // per tag, and each point reuses it.
    assert_eq!(project.runs().len(), 1 + 2, "{:?}", project.runs());
    // The workspace ends at the last point.
    assert!(project.read("data/out/a/out.txt").contains("tag=y"));

    let csv = project.ok(&["exp", "show", "--csv"]);
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], "experiment,finished,seconds,params,score.value,in store", "{csv}");
    assert_eq!(lines.len(), 1 + 7, "{csv}");
    assert!(lines[1].starts_with("base,") && lines[1].contains(",-,1,yes"), "{csv}");
    assert!(csv.contains(",a.tag=y params.scale=3,3,yes"), "{csv}");

    let json: serde_json::Value = serde_json::from_str(&project.ok(&["exp", "show", "--json"])).unwrap();
    let points = json.as_array().unwrap();
    assert_eq!(points.len(), 7);
    assert!(points.iter().all(|p| p["in_store"] == "yes" && p["stages"]["score"]["fingerprint"].is_string()));

    // Rerunning a recorded setting is a cache hit and keeps one row per experiment.
    let again = project.ok(&["run", "-S", "params.scale=2", "-S", "a.tag=x"]);
    assert!(again.contains("0 ran, 2 cached"), "{again}");
    assert_eq!(project.ok(&["exp", "show", "--csv"]).lines().count(), 1 + 7);
}

#[test]
fn apply_restores_an_experiment_and_gc_keeps_what_experiments_reference() {
    let project = scored();
    project.ok(&["run", "--name", "one"]);
    project.ok(&["run", "-S", "params.scale=5", "--name", "five"]);
    assert!(project.read("data/out/score/metrics.json").contains("5"));

    // gc keeps `one`'s artifacts although the lock now names `five`'s.
    let gc = project.ok(&["gc"]);
    assert!(gc.starts_with("0 unreferenced"), "{gc}");
    let applied = project.ok(&["exp", "apply", "one"]);
    assert!(applied.contains("applied `one`") && applied.contains("0 ran, 2 cached"), "{applied}");
    assert!(project.read("data/out/score/metrics.json").contains("1"));
    assert!(project.read("pipe.lock").contains("SCALE: v1"));

    // Without the experiments' references, `five` goes, and applying it runs again.
    let gc = project.ok(&["gc", "--ignore-experiments"]);
    assert!(gc.starts_with("2 unreferenced"), "{gc}");
    assert!(project.ok(&["exp", "show"]).contains("no"));
    let back = project.ok(&["exp", "apply", "five"]);
    assert!(back.contains("a, score ran again"), "{back}");

    let unknown = project.pipe(&["exp", "apply", "nope"]);
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("recorded: one, five"));
    let bad = project.pipe(&["run", "--sweep", "a.nope=1,2"]);
    assert_eq!(bad.status.code(), Some(2), "an invalid key stops the sweep at once");
    assert_eq!(String::from_utf8_lossy(&bad.stderr).matches("sweep ").count(), 1);
}

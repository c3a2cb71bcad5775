//! `cmd`: runs a shell command with declared deps and outs, as DVC stages do.
//!
//! The command runs in the project root through `sh -c`. It finds its output directory
//! in `$PIPE_OUT` and each dependency in `$PIPE_DEP_<NAME>` (the name upper-cased, other
//! characters turned into `_`); workspace deps can also be used by their relative path.

use std::process::Command;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use pipe_engine::stage::{normalize_typed, Inputs, StageContext, StageKind};

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CmdParams {
    cmd: String,
    #[serde(default)]
    outs: Vec<String>,
    /// Extra environment variables (hashed, so changing one reruns the stage).
    #[serde(default)]
    env: std::collections::BTreeMap<String, String>,
}

pub struct Cmd;

impl StageKind for Cmd {
    fn name(&self) -> &'static str {
        "cmd"
    }

    fn version(&self) -> u32 {
        1
    }

    fn normalize_params(&self, params: &Value) -> Result<Value> {
        normalize_typed::<CmdParams>(params)
    }

    fn inputs(&self) -> Inputs {
        Inputs::Any
    }

    /// DVC's spelling: `cmd:` and `outs:` beside `deps:`, not under `params:`.
    fn stage_keys(&self) -> &'static [&'static str] {
        &["cmd", "outs"]
    }

    fn outputs(&self, params: &Value) -> Vec<String> {
        serde_json::from_value::<CmdParams>(params.clone()).map(|p| p.outs).unwrap_or_default()
    }

    fn run(&self, ctx: &StageContext) -> Result<()> {
        let params: CmdParams = ctx.params()?;
        let mut command = Command::new("sh");
        command.arg("-c").arg(&params.cmd).current_dir(&ctx.workspace).env("PIPE_OUT", &ctx.out_dir);
        for (name, path) in &ctx.inputs {
            command.env(dep_env_name(name), path);
        }
        command.envs(&params.env);
        let status = command.status().with_context(|| format!("starting `{}`", params.cmd))?;
        if !status.success() {
            bail!("`{}` exited with {status}", params.cmd);
        }
        Ok(())
    }
}

fn dep_env_name(name: &str) -> String {
    let cleaned: String =
        name.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_uppercase() } else { '_' }).collect();
    format!("PIPE_DEP_{cleaned}")
}

/// A test-only kind (registered when `PIPE_TEST_KINDS` is set): concatenates its input
/// files into `out.txt`, appends a line to `runs.log` in the workspace so tests can count
/// executions, and can fail on demand. With `PIPE_TEST_SLEEP_MS` set it sleeps after
/// writing half its output (an env var, so the fingerprint stays the same).
pub struct TestConcat;

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConcatParams {
    #[serde(default)]
    tag: String,
    #[serde(default)]
    fail: bool,
}

impl StageKind for TestConcat {
    fn name(&self) -> &'static str {
        "test-concat"
    }

    fn version(&self) -> u32 {
        1
    }

    fn normalize_params(&self, params: &Value) -> Result<Value> {
        normalize_typed::<ConcatParams>(params)
    }

    fn inputs(&self) -> Inputs {
        Inputs::Any
    }

    fn outputs(&self, _params: &Value) -> Vec<String> {
        vec!["out.txt".to_string()]
    }

    fn run(&self, ctx: &StageContext) -> Result<()> {
        use std::io::Write;
        let params: ConcatParams = ctx.params()?;
        let mut log =
            std::fs::OpenOptions::new().create(true).append(true).open(ctx.workspace.join("runs.log"))?;
        writeln!(log, "{}", ctx.stage)?;
        let mut text = String::new();
        for (name, path) in &ctx.inputs {
            let body = if path.is_dir() {
                pipe_engine::hashing::list_files(path)?
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            } else {
                std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?
            };
            text.push_str(&format!("{name}={}\n", body.trim_end()));
        }
        text.push_str(&format!("tag={}\n", params.tag));
        let out = ctx.output("out.txt");
        std::fs::write(&out, &text[..text.len() / 2])?; // a half-written output, visible if killed here
        let sleep_ms = std::env::var("PIPE_TEST_SLEEP_MS").ok().and_then(|v| v.parse().ok()).unwrap_or(0);
        std::thread::sleep(std::time::Duration::from_millis(sleep_ms));
        if params.fail {
            bail!("failing as asked (params.fail)");
        }
        std::fs::write(&out, text)?;
        Ok(())
    }
}

//! The input generator and the property shared by the fuzz tests (`tests/fuzz.rs`,
//! `pipe-torch/tests/fuzz_backbone.rs`): seeds mutated by byte flips, insertions,
//! deletions, duplicated ranges and syntax tokens, and now and then arbitrary bytes.
#![allow(dead_code)]

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestError, TestRng, TestRunner};

/// Longer than this for one input counts as a hang.
pub const TIME_LIMIT: Duration = Duration::from_secs(2);

/// Bytes that mean something to one of the formats.
pub const TOKENS: &[&[u8]] = &[
    b"\"",
    b"\t",
    b"\n",
    b"\r\n",
    b",",
    b"|",
    b"#",
    b"{",
    b"}",
    b"[",
    b"]",
    b":",
    b"${",
    b"}}",
    b"- ",
    b"  ",
    b"&a",
    b"*a",
    b"!!",
    b"~",
    b"\\",
    b"\x00",
    b"\xff\xfe",
    b"\xEF\xBB\xBF",
    b"9999999999999999999",
    b"-1",
    b"null",
    b"true",
    b"1e999",
    b".jpg#",
    b"images",
    b"sentences",
    b"annotations",
    b"stages",
    b"deps",
    b"params",
    b"kind",
    b"IDAT",
    b"IHDR",
    b"\xff\xd8\xff\xc0",
];

#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Insert(usize, Vec<u8>),
    Token(usize, usize),
    Delete(usize, usize),
    Duplicate(usize, usize, usize),
    Truncate(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(at, bit)| Mutation::Flip(at, bit)),
        (any::<usize>(), prop::collection::vec(any::<u8>(), 1..8))
            .prop_map(|(at, b)| Mutation::Insert(at, b)),
        (any::<usize>(), 0..TOKENS.len()).prop_map(|(at, t)| Mutation::Token(at, t)),
        (any::<usize>(), 1usize..64).prop_map(|(at, n)| Mutation::Delete(at, n)),
        (any::<usize>(), 1usize..64, any::<usize>()).prop_map(|(a, n, b)| Mutation::Duplicate(a, n, b)),
        any::<usize>().prop_map(Mutation::Truncate),
    ]
}

fn apply(seed: &[u8], mutations: &[Mutation]) -> Vec<u8> {
    let mut bytes = seed.to_vec();
    for m in mutations {
        let at = |i: usize, len: usize| if len == 0 { 0 } else { i % (len + 1) };
        match m {
            Mutation::Flip(i, bit) if !bytes.is_empty() => {
                let i = i % bytes.len();
                bytes[i] ^= 1 << (bit % 8);
            }
            Mutation::Insert(i, b) => {
                let i = at(*i, bytes.len());
                bytes.splice(i..i, b.iter().copied());
            }
            Mutation::Token(i, t) => {
                let i = at(*i, bytes.len());
                bytes.splice(i..i, TOKENS[*t].iter().copied());
            }
            Mutation::Delete(i, n) if !bytes.is_empty() => {
                let i = i % bytes.len();
                bytes.drain(i..(i + n).min(bytes.len()));
            }
            Mutation::Duplicate(a, n, b) if !bytes.is_empty() => {
                let a = a % bytes.len();
                let range = bytes[a..(a + n).min(bytes.len())].to_vec();
                let b = at(*b, bytes.len());
                bytes.splice(b..b, range);
            }
            Mutation::Truncate(i) => bytes.truncate(at(*i, bytes.len())),
            _ => {}
        }
    }
    bytes
}

/// Mutated seeds, and now and then plain arbitrary bytes.
pub fn inputs(seeds: Vec<Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    let count = seeds.len();
    prop_oneof![
        9 => (0..count, prop::collection::vec(mutation(), 0..10))
            .prop_map(move |(i, ms)| apply(&seeds[i], &ms)),
        1 => prop::collection::vec(any::<u8>(), 0..512),
    ]
}

/// Runs `parse` on `input`: a panic or a hang is a failure; so is an error that does not
/// contain `location`.
pub fn property(
    input: &[u8],
    location: &str,
    parse: impl FnOnce(&[u8]) -> Result<(), String>,
) -> Result<(), String> {
    let started = Instant::now();
    let outcome = catch_unwind(AssertUnwindSafe(|| parse(input)));
    let took = started.elapsed();
    if took > TIME_LIMIT {
        return Err(format!("took {took:?} (a hang)"));
    }
    match outcome {
        Err(panic) => Err(format!(
            "panicked: {}",
            panic
                .downcast_ref::<String>()
                .cloned()
                .or(panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default()
        )),
        Ok(Err(message)) if !message.contains(location) => {
            Err(format!("error without `{location}`: {message}"))
        }
        Ok(_) => Ok(()),
    }
}

/// Fuzzes one target: replays the inputs kept under `fuzz/<name>/`, then runs
/// `PIPE_FUZZ_CASES` (default 300) generated cases, in batches until `PIPE_FUZZ_SECONDS`
/// have passed when that is set. With `PIPE_FUZZ_SAVE=1` a failure's shrunk input is kept
/// under `fuzz/<name>/`. Returns the failures.
pub fn fuzz_target(
    name: &str,
    seeds: Vec<Vec<u8>>,
    check: &dyn Fn(&[u8]) -> Result<(), String>,
) -> Vec<String> {
    let cases = env_number("PIPE_FUZZ_CASES", 300) as u32;
    let seconds = env_number("PIPE_FUZZ_SECONDS", 0);
    let kept_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz").join(name);
    let mut failures = Vec::new();
    for file in kept_inputs(&kept_dir) {
        if let Err(err) = check(&std::fs::read(&file).unwrap()) {
            failures.push(format!("{name}: kept input {}: {err}", file.display()));
        }
    }
    let started = Instant::now();
    let mut run = 0u64;
    for batch in 0u64.. {
        let config = Config { cases, failure_persistence: None, ..Config::default() };
        let seed = *blake3::hash(format!("{name}-{batch}").as_bytes()).as_bytes();
        let mut runner = TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &seed));
        let result = runner.run(&inputs(seeds.clone()), |input| check(&input).map_err(TestCaseError::fail));
        run += cases as u64;
        if let Err(err) = result {
            if let (TestError::Fail(_, input), true) = (&err, std::env::var_os("PIPE_FUZZ_SAVE").is_some()) {
                std::fs::create_dir_all(&kept_dir).unwrap();
                let file = kept_dir.join(format!("crash-{}", &blake3::hash(input).to_hex()[..16]));
                std::fs::write(&file, input).unwrap();
                eprintln!("kept the failing input in {}", file.display());
            }
            failures.push(format!("{name}: {err}"));
            break;
        }
        if started.elapsed().as_secs() >= seconds {
            break;
        }
    }
    eprintln!("fuzz {name:<14} {run:>9} cases in {:.1} s", started.elapsed().as_secs_f64());
    failures
}

fn kept_inputs(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> =
        std::fs::read_dir(dir).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
    files.sort();
    files
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

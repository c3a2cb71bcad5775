//! `pipe serve` over the default pipeline (trained small), driven as users and programs
//! would: HTTP requests from a plain TCP client, and the pages in headless Chromium
//! through chromedriver (WebDriver).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

mod common;
use common::{alive, pipe, project, repo, which, worker_of};

/// A running `pipe serve`, killed on drop; its log lines are kept.
struct Server {
    child: Child,
    address: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
}

impl Server {
    fn start(root: &Path, args: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_pipe"))
            .args(["serve", "--port", "0"])
            .args(args)
            .current_dir(root)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (found, address) = std::sync::mpsc::channel();
        let lines = BufReader::new(child.stderr.take().unwrap());
        let keep = log.clone();
        std::thread::spawn(move || {
            for line in lines.lines().map_while(Result::ok) {
                if let Some(rest) = line.strip_prefix("pipe serve: http://") {
                    let _ =
                        found.send(rest.split_whitespace().next().unwrap().parse::<SocketAddr>().unwrap());
                }
                keep.lock().unwrap().push(line);
            }
        });
        let address = address
            .recv_timeout(Duration::from_secs(180))
            .unwrap_or_else(|_| panic!("pipe serve did not start:\n{}", log.lock().unwrap().join("\n")));
        Self { child, address, log }
    }

    fn request(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
        http(self.address, method, path, headers, body)
    }

    fn get(&self, path: &str) -> Response {
        self.request("GET", path, &[], b"")
    }

    fn caption(&self, query: &str, image: &[u8]) -> Response {
        self.request("POST", &format!("/api/caption?{query}"), &[("Content-Type", "image/jpeg")], image)
    }

    /// Whether the server logged `text` (waiting a little: its log arrives on a pipe).
    fn logged(&self, text: &str) -> bool {
        let since = Instant::now();
        while since.elapsed() < Duration::from_secs(10) {
            if self.log.lock().unwrap().iter().any(|line| line.contains(text)) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A helper process that must not outlive a failed test.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Response {
    status: u16,
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
}

impl Response {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }
}

/// One HTTP/1.1 request on its own connection (no client library: the server must
/// answer what any client sends).
fn http(address: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
    let mut stream = TcpStream::connect(address).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    stream.write_all(head.as_bytes()).unwrap();
    let _ = stream.write_all(body); // the server may answer (413) before reading it all
                                    // Read the head, then exactly the body it announces: a server may keep the
                                    // connection open (chromedriver does), so reading to the end could wait forever.
    let mut raw = Vec::new();
    let mut buf = [0u8; 65536];
    let split = loop {
        if let Some(at) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break at;
        }
        let n = stream.read(&mut buf).unwrap();
        assert!(n > 0, "the connection closed before a response head");
        raw.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut lines = head.lines();
    let status = lines.next().unwrap().split_whitespace().nth(1).unwrap().parse().unwrap();
    let headers: BTreeMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked = headers.get("transfer-encoding").is_some_and(|v| v == "chunked");
    let length = headers.get("content-length").and_then(|v| v.parse::<usize>().ok());
    loop {
        let complete = match (chunked, length) {
            (true, _) => body.ends_with(b"0\r\n\r\n"),
            (false, Some(length)) => body.len() >= length,
            (false, None) => false,
        };
        if complete {
            break;
        }
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => body.extend_from_slice(&buf[..n]),
        }
    }
    if chunked {
        body = dechunk(&body);
    }
    Response { status, headers, body }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let end = data.windows(2).position(|w| w == b"\r\n").unwrap();
        let size = usize::from_str_radix(String::from_utf8_lossy(&data[..end]).trim(), 16).unwrap();
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&data[end + 2..end + 2 + size]);
        data = &data[end + 4 + size..];
    }
}

fn photo() -> Vec<u8> {
    std::fs::read(repo().join("tests/fixtures/photos/chelsea.jpg")).unwrap()
}

/// A real PNG whose header promises 60000×60000 pixels (its IHDR checksum fixed up, as
/// a crafted file's would be).
fn png_bomb() -> Vec<u8> {
    let mut png = std::fs::read(repo().join("tests/fixtures/photos/coffee.png")).unwrap();
    png[16..24].copy_from_slice(&[0, 0, 0xEA, 0x60, 0, 0, 0xEA, 0x60]);
    let crc = crc32(&png[12..29]); // the chunk type and its 13 data bytes
    png[29..33].copy_from_slice(&crc.to_be_bytes());
    png
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

/// The default pipeline, trained briefly once for all the tests here (serve needs a
/// model, not a good one).
fn trained_project() -> &'static Path {
    static PROJECT: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    PROJECT
        .get_or_init(|| {
            let dir = project();
            let args =
                ["run", "-S", "synth.images=300", "-S", "train.epochs=3", "-S", "caption.beam_width=3"];
            pipe(dir.path(), &args);
            dir
        })
        .path()
}

#[test]
fn serve_captions_refuses_bad_input_survives_load_and_its_worker_dying() {
    let root = trained_project();
    let server = Server::start(root, &["--max-upload-mib", "1", "--queue", "4", "--client-timeout-s", "2"]);

    assert_eq!(server.get("/healthz").status, 200);
    let models = server.get("/api/models").json();
    let model = &models["models"][0];
    assert_eq!((model["name"].as_str(), model["decoder"].as_str()), (Some("caption"), Some("merge")));
    let shown = model["metrics"]["score.bleu_4"].as_f64().unwrap();
    let scored: Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("data/out/score/metrics.json")).unwrap())
            .unwrap();
    assert_eq!(shown, scored["bleu_4"].as_f64().unwrap());

    // A real photo: a caption, its beams best first, the same answer every time.
    let answer = server.caption("beam=3", &photo());
    assert_eq!(answer.status, 200, "{}", String::from_utf8_lossy(&answer.body));
    let first = answer.json();
    assert!(!first["caption"].as_str().unwrap().is_empty());
    let beams = first["beams"].as_array().unwrap();
    assert!(!beams.is_empty() && beams.len() <= 3 && beams[0]["caption"] == first["caption"], "{first}");
    assert_eq!(server.caption("beam=3", &photo()).json(), first);
    let greedy = server.caption("beam=1", &photo()).json();
    assert_eq!(greedy["beams"].as_array().unwrap().len(), 1);

    // Bad input: each refused with its own status and message, nothing crashes.
    let refused = |query: &str, body: &[u8], status: u16, says: &str| {
        let r = server.caption(query, body);
        let text = String::from_utf8_lossy(&r.body).to_string();
        assert_eq!(r.status, status, "{query}: {text}");
        assert!(text.contains(says), "{query}: {text}");
    };
    refused("", b"", 400, "no image");
    refused("", b"<html>hello</html>", 415, "not a JPEG or PNG");
    refused("", &std::fs::read(repo().join("README.md")).unwrap(), 415, "not a JPEG or PNG");
    refused("", &png_bomb(), 413, "60000x60000");
    let mut big = photo();
    big.resize(3 << 19, 0); // 1.5 MiB, over --max-upload-mib 1
    refused("", &big, 413, "over the limit of 1 MiB");
    let truncated = &photo()[..4000];
    refused("", truncated, 422, "could not be decoded");
    refused("model=nope", &photo(), 404, "no model `nope`");
    refused("beam=0", &photo(), 400, "beam must be");
    refused("beam=abc", &photo(), 400, "");

    // A multipart form (what `curl -F image=@photo.jpg` and HTML forms send): the same caption.
    let form = |parts: &[(&str, Option<&str>, &[u8])]| {
        let mut body = Vec::new();
        for (name, file, bytes) in parts {
            let file = file.map(|f| format!("; filename=\"{f}\"")).unwrap_or_default();
            body.extend_from_slice(
                format!("--XyZ\r\nContent-Disposition: form-data; name=\"{name}\"{file}\r\n\r\n").as_bytes(),
            );
            body.extend_from_slice(bytes);
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(b"--XyZ--\r\n");
        body
    };
    let multipart = |body: &[u8]| {
        server.request(
            "POST",
            "/api/caption?beam=3",
            &[("Content-Type", "multipart/form-data; boundary=XyZ")],
            body,
        )
    };
    let jpeg = photo();
    let answer = multipart(&form(&[("note", None, b"hello"), ("image", Some("chelsea.jpg"), &jpeg)]));
    assert_eq!(answer.status, 200, "{}", String::from_utf8_lossy(&answer.body));
    assert_eq!(answer.json(), first);
    for (body, says) in [
        (form(&[("note", None, b"hello")]), "no image"),
        (form(&[("image", None, &jpeg), ("other", Some("b.jpg"), &jpeg)]), "one image per request"),
        (b"--XyZ\r\nno end".to_vec(), "malformed multipart"),
    ] {
        let r = multipart(&body);
        let text = String::from_utf8_lossy(&r.body).to_string();
        assert!(r.status == 400 && text.contains(says), "{says}: {} {text}", r.status);
    }
    let r = multipart(&form(&[("image", Some("notes.txt"), b"plain text")]));
    assert_eq!(r.status, 415, "a form's file is judged by its content too");

    // A client that never finishes its request head is cut off (--client-timeout-s 2).
    let mut slow = TcpStream::connect(server.address).unwrap();
    slow.write_all(b"POST /api/caption HTTP/1.1\r\nHost: x\r\n").unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let since = Instant::now();
    let mut rest = Vec::new();
    let _ = slow.read_to_end(&mut rest);
    let waited = since.elapsed();
    assert!(waited < Duration::from_secs(10), "a stalled request head kept its connection {waited:?}");

    // Files only by id, from artifact directories: traversal gets 404.
    assert_eq!(server.get("/api/gallery/caption/image/0").headers["content-type"], "image/jpeg");
    for path in [
        "/api/gallery/caption/image/..%2F..%2F..%2Fetc%2Fpasswd",
        "/api/gallery/caption/image/-1",
        "/api/gallery/caption/image/99999",
        "/api/gallery/..%2Fcaption/image/0",
        "/../../etc/passwd",
        "/assets/..%2Fmod.rs",
    ] {
        assert_eq!(server.get(path).status, 404, "{path}");
    }

    // 100 requests at once against a queue of 4: each 200 or 503 (with Retry-After),
    // none hangs, and the server answers afterwards.
    let started = Instant::now();
    let statuses: Vec<(u16, bool)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..100)
            .map(|_| {
                scope.spawn(|| {
                    let r = server.caption("beam=3", &photo());
                    (r.status, r.headers.contains_key("retry-after"))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let ok = statuses.iter().filter(|s| s.0 == 200).count();
    let busy = statuses.iter().filter(|s| s.0 == 503 && s.1).count();
    eprintln!(
        "100 concurrent requests: {ok} captioned, {busy} told to retry, in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(ok + busy, 100, "{statuses:?}");
    assert!(ok >= 1);
    assert_eq!(server.get("/healthz").status, 200);
    assert_eq!(server.caption("beam=3", &photo()).json(), first);

    // The worker dies: the server says so, starts another, and captions again.
    let worker = worker_of(server.child.id()).expect("a pipe-torch worker under pipe serve");
    Command::new("kill").args(["-9", &worker.to_string()]).status().unwrap();
    while alive(worker) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let since = Instant::now();
    loop {
        let r = server.caption("beam=3", &photo());
        if r.status == 200 {
            assert_eq!(r.json(), first);
            break;
        }
        assert_eq!(r.status, 503, "{}", String::from_utf8_lossy(&r.body));
        assert!(since.elapsed() < Duration::from_secs(120), "no new worker");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(server.logged("the worker failed"), "{:?}", server.log.lock().unwrap());
    assert_ne!(worker_of(server.child.id()), Some(worker));
}

#[test]
fn serve_needs_a_token_off_loopback() {
    let root = trained_project();
    let out = Command::new(env!("CARGO_BIN_EXE_pipe"))
        .args(["serve", "--host", "0.0.0.0", "--port", "0"])
        .env_remove("PIPE_SERVE_TOKEN")
        .current_dir(root)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--token"));

    let server = Server::start(root, &["--host", "0.0.0.0", "--token", "s3cret"]);
    let local = SocketAddr::from(([127, 0, 0, 1], server.address.port()));
    assert_eq!(http(local, "GET", "/api/models", &[], b"").status, 401);
    assert_eq!(http(local, "GET", "/api/models", &[("Authorization", "Bearer wrong")], b"").status, 401);
    assert_eq!(http(local, "POST", "/api/caption", &[], &photo()).status, 401);
    assert!(server.logged("refused POST /api/caption"));
    assert_eq!(http(local, "GET", "/healthz", &[], b"").status, 200);
    assert_eq!(http(local, "GET", "/api/models", &[("Authorization", "Bearer s3cret")], b"").status, 200);
    // A browser opens ?token=… once and keeps it in a cookie.
    let page = http(local, "GET", "/?token=s3cret", &[], b"");
    assert_eq!(page.status, 200);
    let cookie = page.headers["set-cookie"].split(';').next().unwrap().to_string();
    assert_eq!(http(local, "GET", "/api/models", &[("Cookie", &cookie)], b"").status, 200);
}

/// The pages in a real browser: upload a photo and read its caption; the gallery and the
/// experiments table show what the metrics files hold.
#[test]
fn serve_pages_work_in_a_real_browser() {
    let (Some(browser), Some(driver)) =
        (which(&["chromium", "chromium-browser", "google-chrome"]), which(&["chromedriver"]))
    else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must have chromium and chromium-driver (.ci/run installs them)"
        );
        eprintln!("SKIPPED: no chromium and chromedriver on this machine (`apt-get install chromium chromium-driver`)");
        return;
    };
    // A second experiment, in a copy of the project so the other tests keep theirs.
    let copy = tempfile::tempdir().unwrap();
    let source = format!("{}/.", trained_project().display());
    assert!(Command::new("cp").arg("-a").arg(source).arg(copy.path()).status().unwrap().success());
    let root = copy.path();
    pipe(
        root,
        &[
            "run",
            "-S",
            "synth.images=300",
            "-S",
            "train.epochs=2",
            "-S",
            "caption.beam_width=3",
            "--name",
            "short",
        ],
    );
    let server = Server::start(root, &[]);
    // The page decodes with the stage's beam width, as the API does by default.
    let expected = server.caption("", &photo()).json();

    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let _chromedriver = KillOnDrop(
        Command::new(driver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let driver_address = SocketAddr::from(([127, 0, 0, 1], port));
    let webdriver = |method: &str, path: &str, body: Value| -> Value {
        let r = http(
            driver_address,
            method,
            path,
            &[("Content-Type", "application/json")],
            body.to_string().as_bytes(),
        );
        let value = r.json();
        assert_eq!(r.status, 200, "{method} {path}: {value}");
        value["value"].clone()
    };
    let started = Instant::now();
    while TcpStream::connect(driver_address).is_err() {
        assert!(started.elapsed() < Duration::from_secs(30), "chromedriver did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    let profile = tempfile::tempdir().unwrap();
    let session = webdriver(
        "POST",
        "/session",
        json!({"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": {
            "binary": browser,
            "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     format!("--user-data-dir={}", profile.path().display())]
        }}}}),
    );
    let id = session["sessionId"].as_str().unwrap().to_string();
    let at = |path: &str| format!("/session/{id}{path}");
    let base = format!("http://{}", server.address);
    let run_script =
        |script: &str| webdriver("POST", &at("/execute/sync"), json!({"script": script, "args": []}));
    let wait_for = |script: &str| -> Value {
        let since = Instant::now();
        loop {
            let value = run_script(script);
            if !value.is_null() {
                return value;
            }
            assert!(since.elapsed() < Duration::from_secs(90), "timed out waiting for: {script}");
            std::thread::sleep(Duration::from_millis(200));
        }
    };

    // Caption page: pick the photo in the file input; the caption appears.
    webdriver("POST", &at("/url"), json!({"url": format!("{base}/")}));
    wait_for("return document.querySelector('#model option') ? true : null");
    let input = webdriver("POST", &at("/element"), json!({"using": "css selector", "value": "#file"}));
    let element = input.as_object().unwrap().values().next().unwrap().as_str().unwrap().to_string();
    let photo_path = repo().join("tests/fixtures/photos/chelsea.jpg");
    webdriver(
        "POST",
        &at(&format!("/element/{element}/value")),
        json!({"text": photo_path.display().to_string()}),
    );
    let shown = wait_for(
        "const c = document.querySelector('#results .caption'); \
         return c && !c.classList.contains('pending') ? c.textContent.trim() : null",
    );
    let expected_words: Vec<&str> = expected["caption"].as_str().unwrap().split(' ').collect();
    assert_eq!(shown.as_str().unwrap(), expected_words.join(""), "the words are spans without spaces");
    let beams = run_script("return document.querySelectorAll('#results table.beams tr').length");
    assert_eq!(beams.as_u64().unwrap() as usize, expected["beams"].as_array().unwrap().len());

    // Gallery: sorted best first, each row's CIDEr-D as the API has it.
    webdriver("POST", &at("/url"), json!({"url": format!("{base}/gallery")}));
    let first_row = wait_for(
        "const r = document.querySelector('#rows .row'); \
         return r ? [r.querySelector('.caption').textContent, r.querySelector('.cider').textContent] : null",
    );
    let mut rows = server.get("/api/gallery/caption").json()["rows"].as_array().unwrap().clone();
    rows.sort_by(|a, b| b["cider_d"].as_f64().unwrap().total_cmp(&a["cider_d"].as_f64().unwrap()));
    assert_eq!(first_row[0], rows[0]["caption"]);
    assert_eq!(
        first_row[1].as_str().unwrap(),
        format!("CIDEr-D {:.3}", rows[0]["cider_d"].as_f64().unwrap())
    );
    let broken = wait_for(
        "const imgs = [...document.querySelectorAll('#rows img')].slice(0, 5); \
         return imgs.every(i => i.complete) ? imgs.filter(i => i.naturalWidth === 0).length : null",
    );
    assert_eq!(broken, 0, "gallery images must load");

    // Experiments: the metric cells equal each run's metrics.json.
    webdriver("POST", &at("/url"), json!({"url": format!("{base}/experiments")}));
    let table = wait_for(
        "const rows = [...document.querySelectorAll('#table tbody tr')]; \
         if (!rows.length) return null; \
         const head = [...document.querySelectorAll('#table thead th')].map(t => t.textContent.replace(/ [▲▼]$/, '')); \
         return rows.map(r => Object.fromEntries([...r.children].map((c, i) => [head[i], c.textContent])));",
    );
    let scored: Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("data/out/score/metrics.json")).unwrap())
            .unwrap();
    let short =
        table.as_array().unwrap().iter().find(|r| r["name"] == "short").expect("the named run is listed");
    assert_eq!(short["score.bleu_4"].as_str().unwrap(), format!("{:.4}", scored["bleu_4"].as_f64().unwrap()));
    assert_eq!(
        short["score.cider_d"].as_str().unwrap(),
        format!("{:.4}", scored["cider_d"].as_f64().unwrap())
    );
    assert_eq!(table.as_array().unwrap().len(), 2, "{table}");
    let curves = run_script("return document.querySelectorAll('#plot polyline').length");
    assert!(curves.as_u64().unwrap() >= 1, "the newest run's loss curves are drawn");

    webdriver("DELETE", &at(""), json!({}));
}

/// A 2×2 sweep of the default pipeline: four experiments that share their upstream
/// stages, side by side in `pipe exp show --json`, all cached when the sweep reruns, and
/// each one's model offered by `pipe serve` with its params and metrics.
#[test]
fn a_sweep_runs_once_per_point_and_serves_every_model() {
    let dir = project();
    let root = dir.path();
    let args = [
        "run",
        "-S",
        "synth.images=240",
        "-S",
        "train.epochs=2",
        "--sweep",
        "train.hidden=16,32",
        "--sweep",
        "caption.beam_width=1,3",
    ];
    let ran = |out: &str| -> Vec<usize> {
        out.lines()
            .filter_map(|line| line.split_once(" stages: ")?.1.split(' ').next()?.parse().ok())
            .collect()
    };
    // The first point runs everything; a new beam width reruns caption, score and report;
    // a new hidden size also train. Synth, ingest, tokenize and features run once.
    let out = pipe(root, &args);
    assert_eq!(ran(&out), [8, 3, 4, 3], "{out}");
    let out = pipe(root, &args);
    assert_eq!(ran(&out), [0, 0, 0, 0], "a rerun of the sweep is fully cached:\n{out}");

    let shown = Command::new(env!("CARGO_BIN_EXE_pipe"))
        .args(["exp", "show", "--json"])
        .current_dir(root)
        .output()
        .unwrap();
    assert!(shown.status.success());
    let experiments: Vec<Value> = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(experiments.len(), 4, "{experiments:?}");
    let mut points = Vec::new();
    for exp in &experiments {
        let params = &exp["params"];
        points
            .push((params["train.hidden"].as_i64().unwrap(), params["caption.beam_width"].as_i64().unwrap()));
        assert!(
            exp["metrics"]["score.bleu_4"].is_number() && exp["metrics"]["score.cider_d"].is_number(),
            "{exp}"
        );
        assert_eq!(exp["in_store"], "yes");
    }
    points.sort();
    assert_eq!(points, [(16, 1), (16, 3), (32, 1), (32, 3)]);

    // Every experiment's model is served once: the current run's (the last point) by its
    // stage name, the others as caption@EXPERIMENT, each with its own params and metrics.
    let server = Server::start(root, &[]);
    let models = server.get("/api/models").json()["models"].as_array().unwrap().clone();
    assert_eq!(models.len(), 4, "{models:?}");
    assert_eq!(models[0]["name"], "caption");
    assert_eq!(models[0]["params"]["train.hidden"], 32);
    for model in &models {
        let exp = experiments.iter().find(|e| e["name"] == model["experiment"]).expect("its experiment");
        assert_eq!(model["params"], exp["params"]);
        assert_eq!(model["metrics"]["score.bleu_4"], exp["metrics"]["score.bleu_4"], "{model}");
        assert_eq!(model["beam_width"], exp["params"]["caption.beam_width"]);
        let name = model["name"].as_str().unwrap();
        if name != "caption" {
            assert_eq!(name, format!("caption@{}", exp["name"].as_str().unwrap()));
        }
        let answer = server.caption(&format!("model={name}"), &photo());
        assert_eq!(answer.status, 200, "{name}: {}", String::from_utf8_lossy(&answer.body));
        let beams = answer.json()["beams"].as_array().unwrap().len() as i64;
        assert!(beams >= 1 && beams <= exp["params"]["caption.beam_width"].as_i64().unwrap());
    }
}

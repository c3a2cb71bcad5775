//! `pipe serve`: a local web app and HTTP API over a pipeline's trained models.
//!
//! Pages (all shipped in the binary, no framework fetched from anywhere): a caption page
//! (upload photos, pick a model and a beam width, see captions, beams and attention), a
//! gallery of a scored split, and the experiments table with loss curves. The models run
//! in one long-lived `pipe-torch serve` worker behind a bounded queue ([`worker`]).

mod catalog;
mod worker;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path as UrlPath, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use clap::Args;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::oneshot;

use pipe_engine::reporter::Reporter;
use pipe_engine::spec::Pipeline;
use pipe_engine::worker::worker_program;
use pipe_engine::workspace::Workspace;

use crate::cli_exp::LoadPipeline;
use crate::contract::device::DeviceChoice;
use crate::contract::serve::{ImageOutcome, ServeConfig};
use crate::data::manifest::{check_image_size, header_dimensions};
use crate::stages::TORCH_WORKER;
use catalog::Catalog;
use worker::{Batching, Job, Pool};

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Address to listen on. Anything but a loopback address needs --token.
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// Every request must carry this token (`Authorization: Bearer T`, or `?token=T` once
    /// in a browser, which then keeps it in a cookie). Default: $PIPE_SERVE_TOKEN.
    #[arg(long)]
    token: Option<String>,
    /// Largest upload, in MiB.
    #[arg(long, default_value_t = 20)]
    max_upload_mib: usize,
    /// Requests that may wait for the worker; past it, 503 with Retry-After.
    #[arg(long, default_value_t = 64)]
    queue: usize,
    /// How long a request waits for others to share its batch, in ms. With 0, a batch is
    /// what queued while the worker was busy: nothing waits, and batches grow under load.
    #[arg(long, default_value_t = 0)]
    batch_window_ms: u64,
    /// Most images in one batch (1: no batching).
    #[arg(long, default_value_t = 32)]
    max_batch: usize,
    /// Seconds a client has to send its request body.
    #[arg(long, default_value_t = 30)]
    client_timeout_s: u64,
    /// Device for the models: auto, cpu, cuda or cuda:N (default: each caption stage's).
    #[arg(long)]
    device: Option<DeviceChoice>,
}

struct App {
    catalog: Catalog,
    pool: Pool,
    token: Option<String>,
    max_upload: usize,
    client_timeout: Duration,
}

/// Starts the server and serves until interrupted.
pub fn run(workspace: &Workspace, pipeline: &Pipeline, load: &LoadPipeline, args: &ServeArgs) -> Result<u8> {
    let token =
        args.token.clone().or_else(|| std::env::var("PIPE_SERVE_TOKEN").ok()).filter(|t| !t.is_empty());
    if !args.host.is_loopback() && token.is_none() {
        bail!(
            "--host {} is reachable from other machines: give --token T (or set PIPE_SERVE_TOKEN), \
             or keep the default 127.0.0.1",
            args.host
        );
    }
    let reporter = Reporter::stderr();
    let mut catalog = Catalog::open(workspace, pipeline, load, args.device, &reporter)?;
    let config_dir = tempfile_dir()?;
    let config_path = config_dir.join("serve.json");
    std::fs::write(&config_path, serde_json::to_vec(&ServeConfig { models: catalog.specs.clone() })?)
        .with_context(|| format!("writing {}", config_path.display()))?;
    let program = worker_program(TORCH_WORKER)?;
    let batching =
        Batching { window: Duration::from_millis(args.batch_window_ms), max_images: args.max_batch };
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async {
        eprintln!("loading {} model(s) in the worker…", catalog.models.len());
        let (pool, ready) = Pool::start(program, config_path.clone(), batching, args.queue).await?;
        for loaded in ready.models {
            if let Some(entry) = catalog.models.iter_mut().find(|m| m.name == loaded.name) {
                (entry.decoder, entry.attention, entry.grid) =
                    (loaded.decoder, loaded.attention, loaded.grid);
            }
        }
        let app = Arc::new(App {
            catalog,
            pool,
            token,
            max_upload: args.max_upload_mib << 20,
            client_timeout: Duration::from_secs(args.client_timeout_s),
        });
        let address = SocketAddr::new(args.host, args.port);
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .with_context(|| format!("listening on {address}"))?;
        eprintln!("pipe serve: http://{} (Ctrl-C stops it)", listener.local_addr()?);
        serve_connections(listener, router(app), Duration::from_secs(args.client_timeout_s)).await;
        anyhow::Ok(())
    })?;
    let _ = std::fs::remove_dir_all(&config_dir);
    Ok(0)
}

/// Serves connections until Ctrl-C. A client must send its request head within
/// `head_timeout` or its connection is closed (bodies are bounded in [`read_body`]).
async fn serve_connections(listener: tokio::net::TcpListener, app: Router, head_timeout: Duration) {
    let mut stop = std::pin::pin!(tokio::signal::ctrl_c());
    loop {
        let stream = tokio::select! {
            _ = &mut stop => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                // Out of file descriptors and the like: keep serving, without spinning.
                Err(err) => {
                    eprintln!("pipe serve: accepting a connection: {err}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        // Small JSON answers go out at once, not after a delayed ACK.
        let _ = stream.set_nodelay(true);
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(head_timeout);
            // A client that hangs up or times out ends only its own connection.
            let _ = http.serve_connection(hyper_util::rt::TokioIo::new(stream), service).await;
        });
    }
}

/// A private directory for the worker's config (the models' paths).
fn tempfile_dir() -> Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("pipe-serve-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/", get(|| async { Html(include_str!("assets/caption.html")) }))
        .route("/gallery", get(|| async { Html(include_str!("assets/gallery.html")) }))
        .route("/experiments", get(|| async { Html(include_str!("assets/experiments.html")) }))
        .route(
            "/assets/app.css",
            get(|| async { ([(header::CONTENT_TYPE, "text/css")], include_str!("assets/app.css")) }),
        )
        .route("/api/models", get(models))
        .route("/api/caption", post(caption))
        .route("/api/experiments", get(experiments))
        .route("/api/gallery", get(gallery_stages))
        .route("/api/gallery/{stage}", get(gallery))
        .route("/api/gallery/{stage}/image/{id}", get(gallery_image))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such page") })
        // The body limit is enforced while reading (see `caption`), not by axum's default 2 MB.
        .layer(DefaultBodyLimit::disable())
        .layer(middleware::from_fn_with_state(app.clone(), require_token))
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(app)
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

/// With a token set, every request but the health check must carry it.
async fn require_token(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
    let Some(token) = &app.token else { return next.run(request).await };
    let headers = request.headers();
    let query_token = request
        .uri()
        .query()
        .and_then(|q| q.split('&').find_map(|pair| pair.strip_prefix("token=")).map(str::to_string));
    let given = bearer(headers).or_else(|| cookie(headers, "pipe_token")).or(query_token.clone());
    if given.as_deref() != Some(token.as_str()) {
        eprintln!("pipe serve: refused {} {} (no valid token)", request.method(), request.uri().path());
        return error(StatusCode::UNAUTHORIZED, "this server needs its token (Authorization: Bearer T)");
    }
    let mut response = next.run(request).await;
    if query_token.is_some() {
        let cookie = format!("pipe_token={token}; HttpOnly; SameSite=Strict; Path=/");
        if let Ok(value) = HeaderValue::from_str(&cookie) {
            response.headers_mut().insert(header::SET_COOKIE, value);
        }
    }
    response
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    headers.get(header::AUTHORIZATION)?.to_str().ok()?.strip_prefix("Bearer ").map(str::to_string)
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers.get(header::COOKIE)?.to_str().ok()?.split(';').find_map(|pair| {
        let (key, value) = pair.trim().split_once('=')?;
        (key == name).then(|| value.to_string())
    })
}

async fn models(State(app): State<Arc<App>>) -> Response {
    Json(json!({ "models": app.catalog.models })).into_response()
}

async fn experiments(State(app): State<Arc<App>>) -> Response {
    match app.catalog.experiments() {
        Ok(rows) => Json(json!({ "experiments": rows })).into_response(),
        Err(err) => error(StatusCode::INTERNAL_SERVER_ERROR, &format!("{err:#}")),
    }
}

async fn gallery_stages(State(app): State<Arc<App>>) -> Response {
    Json(json!({ "stages": app.catalog.gallery_stages() })).into_response()
}

async fn gallery(State(app): State<Arc<App>>, UrlPath(stage): UrlPath<String>) -> Response {
    let catalog_app = app.clone();
    let rows = tokio::task::spawn_blocking(move || {
        catalog_app.catalog.gallery(&stage).map(|r| r.map(<[_]>::to_vec))
    })
    .await;
    match rows {
        Ok(Some(Ok(rows))) => Json(json!({ "rows": rows })).into_response(),
        Ok(Some(Err(err))) => error(StatusCode::INTERNAL_SERVER_ERROR, &err),
        Ok(None) => error(StatusCode::NOT_FOUND, "no scored gallery for that stage"),
        Err(err) => error(StatusCode::INTERNAL_SERVER_ERROR, &err.to_string()),
    }
}

/// A gallery image, by row id: clients never name a file.
async fn gallery_image(
    State(app): State<Arc<App>>,
    UrlPath((stage, id)): UrlPath<(String, String)>,
) -> Response {
    let Some(path) = id.parse::<usize>().ok().and_then(|id| app.catalog.gallery_image(&stage, id)) else {
        return error(StatusCode::NOT_FOUND, "no such image");
    };
    match tokio::fs::read(&path).await {
        Ok(bytes) => {
            let kind = match image::guess_format(&bytes) {
                Ok(image::ImageFormat::Png) => "image/png",
                Ok(image::ImageFormat::Jpeg) => "image/jpeg",
                _ => "application/octet-stream",
            };
            ([(header::CONTENT_TYPE, kind)], bytes).into_response()
        }
        Err(_) => error(StatusCode::NOT_FOUND, "no such image"),
    }
}

#[derive(Deserialize)]
struct CaptionQuery {
    model: Option<String>,
    beam: Option<usize>,
    #[serde(default)]
    attention: bool,
}

/// Widest beam a request may ask for.
const MAX_BEAM: usize = 20;

/// `POST /api/caption?model=M&beam=N&attention=true` with the image bytes as the body, or
/// a multipart/form-data form (`curl -F image=@photo.jpg`).
async fn caption(
    State(app): State<Arc<App>>,
    Query(query): Query<CaptionQuery>,
    request: Request,
) -> Response {
    let model = match &query.model {
        Some(name) => match app.catalog.model(name) {
            Some(model) => model,
            None => {
                let names: Vec<&str> = app.catalog.models.iter().map(|m| m.name.as_str()).collect();
                return error(
                    StatusCode::NOT_FOUND,
                    &format!("no model `{name}` (models: {})", names.join(", ")),
                );
            }
        },
        None => &app.catalog.models[0],
    };
    let beam_width = query.beam.unwrap_or(model.beam_width);
    if beam_width == 0 || beam_width > MAX_BEAM {
        return error(StatusCode::BAD_REQUEST, &format!("beam must be 1 to {MAX_BEAM}"));
    }
    let content_type =
        request.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_string);
    let body = match read_body(request.into_body(), app.max_upload, app.client_timeout).await {
        Ok(bytes) => bytes,
        Err(response) => return response,
    };
    let image = match uploaded_image(content_type.as_deref(), body).await {
        Ok(bytes) => bytes,
        Err(message) => return error(StatusCode::BAD_REQUEST, &message),
    };
    if let Err((status, message)) = check_upload(&image) {
        return error(status, &message);
    }
    let (reply, answer) = oneshot::channel();
    let job = Job {
        model: model.name.clone(),
        beam_width,
        attention: query.attention && model.attention,
        image,
        reply,
    };
    if app.pool.submit(job).is_err() {
        let mut response =
            error(StatusCode::SERVICE_UNAVAILABLE, "busy: the caption queue is full; retry shortly");
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return response;
    }
    match answer.await {
        Ok(Ok(ImageOutcome::Captioned(caption))) => {
            let mut body = json!({
                "model": model.name,
                "beam": beam_width,
                "caption": caption.caption,
                "log_prob": caption.log_prob,
                "beams": caption.beams,
            });
            if let (Some(weights), Some(grid)) = (caption.attention, model.grid) {
                let words: Vec<&str> = caption.caption.split_whitespace().collect();
                body["attention"] = json!({ "grid": grid, "words": words, "weights": weights });
            }
            Json(body).into_response()
        }
        Ok(Ok(ImageOutcome::Failed { error: message })) => {
            error(StatusCode::UNPROCESSABLE_ENTITY, &format!("the image could not be decoded: {message}"))
        }
        Ok(Err(message)) => error(StatusCode::SERVICE_UNAVAILABLE, &message),
        Err(_) => error(StatusCode::SERVICE_UNAVAILABLE, "the caption worker went away"),
    }
}

/// Reads a request body of at most `limit` bytes within `timeout`.
async fn read_body(body: Body, limit: usize, timeout: Duration) -> Result<Bytes, Response> {
    match tokio::time::timeout(timeout, axum::body::to_bytes(body, limit)).await {
        Err(_) => Err(error(StatusCode::REQUEST_TIMEOUT, "the upload took too long")),
        Ok(Err(_)) => Err(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("the upload is over the limit of {} MiB (--max-upload-mib)", limit >> 20),
        )),
        Ok(Ok(bytes)) => Ok(bytes),
    }
}

/// The image of an upload: the body itself, or from a multipart/form-data form its field
/// `image` or its one file.
async fn uploaded_image(content_type: Option<&str>, body: Bytes) -> Result<Bytes, String> {
    let Some(content_type) = content_type.filter(|t| t.starts_with("multipart/")) else { return Ok(body) };
    let boundary = multer::parse_boundary(content_type)
        .map_err(|e| format!("a multipart upload without a valid boundary: {e}"))?;
    let body = futures_util::stream::once(async move { Ok::<_, std::convert::Infallible>(body) });
    let mut form = multer::Multipart::new(body, boundary);
    let malformed = |e: multer::Error| format!("a malformed multipart upload: {e}");
    let mut image = None;
    while let Some(field) = form.next_field().await.map_err(malformed)? {
        if field.name() != Some("image") && field.file_name().is_none() {
            continue;
        }
        if image.is_some() {
            return Err("one image per request: the form has more than one file".into());
        }
        image = Some(field.bytes().await.map_err(malformed)?);
    }
    image.ok_or_else(|| "the multipart form has no image (send it as the field `image`)".to_string())
}

/// Refuses what is not a JPEG or PNG by its content, and headers that promise more pixels
/// than the backbone's decoder accepts, before anything is decoded.
fn check_upload(bytes: &[u8]) -> Result<(), (StatusCode, String)> {
    if bytes.is_empty() {
        return Err((
            StatusCode::BAD_REQUEST,
            "the request has no image (send its bytes as the body)".into(),
        ));
    }
    match image::guess_format(bytes) {
        Ok(image::ImageFormat::Jpeg | image::ImageFormat::Png) => {}
        _ => {
            return Err((
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "not a JPEG or PNG image (judged by its content)".into(),
            ))
        }
    }
    let (width, height) = header_dimensions(bytes)
        .map_err(|_| (StatusCode::UNPROCESSABLE_ENTITY, "the image header cannot be read".to_string()))?;
    check_image_size(width, height)
        .map_err(|e| (StatusCode::PAYLOAD_TOO_LARGE, format!("the image is too large: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(width: u32, height: u32) -> Vec<u8> {
        let mut out = Vec::new();
        image::RgbImage::new(width, height)
            .write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
            .unwrap();
        out
    }

    #[test]
    /// (A header promising 60000×60000 pixels: tests/serve.rs.)
    fn uploads_are_judged_by_content_and_header_size() {
        assert!(check_upload(&png(4, 3)).is_ok());
        assert_eq!(check_upload(b"").unwrap_err().0, StatusCode::BAD_REQUEST);
        assert_eq!(check_upload(b"GIF89a....").unwrap_err().0, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert_eq!(
            check_upload(b"<html>not an image</html>").unwrap_err().0,
            StatusCode::UNSUPPORTED_MEDIA_TYPE
        );
        // A PNG header promising 60000×60000 pixels: refused without decoding it.
        // A PNG signature with nothing after it.
        assert_eq!(check_upload(&png(2, 2)[..12]).unwrap_err().0, StatusCode::UNPROCESSABLE_ENTITY);
    }
}

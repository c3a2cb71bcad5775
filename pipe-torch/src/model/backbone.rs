//! A frozen image backbone: a TorchScript module plus the sidecar that says how to feed it.
//!
//! `scripts/export_backbone.py` writes a backbone directory:
//!
//! | file | what |
//! |---|---|
//! | `model.pt` | TorchScript; `forward(x: [N, 3, S, S] f32) -> [N, D]` pooled features |
//! | `backbone.json` | [`BackboneSpec`]: input size S, resize rule, mean/std, value range, D |
//!
//! Images are prepared the way the PyTorch peer prepares them: decoded to RGB, stretched to
//! S×S (a Triangle filter, which matches PIL's antialiased BILINEAR), scaled to the value
//! range and normalized per channel. Decoders hand over bytes, pixel after pixel (HWC
//! `u8`, as decoded); the batch becomes an `[N, 3, S, S]` view of them with channels-last
//! strides, and scaling and normalization run as one tensor op on the model's device, so a
//! GPU receives a quarter of the bytes that floats would take. Channels-last also suits
//! oneDNN's convolutions: on 2 CPU cores it ran Lite0 about 1.6× faster than NCHW.
//!
//! [`Backbone::extract`] overlaps decoding with the forward pass:
//!
//! ```text
//! paths ─► decode pool (rayon) ─► sync_channel(queue_depth) ─► u8 batch ─► normalize + forward
//! ```
//!
//! Decoding is cheap next to the forward pass on a CPU (about 1 ms against 25 ms an image), so
//! the default gives torch every core and lets one decode thread share them. A file that
//! cannot be read or decoded, or that exceeds the decoder's limits, is reported as a
//! [`Skipped`] image and never stops the run.

use std::fs;
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::thread;
use std::time::Instant;

use anyhow::{anyhow, bail, ensure, Context, Result};
use image::imageops::FilterType;
use image::{ImageFormat, ImageReader, Limits, RgbImage};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use tch::{CModule, Device, Kind, Tensor};

pub use pipe::stages::device::{DeviceChoice, Precision};

/// The TorchScript file inside a backbone directory.
pub const MODEL_FILE: &str = "model.pt";
/// The preprocessing sidecar inside a backbone directory.
pub const SIDECAR_FILE: &str = "backbone.json";

/// Largest accepted image side, in pixels. Bigger files are skipped as oversized.
const MAX_IMAGE_SIDE: u32 = 16_384;
/// Largest decoder allocation for one image. Several decode threads run at once, so this
/// bounds memory at roughly `decode_threads × MAX_DECODE_ALLOC`.
const MAX_DECODE_ALLOC: u64 = 256 * 1024 * 1024;

/// `backbone.json`: how the model expects its input, and what it returns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackboneSpec {
    /// Architecture name, e.g. `efficientnet_lite0`.
    pub name: String,
    /// Side S of the square input.
    pub input_size: u32,
    /// How images reach S×S. Only `stretch` (ignore aspect ratio, as the peer does) exists.
    #[serde(default = "default_resize")]
    pub resize: String,
    /// Per-channel (RGB) mean, in the units of `value_range`.
    pub mean: [f32; 3],
    /// Per-channel (RGB) standard deviation, in the units of `value_range`.
    pub std: [f32; 3],
    /// Feature dimension D.
    pub dim: usize,
    /// Tensor layout of the input. Only `NCHW`.
    #[serde(default = "default_layout")]
    pub layout: String,
    /// The value a white pixel has before normalization: 1.0 or 255.
    #[serde(default = "default_value_range")]
    pub value_range: f32,
}

fn default_resize() -> String {
    "stretch".into()
}
fn default_layout() -> String {
    "NCHW".into()
}
fn default_value_range() -> f32 {
    1.0
}

impl BackboneSpec {
    /// Reads and validates `<dir>/backbone.json`.
    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join(SIDECAR_FILE);
        let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let spec: Self =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        spec.validate().with_context(|| format!("{}", path.display()))?;
        Ok(spec)
    }

    fn validate(&self) -> Result<()> {
        ensure!(self.layout == "NCHW", "layout `{}` is not supported (only NCHW)", self.layout);
        ensure!(self.resize == "stretch", "resize `{}` is not supported (only stretch)", self.resize);
        ensure!((1..=4096).contains(&self.input_size), "input_size {} out of range", self.input_size);
        ensure!(self.dim > 0, "dim must be positive");
        ensure!(self.std.iter().all(|s| *s > 0.0), "std must be positive: {:?}", self.std);
        ensure!(
            self.value_range == 1.0 || self.value_range == 255.0,
            "value_range must be 1.0 or 255, not {}",
            self.value_range
        );
        Ok(())
    }

    /// Floats in one prepared image: 3 × S × S.
    pub fn image_len(&self) -> usize {
        3 * (self.input_size as usize).pow(2)
    }
}

/// blake3 over `model.pt` and `backbone.json`: the identity of a backbone's outputs.
pub fn content_hash(dir: &Path) -> Result<String> {
    let mut hasher = blake3::Hasher::new();
    for name in [MODEL_FILE, SIDECAR_FILE] {
        let path = dir.join(name);
        let bytes = fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        // Name and length prefixes keep the two files from running into each other.
        hasher.update(name.as_bytes());
        hasher.update(&(bytes.len() as u64).to_le_bytes());
        hasher.update(&bytes);
    }
    Ok(hasher.finalize().to_hex().to_string())
}

/// The libtorch device a [`DeviceChoice`] names.
pub trait ResolveDevice {
    /// The concrete device, failing clearly when CUDA is asked for but absent.
    fn resolve(self) -> Result<Device>;
}

impl ResolveDevice for DeviceChoice {
    fn resolve(self) -> Result<Device> {
        if self != Self::Cpu {
            load_cuda_backend();
        }
        match self {
            Self::Auto if tch::Cuda::is_available() => Ok(Device::Cuda(0)),
            Self::Auto | Self::Cpu => Ok(Device::Cpu),
            Self::Cuda(n) => {
                let count = tch::Cuda::device_count() as usize;
                ensure!(
                    n < count,
                    "device cuda:{n} requested but {count} CUDA device(s) found \
                     (is libtorch a CUDA build, and libtorch_cuda.so on the library path?)"
                );
                Ok(Device::Cuda(n))
            }
        }
    }
}

/// Loads libtorch's CUDA backend, once, before anything asks torch about CUDA.
///
/// Nothing in a tch binary calls into `libtorch_cuda.so` directly, so the linker's
/// `--as-needed` drops it and torch then reports no GPU. Loading it at run time registers
/// the backend (a binary linked with `-Wl,--no-as-needed -ltorch_cuda` has it already, and
/// then this is a no-op). With a CPU-only libtorch the load fails quietly and the CPU is used.
fn load_cuda_backend() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        #[cfg(target_os = "linux")]
        {
            use std::ffi::{c_char, c_int, c_void};
            extern "C" {
                fn dlopen(filename: *const c_char, flag: c_int) -> *mut c_void;
            }
            const RTLD_NOW: c_int = 2;
            const RTLD_GLOBAL: c_int = 0x100;
            // SAFETY: a NUL-terminated library name; the handle is kept open on purpose for
            // the life of the process, and a null result (not found) is simply ignored.
            unsafe {
                dlopen(c"libtorch_cuda.so".as_ptr(), RTLD_NOW | RTLD_GLOBAL);
            }
        }
    });
}

/// The tensor kind a forward pass at `precision` runs in.
pub fn precision_kind(precision: Precision) -> Kind {
    match precision {
        Precision::Fp32 => Kind::Float,
        Precision::Fp16 => Kind::Half,
        Precision::Bf16 => Kind::BFloat16,
    }
}

/// How many threads torch and the decoders get.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ThreadPlan {
    pub torch: usize,
    pub decode: usize,
}

impl ThreadPlan {
    /// `threads` = 0 means all cores. On a CPU, torch gets every core and one decoder per
    /// four cores shares them (decoding is a few percent of the work; on 2 cores this beat
    /// 1 torch + 1 decode thread by 1.6×). On CUDA the GPU does the maths: decoding gets all
    /// cores but one, which is left to the thread that launches the kernels.
    pub fn new(threads: usize, device: Device) -> Self {
        let cores = thread::available_parallelism().map_or(1, |n| n.get());
        let total = if threads == 0 { cores } else { threads };
        match device {
            Device::Cpu => Self { torch: total, decode: (total / 4).max(1) },
            _ => Self { torch: 1, decode: total.saturating_sub(1).max(1) },
        }
    }
}

/// Turns image files into S×S RGB pixels (HWC `u8`), the form batches travel in.
#[derive(Debug, Clone, Copy)]
pub struct Preprocess {
    size: u32,
}

impl Preprocess {
    pub fn new(spec: &BackboneSpec) -> Self {
        Self { size: spec.input_size }
    }

    /// Bytes in one prepared image: 3 × S × S.
    pub fn image_len(&self) -> usize {
        3 * (self.size as usize).pow(2)
    }

    /// Reads, decodes and resizes one file into `dst` (length [`Self::image_len`]).
    pub fn file_into(&self, path: &Path, dst: &mut [u8]) -> Result<()> {
        let bytes = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let img = decode_rgb(&bytes).with_context(|| format!("decoding {}", path.display()))?;
        self.image_into(&img, dst);
        Ok(())
    }

    /// Stretches `img` to S×S and copies its pixels (RGB, row-major) into `dst`.
    pub fn image_into(&self, img: &RgbImage, dst: &mut [u8]) {
        let s = self.size;
        let resized;
        let img = if img.dimensions() == (s, s) {
            img
        } else {
            resized = image::imageops::resize(img, s, s, FilterType::Triangle);
            &resized
        };
        dst.copy_from_slice(img.as_raw());
    }
}

/// Decodes PNG or JPEG bytes to RGB under size limits. A truncated JPEG is an error: the
/// decoder would otherwise fill the missing part with grey and carry on.
pub fn decode_rgb(bytes: &[u8]) -> Result<RgbImage> {
    let mut reader = ImageReader::new(Cursor::new(bytes)).with_guessed_format()?;
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_IMAGE_SIDE);
    limits.max_image_height = Some(MAX_IMAGE_SIDE);
    limits.max_alloc = Some(MAX_DECODE_ALLOC);
    reader.limits(limits);
    if reader.format() == Some(ImageFormat::Jpeg) {
        ensure_complete_jpeg(bytes)?;
    }
    Ok(reader.decode()?.into_rgb8())
}

/// A complete JPEG has an end-of-image marker (FF D9) after its last start-of-scan (FF DA).
/// Neither can occur inside entropy-coded data, where FF is always followed by 00 or RSTn.
fn ensure_complete_jpeg(bytes: &[u8]) -> Result<()> {
    let last = |marker: u8| bytes.windows(2).rposition(|w| w == [0xFF, marker]);
    match (last(0xDA), last(0xD9)) {
        (Some(sos), Some(eoi)) if eoi > sos => Ok(()),
        (None, _) => bail!("JPEG has no image data (no start-of-scan marker)"),
        _ => bail!("truncated JPEG (no end-of-image marker after the last scan)"),
    }
}

/// An image that was not used, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Skipped {
    /// Position in the list given to [`Backbone::extract`].
    pub index: usize,
    pub reason: String,
}

/// One batch of results handed to the sink of [`Backbone::extract`].
#[derive(Debug)]
pub struct FeatureBatch {
    /// Positions (in the input list) of the images that have features, in order.
    pub indices: Vec<usize>,
    /// Row-major `[indices.len(), dim]`.
    pub features: Vec<f32>,
    /// Images of this batch that were skipped.
    pub skipped: Vec<Skipped>,
}

/// Knobs of [`Backbone::extract`].
#[derive(Debug, Clone, Copy)]
pub struct ExtractOptions {
    pub batch_size: usize,
    pub decode_threads: usize,
    /// Decoded batches that may wait for the forward pass. Two keep the model busy while
    /// bounding memory (one batch of 32 at 224 px is 19 MB).
    pub queue_depth: usize,
}

impl Default for ExtractOptions {
    fn default() -> Self {
        Self { batch_size: 32, decode_threads: 1, queue_depth: 2 }
    }
}

/// Where the time of an [`Backbone::extract`] call went.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct ExtractTimings {
    /// Images that got features.
    pub computed: usize,
    pub skipped: usize,
    /// Seconds the forward loop waited for decoded batches (0 when decoding is hidden).
    pub wait_s: f64,
    /// Seconds in forward passes, including host/device copies.
    pub forward_s: f64,
    pub total_s: f64,
}

impl ExtractTimings {
    pub fn images_per_s(&self) -> f64 {
        if self.total_s > 0.0 {
            self.computed as f64 / self.total_s
        } else {
            0.0
        }
    }
}

/// Decoded pixels of one batch (HWC `u8`, image after image), on their way to the forward pass.
struct DecodedBatch {
    indices: Vec<usize>,
    pixels: Vec<u8>,
    skipped: Vec<Skipped>,
}

/// What [`Backbone::extract_all`] returns: a vector per path (`None` when skipped), and the skips.
pub type ExtractedAll = (Vec<Option<Vec<f32>>>, Vec<Skipped>);

/// A loaded backbone, ready to turn images into features.
pub struct Backbone {
    module: CModule,
    spec: BackboneSpec,
    prep: Preprocess,
    device: Device,
    precision: Precision,
    hash: String,
    /// `[1, 3, 1, 1]` f32 on `device`: normalized = byte × scale + offset, per channel.
    scale: Tensor,
    offset: Tensor,
}

impl Backbone {
    /// Loads `<dir>/model.pt` onto `device` in `precision`, with its sidecar.
    pub fn load(dir: &Path, device: DeviceChoice, precision: Precision) -> Result<Self> {
        let spec = BackboneSpec::read(dir)?;
        let device = device.resolve()?;
        ensure!(
            !(device == Device::Cpu && precision == Precision::Fp16),
            "precision fp16 needs a CUDA device; use fp32 (or bf16) on the CPU"
        );
        let path = dir.join(MODEL_FILE);
        let mut module = CModule::load_on_device(&path, device)
            .with_context(|| format!("loading TorchScript module {}", path.display()))?;
        module.set_eval();
        if precision != Precision::Fp32 {
            module.to(device, precision_kind(precision), false);
        }
        let hash = content_hash(dir)?;
        let prep = Preprocess::new(&spec);
        let (scale, offset) = normalization(&spec, device);
        Ok(Self { module, spec, prep, device, precision, hash, scale, offset })
    }

    pub fn spec(&self) -> &BackboneSpec {
        &self.spec
    }
    pub fn dim(&self) -> usize {
        self.spec.dim
    }
    pub fn device(&self) -> Device {
        self.device
    }
    pub fn precision(&self) -> Precision {
        self.precision
    }
    /// See [`content_hash`].
    pub fn hash(&self) -> &str {
        &self.hash
    }
    pub fn preprocess(&self) -> &Preprocess {
        &self.prep
    }

    /// Runs prepared pixels (`[n, S, S, 3]` HWC `u8`, row-major) through the model:
    /// `[n, D]` f32, row-major.
    pub fn forward_pixels(&self, pixels: &[u8], n: usize) -> Result<Vec<f32>> {
        let s = self.spec.input_size as i64;
        ensure!(pixels.len() == n * self.spec.image_len(), "batch of {n} has {} bytes", pixels.len());
        // NHWC bytes seen as NCHW: a channels-last view, no copy.
        let input = Tensor::from_slice(pixels).view([n as i64, s, s, 3]).permute([0, 3, 1, 2]);
        let out = self.forward_bytes(&input)?;
        Ok(Vec::<f32>::try_from(out.flatten(0, -1))?)
    }

    /// Forward pass on a host `u8` tensor `[n, 3, S, S]` of raw pixels (channels-last
    /// strides are fastest): moves it to the device, normalizes it there (keeping its
    /// memory format) and returns `[n, D]` f32 on the CPU.
    pub fn forward_bytes(&self, pixels: &Tensor) -> Result<Tensor> {
        tch::no_grad(|| {
            let x = pixels.to_device(self.device).to_kind(Kind::Float);
            self.forward(&self.offset.addcmul(&x, &self.scale))
        })
    }

    /// Forward pass on an already normalized tensor `[n, 3, S, S]` (any device or float
    /// kind): returns `[n, D]` f32 on the CPU.
    pub fn forward(&self, input: &Tensor) -> Result<Tensor> {
        tch::no_grad(|| {
            let n = input.size()[0];
            let x = input.to_device(self.device).to_kind(precision_kind(self.precision));
            let y = self.module.forward_ts(&[x]).context("backbone forward pass")?;
            ensure!(
                y.size() == [n, self.spec.dim as i64],
                "backbone returned shape {:?}, expected [{n}, {}]",
                y.size(),
                self.spec.dim
            );
            Ok(y.to_device(Device::Cpu).to_kind(Kind::Float).contiguous())
        })
    }

    /// Features of every file in `paths`, in batches, decoding on `opts.decode_threads`
    /// threads while the model runs. Each finished batch goes to `sink`; an error from the
    /// sink stops the run. Unreadable images go to the batch's `skipped` list.
    pub fn extract<F>(&self, paths: &[PathBuf], opts: &ExtractOptions, mut sink: F) -> Result<ExtractTimings>
    where
        F: FnMut(FeatureBatch) -> Result<()>,
    {
        ensure!(opts.batch_size > 0, "batch_size must be positive");
        let start = Instant::now();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(opts.decode_threads.max(1))
            .thread_name(|i| format!("decode-{i}"))
            .build()
            .context("starting decode threads")?;
        let (tx, rx) = sync_channel::<DecodedBatch>(opts.queue_depth.max(1));
        let mut timings = thread::scope(|scope| {
            let prep = &self.prep;
            let producer = scope.spawn(move || decode_batches(paths, prep, opts.batch_size, &pool, tx));
            let result = self.consume(rx, &mut sink);
            // With the receiver gone, the producer stops at its next send.
            producer.join().map_err(|_| anyhow!("decode thread panicked"))?;
            result
        })?;
        timings.total_s = start.elapsed().as_secs_f64();
        Ok(timings)
    }

    /// The forward loop: takes decoded batches off the channel until it closes.
    fn consume<F>(&self, rx: Receiver<DecodedBatch>, sink: &mut F) -> Result<ExtractTimings>
    where
        F: FnMut(FeatureBatch) -> Result<()>,
    {
        let mut t = ExtractTimings::default();
        loop {
            let waited = Instant::now();
            let Ok(batch) = rx.recv() else { break };
            t.wait_s += waited.elapsed().as_secs_f64();
            let ran = Instant::now();
            let n = batch.indices.len();
            let features = if n == 0 { Vec::new() } else { self.forward_pixels(&batch.pixels, n)? };
            t.forward_s += ran.elapsed().as_secs_f64();
            t.computed += n;
            t.skipped += batch.skipped.len();
            sink(FeatureBatch { indices: batch.indices, features, skipped: batch.skipped })?;
        }
        Ok(t)
    }

    /// Convenience over [`Self::extract`]: one `Option<Vec<f32>>` per path (None = skipped).
    pub fn extract_all(&self, paths: &[PathBuf], opts: &ExtractOptions) -> Result<ExtractedAll> {
        let mut out = vec![None; paths.len()];
        let mut skipped = Vec::new();
        let dim = self.dim();
        self.extract(paths, opts, |batch| {
            for (row, &i) in batch.indices.iter().enumerate() {
                out[i] = Some(batch.features[row * dim..(row + 1) * dim].to_vec());
            }
            skipped.extend(batch.skipped);
            Ok(())
        })?;
        Ok((out, skipped))
    }
}

/// Per-channel `scale` and `offset` (`[1, 3, 1, 1]` on `device`) such that
/// `byte × scale + offset` = `(byte / 255 × value_range − mean) / std`.
fn normalization(spec: &BackboneSpec, device: Device) -> (Tensor, Tensor) {
    let scale: Vec<f32> = (0..3).map(|c| spec.value_range / 255.0 / spec.std[c]).collect();
    let offset: Vec<f32> = (0..3).map(|c| -spec.mean[c] / spec.std[c]).collect();
    let put = |v: &[f32]| Tensor::from_slice(v).view([1, 3, 1, 1]).to_device(device);
    (put(&scale), put(&offset))
}

/// The producer: decodes `paths` batch by batch on `pool` and sends each batch in order.
fn decode_batches(
    paths: &[PathBuf],
    prep: &Preprocess,
    batch_size: usize,
    pool: &rayon::ThreadPool,
    tx: SyncSender<DecodedBatch>,
) {
    for (b, chunk) in paths.chunks(batch_size).enumerate() {
        let batch = pool.install(|| decode_batch(chunk, b * batch_size, prep));
        if tx.send(batch).is_err() {
            return; // the consumer stopped (an error); nothing left to do
        }
    }
}

/// Decodes one chunk in parallel straight into a contiguous batch buffer, then closes the
/// gaps left by images that failed.
fn decode_batch(chunk: &[PathBuf], first: usize, prep: &Preprocess) -> DecodedBatch {
    let len = prep.image_len();
    let mut pixels = vec![0u8; chunk.len() * len];
    let results: Vec<Result<()>> = pixels
        .par_chunks_mut(len)
        .zip(chunk.par_iter())
        .map(|(dst, path)| prep.file_into(path, dst))
        .collect();
    let (mut indices, mut skipped, mut kept) = (Vec::new(), Vec::new(), 0);
    for (i, result) in results.into_iter().enumerate() {
        match result {
            Ok(()) => {
                if kept != i {
                    pixels.copy_within(i * len..(i + 1) * len, kept * len);
                }
                kept += 1;
                indices.push(first + i);
            }
            Err(err) => skipped.push(Skipped { index: first + i, reason: format!("{err:#}") }),
        }
    }
    pixels.truncate(kept * len);
    DecodedBatch { indices, pixels, skipped }
}

/// The JPEG and PNG files directly inside `dir`, sorted by name (for benchmarks and tools).
pub fn list_images(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut paths = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry?.path();
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or_default().to_ascii_lowercase();
        if matches!(ext.as_str(), "jpg" | "jpeg" | "png") {
            paths.push(path);
        }
    }
    paths.sort();
    Ok(paths)
}

/// Throughput figures of [`bench`].
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub images: usize,
    pub batch_size: usize,
    pub device: String,
    pub precision: &'static str,
    pub threads: ThreadPlan,
    /// Decode + forward through [`Backbone::extract`].
    pub end_to_end_img_s: f64,
    /// Forward passes alone (upload, normalize, model, download) on random pixel tensors of
    /// the same batch size.
    pub forward_only_img_s: f64,
    pub wait_s: f64,
    pub skipped: usize,
}

/// Measures end-to-end and forward-only throughput on `paths` (a warm-up batch first).
pub fn bench(
    backbone: &Backbone,
    paths: &[PathBuf],
    batch_size: usize,
    threads: ThreadPlan,
) -> Result<BenchReport> {
    tch::set_num_threads(threads.torch as i32);
    let s = backbone.spec().input_size as i64;
    let random =
        Tensor::randint(256, [batch_size as i64, s, s, 3], (Kind::Uint8, Device::Cpu)).permute([0, 3, 1, 2]);
    let _ = backbone.forward_bytes(&random)?; // warm-up: the first calls profile the graph and allocate
    let opts = ExtractOptions { batch_size, decode_threads: threads.decode, ..Default::default() };
    let e2e = backbone.extract(paths, &opts, |_| Ok(()))?;
    let batches = paths.len().div_ceil(batch_size).max(1);
    let start = Instant::now();
    for _ in 0..batches {
        let _ = backbone.forward_bytes(&random)?;
    }
    let forward_only = (batches * batch_size) as f64 / start.elapsed().as_secs_f64();
    Ok(BenchReport {
        images: paths.len(),
        batch_size,
        device: format!("{:?}", backbone.device()),
        precision: backbone.precision().as_str(),
        threads,
        end_to_end_img_s: e2e.images_per_s(),
        forward_only_img_s: forward_only,
        wait_s: e2e.wait_s,
        skipped: e2e.skipped,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The repository root (this crate is `pipe-torch/` inside it).
    fn repo_root() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
    }

    /// The exported Lite0 backbone; the project's set-up step exports it before tests run.
    fn lite0_dir() -> PathBuf {
        repo_root().join("data/models/efficientnet_lite0")
    }

    fn photo(name: &str) -> PathBuf {
        repo_root().join("tests/fixtures/photos").join(name)
    }

    fn lite0() -> Backbone {
        tch::set_num_threads(2);
        Backbone::load(&lite0_dir(), DeviceChoice::Cpu, Precision::Fp32).expect("load exported Lite0")
    }

    /// The README's "other backbones" path: torchvision's ResNet50 exported by
    /// scripts/export_backbone.py (random weights, since tests run offline) is a backbone.
    #[test]
    fn exported_torchvision_resnet50_loads_as_a_backbone() {
        let out = tempfile::tempdir().unwrap();
        let status = std::process::Command::new(repo_root().join(".venv/bin/python"))
            .arg(repo_root().join("scripts/export_backbone.py"))
            .args(["--arch", "resnet50", "--no-weights", "--out"])
            .arg(out.path())
            .status()
            .expect("run the set-up's python (make setup)");
        assert!(status.success(), "export_backbone.py --arch resnet50 failed");
        tch::set_num_threads(2);
        let backbone = Backbone::load(out.path(), DeviceChoice::Cpu, Precision::Fp32).unwrap();
        assert_eq!(backbone.dim(), 2048);
        let (features, skipped) = backbone
            .extract_all(&[photo("chelsea.png"), photo("coffee.png")], &ExtractOptions::default())
            .unwrap();
        assert!(skipped.is_empty(), "{skipped:?}");
        for vector in features.iter().map(|f| f.as_ref().unwrap()) {
            assert_eq!(vector.len(), 2048);
            assert!(vector.iter().all(|x| x.is_finite()) && vector.iter().any(|&x| x != 0.0));
        }
    }

    fn spec() -> BackboneSpec {
        BackboneSpec {
            name: "t".into(),
            input_size: 4,
            resize: default_resize(),
            mean: [0.485, 0.456, 0.406],
            std: [0.229, 0.224, 0.225],
            dim: 8,
            layout: default_layout(),
            value_range: 1.0,
        }
    }

    fn cosine(a: &[f32], b: &[f32]) -> f32 {
        let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
        let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
        dot / (norm(a) * norm(b))
    }

    #[test]
    fn preprocess_writes_pixels_in_hwc_order() {
        let prep = Preprocess::new(&spec());
        let img = RgbImage::from_pixel(4, 4, image::Rgb([255, 0, 128]));
        let mut out = vec![0u8; prep.image_len()];
        prep.image_into(&img, &mut out);
        assert!(out.chunks(3).all(|px| px == [255, 0, 128]));
    }

    #[test]
    fn preprocess_stretches_any_size() {
        let prep = Preprocess::new(&spec());
        let img = RgbImage::from_pixel(9, 3, image::Rgb([10, 20, 30]));
        let mut out = vec![0u8; prep.image_len()];
        prep.image_into(&img, &mut out);
        assert!(out.chunks(3).all(|px| px == [10, 20, 30]));
    }

    #[test]
    fn normalization_matches_the_sidecar_formula() {
        for value_range in [1.0, 255.0] {
            let spec = BackboneSpec { value_range, ..spec() };
            let (scale, offset) = normalization(&spec, Device::Cpu);
            let bytes = Tensor::from_slice(&[255u8, 0, 128]).view([1, 3, 1, 1]).to_kind(Kind::Float);
            let got = Vec::<f32>::try_from((bytes * scale + offset).flatten(0, -1)).unwrap();
            for (c, v) in [255.0f32, 0.0, 128.0].into_iter().enumerate() {
                let want = (v / 255.0 * value_range - spec.mean[c]) / spec.std[c];
                assert!((got[c] - want).abs() < 1e-4 * want.abs().max(1.0), "{value_range} {c}");
            }
        }
    }

    #[test]
    fn corrupt_and_truncated_images_are_errors() {
        let jpeg = fs::read(photo("chelsea.jpg")).unwrap();
        let png = fs::read(photo("coffee.png")).unwrap();
        assert!(decode_rgb(&jpeg).is_ok());
        let cut_jpeg = decode_rgb(&jpeg[..jpeg.len() / 2]).unwrap_err();
        assert!(format!("{cut_jpeg:#}").contains("truncated"), "{cut_jpeg:#}");
        assert!(decode_rgb(&png[..png.len() / 2]).is_err());
        assert!(decode_rgb(b"not an image at all").is_err());
    }

    #[test]
    fn oversized_images_are_refused() {
        use image::ImageEncoder as _;
        let wide = RgbImage::new(MAX_IMAGE_SIDE + 1, 1);
        let mut png = Vec::new();
        image::codecs::png::PngEncoder::new(&mut png)
            .write_image(wide.as_raw(), wide.width(), 1, image::ExtendedColorType::Rgb8)
            .unwrap();
        let err = decode_rgb(&png).unwrap_err();
        assert!(format!("{err:#}").to_lowercase().contains("limit"), "{err:#}");
    }

    #[test]
    fn content_hash_covers_model_and_sidecar() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(MODEL_FILE), b"model").unwrap();
        fs::write(dir.path().join(SIDECAR_FILE), b"{}").unwrap();
        let a = content_hash(dir.path()).unwrap();
        fs::write(dir.path().join(SIDECAR_FILE), b"{ }").unwrap();
        assert_ne!(a, content_hash(dir.path()).unwrap());
    }

    #[test]
    fn lite0_shapes_any_batch_size() {
        let bb = lite0();
        assert_eq!(bb.dim(), 1280);
        for n in [1i64, 3] {
            let x = Tensor::randn([n, 3, 224, 224], (Kind::Float, Device::Cpu));
            assert_eq!(bb.forward(&x).unwrap().size(), [n, 1280]);
        }
    }

    #[test]
    fn lite0_extract_is_deterministic_and_skips_bad_files() {
        let bb = lite0();
        let dir = tempfile::tempdir().unwrap();
        let jpeg = fs::read(photo("chelsea.jpg")).unwrap();
        let cut = dir.path().join("cut.jpg");
        fs::write(&cut, &jpeg[..jpeg.len() / 3]).unwrap();
        let junk = dir.path().join("junk.png");
        fs::write(&junk, b"\x89PNG\r\n\x1a\n garbage").unwrap();
        let paths =
            vec![photo("chelsea.jpg"), cut, photo("coffee.png"), junk, dir.path().join("missing.jpg")];
        let opts = ExtractOptions { batch_size: 2, decode_threads: 2, queue_depth: 1 };
        let (first, skipped) = bb.extract_all(&paths, &opts).unwrap();
        let bad: Vec<usize> = skipped.iter().map(|s| s.index).collect();
        assert_eq!(bad, [1, 3, 4]);
        assert!(skipped[0].reason.contains("cut.jpg"), "{}", skipped[0].reason);
        assert!(first[0].is_some() && first[2].is_some());
        assert_eq!(first[0].as_ref().unwrap().len(), 1280);
        let (second, _) = bb.extract_all(&paths, &opts).unwrap();
        assert_eq!(first, second);
    }

    #[test]
    fn lite0_classifier_sees_a_cat_and_an_espresso() {
        tch::set_num_threads(2);
        let dir = lite0_dir();
        let spec = BackboneSpec::read(&dir).unwrap();
        let classifier = CModule::load(dir.join("classifier.pt")).unwrap();
        let prep = Preprocess::new(&spec);
        let top1 = |name: &str| {
            let mut px = vec![0u8; prep.image_len()];
            prep.file_into(&photo(name), &mut px).unwrap();
            let (scale, offset) = normalization(&spec, Device::Cpu);
            let x = Tensor::from_slice(&px).view([1, 224, 224, 3]).permute([0, 3, 1, 2]).to_kind(Kind::Float);
            let x = x * scale + offset;
            let logits = tch::no_grad(|| classifier.forward_ts(&[x])).unwrap();
            logits.argmax(-1, false).int64_value(&[0])
        };
        // ImageNet 281-285 are domestic cats; 967 espresso, 968 cup.
        assert!((281..=285).contains(&top1("chelsea.png")), "chelsea: {}", top1("chelsea.png"));
        assert!((281..=285).contains(&top1("chelsea.jpg")));
        assert!([967, 968].contains(&top1("coffee.png")), "coffee: {}", top1("coffee.png"));
    }

    #[test]
    fn lite0_features_of_similar_photos_are_closer() {
        let bb = lite0();
        let dir = tempfile::tempdir().unwrap();
        // The same cat, mirrored and cropped: a different image of the same scene.
        let cat = image::open(photo("chelsea.png")).unwrap().fliph().crop_imm(20, 10, 260, 190);
        let other_cat = dir.path().join("cat2.png");
        cat.save(&other_cat).unwrap();
        let paths = vec![photo("chelsea.png"), other_cat, photo("coffee.png"), photo("rocket.png")];
        let (f, _) = bb.extract_all(&paths, &ExtractOptions::default()).unwrap();
        let f: Vec<Vec<f32>> = f.into_iter().map(Option::unwrap).collect();
        let same = cosine(&f[0], &f[1]);
        assert!(same > cosine(&f[0], &f[2]) && same > cosine(&f[0], &f[3]), "cat~cat {same}");
    }
}

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

mod bench;
mod device;
mod extract;
mod preprocess;
mod spec;

use std::path::Path;

use anyhow::{ensure, Context, Result};
use tch::{CModule, Device, Kind, Tensor};

use super::cpu_batch::forward_padded;

pub use bench::{bench, BenchReport};
pub use device::{precision_kind, ResolveDevice, ThreadPlan};
pub use extract::{ExtractOptions, ExtractTimings, ExtractedAll, FeatureBatch, Skipped, WARMUP_BATCHES};
pub use pipe::contract::device::{DeviceChoice, Precision};
pub use preprocess::{decode_rgb, Preprocess};
pub use spec::{content_hash, BackboneOutput, BackboneSpec, MODEL_FILE, SIDECAR_FILE};

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
    /// Floats per image in what [`Self::forward`] returns: D, or cells × D for a grid.
    pub fn row_len(&self) -> usize {
        self.spec.row_len()
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

    /// Runs prepared pixels (`[n, S, S, 3]` HWC `u8`, row-major) through the model and
    /// writes `[n, row_len]` f32 rows, row-major, into `rows` (resized to fit). Neither side
    /// gets a fresh host buffer per batch: the model reads `pixels` where they lie, and the
    /// caller's `rows` is filled in place, so on a GPU a batch costs the copies and not the
    /// page faults of ~40 MB of new memory (which cost more than the model itself, measured).
    pub fn forward_pixels_into(&self, pixels: &[u8], n: usize, rows: &mut Vec<f32>) -> Result<()> {
        let s = self.spec.input_size as i64;
        ensure!(pixels.len() == n * self.spec.image_len(), "batch of {n} has {} bytes", pixels.len());
        // SAFETY: the tensor views `pixels`, which outlive it: it is dropped inside this
        // function, and every use of it (the host-to-device copy included) ends before
        // `forward_rows` returns.
        let input = unsafe {
            Tensor::from_blob(pixels.as_ptr(), &[n as i64, s, s, 3], &[], Kind::Uint8, Device::Cpu)
        };
        // NHWC bytes seen as NCHW: a channels-last view, no copy.
        let out = tch::no_grad(|| self.forward_rows(&self.normalized(&input.permute([0, 3, 1, 2]))))?;
        let row_len = self.row_len();
        rows.resize(n * row_len, 0.0);
        // SAFETY: `host` views `rows`, which is exactly `n * row_len` floats long and is not
        // touched elsewhere while `host` lives; the copy is synchronous.
        let mut host = unsafe {
            Tensor::from_blob(
                rows.as_mut_ptr().cast::<u8>(),
                &[n as i64, row_len as i64],
                &[],
                Kind::Float,
                Device::Cpu,
            )
        };
        host.f_copy_(&out.to_kind(Kind::Float)).context("copying features to the host")?;
        Ok(())
    }

    /// Forward pass on a host `u8` tensor `[n, 3, S, S]` of raw pixels (channels-last
    /// strides are fastest): moves it to the device, normalizes it there (keeping its
    /// memory format) and returns `[n, row_len]` f32 on the CPU.
    pub fn forward_bytes(&self, pixels: &Tensor) -> Result<Tensor> {
        tch::no_grad(|| self.forward(&self.normalized(pixels)))
    }

    /// Raw `u8` pixels `[n, 3, S, S]` moved to the device and normalized there, in f32,
    /// keeping their memory format.
    fn normalized(&self, pixels: &Tensor) -> Tensor {
        let x = pixels.to_device(self.device).to_kind(Kind::Float);
        self.offset.addcmul(&x, &self.scale)
    }

    /// Forward pass on an already normalized tensor `[n, 3, S, S]` (any device or float
    /// kind): returns `[n, row_len]` f32 on the CPU.
    pub fn forward(&self, input: &Tensor) -> Result<Tensor> {
        let y = tch::no_grad(|| self.forward_rows(input))?;
        Ok(y.to_device(Device::Cpu).to_kind(Kind::Float).contiguous())
    }

    /// The model on `input` (`[n, 3, S, S]`, any device or float kind): `[n, row_len]` on
    /// the model's device, in its precision.
    fn forward_rows(&self, input: &Tensor) -> Result<Tensor> {
        let n = input.size()[0];
        let x = input.to_device(self.device).to_kind(precision_kind(self.precision));
        let y = forward_padded(&x, |x| self.module.forward_ts(&[x]).context("backbone forward pass"))?;
        self.rows(y, n)
    }
}

impl Backbone {
    /// The model's output (n images) as `[n, row_len]`: pooled `[n, D]` as it is; a grid
    /// `[n, H·W, D]` flattened, or `[n, D, H, W]` moved to cells-major first.
    fn rows(&self, y: Tensor, n: i64) -> Result<Tensor> {
        let (d, [h, w]) = (self.spec.dim as i64, self.spec.grid.map_or([1, 1], |g| g.map(i64::from)));
        let y = match self.spec.output {
            BackboneOutput::Pooled => {
                ensure!(y.size() == [n, d], "backbone returned shape {:?}, expected [{n}, {d}]", y.size());
                y
            }
            BackboneOutput::Grid if y.size() == [n, d, h, w] => y.flatten(2, 3).transpose(1, 2),
            BackboneOutput::Grid => {
                ensure!(
                    y.size() == [n, h * w, d],
                    "backbone returned shape {:?}, expected a {h}x{w} grid: [{n}, {}, {d}] or [{n}, {d}, {h}, {w}]",
                    y.size(),
                    h * w
                );
                y
            }
        };
        Ok(y.reshape([n, -1]))
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

#[cfg(test)]
pub(crate) mod tests {
    use std::fs;
    use std::path::PathBuf;

    use image::RgbImage;

    use super::preprocess::MAX_IMAGE_SIDE;
    use super::spec::{default_layout, default_resize};
    use super::*;
    use crate::model::cpu_batch::tests::assert_first_row_is_the_same_in_any_batch_at_any_thread_count;

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

    /// Runs scripts/export_backbone.py with `args` and random weights (tests run offline)
    /// into a temp dir, which lives as long as the returned guard. The weights depend only
    /// on the arch (the script seeds torch), so two exports of one arch share them.
    pub(crate) fn export_random(args: &[&str]) -> tempfile::TempDir {
        let out = tempfile::tempdir().unwrap();
        let status = std::process::Command::new(repo_root().join(".venv/bin/python"))
            .arg(repo_root().join("scripts/export_backbone.py"))
            .args(args)
            .args(["--no-weights", "--out"])
            .arg(out.path())
            .status()
            .expect("run the set-up's python (make setup)");
        assert!(status.success(), "export_backbone.py {args:?} failed");
        out
    }

    /// [`export_random`], loaded as a backbone.
    fn export_random_weights(args: &[&str]) -> (tempfile::TempDir, Backbone) {
        let out = export_random(args);
        tch::set_num_threads(2);
        let backbone = Backbone::load(out.path(), DeviceChoice::Cpu, Precision::Fp32).unwrap();
        (out, backbone)
    }

    /// `--output trunk` splits Lite0 before its last block: the trunk is a backbone whose
    /// grid cells are 192-d, and its head turns them into the cells the grid export gives.
    #[test]
    fn a_trunk_export_and_its_head_give_the_grid_exports_features() {
        use crate::model::head::BackboneHead;
        let (_grid_dir, grid) = export_random_weights(&["--output", "grid", "--size", "64"]);
        let (trunk_dir, trunk) = export_random_weights(&["--output", "trunk", "--size", "64"]);
        assert_eq!(trunk.spec().grid, Some([2, 2]));
        assert_eq!(trunk.row_len(), 4 * 192);
        let photos = [photo("chelsea.png"), photo("coffee.png")];
        let rows = |backbone: &Backbone| {
            let (features, skipped) = backbone.extract_all(&photos, &ExtractOptions::default()).unwrap();
            assert!(skipped.is_empty(), "{skipped:?}");
            let flat: Vec<f32> = features.into_iter().flat_map(|f| f.unwrap()).collect();
            Tensor::from_slice(&flat).view([2, -1])
        };
        let vs = tch::nn::VarStore::new(Device::Cpu);
        let head = BackboneHead::load(trunk_dir.path(), &vs, false).unwrap();
        let through_head = tch::no_grad(|| head.forward(&rows(&trunk))).unwrap();
        let whole = rows(&grid);
        assert_eq!(through_head.size(), [2, 4 * 1280]);
        let scale = whole.abs().max().double_value(&[]);
        let diff = (&through_head - &whole).abs().max().double_value(&[]);
        assert!(scale > 0.0 && diff <= 1e-4 * scale, "max |diff| {diff} against values up to {scale}");
        let err = head.forward(&Tensor::zeros([1, 4 * 1280], (Kind::Float, Device::Cpu))).unwrap_err();
        assert!(err.to_string().contains("4 cells × 192"), "{err}");
    }

    /// The README's "other backbones" path: torchvision's ResNet50 exported by
    /// scripts/export_backbone.py (random weights, since tests run offline) is a backbone.
    #[test]
    fn exported_torchvision_resnet50_loads_as_a_backbone() {
        let (_out, backbone) = export_random_weights(&["--arch", "resnet50"]);
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

    /// `--size` sets the input side, and with it the grid: Lite0 at 96 px has 3x3 cells.
    #[test]
    fn export_size_flag_sets_the_input_side_and_the_grid() {
        let (_out, backbone) = export_random_weights(&["--output", "grid", "--size", "96"]);
        assert_eq!(backbone.spec().input_size, 96);
        assert_eq!(backbone.spec().grid, Some([3, 3]));
        assert_eq!(backbone.row_len(), 9 * 1280);
        let (features, skipped) =
            backbone.extract_all(&[photo("chelsea.png")], &ExtractOptions::default()).unwrap();
        assert!(skipped.is_empty(), "{skipped:?}");
        assert_eq!(features[0].as_ref().unwrap().len(), 9 * 1280);
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
            output: BackboneOutput::Pooled,
            grid: None,
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
        let mut out = vec![0u8; prep.image_len];
        prep.image_into(&img, &mut out);
        assert!(out.chunks(3).all(|px| px == [255, 0, 128]));
    }

    #[test]
    fn preprocess_stretches_any_size() {
        let prep = Preprocess::new(&spec());
        let img = RgbImage::from_pixel(9, 3, image::Rgb([10, 20, 30]));
        let mut out = vec![0u8; prep.image_len];
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

    /// What makes a shard's tail batch, a one-CPU pod or `pipe caption` of one photo give
    /// the bytes a whole run gives: an image's features depend neither on the size of its
    /// batch nor on torch's thread count (one thread sends small batches' 1×1 convolutions
    /// to another kernel unless they are padded).
    #[test]
    fn an_image_gets_the_same_bits_alone_and_in_any_batch_at_any_thread_count() {
        let bb = lite0();
        // Channels-last strides, as `forward_pixels_into` hands batches over.
        let x = Tensor::rand([20, 224, 224, 3], (Kind::Float, Device::Cpu)).permute([0, 3, 1, 2]);
        assert_first_row_is_the_same_in_any_batch_at_any_thread_count(&x, &[1, 2, 3, 8, 15, 20], |x| {
            bb.forward(x).unwrap()
        });
    }

    #[test]
    fn pixels_forwarded_in_place_equal_forward_bytes_in_a_reused_buffer() {
        let bb = lite0();
        let side = bb.spec().input_size as i64;
        let pixels = Tensor::randint(256, [3, side, side, 3], (Kind::Uint8, Device::Cpu));
        let bytes = Vec::<u8>::try_from(pixels.flatten(0, -1)).unwrap();
        let mut rows = Vec::new();
        for n in [3, 1] {
            let want = bb.forward_bytes(&pixels.narrow(0, 0, n).permute([0, 3, 1, 2])).unwrap();
            let want = Vec::<f32>::try_from(want.flatten(0, -1)).unwrap();
            bb.forward_pixels_into(&bytes[..n as usize * bb.spec().image_len()], n as usize, &mut rows)
                .unwrap();
            assert!(rows == want, "batch of {n}: in-place rows differ from forward_bytes");
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
            let mut px = vec![0u8; prep.image_len];
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

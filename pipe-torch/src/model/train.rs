//! Teacher-forced training of a [`CaptionDecoder`] over whole padded captions.
//!
//! Why it is faster than the peer for the same model and the same maths:
//! - all captions live in one (N, T) token tensor and all features in one (M, D) tensor on
//!   the training device; a batch is two `index_select`s, never a host-built tensor;
//! - batches can be bucketed by length (shuffle, sort inside chunks of `bucket_batches`
//!   batches, shuffle the batches), so the LSTM runs over little padding. Off by default:
//!   on Flickr8k it gave a higher dev loss at every epoch than random batches;
//! - the output head (the 128 → V layer and the softmax, most of the FLOPs) runs only on
//!   real target tokens, picked by positions planned on the host once per epoch;
//! - the loss is accumulated on the device and read once per epoch: no per-step host sync.
//!
//! Determinism: on CPU, the same seed gives the same weights and losses (torch's generator
//! seeds init and dropout; a ChaCha RNG seeded from the same value shuffles).

use std::collections::HashMap;
use std::time::Instant;

use anyhow::{bail, Result};
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tch::{nn, Device, Kind, Reduction, Tensor};

use super::decoder::CaptionDecoder;
use super::head::HEAD_GROUP;
use super::optim::{Plateau, Stepper};

/// Captions ready for training: one padded token matrix and, per caption, its image's row
/// in the feature matrix.
pub struct CaptionSet {
    /// (N, T) int64: startseq w1 … wn endseq, then pad; T is the longest caption.
    pub tokens: Tensor,
    /// Tokens per caption, start and end included (≥ 2).
    pub lengths: Vec<i64>,
    /// Row of each caption's image in the feature matrix (host side, for planning).
    pub feature_rows: Vec<i64>,
}

impl CaptionSet {
    pub fn len(&self) -> usize {
        self.lengths.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lengths.is_empty()
    }

    /// Builds the set from token lists (each start … end) and feature rows.
    pub fn from_lists(captions: &[Vec<i64>], feature_rows: &[i64], pad_id: i64) -> Self {
        let width = captions.iter().map(Vec::len).max().unwrap_or(2);
        let mut flat = vec![pad_id; captions.len() * width];
        for (row, caption) in captions.iter().enumerate() {
            flat[row * width..row * width + caption.len()].copy_from_slice(caption);
        }
        Self {
            tokens: Tensor::from_slice(&flat).view([captions.len() as i64, width as i64]),
            lengths: captions.iter().map(|c| c.len() as i64).collect(),
            feature_rows: feature_rows.to_vec(),
        }
    }

    fn to_device(&self, device: Device) -> Self {
        Self {
            tokens: self.tokens.to_device(device),
            lengths: self.lengths.clone(),
            feature_rows: self.feature_rows.clone(),
        }
    }
}

/// Optimisation settings (the model's own sizes are in [`super::decoder::DecoderConfig`]).
/// Built from the train kind's params, whose defaults are the only ones.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    pub lr: f64,
    pub batch_size: usize,
    pub max_epochs: usize,
    /// Stop after this many epochs without a better dev loss.
    pub patience: usize,
    /// ReduceLROnPlateau: multiply the lr by `lr_factor` after more than `lr_patience`
    /// epochs without improvement (PyTorch semantics, threshold 1e-4 relative).
    pub lr_factor: f64,
    pub lr_patience: usize,
    /// Label smoothing of the training loss (the dev loss is always plain cross-entropy).
    pub label_smoothing: f64,
    /// Batches per length-sorting chunk: 1 keeps batches random (the peer's); more makes
    /// batches near-uniform in length, which pads less, but a batch of short captions then
    /// weighs as much as one of long captions, and the model fits worse.
    pub bucket_batches: usize,
    /// Batches of whole images (all their captions together, images shuffled) instead of
    /// random captions, so a decoder that encodes each image at length (attention over a
    /// grid) does it once per image rather than once per caption. Ignores `bucket_batches`.
    pub group_by_image: bool,
    /// The learning rate of a fine-tuned backbone head (var-store group [`HEAD_GROUP`]); the
    /// plateau schedule scales it with `lr`.
    pub head_lr: Option<f64>,
    pub seed: u64,
    pub device: Device,
}

/// One line of `history.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    pub epoch: usize,
    /// Mean per-token training loss (label-smoothed when smoothing is on).
    pub train_loss: f64,
    /// Mean per-token dev cross-entropy; `None` when there are no dev captions.
    pub dev_loss: Option<f64>,
    /// The learning rate used during this epoch.
    pub lr: f64,
    /// Seconds spent on the training pass (the figure compared with the peer's 25 s).
    /// Timings go to the stage's run record, not to history.json: they differ between
    /// runs of the same inputs.
    #[serde(skip_serializing, default)]
    pub seconds: f64,
    /// Seconds spent computing the dev loss.
    #[serde(skip_serializing, default)]
    pub dev_seconds: f64,
}

/// `history.json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct History {
    pub epochs: Vec<EpochRecord>,
    pub best_epoch: usize,
}

/// Told about progress; the stage maps it to a progress bar and log lines.
pub trait TrainMonitor {
    fn epoch_start(&mut self, _epoch: usize, _batches: usize) {}
    fn batch_done(&mut self) {}
    fn epoch_end(&mut self, _record: &EpochRecord) {}
}

/// A monitor that ignores everything (tests, benchmarks).
pub struct Silent;
impl TrainMonitor for Silent {}

/// One epoch's batches, planned on the host and uploaded once.
struct EpochPlan {
    /// (N,) caption ids in batch order.
    order: Tensor,
    /// The distinct feature rows of each batch, concatenated (see `PlannedBatch::images`).
    images: Tensor,
    /// (N,) for each caption in `order`, its image's index among its batch's `images`.
    image_of: Tensor,
    /// Flat positions (row * L + t) of real targets inside each batch's (B, L) grid, concatenated.
    positions: Tensor,
    /// The batch row of each of those positions.
    rows: Tensor,
    batches: Vec<PlannedBatch>,
}

#[derive(Debug, Clone, Copy)]
struct PlannedBatch {
    start: i64,
    size: i64,
    /// Input steps: the longest caption in the batch minus one.
    steps: i64,
    /// Offset and count of this batch's distinct images in `images`.
    images_offset: i64,
    images: i64,
    /// Offset and count of this batch's real targets in `positions`/`rows`.
    offset: i64,
    targets: i64,
}

/// Trains `model` (whose variables live in `vs`) on `train`, early-stopping on `dev`,
/// and leaves the best epoch's weights in `vs`. `features` is the feature table's (M, F)
/// matrix on any device.
pub fn train(
    model: &dyn CaptionDecoder,
    vs: &nn::VarStore,
    features: &Tensor,
    train: &CaptionSet,
    dev: &CaptionSet,
    opts: &TrainOptions,
    monitor: &mut dyn TrainMonitor,
) -> Result<History> {
    if train.is_empty() {
        bail!("no training captions");
    }
    let device = vs.device();
    let features = features.to_device(device);
    let (train_set, dev_set) = (train.to_device(device), dev.to_device(device));
    let mut opt = Stepper::new(vs, opts.lr, &group_scales(opts.lr, opts.head_lr))?;
    let mut rng = ChaCha8Rng::seed_from_u64(opts.seed);
    let mut plateau = Plateau::new(opts.lr, opts.lr_factor, opts.lr_patience);
    let (mut history, mut best, mut best_loss, mut bad) = (History::default(), None, f64::INFINITY, 0);
    for epoch in 1..=opts.max_epochs {
        let lr = plateau.lr;
        opt.set_lr(lr);
        let order = match opts.group_by_image {
            true => Order::Images(&mut rng),
            false => Order::Captions(&mut rng, opts.bucket_batches),
        };
        let plan = plan_epoch(train, opts.batch_size, order, device);
        monitor.epoch_start(epoch, plan.batches.len());
        let started = Instant::now();
        let train_loss =
            run_epoch(model, &features, &train_set, &plan, opts.label_smoothing, Some(&mut opt), monitor)?;
        let seconds = started.elapsed().as_secs_f64();
        let dev_loss = match dev.is_empty() {
            true => None,
            false => Some(evaluate(model, &features, &dev_set, opts.batch_size.max(256))?),
        };
        let record = EpochRecord {
            epoch,
            train_loss,
            dev_loss,
            lr,
            seconds,
            dev_seconds: started.elapsed().as_secs_f64() - seconds,
        };
        monitor.epoch_end(&record);
        history.epochs.push(record);
        let watched = dev_loss.unwrap_or(train_loss);
        if !watched.is_finite() {
            bail!("epoch {epoch}: loss is not finite ({watched}); try a lower lr");
        }
        plateau.observe(watched);
        if watched < best_loss {
            (best_loss, bad, history.best_epoch) = (watched, 0, epoch);
            best = Some(snapshot(vs));
        } else {
            bad += 1;
            if bad >= opts.patience {
                break;
            }
        }
    }
    if let Some(best) = best {
        restore(vs, &best);
    }
    Ok(history)
}

/// Learning-rate scales per var-store group: the decoder's at `lr`, a backbone head's at
/// `head_lr`.
pub(crate) fn group_scales(lr: f64, head_lr: Option<f64>) -> Vec<f64> {
    match head_lr {
        Some(head_lr) => {
            let mut scales = vec![1.0; HEAD_GROUP + 1];
            scales[HEAD_GROUP] = head_lr / lr;
            scales
        }
        None => Vec::new(),
    }
}

/// Mean per-token cross-entropy (no smoothing, no dropout) of `set`.
pub fn evaluate(
    model: &dyn CaptionDecoder,
    features: &Tensor,
    set: &CaptionSet,
    batch_size: usize,
) -> Result<f64> {
    let _guard = tch::no_grad_guard();
    let device = features.device();
    let plan = plan_epoch(set, batch_size, Order::ByLength, device);
    run_epoch(model, features, set, &plan, 0.0, None, &mut Silent)
}

/// One pass over `plan`; trains when `opt` is given. Returns the mean per-token loss.
fn run_epoch(
    model: &dyn CaptionDecoder,
    features: &Tensor,
    set: &CaptionSet,
    plan: &EpochPlan,
    label_smoothing: f64,
    mut opt: Option<&mut Stepper>,
    monitor: &mut dyn TrainMonitor,
) -> Result<f64> {
    let train = opt.is_some();
    let mut total = Tensor::zeros([], (Kind::Double, features.device()));
    let mut tokens = 0i64;
    for batch in &plan.batches {
        let loss = batch_loss(model, features, set, plan, batch, train, label_smoothing)?;
        if let Some(opt) = opt.as_deref_mut() {
            opt.backward_step(&loss);
        }
        total += loss.detach().to_kind(Kind::Double) * batch.targets as f64;
        tokens += batch.targets;
        monitor.batch_done();
    }
    Ok(total.double_value(&[]) / tokens.max(1) as f64)
}

/// Mean loss over one batch's real target tokens, plus the decoder's own term in training.
fn batch_loss(
    model: &dyn CaptionDecoder,
    features: &Tensor,
    set: &CaptionSet,
    plan: &EpochPlan,
    batch: &PlannedBatch,
    train: bool,
    label_smoothing: f64,
) -> Result<Tensor> {
    let ids = plan.order.narrow(0, batch.start, batch.size);
    let tokens = set.tokens.index_select(0, &ids).narrow(1, 0, batch.steps + 1);
    let images = model
        .features(&features.index_select(0, &plan.images.narrow(0, batch.images_offset, batch.images)))?;
    let image_of = plan.image_of.narrow(0, batch.start, batch.size);
    let positions = plan.positions.narrow(0, batch.offset, batch.targets);
    let rows = plan.rows.narrow(0, batch.offset, batch.targets);
    let inputs = tokens.narrow(1, 0, batch.steps);
    let (logits, extra) = model.target_logits(&images, &image_of, &inputs, &positions, &rows, train);
    let targets = tokens.narrow(1, 1, batch.steps).reshape([-1]).index_select(0, &positions);
    let loss = logits.cross_entropy_loss::<Tensor>(&targets, None, Reduction::Mean, -100, label_smoothing);
    Ok(match extra {
        Some(extra) if train => loss + extra,
        _ => loss,
    })
}

/// How [`plan_epoch`] orders captions.
enum Order<'a> {
    /// Sorted by length (evaluation).
    ByLength,
    /// Shuffle, sort by length inside chunks of `bucket_batches` batches, cut, shuffle the batches.
    Captions(&'a mut ChaCha8Rng, usize),
    /// Shuffle the images; each image's captions stay together, in set order; cut.
    Images(&'a mut ChaCha8Rng),
}

/// Orders the captions of `set` into batches of `batch_size`.
fn plan_epoch(set: &CaptionSet, batch_size: usize, order: Order, device: Device) -> EpochPlan {
    let lengths = &set.lengths;
    let mut ids: Vec<usize> = (0..lengths.len()).collect();
    let mut batches: Vec<Vec<usize>> = match order {
        Order::Captions(rng, bucket_batches) => {
            shuffle(&mut ids, rng);
            let mut batches = Vec::new();
            for chunk in ids.chunks_mut(batch_size * bucket_batches.max(1)) {
                chunk.sort_by_key(|&i| lengths[i]);
                batches.extend(chunk.chunks(batch_size).map(<[usize]>::to_vec));
            }
            shuffle(&mut batches, rng);
            batches
        }
        Order::Images(rng) => {
            let mut captions_of: HashMap<i64, Vec<usize>> = HashMap::new();
            let mut images = Vec::new();
            for (id, &row) in set.feature_rows.iter().enumerate() {
                let captions = captions_of.entry(row).or_default();
                if captions.is_empty() {
                    images.push(row);
                }
                captions.push(id);
            }
            shuffle(&mut images, rng);
            let ids: Vec<usize> = images.iter().flat_map(|row| captions_of[row].iter().copied()).collect();
            ids.chunks(batch_size).map(<[usize]>::to_vec).collect()
        }
        Order::ByLength => {
            ids.sort_by_key(|&i| lengths[i]);
            ids.chunks(batch_size).map(<[usize]>::to_vec).collect()
        }
    };
    layout(&mut batches, set, device)
}

/// Turns batches of caption ids into the flat tensors of an [`EpochPlan`].
fn layout(batches: &mut [Vec<usize>], set: &CaptionSet, device: Device) -> EpochPlan {
    let lengths = &set.lengths;
    let (mut order, mut positions, mut rows, mut planned) = (vec![], vec![], vec![], vec![]);
    let (mut images, mut image_of) = (vec![], vec![]);
    for ids in batches.iter() {
        let steps = ids.iter().map(|&i| lengths[i] - 1).max().unwrap_or(1);
        let offset = positions.len() as i64;
        let images_offset = images.len();
        let mut index_of: HashMap<i64, i64> = HashMap::new();
        for (row, &id) in ids.iter().enumerate() {
            let image = set.feature_rows[id];
            let next = (images.len() - images_offset) as i64;
            image_of.push(*index_of.entry(image).or_insert_with(|| {
                images.push(image);
                next
            }));
            for t in 0..lengths[id] - 1 {
                positions.push(row as i64 * steps + t);
                rows.push(row as i64);
            }
        }
        planned.push(PlannedBatch {
            start: order.len() as i64,
            size: ids.len() as i64,
            steps,
            images_offset: images_offset as i64,
            images: (images.len() - images_offset) as i64,
            offset,
            targets: positions.len() as i64 - offset,
        });
        order.extend(ids.iter().map(|&i| i as i64));
    }
    let upload = |v: &[i64]| Tensor::from_slice(v).to_device(device);
    EpochPlan {
        order: upload(&order),
        images: upload(&images),
        image_of: upload(&image_of),
        positions: upload(&positions),
        rows: upload(&rows),
        batches: planned,
    }
}

/// Fisher–Yates with our own RNG, so the order depends only on the seed.
pub fn shuffle<T>(items: &mut [T], rng: &mut ChaCha8Rng) {
    for i in (1..items.len()).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        items.swap(i, j);
    }
}

/// A copy of every variable, to keep the best epoch without touching the disk.
pub(crate) fn snapshot(vs: &nn::VarStore) -> HashMap<String, Tensor> {
    tch::no_grad(|| vs.variables().into_iter().map(|(name, t)| (name, t.copy())).collect())
}

pub(crate) fn restore(vs: &nn::VarStore, saved: &HashMap<String, Tensor>) {
    tch::no_grad(|| {
        for (name, mut var) in vs.variables() {
            var.copy_(&saved[&name]);
        }
    });
}

/// Held by tests that seed or draw from torch's global generator, so that tests running on
/// parallel threads cannot interleave their draws (which breaks seeded determinism).
#[cfg(test)]
pub(crate) fn torch_rng_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use tch::nn::OptimizerConfig;

    use super::*;
    use crate::model::decoder::{DecoderConfig, MergeDecoder};
    use crate::model::optim::FusedAdam;

    /// Four images, one or two captions each, over a vocabulary of 12 (pad 0, unk 1,
    /// start 2, end 3).
    pub(crate) fn tiny_data() -> (Tensor, CaptionSet) {
        tch::manual_seed(42);
        let features = Tensor::randn([4, 16], (Kind::Float, Device::Cpu));
        let captions = vec![
            vec![2, 4, 5, 6, 3],
            vec![2, 7, 8, 3],
            vec![2, 9, 10, 11, 4, 3],
            vec![2, 5, 5, 3],
            vec![2, 7, 8, 3],
        ];
        let set = CaptionSet::from_lists(&captions, &[0, 1, 2, 3, 1], 0);
        (features, set)
    }

    pub(crate) fn tiny_config() -> DecoderConfig {
        DecoderConfig {
            vocab_size: 12,
            feature_dim: 16,
            embed: 32,
            hidden: 32,
            dense: 16,
            dropout: 0.1,
            max_len: 6,
            pad_id: 0,
        }
    }

    fn fit(seed: u64, epochs: usize) -> (History, Vec<f64>) {
        let _rng = torch_rng_lock();
        tch::manual_seed(seed as i64);
        let vs = nn::VarStore::new(Device::Cpu);
        let model = MergeDecoder::new(&tiny_config(), vs.root());
        let (features, set) = tiny_data();
        let opts = TrainOptions {
            lr: 0.01,
            batch_size: 2,
            max_epochs: epochs,
            patience: epochs,
            lr_factor: 0.5,
            lr_patience: 1,
            label_smoothing: 0.0,
            bucket_batches: 1,
            group_by_image: false,
            head_lr: None,
            seed,
            device: Device::Cpu,
        };
        let empty = CaptionSet::from_lists(&[], &[], 0);
        let history = train(&model, &vs, &features, &set, &empty, &opts, &mut Silent).unwrap();
        let mut weights: Vec<_> = vs.variables().into_iter().collect();
        weights.sort_by(|a, b| a.0.cmp(&b.0));
        let sums = weights.iter().map(|(_, t)| t.sum(Kind::Double).double_value(&[])).collect();
        (history, sums)
    }

    /// Runs `fit(seed, 3)` in a child process (this test binary, filtered to
    /// [`seeded_fit_in_child`]) and returns what it printed. A process of its own has torch's
    /// global generator to itself: other tests, of any module, may draw from it concurrently.
    fn fit_in_child(seed: u64) -> String {
        let module = module_path!().split_once("::").map_or(module_path!(), |(_, rest)| rest);
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--ignored", "--exact", &format!("{module}::seeded_fit_in_child"), "--nocapture"])
            .env("PIPE_TEST_FIT_SEED", seed.to_string())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        stdout
            .lines()
            .find(|l| l.starts_with("FIT "))
            .unwrap_or_else(|| panic!("child printed no fit: {stdout}"))
            .into()
    }

    #[test]
    #[ignore = "helper, run in a child process by training_is_deterministic_with_a_seed"]
    fn seeded_fit_in_child() {
        let Ok(seed) = std::env::var("PIPE_TEST_FIT_SEED") else { return };
        let (history, weights) = fit(seed.parse().unwrap(), 3);
        let losses: Vec<f64> = history.epochs.iter().map(|e| e.train_loss).collect();
        println!("FIT {losses:?} {weights:?}");
    }

    #[test]
    fn training_is_deterministic_with_a_seed() {
        let a = fit_in_child(7);
        assert_eq!(a, fit_in_child(7));
        assert_ne!(a, fit_in_child(8));
    }

    #[test]
    fn tiny_model_overfits() {
        let (history, _) = fit(1, 150);
        let last = history.epochs.last().unwrap().train_loss;
        assert!(last < 0.3, "final train loss {last}");
    }

    /// Fits `model` (built under `vs`) to the tiny set for 150 epochs: its final train
    /// loss, and greedy's caption of image 0.
    fn overfit(model: &dyn CaptionDecoder, vs: &nn::VarStore, group_by_image: bool) -> (f64, Vec<i64>) {
        use crate::model::decode::{greedy, DecodeOptions};
        let (features, set) = tiny_data();
        let opts = TrainOptions {
            lr: 0.01,
            batch_size: 2,
            max_epochs: 150,
            patience: 150,
            lr_factor: 0.5,
            lr_patience: 1,
            label_smoothing: 0.0,
            bucket_batches: 1,
            group_by_image,
            head_lr: None,
            seed: 5,
            device: Device::Cpu,
        };
        let empty = CaptionSet::from_lists(&[], &[], 0);
        let history = train(model, vs, &features, &set, &empty, &opts, &mut Silent).unwrap();
        let decode =
            DecodeOptions { start_id: 2, end_id: 3, banned: vec![0, 1, 2], max_steps: 6, block_repeats: 0 };
        let feats = model.features(&features.narrow(0, 0, 1)).unwrap();
        let caption = greedy(model, &feats, &decode).unwrap().remove(0);
        (history.epochs.last().unwrap().train_loss, caption.tokens)
    }

    /// Each decoder but merge (tested above) overfits the tiny set; image 0's only caption
    /// is 2 4 5 6 3, and greedy says it back. The grid decoders read each 16-value row as a
    /// grid of 4 cells of 4 values.
    #[test]
    fn tiny_attention_transformer_and_cnn_models_overfit_and_greedy_repeats_a_training_caption() {
        use crate::model::decoder::{
            attention, cnn, transformer, AttentionDecoder, CnnDecoder, TransformerDecoder,
        };
        let _rng = torch_rng_lock();
        for name in ["attention", "transformer", "cnn"] {
            tch::manual_seed(5);
            let vs = nn::VarStore::new(Device::Cpu);
            let (model, grid): (Box<dyn CaptionDecoder>, bool) = match name {
                "attention" => {
                    (Box::new(AttentionDecoder::new(&attention::tests::small(0.1, 1.0), vs.root())), true)
                }
                "transformer" => {
                    (Box::new(TransformerDecoder::new(&transformer::tests::small(0.1), vs.root())), true)
                }
                _ => {
                    let cfg = cnn::CnnConfig {
                        feature_dim: 16,
                        vocab_size: 12,
                        max_len: 6,
                        dropout: 0.1,
                        ..cnn::tests::tiny()
                    };
                    (Box::new(CnnDecoder::new(&cfg, vs.root())), false)
                }
            };
            let (loss, caption) = overfit(model.as_ref(), &vs, grid);
            assert!(loss < 0.5, "{name}: final train loss {loss}");
            assert_eq!(caption, [4, 5, 6], "{name}");
        }
    }

    /// A caption set with these lengths, five captions per image.
    fn set_of(lengths: &[i64]) -> CaptionSet {
        let captions: Vec<Vec<i64>> = lengths.iter().map(|&n| vec![2; n as usize]).collect();
        let rows: Vec<i64> = (0..lengths.len() as i64).map(|i| i / 5).collect();
        CaptionSet::from_lists(&captions, &rows, 0)
    }

    #[test]
    fn image_batches_keep_an_images_captions_together_and_cover_every_caption() {
        let lengths: Vec<i64> = (0..1000).map(|i| 3 + (i * 7919 % 20)).collect();
        let set = set_of(&lengths);
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let plan = plan_epoch(&set, 50, Order::Images(&mut rng), Device::Cpu);
        let mut seen = Vec::<i64>::try_from(&plan.order).unwrap();
        let image_of = Vec::<i64>::try_from(&plan.image_of).unwrap();
        let images = Vec::<i64>::try_from(&plan.images).unwrap();
        for b in &plan.batches {
            assert_eq!(b.images, 10, "50 captions of 10 whole images");
            for i in b.start..b.start + b.size {
                let caption = seen[i as usize] as usize;
                let image = images[(b.images_offset + image_of[i as usize]) as usize];
                assert_eq!(image, set.feature_rows[caption]);
            }
        }
        assert_ne!(seen[..5], [0, 1, 2, 3, 4], "images are shuffled");
        seen.sort();
        assert_eq!(seen, (0..1000).collect::<Vec<_>>());
    }

    #[test]
    fn one_batch_per_bucket_keeps_batches_random() {
        // Within-batch length spread, relative to the whole set's: near 1 for random
        // batches, near 0 for bucketed ones.
        let lengths: Vec<i64> = (0..2048).map(|i| 3 + (i * 7919 % 20)).collect();
        let spread = |bucket_batches: usize| {
            let mut rng = ChaCha8Rng::seed_from_u64(0);
            let plan =
                plan_epoch(&set_of(&lengths), 64, Order::Captions(&mut rng, bucket_batches), Device::Cpu);
            let order = Vec::<i64>::try_from(&plan.order).unwrap();
            let variance = |ids: &[i64]| {
                let xs: Vec<f64> = ids.iter().map(|&i| lengths[i as usize] as f64).collect();
                let mean = xs.iter().sum::<f64>() / xs.len() as f64;
                xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / xs.len() as f64
            };
            let within = order.chunks(64).map(variance).sum::<f64>() / (order.len() / 64) as f64;
            within / variance(&order)
        };
        let (random, bucketed) = (spread(1), spread(32));
        assert!(random > 0.9, "random batches: relative spread {random}");
        assert!(bucketed < 0.05, "bucketed batches: relative spread {bucketed}");
    }

    #[test]
    fn plan_covers_every_target_once_with_little_padding() {
        let lengths: Vec<i64> = (0..1000).map(|i| 3 + (i * 7919 % 20)).collect();
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let plan = plan_epoch(&set_of(&lengths), 64, Order::Captions(&mut rng, 32), Device::Cpu);
        let mut seen = Vec::<i64>::try_from(&plan.order).unwrap();
        seen.sort();
        assert_eq!(seen, (0..1000).collect::<Vec<_>>());
        let targets: i64 = plan.batches.iter().map(|b| b.targets).sum();
        assert_eq!(targets, lengths.iter().map(|l| l - 1).sum::<i64>());
        let grid: i64 = plan.batches.iter().map(|b| b.size * b.steps).sum();
        assert!((grid as f64) < 1.1 * targets as f64, "padding {grid} vs {targets}");
    }

    /// Also with a second var-store group at half the lr (as a backbone head trains): the
    /// fused and torch optimisers agree, and the group's scale changes the result.
    #[test]
    fn fused_adam_matches_torch_adam() {
        let _rng = torch_rng_lock();
        let run = |fused: bool, scales: &[f64]| {
            tch::manual_seed(3);
            let vs = nn::VarStore::new(Device::Cpu);
            let model = MergeDecoder::new(&tiny_config(), vs.root().set_group(HEAD_GROUP));
            let (features, set) = tiny_data();
            let mut opt = if fused {
                Stepper::Fused(FusedAdam::new(&vs, 0.01, scales).unwrap())
            } else {
                let mut torch =
                    Stepper::Torch(nn::Adam::default().build(&vs, 0.01).unwrap(), scales.to_vec());
                torch.set_lr(0.01);
                torch
            };
            let plan = plan_epoch(&set, 5, Order::ByLength, Device::Cpu);
            for _ in 0..5 {
                let loss = batch_loss(&model, &features, &set, &plan, &plan.batches[0], false, 0.0).unwrap();
                opt.backward_step(&loss);
            }
            let mut w: Vec<_> = vs.variables().into_iter().collect();
            w.sort_by(|a, b| a.0.cmp(&b.0));
            Tensor::cat(&w.iter().map(|(_, t)| t.reshape([-1])).collect::<Vec<_>>(), 0)
        };
        let half = group_scales(0.01, Some(0.005));
        assert_eq!(half, [1.0, 0.5]);
        for scales in [&[][..], &half] {
            let (a, b) = (run(true, scales), run(false, scales));
            let diff = (a - b).abs().max().double_value(&[]);
            assert!(diff < 1e-5, "scales {scales:?}: max |fused − torch| = {diff}");
        }
        let moved = (run(true, &[]) - run(true, &half)).abs().max().double_value(&[]);
        assert!(moved > 1e-4, "half the lr gives other weights ({moved})");
    }

    #[test]
    fn plateau_reduces_after_patience() {
        let mut p = Plateau::new(1.0, 0.5, 1);
        for loss in [3.0, 2.0, 2.5, 2.5] {
            p.observe(loss);
        }
        assert_eq!(p.lr, 0.5);
    }
}

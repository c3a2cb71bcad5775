//! A backbone's last blocks, fine-tuned with the decoder.
//!
//! `scripts/export_backbone.py --output trunk` splits a backbone in two: the frozen trunk,
//! whose grid the features stage stores (7×7×192 for Lite0), and `head.pt`, a TorchScript
//! module from the trunk's cells (B, L, C) to the backbone's final cells (B, L', D). A
//! decoder wrapped in [`WithHead`] runs the head inside [`StepDecoder::features`], so
//! training, scst, caption, serve and archive mode all read the head's output, and the
//! optimiser reaches its weights (batch-norm is folded into them at export, so its
//! statistics stay frozen).

use std::path::Path;
use std::sync::Arc;

use anyhow::{ensure, Context, Result};
use serde::{Deserialize, Serialize};
use tch::{nn, Kind, Tensor, TrainableCModule};

use super::cpu_batch::forward_padded;
use super::decoder::{CaptionDecoder, DecodeState, StepDecoder};
use pipe::contract::files::{HEAD_CONFIG_FILE, HEAD_MODULE_FILE};
use pipe_engine::fsutil::write_json_atomic;

/// The optimiser group of the head's weights, which train at their own learning rate.
pub const HEAD_GROUP: usize = 1;
/// Where the head's weights live in a var store; the decoder's weights file leaves them out.
pub const HEAD_VARS: &str = "backbone_head";

/// Whether a var store name is one of the head's weights.
pub fn is_head_var(name: &str) -> bool {
    name.strip_prefix(HEAD_VARS).is_some_and(|rest| rest.starts_with('.'))
}

/// `head.json`: the cells the head reads and writes, each `[cells, values per cell]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeadConfig {
    pub input: [i64; 2],
    pub output: [i64; 2],
    /// Backbone blocks inside the head besides its final convolution (informative).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocks: Option<u32>,
}

impl HeadConfig {
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let config: Self =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        ensure!(
            config.input.iter().chain(&config.output).all(|&n| (1..=1 << 20).contains(&n)),
            "{}: cells and dims must be between 1 and 2^20",
            path.display()
        );
        Ok(config)
    }

    /// Values per image the head reads and writes.
    pub fn input_width(&self) -> i64 {
        self.input[0] * self.input[1]
    }
}

/// The head's TorchScript module, its weights registered in a var store.
pub struct BackboneHead {
    module: TrainableCModule,
    pub config: HeadConfig,
}

impl std::fmt::Debug for BackboneHead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackboneHead").field("config", &self.config).finish()
    }
}

impl BackboneHead {
    /// Loads `dir/head.pt` and `dir/head.json`, adding the weights to `vs` under
    /// [`HEAD_VARS`] in [`HEAD_GROUP`]; `trainable` false freezes them.
    pub fn load(dir: &Path, vs: &nn::VarStore, trainable: bool) -> Result<Self> {
        let config = HeadConfig::read(&dir.join(HEAD_CONFIG_FILE))?;
        let path = dir.join(HEAD_MODULE_FILE);
        let mut module = TrainableCModule::load(&path, vs.root().set_group(HEAD_GROUP) / HEAD_VARS)
            .with_context(|| format!("loading the backbone head {}", path.display()))?;
        module.set_eval(); // folded batch-norm and no dropout: eval is the only mode
        for (name, var) in vs.variables() {
            if is_head_var(&name) {
                let _ = var.set_requires_grad(trainable);
            }
        }
        Ok(Self { module, config })
    }

    /// Trunk cells (B, L·C) of any float kind → the head's cells (B, L'·D), Float.
    pub fn forward(&self, rows: &Tensor) -> Result<Tensor> {
        let [cells, dim] = self.config.input;
        let (n, width) = (rows.size()[0], rows.size()[1]);
        ensure!(
            width == self.config.input_width(),
            "features are {width} wide, but the model's backbone head reads {cells} cells × {dim} \
             (the grid of the trunk backbone it was exported with)"
        );
        let cells_in = rows.to_kind(Kind::Float).view([n, cells, dim]);
        let out = forward_padded(&cells_in, |x| Ok(self.module.forward_ts(&[x])?))?;
        let [out_cells, out_dim] = self.config.output;
        ensure!(
            out.size() == [n, out_cells, out_dim],
            "the backbone head gave {:?}, but its {HEAD_CONFIG_FILE} says [{n}, {out_cells}, {out_dim}]",
            out.size()
        );
        Ok(out.reshape([n, out_cells * out_dim]))
    }

    /// Writes the head with its current weights, and its config, into `dir`: a stage's
    /// output directory, which the store commits as a whole (as model.safetensors is written).
    pub fn save(&self, dir: &Path) -> Result<()> {
        let path = dir.join(HEAD_MODULE_FILE);
        self.module.save(&path).with_context(|| format!("writing {}", path.display()))?;
        write_json_atomic(&dir.join(HEAD_CONFIG_FILE), &self.config)
    }
}

/// A decoder that reads the backbone head's output: the head runs in [`Self::features`].
pub struct WithHead {
    pub head: Arc<BackboneHead>,
    pub decoder: Box<dyn CaptionDecoder>,
}

impl StepDecoder for WithHead {
    fn vocab_size(&self) -> i64 {
        self.decoder.vocab_size()
    }

    fn max_len(&self) -> i64 {
        self.decoder.max_len()
    }

    fn features(&self, rows: &Tensor) -> Result<Tensor> {
        self.decoder.features(&self.head.forward(rows)?)
    }

    fn start(&self, features: &Tensor) -> DecodeState {
        self.decoder.start(features)
    }

    fn step(&self, tokens: &Tensor, state: &DecodeState) -> (Tensor, DecodeState) {
        self.decoder.step(tokens, state)
    }

    fn attention(&self, features: &Tensor, inputs: &Tensor) -> Option<Tensor> {
        self.decoder.attention(features, inputs)
    }
}

impl CaptionDecoder for WithHead {
    fn embedding(&self) -> &nn::Embedding {
        self.decoder.embedding()
    }

    fn target_logits(
        &self,
        images: &Tensor,
        image_of: &Tensor,
        inputs: &Tensor,
        positions: &Tensor,
        rows: &Tensor,
        train: bool,
    ) -> (Tensor, Option<Tensor>) {
        self.decoder.target_logits(images, image_of, inputs, positions, rows, train)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::artifact;
    use crate::model::backbone::tests::export_random;
    use crate::model::cpu_batch::tests::assert_first_row_is_the_same_in_any_batch_at_any_thread_count;
    use crate::model::decoder::{attention, ModelConfig};
    use crate::model::train::{torch_rng_lock, train, CaptionSet, Silent, TrainOptions};
    use pipe::contract::files::{MODEL_CONFIG_FILE, WEIGHTS_FILE};
    use tch::Device;

    /// The head's weights, flattened into one vector.
    fn head_weights(vs: &nn::VarStore) -> Tensor {
        let mut vars: Vec<(String, Tensor)> =
            vs.variables().into_iter().filter(|(name, _)| is_head_var(name)).collect();
        assert!(!vars.is_empty());
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        Tensor::cat(&vars.iter().map(|(_, t)| t.detach().reshape([-1])).collect::<Vec<_>>(), 0)
    }

    /// Trains a tiny attention decoder over Lite0's random-weight head (32 px: one cell of
    /// 192 values in, 1280 out) on three captions; returns the var store, the model, the
    /// head's weights before training and the trunk features.
    fn fit(head_dir: &Path, train_head: bool) -> (nn::VarStore, WithHead, Tensor, Tensor) {
        let _rng = torch_rng_lock();
        tch::manual_seed(3);
        let vs = nn::VarStore::new(Device::Cpu);
        let cfg = attention::AttentionConfig { feature_dim: 1280, cells: 1, ..attention::tests::tiny() };
        let decoder = ModelConfig::Attention(cfg).build(vs.root());
        let head = Arc::new(BackboneHead::load(head_dir, &vs, train_head).unwrap());
        let model = WithHead { head, decoder };
        let before = head_weights(&vs).copy();
        let features = Tensor::randn([3, 192], (Kind::Float, Device::Cpu));
        let set =
            CaptionSet::from_lists(&[vec![2, 4, 5, 3], vec![2, 6, 7, 3], vec![2, 8, 9, 3]], &[0, 1, 2], 0);
        let opts = TrainOptions {
            lr: 1e-2,
            batch_size: 3,
            max_epochs: 3,
            patience: 3,
            lr_factor: 1.0,
            lr_patience: 1,
            label_smoothing: 0.0,
            bucket_batches: 1,
            group_by_image: true,
            head_lr: Some(1e-3),
            seed: 3,
            device: Device::Cpu,
        };
        let empty = CaptionSet::from_lists(&[], &[], 0);
        train(&model, &vs, &features, &set, &empty, &opts, &mut Silent).unwrap();
        (vs, model, before, features)
    }

    /// Training moves the head's weights at its own rate (by less than the decoder's lr
    /// allows), a frozen head stays as it was, and a saved model loads with the trained
    /// head: the same features and next-word log-probabilities, and a weights file
    /// without the head's weights (they live in head.pt).
    #[test]
    fn training_fine_tunes_the_head_and_the_model_directory_keeps_it() {
        let export = export_random(&["--output", "trunk", "--size", "32"]);
        let (frozen_vs, _, frozen_before, _) = fit(export.path(), false);
        assert!(head_weights(&frozen_vs).equal(&frozen_before), "a frozen head does not move");

        let (mut vs, model, before, features) = fit(export.path(), true);
        let moved = (head_weights(&vs) - &before).abs().max().double_value(&[]);
        // Three Adam steps at the head's lr move no weight by more than about 3 × 1e-3.
        assert!(moved > 0.0 && moved < 4e-3, "the head moved by up to {moved}");

        let out = tempfile::tempdir().unwrap();
        let config = ModelConfig::Attention(attention::AttentionConfig {
            feature_dim: 1280,
            cells: 1,
            ..attention::tests::tiny()
        });
        std::fs::write(out.path().join(MODEL_CONFIG_FILE), config.to_json().unwrap().to_string()).unwrap();
        artifact::save_weights(&mut vs, Some(&model.head), out.path()).unwrap();
        let saved = Tensor::read_safetensors(out.path().join(WEIGHTS_FILE)).unwrap();
        assert!(saved.iter().all(|(name, _)| !is_head_var(name)), "the weights file leaves the head out");
        assert!(!saved.is_empty());

        let loaded = artifact::load(out.path(), Device::Cpu, false).unwrap();
        assert!(loaded.head.is_some());
        let _guard = tch::no_grad_guard();
        let (mine, theirs) =
            (model.features(&features).unwrap(), loaded.decoder.features(&features).unwrap());
        assert!(mine.allclose(&theirs, 1e-6, 1e-6, false), "the saved head gives the trained head's output");
        let tokens = Tensor::from_slice(&[2i64, 2, 2]);
        let (a, _) = model.step(&tokens, &model.start(&mine));
        let (b, _) = loaded.decoder.step(&tokens, &loaded.decoder.start(&theirs));
        assert!(a.allclose(&b, 1e-6, 1e-6, false));
        assert!(head_weights(&loaded.vs).equal(&head_weights(&vs)));
    }

    /// Decoding a shard's short tail batch, or `pipe caption`'s lone photo, on one CPU
    /// gives the head's output of a whole run: batch size and thread count change no bit.
    #[test]
    fn the_head_gives_an_image_the_same_bits_in_any_batch_at_any_thread_count() {
        let export = export_random(&["--output", "trunk", "--size", "32"]);
        let vs = nn::VarStore::new(Device::Cpu);
        let head = BackboneHead::load(export.path(), &vs, false).unwrap();
        let _guard = tch::no_grad_guard();
        let rows = Tensor::randn([20, 192], (Kind::Float, Device::Cpu));
        assert_first_row_is_the_same_in_any_batch_at_any_thread_count(&rows, &[1, 2, 15, 20], |x| {
            head.forward(x).unwrap()
        });
    }

    /// A head.json that does not parse, or that gives a zero size, is refused with its path.
    #[test]
    fn a_bad_head_json_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(HEAD_CONFIG_FILE);
        for bad in [r#"{"input": [49, 192]}"#, r#"{"input": [0, 192], "output": [49, 1280]}"#, "[1, 2"] {
            std::fs::write(&path, bad).unwrap();
            let err = format!("{:#}", HeadConfig::read(&path).unwrap_err());
            assert!(err.contains(&path.display().to_string()), "{bad}: {err}");
        }
        std::fs::write(&path, r#"{"input": [49, 192], "output": [49, 1280]}"#).unwrap();
        assert_eq!(HeadConfig::read(&path).unwrap().input_width(), 49 * 192);
    }
}

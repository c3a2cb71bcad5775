//! A trained model's directory, which `train` and `scst` write and `caption` and `scst`
//! read: `model.json`, `model.safetensors` (the decoder's weights), `history.json`, and for
//! a model with a fine-tuned backbone head, `head.pt` and `head.json`.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use tch::{nn, Device, Tensor};

use super::decoder::{CaptionDecoder, ModelConfig};
use super::head::{is_head_var, BackboneHead, WithHead};
use pipe::contract::files::{HEAD_CONFIG_FILE, MODEL_CONFIG_FILE, WEIGHTS_FILE};

/// A model loaded for decoding or further training.
pub struct TrainedModel {
    /// The decoder's weights, and the head's when there is one.
    pub vs: nn::VarStore,
    pub config: ModelConfig,
    /// The decoder, wrapped in [`WithHead`] when the model has a backbone head.
    pub decoder: Box<dyn CaptionDecoder>,
    pub head: Option<Arc<BackboneHead>>,
}

/// Loads the model in `dir` onto `device`. Its backbone head's weights, if it has one, get
/// gradients only when `train_head`.
pub fn load(dir: &Path, device: Device, train_head: bool) -> Result<TrainedModel> {
    let config = ModelConfig::read(&dir.join(MODEL_CONFIG_FILE))?;
    let mut vs = nn::VarStore::new(device);
    let decoder = config.build(vs.root());
    let path = dir.join(WEIGHTS_FILE);
    // Before the head joins the store: the weights file holds the decoder's weights only.
    vs.load(&path).with_context(|| format!("loading {}", path.display()))?;
    let (decoder, head) = match dir.join(HEAD_CONFIG_FILE).exists() {
        false => (decoder, None),
        true => {
            let head = Arc::new(BackboneHead::load(dir, &vs, train_head)?);
            (Box::new(WithHead { head: head.clone(), decoder }) as Box<dyn CaptionDecoder>, Some(head))
        }
    };
    Ok(TrainedModel { vs, config, decoder, head })
}

/// Writes the decoder's weights into `dir/model.safetensors` and, when there is one, the
/// head into `dir/head.pt` and `dir/head.json`. Moves the weights to the CPU.
pub fn save_weights(vs: &mut nn::VarStore, head: Option<&BackboneHead>, dir: &Path) -> Result<()> {
    vs.set_device(Device::Cpu);
    let path = dir.join(WEIGHTS_FILE);
    let decoder: Vec<(String, Tensor)> =
        vs.variables().into_iter().filter(|(name, _)| !is_head_var(name)).collect();
    Tensor::write_safetensors(&decoder, &path).with_context(|| format!("writing {}", path.display()))?;
    match head {
        Some(head) => head.save(dir),
        None => Ok(()),
    }
}

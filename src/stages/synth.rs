//! `synth`: generates a small captioned data set of coloured shapes, laid out like Flickr8k,
//! so a pipeline can be exercised end to end in minutes. See [`crate::data::synth`].
//!
//! ```yaml
//! data:
//!   kind: synth
//!   params: {images: 2000, size: 96, seed: 0, format: jpeg, splits: {train: 0.8, dev: 0.1, test: 0.1}}
//! ```

use anyhow::Result;
use serde_json::Value;

use crate::data::split::FLICKR8K_SPLIT_FILES;
use crate::data::synth::{write_dataset, SynthConfig, IMAGES_DIR, TOKEN_FILE};
use pipe_engine::stage::{normalize_typed, parse_params, Inputs, StageContext, StageKind};

pub struct Synth;

impl StageKind for Synth {
    fn name(&self) -> &'static str {
        "synth"
    }

    fn version(&self) -> u32 {
        1
    }

    fn normalize_params(&self, params: &Value) -> Result<Value> {
        parse_params::<SynthConfig>(params)?.validate()?;
        normalize_typed::<SynthConfig>(params)
    }

    fn inputs(&self) -> Inputs {
        Inputs::Named(&[])
    }

    fn outputs(&self, _params: &Value) -> Vec<String> {
        let mut outputs = vec![IMAGES_DIR.to_string(), TOKEN_FILE.to_string()];
        outputs.extend(FLICKR8K_SPLIT_FILES.iter().map(|(_, name)| name.to_string()));
        outputs
    }

    fn run(&self, ctx: &StageContext) -> Result<()> {
        let config: SynthConfig = ctx.params()?;
        let bar = ctx.progress_bar(config.images as u64, "rendering");
        let images = write_dataset(&config, &ctx.out_dir, || bar.inc(1))?;
        bar.finish_and_clear();
        ctx.log(format!("{} images, {} captions", images.len(), images.len() * 5));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn params_get_defaults_and_unknown_keys_fail() {
        let normalized = Synth.normalize_params(&json!({"images": 10})).unwrap();
        assert_eq!(normalized["size"], 96);
        assert_eq!(normalized["format"], "jpeg");
        assert_eq!(normalized["splits"]["train"], 0.8);
        assert_eq!(Synth.normalize_params(&normalized).unwrap(), normalized);
        let err = Synth.normalize_params(&json!({"imagez": 10})).unwrap_err().to_string();
        assert!(err.contains("imagez"), "{err}");
        assert!(Synth.normalize_params(&json!({"format": "gif"})).is_err());
        assert!(Synth.normalize_params(&json!({"splits": {"train": 2.0}})).is_err());
    }

    #[test]
    fn outputs_are_the_flickr8k_layout() {
        let outputs = Synth.outputs(&Value::Null);
        assert_eq!(outputs.len(), 5);
        assert!(outputs.contains(&"Flickr_8k.devImages.txt".to_string()));
    }
}

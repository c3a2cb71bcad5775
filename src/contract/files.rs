//! The file names of the declared artifacts, spelled once.

use std::path::{Path, PathBuf};

/// ingest: one row per caption (image, caption_index, caption, split).
pub const REFERENCE_CAPTIONS_FILE: &str = "captions.parquet";
/// ingest: one row per image (image, path, content_hash, width, height, split).
pub const IMAGES_FILE: &str = "images.parquet";
/// ingest: counts, skipped lines and undecodable images.
pub const INGEST_REPORT_FILE: &str = "ingest_report.json";
/// tokenize: token ids per caption.
pub const TOKENS_FILE: &str = "tokens.parquet";
/// tokenize: the vocabulary.
pub const VOCAB_FILE: &str = "vocab.json";
/// features: one vector per image, Arrow IPC.
pub const FEATURES_FILE: &str = "features.arrow";
/// features: backbone, counts, skipped images, timings.
pub const FEATURES_SUMMARY_FILE: &str = "features.json";
/// train: the decoder's weights.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// train: the decoder's config.
pub const MODEL_CONFIG_FILE: &str = "model.json";
/// train: per-epoch losses and timings.
pub const HISTORY_FILE: &str = "history.json";
/// What a trained model is (the outputs of `train` and `scst`, the input of `caption`).
pub const MODEL_FILES: [&str; 3] = [WEIGHTS_FILE, MODEL_CONFIG_FILE, HISTORY_FILE];
/// train with `head_lr`: the fine-tuned backbone head, TorchScript (also in the trunk
/// backbone's folder that `scripts/export_backbone.py --output trunk` writes).
pub const HEAD_MODULE_FILE: &str = "head.pt";
/// The head's input and output cells: `{"input": [cells, dim], "output": [cells, dim]}`.
pub const HEAD_CONFIG_FILE: &str = "head.json";
/// What a model with a fine-tuned backbone head has besides [`MODEL_FILES`].
pub const HEAD_FILES: [&str; 2] = [HEAD_MODULE_FILE, HEAD_CONFIG_FILE];
/// caption: one generated caption per image (image, caption, log_prob).
pub const GENERATED_CAPTIONS_FILE: &str = "captions.parquet";
/// caption (`attention_maps: true`): per-word attention weights over the feature grid.
pub const ATTENTION_FILE: &str = "attention.json";
/// caption (archive mode): files that could not be captioned, with reasons.
pub const SKIPPED_FILE: &str = "skipped.json";

/// An input may name the upstream stage's whole output directory or one file in it;
/// a directory means the conventional file inside it.
pub fn artifact(path: &Path, file_name: &str) -> PathBuf {
    if path.is_dir() {
        path.join(file_name)
    } else {
        path.to_path_buf()
    }
}

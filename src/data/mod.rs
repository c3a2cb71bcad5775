//! Caption data, independent of any stage: the synthetic scene generator, readers for the
//! common caption formats, train/dev/test splits, the image manifest, caption cleaning and
//! the vocabulary.
//!
//! Everything here is plain Rust over files and in-memory values; only [`table`] knows
//! about Parquet. The `synth`, `ingest` and `tokenize` stage kinds are thin wrappers that
//! map their params onto these functions, so the logic can be tested without a runner.

pub mod captions;
pub mod clean;
pub mod fxhash;
pub mod manifest;
pub mod readers;
pub mod split;
pub mod synth;
pub mod table;
pub mod vocab;

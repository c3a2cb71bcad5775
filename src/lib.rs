//! pipe: reproducible image-captioning pipelines.
//!
//! [`engine`] runs a YAML-declared DAG of content-hashed stages and knows nothing of
//! images or captions; [`stages`] holds the stage kinds that do.

pub mod data;
pub mod engine;
pub mod metrics;
pub mod stages;

pub mod cli;
mod cli_metrics;

//! pipe: reproducible image-captioning pipelines.
//!
//! The engine (the `pipe-engine` crate) runs a YAML-declared DAG of content-hashed
//! stages and knows nothing of images or captions; [`stages`] declares the stage kinds
//! that do, over the caption [`data`] and [`metrics`] code, and [`contract`] holds what
//! the libtorch worker (`pipe-torch`) shares with them.

pub mod contract;
pub mod data;
pub mod metrics;
pub mod stages;

pub mod cli;
mod cli_caption;
mod cli_exp;
mod cli_metrics;
mod cli_remote;
mod serve;

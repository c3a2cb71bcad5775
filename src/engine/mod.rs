//! The pipeline engine: spec, DAG, fingerprints, store and runner. It knows stages,
//! params and artifacts, and nothing about images or captions.

pub mod dag;
pub mod fingerprint;
pub mod fsutil;
pub mod hashing;
pub mod lockfile;
pub mod runner;
pub mod spec;
pub mod stage;
pub mod store;
pub mod worker;
pub mod workspace;

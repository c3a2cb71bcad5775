//! pipe's pipeline engine: spec, DAG, fingerprints, hashing, store, lock file, runner and
//! the worker protocol. It knows stages, params and artifacts, and nothing about images
//! or captions: kinds come in through [`stage::StageKind`] and a [`spec::KindRegistry`],
//! and the engine names none of them.
//!
//! Data flows one way: YAML → [`spec`] (a validated [`spec::Pipeline`] with its
//! [`dag::Dag`]) → [`runner`] → a kind → [`store`] → [`lockfile`]; completed runs are
//! recorded in the [`experiments`] log.

pub mod dag;
pub mod experiments;
pub mod failpoint;
pub mod fingerprint;
pub mod fsutil;
pub mod hashing;
pub mod kubernetes;
pub mod lockfile;
pub mod query;
pub mod remote;
pub mod reporter;
pub mod runner;
pub mod slurm;
pub mod spec;
pub mod stage;
pub mod store;
pub mod worker;
pub mod workspace;

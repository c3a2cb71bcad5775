//! What crosses the seam between `pipe` and its libtorch worker, `pipe-torch`: artifact
//! file names, the device and precision settings, and the tables both sides read or
//! write. Nothing here links libtorch, so the kind declarations (`crate::stages`) and the
//! model layer (`pipe-torch/src/model`) both depend on this module and never on each
//! other. docs/CONTRACTS.md documents each artifact's schema.

pub mod attention;
pub mod device;
pub mod files;
pub mod serve;
pub mod tables;

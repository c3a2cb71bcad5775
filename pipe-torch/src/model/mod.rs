//! Models: the frozen image backbone and the caption decoder.

pub mod backbone;
pub mod data;
pub mod decode;
pub mod decoder;
pub mod optim;
pub mod scst;
pub mod train;

//! Models: the image backbone (frozen, or its last blocks fine-tuned as a head) and the
//! caption decoder.

pub mod artifact;
pub mod backbone;
pub mod cpu_batch;
pub mod data;
pub mod decode;
pub mod decoder;
pub mod head;
pub mod optim;
pub mod scst;
pub mod train;

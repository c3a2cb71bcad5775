//! CPU batches padded so that an image's bytes depend neither on its batch nor on the
//! number of torch threads.
//!
//! ATen sends each CPU float convolution either to oneDNN or to its native kernel
//! (`ConvParams::use_mkldnn`): a 1×1 convolution goes native below a batch of 16 when torch
//! has one thread, and a small one with a batch of 1 goes native at any thread count. The
//! two kernels differ in the last bits, so a shard's short tail batch, a one-CPU pod or
//! `pipe caption`'s lone photo would get other bytes than a whole run. oneDNN's own bytes
//! for an image are the same in any batch and at any thread count (checked on 1–4 threads),
//! so every convolution is kept on it by padding the batch to [`min_cpu_batch`].

use anyhow::Result;
use tch::{Device, Tensor};

/// The smallest CPU batch whose every convolution runs on oneDNN at today's thread count.
pub fn min_cpu_batch() -> i64 {
    if tch::get_num_threads() > 1 {
        2
    } else {
        16
    }
}

/// `forward` on `x` (`[n, …]`), with a CPU batch below [`min_cpu_batch`] padded by repeats
/// of its last row; the padding's outputs are dropped.
pub fn forward_padded(x: &Tensor, forward: impl FnOnce(&Tensor) -> Result<Tensor>) -> Result<Tensor> {
    let n = x.size()[0];
    let floor = min_cpu_batch();
    if x.device() != Device::Cpu || n == 0 || n >= floor {
        return forward(x);
    }
    // Concatenated copies keep `x`'s memory format (channels-last for image batches).
    let last = x.narrow(0, n - 1, 1);
    let mut parts = vec![x.shallow_clone()];
    parts.extend((n..floor).map(|_| last.shallow_clone()));
    let y = forward(&Tensor::cat(&parts, 0))?;
    Ok(y.narrow(0, 0, n))
}

#[cfg(test)]
pub(crate) mod tests {
    use tch::Tensor;

    /// Asserts that `forward`'s first output row for `x`'s first `n` rows, for each of
    /// `sizes`, at one and at two torch threads, has the bits of the whole of `x` at two.
    pub(crate) fn assert_first_row_is_the_same_in_any_batch_at_any_thread_count(
        x: &Tensor,
        sizes: &[i64],
        forward: impl Fn(&Tensor) -> Tensor,
    ) {
        let first_row = |n: i64| Vec::<f32>::try_from(forward(&x.narrow(0, 0, n)).get(0)).unwrap();
        tch::set_num_threads(2);
        let whole = first_row(x.size()[0]);
        for threads in [1, 2] {
            tch::set_num_threads(threads);
            for &n in sizes {
                assert!(
                    first_row(n) == whole,
                    "row 0 in a batch of {n} on {threads} thread(s) differs from the whole batch's"
                );
            }
        }
        tch::set_num_threads(2);
    }
}

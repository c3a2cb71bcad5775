//! Where the backbone runs: device resolution (loading the CUDA backend when asked for),
//! precision, and how CPU threads are shared between torch and image decoding.

use std::thread;

use anyhow::{ensure, Result};
use serde::Serialize;
use tch::{Device, Kind};

use pipe::contract::device::{DeviceChoice, Precision};

/// The libtorch device a [`DeviceChoice`] names.
pub trait ResolveDevice {
    /// The concrete device, failing clearly when CUDA is asked for but absent.
    fn resolve(self) -> Result<Device>;
}

impl ResolveDevice for DeviceChoice {
    fn resolve(self) -> Result<Device> {
        if self != Self::Cpu {
            load_cuda_backend();
        }
        match self {
            Self::Auto if tch::Cuda::is_available() => Ok(Device::Cuda(0)),
            Self::Auto | Self::Cpu => Ok(Device::Cpu),
            Self::Cuda(n) => {
                let count = tch::Cuda::device_count() as usize;
                ensure!(
                    n < count,
                    "device cuda:{n} requested but {count} CUDA device(s) found \
                     (is libtorch a CUDA build, and libtorch_cuda.so on the library path?)"
                );
                Ok(Device::Cuda(n))
            }
        }
    }
}

/// Loads libtorch's CUDA backend, once, before anything asks torch about CUDA.
///
/// Nothing in a tch binary calls into `libtorch_cuda.so` directly, so the linker's
/// `--as-needed` drops it and torch then reports no GPU. Loading it at run time registers
/// the backend (a binary linked with `-Wl,--no-as-needed -ltorch_cuda` has it already, and
/// then this is a no-op). With a CPU-only libtorch the load fails quietly and the CPU is used.
fn load_cuda_backend() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        #[cfg(target_os = "linux")]
        {
            use std::ffi::{c_char, c_int, c_void};
            extern "C" {
                fn dlopen(filename: *const c_char, flag: c_int) -> *mut c_void;
            }
            const RTLD_NOW: c_int = 2;
            const RTLD_GLOBAL: c_int = 0x100;
            // SAFETY: a NUL-terminated library name; the handle is kept open on purpose for
            // the life of the process, and a null result (not found) is simply ignored.
            unsafe {
                dlopen(c"libtorch_cuda.so".as_ptr(), RTLD_NOW | RTLD_GLOBAL);
            }
        }
    });
}

/// The tensor kind a forward pass at `precision` runs in.
pub fn precision_kind(precision: Precision) -> Kind {
    match precision {
        Precision::Fp32 => Kind::Float,
        Precision::Fp16 => Kind::Half,
        Precision::Bf16 => Kind::BFloat16,
    }
}

/// How many threads torch and the decoders get.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ThreadPlan {
    pub torch: usize,
    pub decode: usize,
}

impl ThreadPlan {
    /// `threads` = 0 means all cores. On a CPU, torch gets every core and one decoder per
    /// four cores shares them (decoding is a few percent of the work; on 2 cores this beat
    /// 1 torch + 1 decode thread by 1.6×). On CUDA the GPU does the maths: decoding gets all
    /// cores but one, which is left to the thread that launches the kernels.
    pub fn new(threads: usize, device: Device) -> Self {
        let cores = thread::available_parallelism().map_or(1, |n| n.get());
        let total = if threads == 0 { cores } else { threads };
        match device {
            Device::Cpu => Self { torch: total, decode: (total / 4).max(1) },
            _ => Self { torch: 1, decode: total.saturating_sub(1).max(1) },
        }
    }
}

//! Optimisers of decoder training: Adam (fused on the CPU) and ReduceLROnPlateau.

use rayon::prelude::*;
use tch::{nn, nn::OptimizerConfig, Device, Kind, Tensor};

use anyhow::Result;

/// The optimiser: Adam, fused on the CPU, torch's own elsewhere.
pub(super) enum Stepper {
    Torch(nn::Optimizer, Vec<f64>),
    Fused(FusedAdam),
}

impl Stepper {
    /// Adam over `vs`'s trainable variables at `lr`, those of var-store group g at
    /// `lr × group_scales[g]` (1 for a group past the slice), e.g. a fine-tuned backbone
    /// head at its own rate.
    pub(super) fn new(vs: &nn::VarStore, lr: f64, group_scales: &[f64]) -> Result<Self> {
        match FusedAdam::new(vs, lr, group_scales) {
            Some(fused) => Ok(Self::Fused(fused)),
            None => {
                let mut stepper = Self::Torch(nn::Adam::default().build(vs, lr)?, group_scales.to_vec());
                stepper.set_lr(lr);
                Ok(stepper)
            }
        }
    }

    /// Sets the base learning rate; each group keeps its scale.
    pub(super) fn set_lr(&mut self, lr: f64) {
        match self {
            Self::Torch(opt, scales) => {
                opt.set_lr(lr);
                for (group, scale) in scales.iter().enumerate() {
                    opt.set_lr_group(group, lr * scale);
                }
            }
            Self::Fused(opt) => opt.lr = lr,
        }
    }

    pub(super) fn backward_step(&mut self, loss: &Tensor) {
        match self {
            Self::Torch(opt, _) => opt.backward_step(loss),
            Self::Fused(opt) => opt.backward_step(loss),
        }
    }
}

/// Adam with PyTorch's update rule and defaults (β 0.9/0.999, ε 1e-8 added to the
/// bias-corrected √v, no weight decay), done in one pass per parameter: p, g, m and v are
/// read once, p, m and v written once, and g zeroed in the same pass. torch's CPU Adam
/// makes about eight passes plus a zero_grad pass, which on two cores was a sixth of a
/// training step. Used only when every variable is a contiguous f32 CPU tensor.
pub struct FusedAdam {
    params: Vec<Tensor>,
    /// Each parameter's learning-rate scale (its var-store group's).
    scales: Vec<f64>,
    /// First and second moments, one buffer per parameter.
    moments: Vec<(Vec<f32>, Vec<f32>)>,
    pub lr: f64,
    steps: i32,
}

/// Elements per parallel work item of [`FusedAdam`].
const ADAM_CHUNK: usize = 1 << 15;

impl FusedAdam {
    pub fn new(vs: &nn::VarStore, lr: f64, group_scales: &[f64]) -> Option<Self> {
        let (params, scales): (Vec<Tensor>, Vec<f64>) = {
            let variables = vs.variables_.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let scale = |group: usize| group_scales.get(group).copied().unwrap_or(1.0);
            variables.trainable_variables.iter().map(|v| (v.tensor.shallow_clone(), scale(v.group))).unzip()
        };
        let fits = |t: &Tensor| t.device() == Device::Cpu && t.kind() == Kind::Float && t.is_contiguous();
        if !params.iter().all(fits) {
            return None;
        }
        let moments = params.iter().map(|p| (vec![0f32; p.numel()], vec![0f32; p.numel()])).collect();
        Some(Self { params, scales, moments, lr, steps: 0 })
    }

    pub fn backward_step(&mut self, loss: &Tensor) {
        loss.backward();
        self.steps += 1;
        let (b1, b2, eps) = (0.9f64, 0.999f64, 1e-8f64);
        let bias_correction1 = 1.0 - b1.powi(self.steps);
        let inv_bc2_sqrt = (1.0 / (1.0 - b2.powi(self.steps)).sqrt()) as f32;
        for ((param, scale), (m, v)) in self.params.iter().zip(&self.scales).zip(self.moments.iter_mut()) {
            let step_size = (self.lr * scale / bias_correction1) as f32;
            let k = AdamConstants { b1: b1 as f32, b2: b2 as f32, eps: eps as f32, step_size, inv_bc2_sqrt };
            let grad = param.grad();
            if !grad.defined() || !grad.is_contiguous() || grad.kind() != Kind::Float {
                continue; // frozen, or unused in this graph
            }
            let n = param.numel();
            // SAFETY: both tensors are contiguous f32 CPU tensors of `n` elements (checked
            // in `new` and above), owned by the var store and the autograd engine, and no
            // torch op runs on them while these slices live.
            let (p, g) = unsafe {
                (
                    std::slice::from_raw_parts_mut(param.data_ptr() as *mut f32, n),
                    std::slice::from_raw_parts_mut(grad.data_ptr() as *mut f32, n),
                )
            };
            p.par_chunks_mut(ADAM_CHUNK)
                .zip(g.par_chunks_mut(ADAM_CHUNK))
                .zip(m.par_chunks_mut(ADAM_CHUNK).zip(v.par_chunks_mut(ADAM_CHUNK)))
                .for_each(|((p, g), (m, v))| adam_update(p, g, m, v, &k));
        }
    }
}

struct AdamConstants {
    b1: f32,
    b2: f32,
    eps: f32,
    step_size: f32,
    inv_bc2_sqrt: f32,
}

/// One chunk of the Adam update; zeroes the gradient it consumed.
fn adam_update(p: &mut [f32], g: &mut [f32], m: &mut [f32], v: &mut [f32], k: &AdamConstants) {
    for i in 0..p.len() {
        let gi = g[i];
        let mi = k.b1 * m[i] + (1.0 - k.b1) * gi;
        let vi = k.b2 * v[i] + (1.0 - k.b2) * gi * gi;
        p[i] -= k.step_size * mi / (vi.sqrt() * k.inv_bc2_sqrt + k.eps);
        (m[i], v[i], g[i]) = (mi, vi, 0.0);
    }
}

/// ReduceLROnPlateau (mode min, relative threshold 1e-4, no cooldown), as in PyTorch.
pub(super) struct Plateau {
    pub(super) lr: f64,
    factor: f64,
    patience: usize,
    best: f64,
    bad: usize,
}

impl Plateau {
    pub(super) fn new(lr: f64, factor: f64, patience: usize) -> Self {
        Self { lr, factor, patience, best: f64::INFINITY, bad: 0 }
    }

    pub(super) fn observe(&mut self, loss: f64) {
        if loss < self.best * (1.0 - 1e-4) {
            (self.best, self.bad) = (loss, 0);
        } else {
            self.bad += 1;
            if self.bad > self.patience {
                (self.lr, self.bad) = (self.lr * self.factor, 0);
            }
        }
    }
}

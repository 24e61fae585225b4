//! Where a tensor's buffer lives. The CPU is always there; the GPU (wgpu) only in builds
//! with the `gpu` cargo feature, and only where an adapter is found at run time.
//!
//! Ops run on the device of their inputs. Inputs on different devices are an error, except
//! a one-element CPU tensor next to a GPU tensor: backward rules build their constants
//! (`1`, `0`, a scale) on the CPU, and moving one number is cheaper than an error.

use crate::backend;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Device {
    Cpu,
    Gpu,
}

impl Device {
    pub fn name(self) -> &'static str {
        match self {
            Device::Cpu => "cpu",
            Device::Gpu => "gpu",
        }
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Whether this build has the GPU backend compiled in.
pub const GPU_COMPILED: bool = cfg!(feature = "gpu");

/// The GPU adapter's description, or why there is none.
pub fn gpu_info() -> Result<String> {
    backend::get(Device::Gpu).ok_or_else(|| not_compiled("gpu"))?.describe()
}

pub(crate) fn not_compiled(op: &'static str) -> Error {
    Error::Device {
        op,
        msg: "this fluxrs was built without the GPU backend; build it from a source checkout with the `gpu` \
              feature: MATURIN_PEP517_ARGS=\"--features gpu\" pip install . (or maturin develop --release --features gpu)"
            .into(),
    }
}

impl Tensor {
    pub fn device(&self) -> Device {
        if self.0.storage.read_recursive().is_gpu() {
            Device::Gpu
        } else {
            Device::Cpu
        }
    }
    pub fn is_gpu(&self) -> bool {
        self.device() == Device::Gpu
    }

    /// A copy on `device` (`self` when it is already there). Unrecorded: moving a model is
    /// not part of what is differentiated, as `gpu(model)` is not in Flux.
    pub fn to_device(&self, device: Device) -> Result<Tensor> {
        if self.device() == device {
            return Ok(self.clone());
        }
        // Up from the CPU to an accelerator, or down from one.
        match (backend::get(device), backend::get(self.device())) {
            (Some(to), _) => to.upload(self),
            (None, Some(from)) => from.download(self),
            (None, None) => Err(not_compiled("to_device")),
        }
    }
}

/// The device an op on `inputs` runs on, or an error naming the op when they disagree.
pub(crate) fn common_device(op: &'static str, inputs: &[&Tensor]) -> Result<Device> {
    let mut dev = None;
    for t in inputs {
        let d = t.device();
        if d == Device::Cpu && t.numel() == 1 {
            continue;
        }
        match dev {
            None => dev = Some(d),
            Some(prev) if prev != d => {
                return Err(Error::Device {
                    op,
                    msg: format!("operands are on different devices ({prev} and {d}); move them with fx.gpu(...) or fx.cpu(...) first"),
                })
            }
            _ => {}
        }
    }
    Ok(dev.unwrap_or(Device::Cpu))
}

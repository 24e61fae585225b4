//! Convolution and pooling bindings: whole-layer ops, one Python→Rust crossing each.
//! Arguments are validated here, with errors that name the argument and the shapes;
//! the math (and its backward) is in `fluxrs_core::ops::{conv, pool}`.

use fluxrs_core::ops::conv::{ConvSpec, MAX_SPATIAL};
use fluxrs_core::ops::nn::Act;
use fluxrs_core::ops::pool::PoolSpec;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::errors::run;
use crate::tensor::PyTensor;

fn err<T>(msg: String) -> PyResult<T> {
    Err(PyValueError::new_err(msg))
}

/// An int or a sequence of ints, as non-negative values.
fn ints(op: &str, name: &str, obj: &Bound<'_, PyAny>) -> PyResult<Vec<usize>> {
    let raw: Vec<i64> = if let Ok(v) = obj.extract::<i64>() {
        vec![v]
    } else if let Ok(v) = obj.extract::<Vec<i64>>() {
        v
    } else {
        return err(format!("{op}: {name} must be an int or a sequence of ints, got {}", obj.repr()?));
    };
    raw.iter().map(|&v| usize::try_from(v).map_err(|_| PyValueError::new_err(format!("{op}: {name} must be non-negative, got {raw:?}")))).collect()
}

/// An int (every axis) or one int per spatial axis.
fn per_axis(op: &str, name: &str, obj: &Bound<'_, PyAny>, d: usize) -> PyResult<Vec<usize>> {
    let v = ints(op, name, obj)?;
    let scalar = obj.extract::<i64>().is_ok();
    match v.len() {
        1 if scalar => Ok(vec![v[0]; d]),
        n if n == d => Ok(v),
        _ => err(format!("{op}: {name} needs one entry per spatial dimension ({d}), got {v:?}")),
    }
}

/// An int (every side), one int per axis (both sides), or (before, after) per axis in
/// axis order: `(lo_1, hi_1, lo_2, hi_2, ...)`, as Flux orders its pad tuples.
fn pads(op: &str, obj: &Bound<'_, PyAny>, d: usize) -> PyResult<Vec<(usize, usize)>> {
    let v = ints(op, "pad", obj)?;
    let scalar = obj.extract::<i64>().is_ok();
    if scalar {
        return Ok(vec![(v[0], v[0]); d]);
    }
    if v.len() == d {
        return Ok(v.iter().map(|&p| (p, p)).collect());
    }
    if v.len() == 2 * d {
        return Ok(v.chunks(2).map(|c| (c[0], c[1])).collect());
    }
    err(format!("{op}: pad needs 1, {d} or {} entries for {d} spatial dimension(s), got {v:?}", 2 * d))
}

/// The fused activation named `act`, or a ValueError listing those there are.
pub(crate) fn act_arg(op: &str, act: &str) -> PyResult<Act> {
    Act::from_name(act).ok_or_else(|| {
        let names: Vec<_> = Act::names().collect();
        PyValueError::new_err(format!("{op}: unsupported fused activation {act:?} (one of {})", names.join(", ")))
    })
}

/// Spatial dimensions of a weight `(out, in, k...)`.
fn weight_dims(op: &str, w: &PyTensor) -> PyResult<usize> {
    let nd = w.inner.ndim();
    if !(3..=MAX_SPATIAL + 2).contains(&nd) {
        return err(format!("{op}: the weight must have 3 to {} dimensions (out, in/groups, k...), got shape {:?}", MAX_SPATIAL + 2, w.inner.shape()));
    }
    Ok(nd - 2)
}

fn conv_spec(
    op: &str,
    d: usize,
    stride: &Bound<'_, PyAny>,
    pad: &Bound<'_, PyAny>,
    dilation: &Bound<'_, PyAny>,
    groups: i64,
    flip: bool,
) -> PyResult<ConvSpec> {
    let stride = per_axis(op, "stride", stride, d)?;
    if stride.contains(&0) {
        return err(format!("{op}: stride must be positive, got {stride:?}"));
    }
    let dilation = per_axis(op, "dilation", dilation, d)?;
    if dilation.contains(&0) {
        return err(format!("{op}: dilation must be positive, got {dilation:?}"));
    }
    if groups < 1 {
        return err(format!("{op}: groups must be positive, got {groups}"));
    }
    Ok(ConvSpec { stride, pad: pads(op, pad, d)?, dilation, groups: groups as usize, flip })
}

/// `act(conv(x, w) + b)` for x `(N, C_in, S...)`, w `(C_out, C_in/groups, K...)` (PyTorch's
/// layout; Flux's is the reverse), b `(C_out,)`. Cross-correlation unless `flip` (true
/// convolution, as Flux's `Conv`).
#[pyfunction]
#[pyo3(signature = (x, w, b = None, stride = None, pad = None, dilation = None, groups = 1, flip = false, act = "identity"))]
#[allow(clippy::too_many_arguments)]
pub fn conv(
    py: Python<'_>,
    x: PyRef<'_, PyTensor>,
    w: PyRef<'_, PyTensor>,
    b: Option<PyRef<'_, PyTensor>>,
    stride: Option<&Bound<'_, PyAny>>,
    pad: Option<&Bound<'_, PyAny>>,
    dilation: Option<&Bound<'_, PyAny>>,
    groups: i64,
    flip: bool,
    act: &str,
) -> PyResult<PyTensor> {
    let d = weight_dims("conv", &w)?;
    let one = 1i64.into_pyobject(py)?.into_any();
    let zero = 0i64.into_pyobject(py)?.into_any();
    let spec = conv_spec("conv", d, stride.unwrap_or(&one), pad.unwrap_or(&zero), dilation.unwrap_or(&one), groups, flip)?;
    let act = act_arg("conv", act)?;
    let (x, w, b) = (x.inner.clone(), w.inner.clone(), b.map(|b| b.inner.clone()));
    run(py, move || x.conv(&w, b.as_ref(), &spec, act)).map(PyTensor::wrap)
}

/// `act(conv_transpose(y, w) + b)`: the input-gradient of `conv(., w)` applied to y
/// `(N, C_in, O...)`, w `(C_in, C_out/groups, K...)`, b `(C_out,)`. The output's spatial
/// size is the smallest consistent one plus `outpad` (each entry below the stride), or
/// `size` when given.
#[pyfunction]
#[pyo3(signature = (y, w, b = None, stride = None, pad = None, dilation = None, groups = 1, flip = false, act = "identity", outpad = None, size = None))]
#[allow(clippy::too_many_arguments)]
pub fn conv_transpose(
    py: Python<'_>,
    y: PyRef<'_, PyTensor>,
    w: PyRef<'_, PyTensor>,
    b: Option<PyRef<'_, PyTensor>>,
    stride: Option<&Bound<'_, PyAny>>,
    pad: Option<&Bound<'_, PyAny>>,
    dilation: Option<&Bound<'_, PyAny>>,
    groups: i64,
    flip: bool,
    act: &str,
    outpad: Option<&Bound<'_, PyAny>>,
    size: Option<&Bound<'_, PyAny>>,
) -> PyResult<PyTensor> {
    let op = "conv_transpose";
    let d = weight_dims(op, &w)?;
    let one = 1i64.into_pyobject(py)?.into_any();
    let zero = 0i64.into_pyobject(py)?.into_any();
    let spec = conv_spec(op, d, stride.unwrap_or(&one), pad.unwrap_or(&zero), dilation.unwrap_or(&one), groups, flip)?;
    let act = act_arg(op, act)?;
    let ys = y.inner.shape().to_vec();
    if ys.len() != d + 2 {
        return err(format!(
            "{op}: expected input of shape (N, C, {}) for a weight of shape {:?}, got shape {ys:?}",
            ["L", "H, W", "D, H, W"][d - 1],
            w.inner.shape()
        ));
    }
    let out_size: Option<Vec<usize>> = match (size, outpad) {
        (Some(_), Some(_)) => return err(format!("{op}: give outpad or size, not both")),
        (Some(s), None) => {
            let s = ints(op, "size", s)?;
            if s.len() != d {
                return err(format!("{op}: size needs one entry per spatial dimension ({d}), got {s:?}"));
            }
            Some(s)
        }
        (None, Some(o)) => {
            let o = per_axis(op, "outpad", o, d)?;
            if let Some(j) = (0..d).find(|&j| o[j] >= spec.stride[j]) {
                return err(format!("{op}: outpad {o:?} must be smaller than the stride {:?} (axis {j})", spec.stride));
            }
            let ks = &w.inner.shape()[2..];
            let mut s = Vec::with_capacity(d);
            for j in 0..d {
                let full = (ys[2 + j].max(1) - 1) * spec.stride[j] + spec.dilation[j] * (ks[j].max(1) - 1) + 1 + o[j];
                let (lo, hi) = spec.pad[j];
                if full <= lo + hi {
                    return err(format!("{op}: input {ys:?} with kernel {ks:?} and pad {:?} gives an empty output", spec.pad));
                }
                s.push(full - lo - hi);
            }
            Some(s)
        }
        (None, None) => None,
    };
    let (y, w, b) = (y.inner.clone(), w.inner.clone(), b.map(|b| b.inner.clone()));
    run(py, move || y.conv_transpose(&w, b.as_ref(), &spec, out_size.as_deref(), act)).map(PyTensor::wrap)
}

fn pool_spec(op: &str, x: &PyTensor, k: &Bound<'_, PyAny>, stride: Option<&Bound<'_, PyAny>>, pad: Option<&Bound<'_, PyAny>>) -> PyResult<PoolSpec> {
    let kernel = if k.extract::<i64>().is_ok() {
        // an int kernel covers every spatial axis of the input
        let d = x.inner.ndim().saturating_sub(2);
        if d == 0 || d > MAX_SPATIAL {
            return err(format!("{op}: expected input of shape (N, C, S...) with 1 to {MAX_SPATIAL} spatial dimensions, got shape {:?}", x.inner.shape()));
        }
        per_axis(op, "kernel", k, d)?
    } else {
        ints(op, "kernel", k)?
    };
    let d = kernel.len();
    if d == 0 || d > MAX_SPATIAL {
        return err(format!("{op}: the kernel needs 1 to {MAX_SPATIAL} entries, got {kernel:?}"));
    }
    if kernel.contains(&0) {
        return err(format!("{op}: kernel sizes must be positive, got {kernel:?}"));
    }
    let stride = match stride {
        None => kernel.clone(),
        Some(s) if s.is_none() => kernel.clone(),
        Some(s) => per_axis(op, "stride", s, d)?,
    };
    if stride.contains(&0) {
        return err(format!("{op}: stride must be positive, got {stride:?}"));
    }
    let pad = match pad {
        None => vec![(0, 0); d],
        Some(p) => pads(op, p, d)?,
    };
    if x.inner.ndim() != d + 2 {
        return err(format!(
            "{op}: a {d}-d kernel {kernel:?} expects input of shape (N, C, {}), got shape {:?}",
            ["L", "H, W", "D, H, W"][d - 1],
            x.inner.shape()
        ));
    }
    Ok(PoolSpec { kernel, stride, pad })
}

/// Max pooling of `(N, C, S...)`; `stride` defaults to the kernel (Flux's default).
#[pyfunction]
#[pyo3(signature = (x, k, stride = None, pad = None))]
pub fn maxpool(
    py: Python<'_>,
    x: PyRef<'_, PyTensor>,
    k: &Bound<'_, PyAny>,
    stride: Option<&Bound<'_, PyAny>>,
    pad: Option<&Bound<'_, PyAny>>,
) -> PyResult<PyTensor> {
    let spec = pool_spec("maxpool", &x, k, stride, pad)?;
    let x = x.inner.clone();
    run(py, move || x.maxpool(&spec)).map(PyTensor::wrap)
}

/// Mean pooling of `(N, C, S...)` (padding counts as zeros; divides by the kernel size).
#[pyfunction]
#[pyo3(signature = (x, k, stride = None, pad = None))]
pub fn meanpool(
    py: Python<'_>,
    x: PyRef<'_, PyTensor>,
    k: &Bound<'_, PyAny>,
    stride: Option<&Bound<'_, PyAny>>,
    pad: Option<&Bound<'_, PyAny>>,
) -> PyResult<PyTensor> {
    let spec = pool_spec("meanpool", &x, k, stride, pad)?;
    let x = x.inner.clone();
    run(py, move || x.meanpool(&spec)).map(PyTensor::wrap)
}

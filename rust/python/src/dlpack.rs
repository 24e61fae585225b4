//! DLPack import: the capsule that `x.__dlpack__()` returns, as a tensor over the producer's
//! memory. The capsule is consumed (renamed "used_dltensor[_versioned]", as the array API
//! asks) and its managed tensor handed to the core as the owner of a `Foreign` buffer, whose
//! drop calls the producer's deleter. Memory that cannot be shared as is (read-only,
//! misaligned, negative or overlapping strides) or when `copy=True` is copied instead, and
//! the capsule is then left to its own destructor.

use std::ffi::{c_void, CStr};

use fluxrs_core::layout::Layout;
use fluxrs_core::{DType, Foreign, Tensor};
use pyo3::exceptions::{PyBufferError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyCapsule;

use crate::errors::to_py;
use crate::tensor::PyTensor;

// The C structs of dlpack.h (v1), field for field.

#[repr(C)]
struct DLDevice {
    device_type: i32,
    device_id: i32,
}

#[repr(C)]
struct DLDataType {
    code: u8,
    bits: u8,
    lanes: u16,
}

#[repr(C)]
struct DLTensor {
    data: *mut c_void,
    device: DLDevice,
    ndim: i32,
    dtype: DLDataType,
    shape: *const i64,
    /// In elements; null means C-contiguous.
    strides: *const i64,
    byte_offset: u64,
}

#[repr(C)]
struct DLManagedTensor {
    dl_tensor: DLTensor,
    manager_ctx: *mut c_void,
    deleter: Option<unsafe extern "C" fn(*mut DLManagedTensor)>,
}

#[repr(C)]
struct DLPackVersion {
    major: u32,
    minor: u32,
}

#[repr(C)]
struct DLManagedTensorVersioned {
    version: DLPackVersion,
    manager_ctx: *mut c_void,
    deleter: Option<unsafe extern "C" fn(*mut DLManagedTensorVersioned)>,
    flags: u64,
    dl_tensor: DLTensor,
}

const FLAG_READ_ONLY: u64 = 1;
const KDL_FLOAT: u8 = 2;

/// The DLPack major version read here (`fluxrs.tensor` asks producers for 1.0).
const MAJOR: u32 = 1;

/// Device types whose memory the CPU addresses directly (as numpy accepts): kDLCPU,
/// kDLCUDAHost, kDLROCMHost, kDLCUDAManaged.
const HOST_DEVICES: [i32; 4] = [1, 3, 11, 13];

/// A consumed capsule's managed tensor: the owner of a `Foreign` buffer. Dropping it calls
/// the producer's deleter, which releases the producer's array.
struct Managed {
    ptr: *mut c_void,
    versioned: bool,
}

// SAFETY: a DLPack deleter may be called from any thread; `drop` takes the GIL for it.
unsafe impl Send for Managed {}
unsafe impl Sync for Managed {}

impl Drop for Managed {
    fn drop(&mut self) {
        // Producers' deleters release Python objects (numpy's drops its reference to the
        // array), so the GIL is taken around the call, from whatever thread drops the last
        // tensor. An interpreter that is shutting down cannot be attached to: the memory is
        // then left to the process's end.
        let _ = Python::try_attach(|_py| {
            // SAFETY: `ptr` is the managed tensor of a capsule renamed "used_…" before this
            // owner was made, so its deleter runs once, here; `versioned` says which struct it is.
            unsafe {
                if self.versioned {
                    let m = self.ptr.cast::<DLManagedTensorVersioned>();
                    if let Some(del) = (*m).deleter {
                        del(m);
                    }
                } else {
                    let m = self.ptr.cast::<DLManagedTensor>();
                    if let Some(del) = (*m).deleter {
                        del(m);
                    }
                }
            }
        });
    }
}

/// What a capsule holds, read before anything is decided.
struct Described<'a> {
    dl: &'a DLTensor,
    read_only: bool,
    versioned: bool,
    managed: *mut c_void,
}

fn describe<'a>(capsule: &'a Bound<'_, PyCapsule>) -> PyResult<Described<'a>> {
    // SAFETY: a capsule's name is a C string or null.
    let name = unsafe { pyo3::ffi::PyCapsule_GetName(capsule.as_ptr()) };
    let name = if name.is_null() { c"" } else { unsafe { CStr::from_ptr(name) } };
    let versioned = match name.to_bytes() {
        b"dltensor" => false,
        b"dltensor_versioned" => true,
        b"used_dltensor" | b"used_dltensor_versioned" => {
            return Err(PyBufferError::new_err("from_dlpack: this DLPack capsule was consumed already; call x.__dlpack__() again"));
        }
        other => {
            return Err(PyTypeError::new_err(format!(
                "from_dlpack: expected a DLPack capsule (\"dltensor\"), got a capsule named {:?}",
                String::from_utf8_lossy(other)
            )));
        }
    };
    let managed = capsule.pointer_checked(Some(name))?.as_ptr();
    // SAFETY: a capsule of this name holds the struct of that name, alive while the capsule
    // is (the caller holds it) and not consumed (checked by the name above).
    unsafe {
        if versioned {
            let m = &*managed.cast::<DLManagedTensorVersioned>();
            if m.version.major != MAJOR {
                // Only the version and the deleter are readable at another major version;
                // the capsule, not consumed, frees it.
                return Err(PyBufferError::new_err(format!(
                    "from_dlpack: the producer exported DLPack {}.{}; fluxrs reads DLPack {MAJOR}.x",
                    m.version.major, m.version.minor
                )));
            }
            Ok(Described { dl: &m.dl_tensor, read_only: m.flags & FLAG_READ_ONLY != 0, versioned, managed })
        } else {
            Ok(Described { dl: &(*managed.cast::<DLManagedTensor>()).dl_tensor, read_only: false, versioned, managed })
        }
    }
}

fn dtype_of(t: &DLDataType) -> PyResult<DType> {
    match (t.code, t.bits, t.lanes) {
        (KDL_FLOAT, 32, 1) => Ok(DType::F32),
        (KDL_FLOAT, 64, 1) => Ok(DType::F64),
        (code, bits, lanes) => {
            let name = match code {
                0 => format!("int{bits}"),
                1 => format!("uint{bits}"),
                2 => format!("float{bits}"),
                4 => format!("bfloat{bits}"),
                5 => format!("complex{bits}"),
                6 => "bool".to_string(),
                _ => format!("DLPack type code {code} of {bits} bits"),
            };
            let lanes = if lanes == 1 { String::new() } else { format!(" x{lanes} lanes") };
            Err(PyTypeError::new_err(format!(
                "from_dlpack: fluxrs tensors are float32 or float64, got {name}{lanes}; convert first \
                 (x.float() in PyTorch, x.astype('float32') in JAX or numpy)"
            )))
        }
    }
}

/// The length of the buffer a tensor over this memory would borrow (one past the furthest
/// element), or why the memory cannot be shared as is.
fn shareable(d: &Described<'_>, base: *const u8, dtype: DType, layout: &Layout) -> Result<usize, &'static str> {
    if d.read_only {
        return Err("it is read-only (fluxrs tensors are writable: optimisers update them in place)");
    }
    if !(base as usize).is_multiple_of(dtype.size()) {
        return Err("its data are not aligned to their element size");
    }
    let end = layout.end().ok_or("it has negative strides")?;
    if !layout.is_non_overlapping() {
        return Err("its strides reach some elements twice (a broadcast view)");
    }
    Ok(end)
}

/// The elements of a strided block of memory in row-major order, any strides (negative,
/// zero) and any alignment.
///
/// SAFETY: every index reachable through `shape` and `strides` (elements of `T` from
/// `base`) must lie in readable memory.
unsafe fn gather<T: Copy>(base: *const u8, shape: &[usize], strides: &[isize]) -> Vec<T> {
    let n: usize = shape.iter().product();
    let size = std::mem::size_of::<T>() as isize;
    let mut out = Vec::with_capacity(n);
    let mut index = vec![0usize; shape.len()];
    let mut at = 0isize; // element offset of `index`
    for _ in 0..n {
        out.push(unsafe { base.offset(at * size).cast::<T>().read_unaligned() });
        // next index in row-major order, keeping `at` in step
        for d in (0..shape.len()).rev() {
            index[d] += 1;
            at += strides[d];
            if index[d] < shape[d] {
                break;
            }
            at -= strides[d] * shape[d] as isize;
            index[d] = 0;
        }
    }
    out
}

/// A tensor of the data a DLPack capsule describes: over its memory (the capsule consumed)
/// unless `copy` is True or the memory cannot be shared as is, then a copy (the capsule left
/// unconsumed). `copy=False` raises BufferError where a copy would be needed.
#[pyfunction]
#[pyo3(signature = (capsule, copy = None))]
pub fn from_dlpack_capsule(capsule: &Bound<'_, PyAny>, copy: Option<bool>) -> PyResult<PyTensor> {
    let capsule = capsule.cast::<PyCapsule>().map_err(|_| {
        let tn = capsule.get_type().name().map(|n| n.to_string()).unwrap_or_default();
        PyTypeError::new_err(format!("from_dlpack: __dlpack__ returned a {tn}, not a DLPack capsule"))
    })?;
    let d = describe(capsule)?;
    let dl = d.dl;
    if !HOST_DEVICES.contains(&dl.device.device_type) {
        return Err(PyBufferError::new_err(format!(
            "from_dlpack: the data are on DLPack device ({}, {}), not in host memory; only host memory can be \
             imported, move it to the CPU first (x.cpu() in PyTorch)",
            dl.device.device_type, dl.device.device_id
        )));
    }
    let dtype = dtype_of(&dl.dtype)?;
    let ndim = usize::try_from(dl.ndim).map_err(|_| PyValueError::new_err(format!("from_dlpack: negative ndim {}", dl.ndim)))?;
    if ndim > 0 && dl.shape.is_null() {
        return Err(PyValueError::new_err("from_dlpack: the DLPack tensor has no shape"));
    }
    // SAFETY: a DLTensor's shape and (non-null) strides hold `ndim` integers.
    let raw_shape: &[i64] = if ndim == 0 { &[] } else { unsafe { std::slice::from_raw_parts(dl.shape, ndim) } };
    let shape: Vec<usize> = raw_shape
        .iter()
        .map(|&s| usize::try_from(s).map_err(|_| PyValueError::new_err(format!("from_dlpack: negative dimension in shape {raw_shape:?}"))))
        .collect::<PyResult<_>>()?;
    let strides: Vec<isize> = if dl.strides.is_null() || ndim == 0 {
        fluxrs_core::layout::contiguous_strides(&shape)
    } else {
        // SAFETY: as above.
        unsafe { std::slice::from_raw_parts(dl.strides, ndim) }.iter().map(|&s| s as isize).collect()
    };
    let n = fluxrs_core::layout::checked_numel("from_dlpack", &shape).map_err(to_py)?;
    if n == 0 {
        return Ok(PyTensor::wrap(Tensor::zeros(&shape, dtype)));
    }
    if dl.data.is_null() {
        return Err(PyValueError::new_err("from_dlpack: the DLPack tensor has elements but no data pointer"));
    }
    let base = dl.data.cast::<u8>().wrapping_add(dl.byte_offset as usize);
    let layout = Layout { shape, strides, offset: 0 };
    let len = match (shareable(&d, base, dtype, &layout), copy) {
        (Ok(len), None | Some(false)) => len,
        (Err(why), Some(false)) => {
            return Err(PyBufferError::new_err(format!("from_dlpack(copy=False): the data cannot be shared without a copy: {why}")));
        }
        _ => {
            let (addr, shape, strides) = (base as usize, layout.shape, layout.strides);
            let work = move || {
                // SAFETY: the producer describes readable memory at these strides, alive while
                // the capsule (held by the caller) is unconsumed.
                unsafe {
                    match dtype {
                        DType::F32 => Tensor::from_vec(gather::<f32>(addr as *const u8, &shape, &strides), &shape),
                        DType::F64 => Tensor::from_vec(gather::<f64>(addr as *const u8, &shape, &strides), &shape),
                    }
                }
            };
            let t = if n * dtype.size() >= crate::convert::DETACH_COPY_BYTES { crate::gil::detach(capsule.py(), work) } else { work() };
            return t.map(PyTensor::wrap).map_err(to_py);
        }
    };
    let used = if d.versioned { c"used_dltensor_versioned" } else { c"used_dltensor" };
    // Consumed from here on: the capsule's destructor leaves a renamed capsule alone, and the
    // deleter is called once, when `Managed` is dropped (at once if the core refuses the buffer).
    // SAFETY: a valid capsule and a static name.
    if unsafe { pyo3::ffi::PyCapsule_SetName(capsule.as_ptr(), used.as_ptr()) } != 0 {
        return Err(PyErr::fetch(capsule.py()));
    }
    let owner = Box::new(Managed { ptr: d.managed, versioned: d.versioned });
    // SAFETY: the producer lends `len` elements from `base` (the furthest one the layout
    // reaches) until its deleter is called, which only the owner's drop does.
    let buf = unsafe { Foreign::new(base, len, dtype, owner) }.map_err(to_py)?;
    Tensor::from_foreign(buf, layout).map(PyTensor::wrap).map_err(to_py)
}

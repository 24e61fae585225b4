//! The wgpu backend (cargo feature `gpu`): one vendor-neutral device (Vulkan, Metal, DX12),
//! float32 buffers that stay on it across ops, and WGSL kernels (`kernels`).
//!
//! One device per process, opened on first use. Kernels are recorded into one pending
//! command encoder and submitted together (every `SUBMIT_EVERY` ops, or when data is read
//! back); the only sync points are read-backs (`download`, `item`), as in PyTorch's CUDA
//! backend, so a training step queues its work and waits once, for the loss.

mod axis;
mod backend;
mod conv;
mod kernels;
mod optim;
mod pool;

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use parking_lot::{Mutex, RwLock};
use wgpu::util::DeviceExt;

use crate::error::{Error, Result};
use crate::layout::Layout;
use crate::storage::Storage;
use crate::tensor::Tensor;
use crate::DType;

pub(crate) use backend::Wgpu;

/// A float32 buffer on the GPU.
#[derive(Debug)]
pub struct GpuBuf {
    pub(crate) buf: wgpu::Buffer,
    pub(crate) len: usize,
}

impl Clone for GpuBuf {
    /// A device-side copy (a `Storage` clone must not alias).
    fn clone(&self) -> GpuBuf {
        let g = context().expect("a GPU buffer exists, so the device does");
        let out = g.alloc(self.len);
        g.encode(|enc| enc.copy_buffer_to_buffer(&self.buf, 0, &out.buf, 0, (self.len * 4) as u64));
        out
    }
}

pub struct Gpu {
    device: wgpu::Device,
    queue: wgpu::Queue,
    info: wgpu::AdapterInfo,
    max_workgroups: u32,
    pipelines: Mutex<HashMap<&'static str, Arc<wgpu::ComputePipeline>>>,
    /// Two 4-byte buffers bound where a kernel's optional input is absent.
    spares: OnceLock<(GpuBuf, GpuBuf)>,
    /// Work recorded but not yet submitted, and how many ops it holds.
    pending: Mutex<(Option<wgpu::CommandEncoder>, usize)>,
}

/// Ops per submission: large enough that submission costs vanish, small enough that the
/// device starts on a long step before all of it is recorded.
const SUBMIT_EVERY: usize = 128;

static GPU: OnceLock<std::result::Result<Gpu, String>> = OnceLock::new();

/// The process's GPU, opened on first use; a clear error when there is no adapter.
pub fn context() -> Result<&'static Gpu> {
    GPU.get_or_init(open).as_ref().map_err(|msg| Error::Device { op: "gpu", msg: msg.clone() })
}

fn open() -> std::result::Result<Gpu, String> {
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let adapter = pollster::block_on(
        instance.request_adapter(&wgpu::RequestAdapterOptions { power_preference: wgpu::PowerPreference::HighPerformance, ..Default::default() }),
    )
    .map_err(|e| {
        format!(
            "no GPU adapter found ({e}); on Linux without a GPU, install a Vulkan driver such as \
                          Debian's mesa-vulkan-drivers (lavapipe)"
        )
    })?;
    let limits = adapter.limits();
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        label: Some("fluxrs"),
        required_limits: wgpu::Limits {
            max_storage_buffer_binding_size: limits.max_storage_buffer_binding_size,
            max_buffer_size: limits.max_buffer_size,
            // `where` binds 5 buffers (metadata, 3 inputs, output); downlevel allows 4.
            max_storage_buffers_per_shader_stage: limits.max_storage_buffers_per_shader_stage,
            ..wgpu::Limits::downlevel_defaults()
        },
        ..Default::default()
    }))
    .map_err(|e| format!("the GPU adapter refused a device: {e}"))?;
    Ok(Gpu {
        device,
        queue,
        info: adapter.get_info(),
        max_workgroups: limits.max_compute_workgroups_per_dimension,
        pipelines: Mutex::new(HashMap::new()),
        pending: Mutex::new((None, 0)),
        spares: OnceLock::new(),
    })
}

impl Gpu {
    pub(crate) fn spare(&self, i: usize) -> &GpuBuf {
        let s = self.spares.get_or_init(|| (self.alloc(1), self.alloc(1)));
        if i == 0 {
            &s.0
        } else {
            &s.1
        }
    }

    /// A CPU-emulated adapter (lavapipe, WARP, SwiftShader).
    pub(crate) fn is_software(&self) -> bool {
        self.info.device_type == wgpu::DeviceType::Cpu
    }

    pub fn description(&self) -> String {
        format!("{} ({:?}, {:?})", self.info.name, self.info.backend, self.info.device_type)
    }

    /// Record into the pending encoder (in call order across threads: each op's inputs
    /// were recorded before it), submitting every `SUBMIT_EVERY` ops.
    fn encode(&self, f: impl FnOnce(&mut wgpu::CommandEncoder)) {
        let mut p = self.pending.lock();
        let enc = p.0.get_or_insert_with(|| self.device.create_command_encoder(&Default::default()));
        f(enc);
        p.1 += 1;
        if p.1 >= SUBMIT_EVERY {
            let enc = p.0.take().expect("just recorded");
            p.1 = 0;
            self.queue.submit([enc.finish()]);
        }
    }

    /// Submit whatever is pending.
    fn flush(&self) {
        let mut p = self.pending.lock();
        if let Some(enc) = p.0.take() {
            p.1 = 0;
            self.queue.submit([enc.finish()]);
        }
    }

    pub(crate) fn alloc(&self, len: usize) -> GpuBuf {
        // wgpu rejects zero-sized bindings; an empty tensor keeps a 4-byte buffer.
        let buf = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size: (len.max(1) * 4) as u64,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        GpuBuf { buf, len }
    }

    fn upload_slice(&self, data: &[f32]) -> GpuBuf {
        let bytes: &[u8] = if data.is_empty() { &[0u8; 4] } else { bytemuck::cast_slice(data) };
        let buf = self.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: None,
            contents: bytes,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
        });
        GpuBuf { buf, len: data.len() }
    }

    /// Copy a whole buffer back to the host: the one place that waits for the queue.
    fn read(&self, b: &GpuBuf) -> Result<Vec<f32>> {
        if b.len == 0 {
            return Ok(Vec::new());
        }
        let size = (b.len * 4) as u64;
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("fluxrs readback"),
            size,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        self.encode(|enc| enc.copy_buffer_to_buffer(&b.buf, 0, &staging, 0, size));
        self.flush();
        let slice = staging.slice(..);
        let (tx, rx) = std::sync::mpsc::channel();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        self.device.poll(wgpu::PollType::wait_indefinitely()).map_err(|e| Error::Device { op: "gpu", msg: format!("waiting for the GPU failed: {e}") })?;
        rx.recv()
            .map_err(|_| Error::Device { op: "gpu", msg: "the GPU dropped a read-back".into() })?
            .map_err(|e| Error::Device { op: "gpu", msg: format!("reading GPU memory failed: {e}") })?;
        let view = slice.get_mapped_range().map_err(|e| Error::Device { op: "gpu", msg: format!("reading GPU memory failed: {e}") })?;
        let v = bytemuck::cast_slice::<u8, f32>(&view).to_vec();
        drop(view);
        staging.unmap();
        Ok(v)
    }

    /// The compute pipeline of a WGSL source, compiled once per process.
    fn pipeline(&self, name: &'static str, src: &str) -> Arc<wgpu::ComputePipeline> {
        let mut cache = self.pipelines.lock();
        cache
            .entry(name)
            .or_insert_with(|| {
                let module = self.device.create_shader_module(wgpu::ShaderModuleDescriptor { label: Some(name), source: wgpu::ShaderSource::Wgsl(src.into()) });
                Arc::new(self.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                    label: Some(name),
                    layout: None,
                    module: &module,
                    entry_point: Some("main"),
                    compilation_options: Default::default(),
                    cache: None,
                }))
            })
            .clone()
    }

    /// Queue one dispatch of `pipeline` over `groups` workgroups. Binding 0 is the u32
    /// metadata (shapes, strides, op codes); then `bufs` in order, the last one written.
    fn launch(&self, name: &'static str, src: &str, meta: &[u32], bufs: &[&wgpu::Buffer], groups: [u32; 3]) {
        let pipe = self.pipeline(name, src);
        let meta = self.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("fluxrs meta"),
            contents: bytemuck::cast_slice(meta),
            usage: wgpu::BufferUsages::STORAGE,
        });
        let mut entries = vec![wgpu::BindGroupEntry { binding: 0, resource: meta.as_entire_binding() }];
        for (i, b) in bufs.iter().enumerate() {
            entries.push(wgpu::BindGroupEntry { binding: i as u32 + 1, resource: b.as_entire_binding() });
        }
        let bind = self.device.create_bind_group(&wgpu::BindGroupDescriptor { label: None, layout: &pipe.get_bind_group_layout(0), entries: &entries });
        self.encode(|enc| {
            let mut pass = enc.begin_compute_pass(&Default::default());
            pass.set_pipeline(&pipe);
            pass.set_bind_group(0, &bind, &[]);
            pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
        });
    }

    /// Workgroups for `n` threads of a 1-D kernel with 256 threads per group, folded into
    /// two dimensions past the per-dimension limit (kernels rebuild the index from both).
    fn groups_1d(&self, n: usize) -> [u32; 3] {
        let g = n.div_ceil(256) as u64;
        let maxg = self.max_workgroups as u64;
        if g <= maxg {
            [g as u32, 1, 1]
        } else {
            [maxg as u32, g.div_ceil(maxg) as u32, 1]
        }
    }
}

fn gpu_storage(t: &Tensor) -> Arc<RwLock<Storage>> {
    t.0.storage.clone()
}

/// Run `f` on the GPU buffer behind `t` (read lock held).
fn with_buf<R>(t: &Tensor, f: impl FnOnce(&GpuBuf) -> R) -> R {
    let s = gpu_storage(t);
    let g = s.read_recursive();
    match &*g {
        Storage::Gpu(b) => f(b),
        _ => unreachable!("with_buf on a CPU tensor"),
    }
}

/// A fresh contiguous float32 GPU tensor of `shape` around `buf`.
fn wrap(buf: GpuBuf, shape: &[usize]) -> Tensor {
    Tensor::from_parts(Arc::new(RwLock::new(Storage::Gpu(buf))), Layout::contiguous(shape), DType::F32, None)
}

pub(crate) fn upload(t: &Tensor) -> Result<Tensor> {
    if t.dtype() != DType::F32 {
        return Err(Error::DType { op: "gpu", msg: format!("the GPU backend holds float32 only, got {}; cast first", t.dtype()) });
    }
    let g = context()?;
    let v = t.to_vec::<f32>()?;
    Ok(wrap(g.upload_slice(&v), t.shape()))
}

pub(crate) fn download(t: &Tensor) -> Result<Tensor> {
    let g = context()?;
    let c = kernels::contiguous(t)?;
    let v = with_buf(&c, |b| g.read(b))?;
    let off = c.layout().offset;
    Tensor::from_vec(v[off..off + c.numel()].to_vec(), t.shape())
}

/// `dst[...] = src` in place (same shape up to broadcasting), either on the GPU.
pub(crate) fn assign(dst: &Tensor, src: &Tensor) -> Result<()> {
    if !dst.is_gpu() {
        return dst.assign(&download(src)?);
    }
    let src = src.to_device(crate::Device::Gpu)?;
    if src.dtype() != DType::F32 {
        return Err(Error::DType { op: "assign", msg: format!("cannot assign {} data to a float32 GPU tensor", src.dtype()) });
    }
    let src = src.broadcast_to(dst.shape())?;
    if dst.numel() == 0 {
        return Ok(());
    }
    // A packed copy of the source first: it also settles a source aliasing the destination.
    let full = kernels::copy(&src)?;
    if !dst.is_contiguous() {
        // a strided view: element by element into its places
        return kernels::write_strided(dst, &full);
    }
    // a contiguous run of the buffer (the whole of it, or a view of some rows): one copy
    let bytes = (dst.numel() * 4) as u64;
    let g = context()?;
    with_buf(&full, |s| with_buf(dst, |d| g.encode(|enc| enc.copy_buffer_to_buffer(&s.buf, 0, &d.buf, (dst.layout().offset * 4) as u64, bytes))));
    Ok(())
}

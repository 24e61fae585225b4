//! Tensors over foreign memory (`Storage::Foreign`, what a DLPack import builds): kernels
//! read it in place, writes land in the lender's buffer and its writes show in the tensor,
//! the lender's owner is dropped exactly when the last tensor on it goes, and bad buffers or
//! layouts are errors, never panics.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use fluxrs_core::layout::Layout;
use fluxrs_core::optim::{update, Adam, Descent, ParamState, Rule};
use fluxrs_core::{grad, pop_watch, push_watch, DType, Foreign, Tensor};

/// Memory that a test lends to tensors, as numpy lends an array's buffer: the test keeps a
/// raw pointer to read and write it from "the other side"; `Owner`'s drop frees it and
/// records that it was given back.
struct Lent<T: 'static> {
    ptr: *mut T,
    len: usize,
    returned: Arc<AtomicBool>,
}

struct Owner<T: 'static> {
    ptr: *mut T,
    len: usize,
    returned: Arc<AtomicBool>,
}

// SAFETY (test only): the owner only frees the buffer, once, on drop.
unsafe impl<T> Send for Owner<T> {}
unsafe impl<T> Sync for Owner<T> {}

impl<T> Drop for Owner<T> {
    fn drop(&mut self) {
        // SAFETY: made from a boxed slice of `len` elements in `lend`, freed only here.
        drop(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(self.ptr, self.len)) });
        self.returned.store(true, Ordering::SeqCst);
    }
}

fn lend<T: Copy + 'static>(data: Vec<T>) -> (Lent<T>, Owner<T>) {
    let len = data.len();
    let ptr = Box::into_raw(data.into_boxed_slice()).cast::<T>();
    let returned = Arc::new(AtomicBool::new(false));
    (Lent { ptr, len, returned: returned.clone() }, Owner { ptr, len, returned })
}

impl<T: Copy> Lent<T> {
    /// The lender's view of its buffer (valid while a tensor holds the owner).
    fn read(&self) -> Vec<T> {
        (0..self.len).map(|i| unsafe { *self.ptr.add(i) }).collect()
    }
    fn write(&self, i: usize, v: T) {
        assert!(i < self.len);
        unsafe { *self.ptr.add(i) = v };
    }
    fn returned(&self) -> bool {
        self.returned.load(Ordering::SeqCst)
    }
}

fn foreign<T: Copy + Send + Sync + 'static>(lent: &Lent<T>, owner: Owner<T>, dtype: DType) -> Foreign {
    // SAFETY: the owner keeps the buffer of `len` elements alive until it is dropped.
    unsafe { Foreign::new(lent.ptr.cast(), lent.len, dtype, Box::new(owner)) }.unwrap()
}

fn layout(shape: &[usize], strides: &[isize], offset: usize) -> Layout {
    Layout { shape: shape.to_vec(), strides: strides.to_vec(), offset }
}

fn iota_f32(n: usize) -> Vec<f32> {
    (0..n).map(|i| i as f32).collect()
}

#[test]
fn kernels_read_foreign_memory_as_they_read_their_own() {
    let (lent, owner) = lend(iota_f32(6));
    let x = Tensor::from_foreign(foreign(&lent, owner, DType::F32), Layout::contiguous(&[2, 3])).unwrap();
    let own = Tensor::from_vec(iota_f32(6), &[2, 3]).unwrap();
    assert_eq!(x.dtype(), DType::F32);
    assert_eq!(x.to_vec::<f32>().unwrap(), own.to_vec::<f32>().unwrap());
    let w = Tensor::from_vec(vec![1.0f32, -1.0, 0.5, 2.0, 0.0, 1.0], &[3, 2]).unwrap();
    assert_eq!(x.matmul(&w).unwrap().to_vec::<f32>().unwrap(), own.matmul(&w).unwrap().to_vec::<f32>().unwrap());
    assert_eq!(x.exp().unwrap().to_vec::<f32>().unwrap(), own.exp().unwrap().to_vec::<f32>().unwrap());
    assert_eq!(x.transpose(0, 1).unwrap().matmul(&x).unwrap().to_vec_f64(), own.transpose(0, 1).unwrap().matmul(&own).unwrap().to_vec_f64());
    assert_eq!(x.sum_all().unwrap().item().unwrap(), 15.0);
}

#[test]
fn writes_show_on_both_sides() {
    let (lent, owner) = lend(vec![1.0f64, 2.0, 3.0, 4.0]);
    let x = Tensor::from_foreign(foreign(&lent, owner, DType::F64), Layout::contiguous(&[2, 2])).unwrap();
    x.with_slice_mut::<f64, _>(|s| s[0] = 10.0).unwrap();
    x.select(0, 1).unwrap().assign(&Tensor::scalar(7.0f64)).unwrap();
    assert_eq!(lent.read(), vec![10.0, 2.0, 7.0, 7.0]);
    lent.write(1, -2.0);
    assert_eq!(x.to_vec::<f64>().unwrap(), vec![10.0, -2.0, 7.0, 7.0]);
    // an op's result is this crate's own memory: writing it leaves the lender alone
    let y = x.scale(1.0).unwrap();
    y.assign(&Tensor::scalar(0.0f64)).unwrap();
    assert_eq!(lent.read(), vec![10.0, -2.0, 7.0, 7.0]);
}

#[test]
fn a_strided_view_with_an_offset_reads_and_writes_its_own_elements() {
    // rows 1..4, columns ::2 of a (4, 5) buffer: elements 5, 7, 9, 10, 12, 14, 15, 17, 19
    let (lent, owner) = lend(iota_f32(20));
    let x = Tensor::from_foreign(foreign(&lent, owner, DType::F32), layout(&[3, 3], &[5, 2], 5)).unwrap();
    assert!(!x.is_contiguous());
    assert_eq!(x.to_vec::<f32>().unwrap(), vec![5.0, 7.0, 9.0, 10.0, 12.0, 14.0, 15.0, 17.0, 19.0]);
    assert_eq!(x.sum_all().unwrap().item().unwrap(), 108.0);
    x.assign(&Tensor::scalar(-1.0f32)).unwrap();
    let after = lent.read();
    for (i, v) in after.iter().enumerate() {
        let inside = i >= 5 && (i % 5) % 2 == 0;
        assert_eq!(*v, if inside { -1.0 } else { i as f32 }, "element {i}");
    }
    // transposed (column-major) foreign memory
    let (lent, owner) = lend(iota_f32(6));
    let t = Tensor::from_foreign(foreign(&lent, owner, DType::F32), layout(&[3, 2], &[1, 3], 0)).unwrap();
    assert_eq!(t.to_vec::<f32>().unwrap(), vec![0.0, 3.0, 1.0, 4.0, 2.0, 5.0]);
}

#[test]
fn the_owner_is_dropped_with_the_last_tensor_on_the_buffer() {
    let (lent, owner) = lend(iota_f32(4));
    let x = Tensor::from_foreign(foreign(&lent, owner, DType::F32), Layout::contiguous(&[4])).unwrap();
    let view = x.slice(0, 1, 3, 1).unwrap();
    let detached = x.detach();
    let computed = x.exp().unwrap();
    drop(x);
    drop(detached);
    assert!(!lent.returned(), "a view still reads the buffer");
    assert_eq!(view.to_vec::<f32>().unwrap(), vec![1.0, 2.0]);
    drop(view);
    assert!(lent.returned());
    assert_eq!(computed.to_vec::<f32>().unwrap().len(), 4); // results never borrowed it
}

#[test]
fn gradients_flow_through_foreign_memory_and_never_into_it() {
    let (lent, owner) = lend(vec![1.0f64, -2.0, 3.0]);
    let x = Tensor::from_foreign(foreign(&lent, owner, DType::F64), Layout::contiguous(&[3])).unwrap();
    push_watch(std::slice::from_ref(&x));
    // x reaches the loss three times, through slices that accumulate their gradients in place
    let loss = x.mul(&x).unwrap().sum_all().unwrap().add(&x.slice(0, 0, 2, 1).unwrap().sum_all().unwrap()).unwrap().add(&x.select(0, 2).unwrap()).unwrap();
    pop_watch();
    let g = grad(&loss, std::slice::from_ref(&x), None).unwrap()[0].clone().unwrap();
    assert_eq!(g.to_vec::<f64>().unwrap(), vec![3.0, -3.0, 7.0]);
    assert!(!g.same_storage(&x));
    // a foreign seed is read, not accumulated into
    let (seed_lent, seed_owner) = lend(vec![1.0f64, 1.0, 1.0]);
    let seed = Tensor::from_foreign(foreign(&seed_lent, seed_owner, DType::F64), Layout::contiguous(&[3])).unwrap();
    push_watch(std::slice::from_ref(&x));
    let y = x.scale(2.0).unwrap();
    let out = y.add(&y.slice(0, 0, 3, 1).unwrap()).unwrap();
    pop_watch();
    let g = grad(&out, std::slice::from_ref(&x), Some(&seed)).unwrap()[0].clone().unwrap();
    assert_eq!(g.to_vec::<f64>().unwrap(), vec![4.0, 4.0, 4.0]);
    assert_eq!(seed_lent.read(), vec![1.0, 1.0, 1.0]);
    assert_eq!(lent.read(), vec![1.0, -2.0, 3.0]);
}

#[test]
fn optimisers_update_foreign_parameters_in_place() {
    for chain in [vec![Rule::Descent(Descent { eta: 0.5 })], vec![Rule::Adam(Adam { eta: 0.1, beta: (0.9, 0.999), epsilon: 1e-8 })]] {
        let (lent, owner) = lend(vec![1.0f32, 2.0, 3.0]);
        let x = Tensor::from_foreign(foreign(&lent, owner, DType::F32), Layout::contiguous(&[3])).unwrap();
        let own = Tensor::from_vec(vec![1.0f32, 2.0, 3.0], &[3]).unwrap();
        let dx = Tensor::from_vec(vec![1.0f32, -1.0, 0.5], &[3]).unwrap();
        let (mut s1, mut s2) = (ParamState::init(&chain, &x), ParamState::init(&chain, &own));
        update(&chain, &[x.clone(), own.clone()], &[dx.clone(), dx], &mut [&mut s1, &mut s2]).unwrap();
        let want = own.to_vec::<f32>().unwrap();
        assert_ne!(want, vec![1.0, 2.0, 3.0]);
        assert_eq!(lent.read(), want, "{chain:?}");
    }
}

#[test]
fn a_clone_of_foreign_storage_is_an_owned_copy() {
    let (lent, owner) = lend(vec![1.5f32, 2.5]);
    let storage = fluxrs_core::Storage::Foreign(foreign(&lent, owner, DType::F32));
    let copy = storage.clone();
    assert!(!copy.is_foreign() && copy.dtype() == DType::F32 && copy.len() == 2);
    lent.write(0, 9.0);
    let t = Tensor::from_storage(copy, &[2]).unwrap();
    assert_eq!(t.to_vec::<f32>().unwrap(), vec![1.5, 2.5]);
    drop(storage);
    assert!(lent.returned());
}

#[test]
fn misaligned_null_and_oversized_buffers_are_refused() {
    let (lent, owner) = lend(vec![0.0f64; 4]);
    let misaligned = unsafe { lent.ptr.cast::<u8>().add(2) };
    let err = unsafe { Foreign::new(misaligned, 2, DType::F32, Box::new(owner)) }.unwrap_err();
    assert!(err.to_string().contains("not aligned to 4 bytes"), "{err}");
    assert!(lent.returned(), "a refused buffer is handed back at once");
    assert!(unsafe { Foreign::new(std::ptr::null_mut(), 3, DType::F32, Box::new(())) }.is_err());
    assert!(unsafe { Foreign::new(std::ptr::null_mut(), usize::MAX / 2, DType::F64, Box::new(())) }.is_err());
    // an empty buffer needs no memory at all
    let empty = unsafe { Foreign::new(std::ptr::null_mut(), 0, DType::F64, Box::new(())) }.unwrap();
    let t = Tensor::from_foreign(empty, Layout::contiguous(&[0, 3])).unwrap();
    assert_eq!((t.shape(), t.to_vec::<f64>().unwrap()), (&[0usize, 3][..], vec![]));
}

#[test]
fn layouts_outside_the_buffer_or_overlapping_are_refused() {
    for (what, l) in [
        ("past the end", layout(&[2, 3], &[3, 1], 1)),
        ("a negative stride", layout(&[3], &[-1], 2)),
        ("a broadcast axis", layout(&[3, 2], &[0, 1], 0)),
        ("overlapping rows", layout(&[2, 3], &[2, 1], 0)),
        ("strides for another rank", layout(&[6], &[1, 1], 0)),
    ] {
        let (lent, owner) = lend(iota_f32(6));
        let err = Tensor::from_foreign(foreign(&lent, owner, DType::F32), l).unwrap_err();
        assert!(matches!(err, fluxrs_core::Error::Shape { op: "from_foreign", .. }), "{what}: {err}");
        assert!(lent.returned(), "{what}: the refused buffer is handed back");
    }
}

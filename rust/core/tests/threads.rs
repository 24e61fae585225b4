//! Recording state is per thread: concurrent differentiation on two threads gives the
//! same results as sequential, and watching on one thread records nothing on another.

mod common;

use std::sync::{mpsc, Arc, Barrier};
use std::thread;

use common::*;
use fluxrs_core::{backprop, grad, pop_watch, push_watch, Tensor};

fn f_a(x: &Tensor, w: &Tensor) -> Tensor {
    x.matmul(w).unwrap().tanh().unwrap().softmax(1).unwrap().log().unwrap().sum_all().unwrap()
}

fn f_b(x: &Tensor, w: &Tensor) -> Tensor {
    x.mul(w).unwrap().sigmoid().unwrap().logsumexp(Some(&[0]), false).unwrap().exp().unwrap().sum_all().unwrap()
}

/// 100 gradients of `f` at inputs derived from `seed`, as raw values. Each step makes
/// fresh tensors, watches them, differentiates and checks that nothing stays recorded.
fn run(f: fn(&Tensor, &Tensor) -> Tensor, seed: u64, sx: &[usize], sw: &[usize]) -> Vec<Vec<f64>> {
    let mut rng = Rng::new(seed);
    let mut out = Vec::new();
    for _ in 0..100 {
        let x = rand(&mut rng, sx);
        let w = rand(&mut rng, sw);
        push_watch(&[x.clone(), w.clone()]);
        let y = f(&x, &w);
        pop_watch();
        let g = grad(&y, &[x.clone(), w.clone()], None).unwrap();
        assert_eq!(backprop::watch_depth(), 0);
        let mut v = vals(&y);
        for gi in g {
            v.extend(vals(&gi.unwrap()));
        }
        out.push(v);
    }
    out
}

#[test]
fn concurrent_gradients_match_sequential() {
    let seq_a = run(f_a, 1, &[4, 3], &[3, 5]);
    let seq_b = run(f_b, 2, &[6, 2], &[2]);
    let barrier = Arc::new(Barrier::new(2));
    let (b1, b2) = (barrier.clone(), barrier);
    let ta = thread::spawn(move || {
        b1.wait();
        run(f_a, 1, &[4, 3], &[3, 5])
    });
    let tb = thread::spawn(move || {
        b2.wait();
        run(f_b, 2, &[6, 2], &[2])
    });
    let (par_a, par_b) = (ta.join().unwrap(), tb.join().unwrap());
    // Bit-for-bit: the same kernels on the same data.
    assert_eq!(seq_a, par_a);
    assert_eq!(seq_b, par_b);
}

#[test]
fn concurrent_gradients_on_shared_input() {
    // Both threads differentiate w.r.t. the same shared tensor at the same time.
    let mut rng = Rng::new(3);
    let shared = rand(&mut rng, &[3, 3]);
    let expect = |s: &Tensor, k: f64| -> Vec<f64> {
        push_watch(std::slice::from_ref(s));
        let y = s.scale(k).unwrap().exp().unwrap().sum_all().unwrap();
        pop_watch();
        vals(&grad(&y, std::slice::from_ref(s), None).unwrap()[0].clone().unwrap())
    };
    let (ea, eb) = (expect(&shared, 1.0), expect(&shared, -2.0));
    let handles: Vec<_> = [1.0, -2.0]
        .into_iter()
        .map(|k| {
            let s = shared.clone();
            thread::spawn(move || (0..100).map(|_| expect(&s, k)).collect::<Vec<_>>())
        })
        .collect();
    let res: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert!(res[0].iter().all(|g| *g == ea));
    assert!(res[1].iter().all(|g| *g == eb));
}

#[test]
fn watching_on_one_thread_does_not_record_on_another() {
    let x = t(&[1.0, 2.0, 3.0], &[3]);
    let (to_reader, reader_rx) = mpsc::channel::<()>();
    let (to_watcher, watcher_rx) = mpsc::channel::<()>();
    let xw = x.clone();
    let watcher = thread::spawn(move || {
        push_watch(std::slice::from_ref(&xw));
        let y = xw.mul(&xw).unwrap();
        assert!(y.has_node(), "the watching thread records");
        to_reader.send(()).unwrap();
        // Keep the watch open until the reader is done.
        watcher_rx.recv().unwrap();
        let z = xw.exp().unwrap();
        assert!(z.has_node());
        pop_watch();
        let g = grad(&y.sum_all().unwrap(), std::slice::from_ref(&xw), None).unwrap();
        vals(&g[0].clone().unwrap())
    });
    let xr = x.clone();
    let reader = thread::spawn(move || {
        reader_rx.recv().unwrap();
        // x is watched by the other thread right now: nothing records here.
        assert_eq!(backprop::watch_depth(), 0);
        let outs = [
            xr.mul(&xr).unwrap(),
            xr.exp().unwrap(),
            xr.sum_all().unwrap(),
            xr.reshape(&[1, 3]).unwrap(),
            xr.matmul(&xr).unwrap(),
            xr.softmax(0).unwrap(),
            xr.slice(0, 0, 2, 1).unwrap(),
        ];
        let none = outs.iter().all(|o| !o.has_node());
        to_watcher.send(()).unwrap();
        none
    });
    assert!(reader.join().unwrap(), "an op in a non-watching thread recorded a node");
    assert_close(&watcher.join().unwrap(), &[2.0, 4.0, 6.0]);
    // And on this (main) thread, which never watched, nothing records either.
    assert!(!x.mul(&x).unwrap().has_node());
}

#[test]
fn watch_state_is_thread_local() {
    let x = t(&[1.0], &[1]);
    push_watch(std::slice::from_ref(&x));
    let depth_elsewhere = thread::spawn(backprop::watch_depth).join().unwrap();
    assert_eq!(depth_elsewhere, 0);
    assert_eq!(backprop::watch_depth(), 1);
    // A no_grad scope on another thread does not pause this one.
    let xc = x.clone();
    thread::spawn(move || fluxrs_core::no_grad(|| assert!(!xc.exp().unwrap().has_node()))).join().unwrap();
    assert!(x.exp().unwrap().has_node());
    pop_watch();
    assert!(!x.exp().unwrap().has_node());
}

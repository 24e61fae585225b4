//! Vectorisable exp, tanh and sigmoid, and the runtime SIMD dispatch that lets the compiler
//! vectorise loops over them.
//!
//! libm's `expf`/`tanhf` are scalar calls (about 4.5 and 18 ns each here), and they dominated
//! the GRU and every sigmoid/tanh layer. The float32 forms below are branch-free polynomials
//! (Cephes' expf and tanhf coefficients, within 2 ulp of libm over the whole range), so a loop
//! over them compiles to AVX-512 or AVX2 code when run inside [`simd`]. float64 keeps libm:
//! it is the precise path for gradient checks, not the fast one.

use std::sync::OnceLock;

/// Runs `f` compiled for the best instruction set this CPU has (AVX-512, AVX2+FMA, or the
/// baseline), so plain loops inside it are auto-vectorised for that target. Mark the closure
/// `#[inline(always)]`: only code inlined into the dispatched function gets its instruction
/// set, and LLVM declines to inline a large closure body on its own (it then runs as SSE2).
#[inline(always)]
pub fn simd<R>(f: impl FnOnce() -> R) -> R {
    static ARCH: OnceLock<pulp::Arch> = OnceLock::new();
    ARCH.get_or_init(pulp::Arch::new).dispatch(f)
}

/// `f` folded over `v` in eight independent accumulators, so the loop vectorises instead
/// of waiting on one add after another (a float fold is not reassociated by the compiler).
#[inline(always)]
pub(crate) fn fold8<T: crate::storage::Elem>(v: &[T], init: T, f: impl Fn(T, T) -> T) -> T {
    let mut acc = [init; 8];
    let chunks = v.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for k in 0..8 {
            acc[k] = f(acc[k], c[k]);
        }
    }
    let mut r = rest.iter().fold(init, |a, &b| f(a, b));
    for a in acc {
        r = f(r, a);
    }
    r
}

/// exp, tanh and sigmoid as an element type computes them in hot loops.
pub trait FastMath: Copy {
    fn fast_exp(self) -> Self;
    fn fast_tanh(self) -> Self;
    fn fast_sigmoid(self) -> Self;
}

impl FastMath for f64 {
    #[inline(always)]
    fn fast_exp(self) -> f64 {
        self.exp()
    }
    #[inline(always)]
    fn fast_tanh(self) -> f64 {
        self.tanh()
    }
    #[inline(always)]
    fn fast_sigmoid(self) -> f64 {
        // Two forms so neither overflows: exp of a non-positive number only.
        if self >= 0.0 {
            1.0 / (1.0 + (-self).exp())
        } else {
            let e = self.exp();
            e / (1.0 + e)
        }
    }
}

impl FastMath for f32 {
    #[inline(always)]
    fn fast_exp(self) -> f32 {
        exp_f32(self)
    }
    #[inline(always)]
    fn fast_tanh(self) -> f32 {
        tanh_f32(self)
    }
    #[inline(always)]
    fn fast_sigmoid(self) -> f32 {
        // exp(-x) = inf for x < -88.7 gives exactly 0, and exp(-x) -> 0 gives 1: no branch needed.
        1.0 / (1.0 + exp_f32(-self))
    }
}

/// exp(x) for float32: x = n ln2 + r with |r| <= ln2/2, a degree-6 polynomial for e^r, and
/// 2^n built from exponent bits (in two halves, so n = 128 and subnormal results are exact).
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // 1.5 * 2^23: adding it rounds to an integer held in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    // Beyond these, e^x is inf or 0 anyway; the clamp keeps n's two halves in range.
    let xc = x.clamp(-104.0, 89.0);
    let t = xc * LOG2E + ROUND;
    let n = t - ROUND;
    let ni = (t.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    let r = xc - n * LN2_HI - n * LN2_LO;
    let p = 1.987_569_1e-4_f32;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 5e-1;
    let y = p * r * r + r + 1.0;
    let n1 = ni >> 1;
    let n2 = ni - n1;
    let s1 = f32::from_bits(((n1 + 127) as u32) << 23);
    let s2 = f32::from_bits(((n2 + 127) as u32) << 23);
    let e = y * s1 * s2;
    // clamp() turned NaN into a number: put it back, or a non-finite loss goes unseen.
    if x.is_nan() {
        x
    } else {
        e
    }
}

/// tanh(x) for float32: Cephes' odd polynomial below |x| = 0.625 (where 1 - 2/(e^2x + 1)
/// would lose relative precision), that formula above.
#[inline(always)]
pub fn tanh_f32(x: f32) -> f32 {
    let a = x.abs();
    let z = x * x;
    let p = -5.704_988_7e-3_f32;
    let p = p * z + 2.063_909e-2;
    let p = p * z - 5.373_971_6e-2;
    let p = p * z + 1.333_144_2e-1;
    let p = p * z - 3.333_328e-1;
    let small = p * z * x + x;
    let big = 1.0 - 2.0 / (exp_f32(2.0 * a) + 1.0);
    // tanh is odd: the sign of x, also for -0 (where the polynomial gives +0).
    if a < 0.625 { small } else { big }.copysign(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ulps(a: f32, b: f32) -> u32 {
        if a == b {
            return 0;
        }
        (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs() as u32
    }

    /// Every 997th float32 bit pattern across the finite range, plus edges.
    fn samples(lo: f32, hi: f32) -> Vec<f32> {
        let mut v: Vec<f32> = (0..u32::MAX / 997).map(|i| f32::from_bits(i * 997)).filter(|x| x.is_finite()).collect();
        v.extend(v.clone().iter().map(|x| -x));
        v.retain(|x| *x >= lo && *x <= hi);
        v.extend([0.0, -0.0, lo, hi, 1e-30, -1e-30, 0.625, -0.625, 88.72, -87.33]);
        v
    }

    #[test]
    fn exp_is_within_two_ulp_of_libm_where_normal() {
        let mut worst = 0;
        for x in samples(-87.0, 88.7) {
            worst = worst.max(ulps(exp_f32(x), x.exp()));
        }
        assert!(worst <= 2, "worst error {worst} ulp");
    }

    #[test]
    fn exp_edges() {
        assert_eq!(exp_f32(0.0), 1.0);
        assert_eq!(exp_f32(89.0), f32::INFINITY);
        assert_eq!(exp_f32(f32::INFINITY), f32::INFINITY);
        assert_eq!(exp_f32(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_f32(-200.0), 0.0);
        assert!(exp_f32(f32::NAN).is_nan());
        // Subnormal results: right to within a few units of the smallest subnormal.
        let (a, b) = (exp_f32(-100.0), (-100.0f32).exp());
        assert!((a - b).abs() <= 4.0 * f32::from_bits(1), "{a} vs {b}");
    }

    #[test]
    fn tanh_is_within_two_ulp_of_libm() {
        let mut worst = (0, 0.0);
        for x in samples(-20.0, 20.0) {
            let u = ulps(tanh_f32(x), x.tanh());
            if u > worst.0 {
                worst = (u, x);
            }
        }
        assert!(worst.0 <= 2, "worst error {} ulp at {}", worst.0, worst.1);
        assert_eq!(tanh_f32(1e4), 1.0);
        assert_eq!(tanh_f32(-1e4), -1.0);
        assert_eq!(tanh_f32(f32::INFINITY), 1.0);
        assert!(tanh_f32(f32::NAN).is_nan());
        assert_eq!(tanh_f32(-0.0).to_bits(), (-0.0f32).to_bits());
    }

    #[test]
    fn sigmoid_matches_the_float64_formula() {
        for x in samples(-80.0, 80.0) {
            let want = 1.0 / (1.0 + (-(x as f64)).exp());
            let got = x.fast_sigmoid() as f64;
            assert!((got - want).abs() <= 6e-7 * want, "sigmoid({x}) = {got}, want {want}");
        }
        assert_eq!(1000f32.fast_sigmoid(), 1.0);
        assert_eq!((-1000f32).fast_sigmoid(), 0.0);
        assert!(f32::NAN.fast_sigmoid().is_nan());
    }

    #[test]
    fn dispatched_loops_give_the_same_answers() {
        let xs: Vec<f32> = (0..1000).map(|i| (i as f32 - 500.0) * 0.05).collect();
        let mut v = xs.clone();
        simd(
            #[inline(always)]
            || v.iter_mut().for_each(|x| *x = x.fast_tanh()),
        );
        for (a, b) in v.iter().zip(&xs) {
            assert_eq!(*a, tanh_f32(*b));
        }
    }
}

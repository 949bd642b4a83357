//! Comparing a result with the reference interpreter's, with dtype-aware tolerances (`kc run --check`).
//!
//! Integers and booleans must be equal. Floats may differ by the rounding of the result's dtype and by the
//! order of summation (the tile programs sum in blocks, per core, and the host cube routine in its own
//! order): element `i` passes when `|got - want| <= rtol * |want| + rtol * absmax(want)`, with `rtol` 1e-4
//! for f32, 1/512 for f16 and 1/64 for bf16 (a few units in the last place of each format), and the
//! `absmax` term standing for the cancellation in long sums. NaN must meet NaN, an infinity the same
//! infinity.

use kc_ir::{DType, Tensor};

/// The largest differences between a result and its reference.
#[derive(Clone, Debug, PartialEq)]
pub struct Comparison {
    pub max_abs: f64,
    pub max_rel: f64,
    /// Elements beyond the tolerance (and the first one's index).
    pub bad: usize,
    pub first_bad: Option<usize>,
    /// Whether shapes and dtypes agree.
    pub same_shape: bool,
}

impl Comparison {
    pub fn ok(&self) -> bool {
        self.same_shape && self.bad == 0
    }
}

/// The relative tolerance of a dtype (0 for integers and booleans).
pub fn rtol(d: DType) -> f64 {
    match d {
        DType::F32 => 1e-4,
        DType::F16 => 1.0 / 512.0,
        DType::BF16 => 1.0 / 64.0,
        DType::I32 | DType::Bool => 0.0,
    }
}

/// Compares `got` with the reference `want`.
pub fn compare(got: &Tensor, want: &Tensor) -> Comparison {
    compare_within(got, want, 1.0)
}

/// [`compare`] with the `absmax` term scaled by `frac` (the tests use tighter or looser ones).
pub fn compare_within(got: &Tensor, want: &Tensor, frac: f64) -> Comparison {
    compare_with(got, want, rtol(want.dtype()), frac)
}

/// [`compare_within`] with the relative tolerance `rt` instead of the dtype's (bf16's for a result behind a
/// bf16 rounding that may land one unit apart).
pub fn compare_with(got: &Tensor, want: &Tensor, rt: f64, frac: f64) -> Comparison {
    let same_shape = got.shape == want.shape && got.dtype() == want.dtype();
    let mut c = Comparison { max_abs: 0.0, max_rel: 0.0, bad: 0, first_bad: None, same_shape };
    if !same_shape {
        return c;
    }
    let (g, w) = (got.to_f64_vec(), want.to_f64_vec());
    let absmax = w.iter().filter(|x| x.is_finite()).fold(0.0f64, |a, x| a.max(x.abs()));
    for (i, (a, b)) in g.iter().zip(&w).enumerate() {
        let ok = if a.is_nan() || b.is_nan() {
            a.is_nan() && b.is_nan()
        } else if a.is_infinite() || b.is_infinite() {
            a == b
        } else {
            let d = (a - b).abs();
            c.max_abs = c.max_abs.max(d);
            if *b != 0.0 {
                c.max_rel = c.max_rel.max(d / b.abs());
            } else if d > 0.0 {
                c.max_rel = f64::INFINITY;
            }
            d <= rt * b.abs() + rt * absmax * frac
        };
        if !ok {
            c.bad += 1;
            c.first_bad.get_or_insert(i);
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tolerances_follow_the_dtype() {
        let want = Tensor::from_f32(vec![3], vec![1.0, 2.0, 100.0]).unwrap();
        let close = Tensor::from_f32(vec![3], vec![1.0, 2.0001, 100.0]).unwrap();
        let far = Tensor::from_f32(vec![3], vec![1.0, 2.5, 100.0]).unwrap();
        assert!(compare(&close, &want).ok());
        let c = compare(&far, &want);
        assert!(!c.ok());
        assert_eq!((c.bad, c.first_bad), (1, Some(1)));
        assert!((c.max_abs - 0.5).abs() < 1e-9 && (c.max_rel - 0.25).abs() < 1e-9);
        let i = Tensor::from_i32(vec![2], vec![1, 2]).unwrap();
        let j = Tensor::from_i32(vec![2], vec![1, 3]).unwrap();
        assert!(compare(&i, &i).ok());
        assert!(!compare(&j, &i).ok());
        let nan = Tensor::from_f32(vec![1], vec![f32::NAN]).unwrap();
        let one = Tensor::from_f32(vec![1], vec![1.0]).unwrap();
        assert!(compare(&nan, &nan).ok());
        assert!(!compare(&nan, &one).ok());
        assert!(!compare(&one, &Tensor::from_f32(vec![1, 1], vec![1.0]).unwrap()).ok());
    }
}

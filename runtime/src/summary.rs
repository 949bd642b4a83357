//! One-line summaries of result tensors, for the terminal: deterministic, and short enough to compare by eye.
//!
//! `y: bf16[8, 64] sum=-1.23457 absmax=2.5 [0.125, -0.5, 1, 0.25, ...]`
//!
//! - floats: `sum` is the f64 sum of every element (`nan` if any is NaN), `absmax` the largest magnitude of
//!   the non-NaN elements, both with 6 significant digits; `nan=N` appears when there are NaNs.
//! - `i32`: `sum` is exact (an integer) and `absmax` too; `bool`: `sum` counts the `true`s.
//! - Then up to 4 leading values (row-major), followed by `...` if there are more. A rank-0 tensor shows its
//!   dtype alone (`lr: f32 ...`).

use kc_ir::{Tensor, TensorData};

/// How many leading values a summary shows.
const SHOWN: usize = 4;

/// A one-line summary of a tensor: name, dtype and shape, sum, absmax, NaN count (if any), first values.
pub fn summarize(name: &str, t: &Tensor) -> String {
    let ty = if t.shape.is_empty() {
        t.dtype().to_string()
    } else {
        format!("{}[{}]", t.dtype(), t.shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", "))
    };
    let mut out = format!("{name}: {ty}");
    let mut shown: Vec<String> = Vec::new();
    match &t.data {
        TensorData::I32(v) => {
            let sum: i128 = v.iter().map(|&x| x as i128).sum();
            let absmax = v.iter().map(|&x| (x as i64).abs()).max().unwrap_or(0);
            out.push_str(&format!(" sum={sum} absmax={absmax}"));
            shown.extend(v.iter().take(SHOWN).map(|x| x.to_string()));
        }
        TensorData::Bool(v) => {
            let count = v.iter().filter(|&&b| b).count();
            out.push_str(&format!(" sum={count}"));
            shown.extend(v.iter().take(SHOWN).map(|x| x.to_string()));
        }
        _ => {
            let vals = t.to_f64_vec();
            let sum: f64 = vals.iter().fold(0.0, |a, x| a + x);
            let nan = vals.iter().filter(|x| x.is_nan()).count();
            let absmax = vals.iter().filter(|x| !x.is_nan()).fold(0.0f64, |m, x| m.max(x.abs()));
            out.push_str(&format!(" sum={} absmax={}", fmt_g(sum), fmt_g(absmax)));
            if nan > 0 {
                out.push_str(&format!(" nan={nan}"));
            }
            shown.extend(vals.iter().take(SHOWN).map(|&x| fmt_g(x)));
        }
    }
    if t.len() > SHOWN {
        shown.push("...".to_string());
    }
    out.push_str(&format!(" [{}]", shown.join(", ")));
    out
}

/// Formats like C's `%g` with 6 significant digits: `1`, `0.125`, `-1.23457`, `1.5e+07`, `3e-05`.
pub fn fmt_g(x: f64) -> String {
    if x.is_nan() {
        return "nan".to_string();
    }
    if x.is_infinite() {
        return if x > 0.0 { "inf" } else { "-inf" }.to_string();
    }
    if x == 0.0 {
        return if x.is_sign_negative() { "-0" } else { "0" }.to_string();
    }
    const P: i32 = 6;
    // Round to P significant digits first: the exponent is that of the rounded value.
    let sci = format!("{:.*e}", (P - 1) as usize, x);
    let (mant, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    if !(-4..P).contains(&exp) {
        let mant = trim_zeros(mant);
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{mant}e{sign}{:02}", exp.abs())
    } else {
        let decimals = (P - 1 - exp).max(0) as usize;
        trim_zeros(&format!("{:.*}", decimals, x)).to_string()
    }
}

fn trim_zeros(s: &str) -> &str {
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.')
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kc_ir::DType;

    #[test]
    fn g_format() {
        assert_eq!(fmt_g(1.0), "1");
        assert_eq!(fmt_g(0.125), "0.125");
        assert_eq!(fmt_g(-1.234567), "-1.23457");
        assert_eq!(fmt_g(123456.7), "123457");
        assert_eq!(fmt_g(1234567.0), "1.23457e+06");
        assert_eq!(fmt_g(999999.7), "1e+06");
        assert_eq!(fmt_g(0.0001), "0.0001");
        assert_eq!(fmt_g(0.00001234), "1.234e-05");
        assert_eq!(fmt_g(0.1f32 as f64), "0.1");
        assert_eq!(fmt_g(f64::NEG_INFINITY), "-inf");
        assert_eq!(fmt_g(f64::NAN), "nan");
    }

    #[test]
    fn float_summary() {
        let t = Tensor::from_f32_as(DType::BF16, vec![2, 3], &[0.125, -0.5, 1.0, 0.25, 2.5, -1.0]).unwrap();
        assert_eq!(summarize("y", &t), "y: bf16[2, 3] sum=2.375 absmax=2.5 [0.125, -0.5, 1, 0.25, ...]");
        let t = Tensor::from_f32(vec![3], vec![1.0, f32::NAN, -4.0]).unwrap();
        assert_eq!(summarize("z", &t), "z: f32[3] sum=nan absmax=4 nan=1 [1, nan, -4]");
        assert_eq!(summarize("s", &Tensor::scalar_f32(0.5)), "s: f32 sum=0.5 absmax=0.5 [0.5]");
        assert_eq!(summarize("e", &Tensor::from_f32(vec![0, 2], vec![]).unwrap()), "e: f32[0, 2] sum=0 absmax=0 []");
    }

    #[test]
    fn int_and_bool_summary() {
        let t = Tensor::from_i32(vec![5], vec![3, -7, 0, 2, 1]).unwrap();
        assert_eq!(summarize("idx", &t), "idx: i32[5] sum=-1 absmax=7 [3, -7, 0, 2, ...]");
        let t = Tensor::new(vec![2], TensorData::Bool(vec![true, false])).unwrap();
        assert_eq!(summarize("m", &t), "m: bool[2] sum=1 [true, false]");
    }
}

//! The scalar numerics of `kc`, shared by every executor: the reference interpreter ([`crate::interp`])
//! and the tile-IR simulator compute with these functions, so that the same operation gives the same bits.
//!
//! What is here (the contract is documented in [`crate::interp`]'s "Numerics", "Reductions" and "Library
//! nodes" sections):
//! - [`Val`], a scalar in compute type (`f32`, `i64`, `bool`), with [`load`]/[`store`]/[`push`] from and
//!   to storage (widening on load; rounding `f32` to `bf16`/`f16` to nearest-even and wrapping integers to
//!   32 bits on store);
//! - [`unary`], [`binary`] and [`cast`] (and their pieces: [`unary_f32`], [`floor_div`], [`floor_mod`],
//!   [`floor_mod_f32`], [`nan_min`], [`nan_max`]);
//! - [`Acc`], a reduction's identity, combine and result (`sum` sequential in the order values are added,
//!   NaN-propagating `max`/`min`, first-index `argmax`/`argmin` with NaN winning);
//! - [`CumAcc`], a prefix sum's running value; [`cmp_nan_max`] and [`sort_indices`], the order of
//!   `topk`/`argsort`.
//!
//! Nothing here knows spans or diagnostics beyond [`OpError::into_diagnostic`]; callers attach their own.

use crate::diag::{Code, Diagnostic};
use crate::dtype::{round_bf16, round_f16, DType, ScalarTy};
use crate::graph::{BinOp, ReduceOp, UnOp};
use crate::span::Span;
use crate::tensor::TensorData;
use half::{bf16, f16};
use std::cmp::Ordering;

/// A scalar value in compute type.
#[derive(Copy, Clone, Debug, PartialEq)]
pub enum Val {
    F(f32),
    I(i64),
    B(bool),
}

impl Val {
    /// The compute type of the value.
    pub fn ty(self) -> ScalarTy {
        match self {
            Val::F(_) => ScalarTy::F32,
            Val::I(_) => ScalarTy::I32,
            Val::B(_) => ScalarTy::Bool,
        }
    }

    /// The name of the value's type, for messages.
    pub fn ty_name(self) -> &'static str {
        self.ty().name()
    }
}

/// Why an operation has no value.
#[derive(Clone, Debug, PartialEq)]
pub enum OpError {
    /// An integer `/` or `%` (`op`) of `a` by zero: a run-time error of the kernel.
    DivByZero { a: i64, op: BinOp },
    /// Operands of types the operation does not take: a broken invariant (an internal error).
    Type(String),
}

impl OpError {
    /// The diagnostic at `span`; a type error is turned into the caller's internal error by `internal`.
    pub fn into_diagnostic(self, span: Span, internal: impl FnOnce(Span, String) -> Diagnostic) -> Diagnostic {
        match self {
            OpError::DivByZero { a, op } => Diagnostic::error(Code::DivByZero, span, "integer division by zero")
                .with_label(format!("{a} {} 0", if op == BinOp::Div { "/" } else { "%" })),
            OpError::Type(msg) => internal(span, msg),
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// Storage.

/// The element at flat offset `off`, widened (`bf16`/`f16` to `f32`, `i32` to `i64`); `None` past the end.
pub fn load(data: &TensorData, off: usize) -> Option<Val> {
    Some(match data {
        TensorData::F32(v) => Val::F(*v.get(off)?),
        TensorData::BF16(v) => Val::F(v.get(off)?.to_f32()),
        TensorData::F16(v) => Val::F(v.get(off)?.to_f32()),
        TensorData::I32(v) => Val::I(i64::from(*v.get(off)?)),
        TensorData::Bool(v) => Val::B(*v.get(off)?),
    })
}

/// Appends a value as a store would (rounding `f32` to `bf16`/`f16` to nearest-even, wrapping integers to
/// their low 32 bits). `false` if the value's type does not fit the storage.
pub fn push(data: &mut TensorData, v: Val) -> bool {
    match (data, v) {
        (TensorData::F32(d), Val::F(x)) => d.push(x),
        (TensorData::BF16(d), Val::F(x)) => d.push(bf16::from_f32(x)),
        (TensorData::F16(d), Val::F(x)) => d.push(f16::from_f32(x)),
        (TensorData::I32(d), Val::I(x)) => d.push(x as i32),
        (TensorData::Bool(d), Val::B(x)) => d.push(x),
        _ => return false,
    }
    true
}

/// Why a [`store`] did not happen.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum StoreError {
    /// The offset is past the end of the storage.
    OutOfBounds,
    /// The value's type does not fit the storage's dtype.
    Type,
}

/// Writes a value at flat offset `off` as a store would (see [`push`]).
pub fn store(data: &mut TensorData, off: usize, v: Val) -> Result<(), StoreError> {
    fn at<T>(d: &mut [T], off: usize) -> Result<&mut T, StoreError> {
        d.get_mut(off).ok_or(StoreError::OutOfBounds)
    }
    match (data, v) {
        (TensorData::F32(d), Val::F(x)) => *at(d, off)? = x,
        (TensorData::BF16(d), Val::F(x)) => *at(d, off)? = bf16::from_f32(x),
        (TensorData::F16(d), Val::F(x)) => *at(d, off)? = f16::from_f32(x),
        (TensorData::I32(d), Val::I(x)) => *at(d, off)? = x as i32,
        (TensorData::Bool(d), Val::B(x)) => *at(d, off)? = x,
        _ => return Err(StoreError::Type),
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------
// Arithmetic.

/// Integer division rounding toward negative infinity (`b != 0`), wrapping on `i64::MIN / -1`.
pub fn floor_div(a: i64, b: i64) -> i64 {
    let q = a.wrapping_div(b);
    let r = a.wrapping_rem(b);
    if r != 0 && ((r < 0) != (b < 0)) {
        q.wrapping_sub(1)
    } else {
        q
    }
}

/// The remainder of [`floor_div`]: it has the sign of `b` (`b != 0`).
pub fn floor_mod(a: i64, b: i64) -> i64 {
    let r = a.wrapping_rem(b);
    if r != 0 && ((r < 0) != (b < 0)) {
        r.wrapping_add(b)
    } else {
        r
    }
}

/// The floor remainder of floats, exact: the sign of `b`.
pub fn floor_mod_f32(a: f32, b: f32) -> f32 {
    let r = libm::fmodf(a, b);
    if r != 0.0 && ((r < 0.0) != (b < 0.0)) {
        r + b
    } else {
        r
    }
}

fn sigmoid64(x: f64) -> f64 {
    1.0 / (1.0 + libm::exp(-x))
}

/// A unary operation on an `f32`; `None` for `not`. Transcendentals are computed in `f64` and rounded once.
pub fn unary_f32(op: UnOp, x: f32) -> Option<f32> {
    let d = f64::from(x);
    Some(match op {
        UnOp::Neg => -x,
        UnOp::Abs => x.abs(),
        UnOp::Exp => libm::exp(d) as f32,
        UnOp::Exp2 => libm::exp2(d) as f32,
        UnOp::Log => libm::log(d) as f32,
        UnOp::Log2 => libm::log2(d) as f32,
        UnOp::Sqrt => libm::sqrtf(x),
        UnOp::Rsqrt => (1.0 / libm::sqrt(d)) as f32,
        UnOp::Sin => libm::sin(d) as f32,
        UnOp::Cos => libm::cos(d) as f32,
        UnOp::Tanh => libm::tanh(d) as f32,
        UnOp::Sigmoid => sigmoid64(d) as f32,
        UnOp::Silu => (d * sigmoid64(d)) as f32,
        UnOp::Gelu => (0.5 * d * (1.0 + libm::erf(d / std::f64::consts::SQRT_2))) as f32,
        UnOp::Relu => {
            if x.is_nan() || x > 0.0 {
                x
            } else {
                0.0
            }
        }
        UnOp::Softplus => {
            if x.is_nan() {
                x
            } else {
                (d.max(0.0) + libm::log1p(libm::exp(-d.abs()))) as f32
            }
        }
        UnOp::Floor => libm::floorf(x),
        UnOp::Ceil => libm::ceilf(x),
        UnOp::Not => return None,
    })
}

/// `min` propagating NaN.
pub fn nan_min(a: f32, b: f32) -> f32 {
    if a.is_nan() || b.is_nan() {
        f32::NAN
    } else if b < a {
        b
    } else {
        a
    }
}

/// `max` propagating NaN.
pub fn nan_max(a: f32, b: f32) -> f32 {
    if a.is_nan() || b.is_nan() {
        f32::NAN
    } else if b > a {
        b
    } else {
        a
    }
}

/// A unary operation on a value of any type.
pub fn unary(op: UnOp, a: Val) -> Result<Val, OpError> {
    match (op, a) {
        (UnOp::Not, Val::B(x)) => Ok(Val::B(!x)),
        (UnOp::Neg, Val::I(x)) => Ok(Val::I(x.wrapping_neg())),
        (UnOp::Abs, Val::I(x)) => Ok(Val::I(x.wrapping_abs())),
        (op, Val::F(x)) => match unary_f32(op, x) {
            Some(y) => Ok(Val::F(y)),
            None => Err(OpError::Type(format!("{} of an f32", op.name()))),
        },
        (op, a) => Err(OpError::Type(format!("{} of a {}", op.name(), a.ty_name()))),
    }
}

/// A binary operation on two values of the same type.
pub fn binary(op: BinOp, a: Val, b: Val) -> Result<Val, OpError> {
    use BinOp::*;
    Ok(match (a, b) {
        (Val::F(x), Val::F(y)) => match op {
            Add => Val::F(x + y),
            Sub => Val::F(x - y),
            Mul => Val::F(x * y),
            Div => Val::F(x / y),
            Mod => Val::F(floor_mod_f32(x, y)),
            Pow => Val::F(libm::pow(f64::from(x), f64::from(y)) as f32),
            Min => Val::F(nan_min(x, y)),
            Max => Val::F(nan_max(x, y)),
            Eq => Val::B(x == y),
            Ne => Val::B(x != y),
            Lt => Val::B(x < y),
            Le => Val::B(x <= y),
            Gt => Val::B(x > y),
            Ge => Val::B(x >= y),
            And | Or => return Err(OpError::Type(format!("{} of f32 values", op.name()))),
        },
        (Val::I(x), Val::I(y)) => match op {
            Add => Val::I(x.wrapping_add(y)),
            Sub => Val::I(x.wrapping_sub(y)),
            Mul => Val::I(x.wrapping_mul(y)),
            Div | Mod => {
                if y == 0 {
                    return Err(OpError::DivByZero { a: x, op });
                }
                Val::I(if op == Div { floor_div(x, y) } else { floor_mod(x, y) })
            }
            Min => Val::I(x.min(y)),
            Max => Val::I(x.max(y)),
            Eq => Val::B(x == y),
            Ne => Val::B(x != y),
            Lt => Val::B(x < y),
            Le => Val::B(x <= y),
            Gt => Val::B(x > y),
            Ge => Val::B(x >= y),
            Pow | And | Or => return Err(OpError::Type(format!("{} of i32 values", op.name()))),
        },
        (Val::B(x), Val::B(y)) => match op {
            Eq => Val::B(x == y),
            Ne => Val::B(x != y),
            And => Val::B(x && y),
            Or => Val::B(x || y),
            _ => return Err(OpError::Type(format!("{} of bool values", op.name()))),
        },
        (a, b) => return Err(OpError::Type(format!("{} of a {} and a {}", op.name(), a.ty_name(), b.ty_name()))),
    })
}

/// A conversion. To `F32` converts (`bool` gives 0 or 1); to `I32` truncates toward zero, saturating, NaN
/// gives 0; to `Bool` is `!= 0` (NaN is true); to `BF16`/`F16` rounds the `f32` (nearest-even) and widens
/// it back.
pub fn cast(to: DType, a: Val) -> Val {
    let f = |a: Val| match a {
        Val::F(x) => x,
        Val::I(x) => x as f32,
        Val::B(x) => f32::from(u8::from(x)),
    };
    match to {
        DType::F32 => Val::F(f(a)),
        DType::BF16 => Val::F(round_bf16(f(a))),
        DType::F16 => Val::F(round_f16(f(a))),
        DType::I32 => Val::I(match a {
            Val::F(x) => i64::from(x as i32),
            Val::I(x) => x,
            Val::B(x) => i64::from(x),
        }),
        DType::Bool => Val::B(match a {
            Val::F(x) => x != 0.0,
            Val::I(x) => x != 0,
            Val::B(x) => x,
        }),
    }
}

// ---------------------------------------------------------------------------------------------------------
// Reductions.

/// A reduction in progress: start from [`Acc::new`] (the identity) or [`Acc::start`] (a previous partial
/// result), [`Acc::add`] the values in order, then take [`Acc::finish`].
#[derive(Copy, Clone, Debug, PartialEq)]
pub enum Acc {
    SumF(f32),
    SumI(i64),
    MaxF(f32),
    MinF(f32),
    MaxI(Option<i64>),
    MinI(Option<i64>),
    /// (index, value) of the best so far; `max` is true for argmax.
    Arg {
        max: bool,
        best: Option<(i64, Val)>,
    },
}

impl Acc {
    /// The identity of `op` for values of type `ty`: `sum` 0, `max`/`min` of `f32` `-inf`/`+inf`, of
    /// integers "none yet" (an empty one gives `i32::MIN`/`i32::MAX`), `argmax`/`argmin` "none yet" (an
    /// empty one gives 0). An error for a type the reduction does not take.
    pub fn new(op: ReduceOp, ty: ScalarTy) -> Result<Acc, OpError> {
        Ok(match (op, ty) {
            (ReduceOp::Sum, ScalarTy::F32) => Acc::SumF(0.0),
            (ReduceOp::Sum, ScalarTy::I32) => Acc::SumI(0),
            (ReduceOp::Max, ScalarTy::F32) => Acc::MaxF(f32::NEG_INFINITY),
            (ReduceOp::Min, ScalarTy::F32) => Acc::MinF(f32::INFINITY),
            (ReduceOp::Max, ScalarTy::I32) => Acc::MaxI(None),
            (ReduceOp::Min, ScalarTy::I32) => Acc::MinI(None),
            (ReduceOp::ArgMax, _) => Acc::Arg { max: true, best: None },
            (ReduceOp::ArgMin, _) => Acc::Arg { max: false, best: None },
            (op, ty) => return Err(OpError::Type(format!("{} of type {ty}", op.name()))),
        })
    }

    /// A `sum`/`max`/`min` continuing from a partial result `prev` (adding the values afterwards gives the
    /// same bits as one reduction over all of them, in order). `argmax`/`argmin` cannot continue from their
    /// index alone: an error.
    pub fn start(op: ReduceOp, prev: Val) -> Result<Acc, OpError> {
        Ok(match (op, prev) {
            (ReduceOp::Sum, Val::F(x)) => Acc::SumF(x),
            (ReduceOp::Sum, Val::I(x)) => Acc::SumI(x),
            (ReduceOp::Max, Val::F(x)) => Acc::MaxF(x),
            (ReduceOp::Min, Val::F(x)) => Acc::MinF(x),
            (ReduceOp::Max, Val::I(x)) => Acc::MaxI(Some(x)),
            (ReduceOp::Min, Val::I(x)) => Acc::MinI(Some(x)),
            (ReduceOp::ArgMax | ReduceOp::ArgMin, _) => {
                return Err(OpError::Type(format!(
                    "{} cannot continue from a previous result (it needs the best value, not only its index)",
                    op.name()
                )))
            }
            (op, v) => return Err(OpError::Type(format!("{} continuing from a {}", op.name(), v.ty_name()))),
        })
    }

    /// Combines the value `x` at index `i` (the index matters to `argmax`/`argmin` only). `ty` is the
    /// reduction's type, for the message of a mismatch.
    pub fn add(self, op: ReduceOp, ty: ScalarTy, i: i64, x: Val) -> Result<Acc, OpError> {
        Ok(match (self, x) {
            (Acc::SumF(a), Val::F(x)) => Acc::SumF(a + x),
            (Acc::SumI(a), Val::I(x)) => Acc::SumI(a.wrapping_add(x)),
            (Acc::MaxF(a), Val::F(x)) => Acc::MaxF(nan_max(a, x)),
            (Acc::MinF(a), Val::F(x)) => Acc::MinF(nan_min(a, x)),
            (Acc::MaxI(a), Val::I(x)) => Acc::MaxI(Some(a.map_or(x, |a| a.max(x)))),
            (Acc::MinI(a), Val::I(x)) => Acc::MinI(Some(a.map_or(x, |a| a.min(x)))),
            (Acc::Arg { max, best }, x) => {
                let better = match best {
                    None => true,
                    Some((_, b)) => match (b, x) {
                        (Val::F(b), Val::F(x)) => !b.is_nan() && (x.is_nan() || if max { x > b } else { x < b }),
                        (Val::I(b), Val::I(x)) => {
                            if max {
                                x > b
                            } else {
                                x < b
                            }
                        }
                        _ => return Err(OpError::Type(format!("{} of a {}", op.name(), x.ty_name()))),
                    },
                };
                Acc::Arg { max, best: if better { Some((i, x)) } else { best } }
            }
            (_, x) => {
                return Err(OpError::Type(format!("{} of type {ty} whose body gave a {}", op.name(), x.ty_name())))
            }
        })
    }

    /// The result.
    pub fn finish(self) -> Val {
        match self {
            Acc::SumF(a) | Acc::MaxF(a) | Acc::MinF(a) => Val::F(a),
            Acc::SumI(a) => Val::I(a),
            Acc::MaxI(a) => Val::I(a.unwrap_or(i64::from(i32::MIN))),
            Acc::MinI(a) => Val::I(a.unwrap_or(i64::from(i32::MAX))),
            Acc::Arg { best, .. } => Val::I(best.map_or(0, |(i, _)| i)),
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// Library operations.

/// A prefix sum's running value: a float source accumulates in `f32` (sequentially), an integer or bool
/// source in `i64` (wrapping).
#[derive(Copy, Clone, Debug, PartialEq)]
pub struct CumAcc {
    float: bool,
    f: f32,
    i: i64,
}

impl CumAcc {
    /// Starting at 0, for a float source or not.
    pub fn new(float: bool) -> CumAcc {
        CumAcc { float, f: 0.0, i: 0 }
    }

    /// Continuing from a previous running value (an `f32` for a float source, an integer otherwise).
    pub fn start(float: bool, prev: Val) -> Result<CumAcc, OpError> {
        match (float, prev) {
            (true, Val::F(f)) => Ok(CumAcc { float, f, i: 0 }),
            (false, Val::I(i)) => Ok(CumAcc { float, f: 0.0, i }),
            (_, v) => Err(OpError::Type(format!(
                "a {} prefix sum continuing from a {}",
                if float { "float" } else { "integer" },
                v.ty_name()
            ))),
        }
    }

    /// Adds `x` (as the interpreter does, a value of an unexpected type is added to the accumulator of its
    /// own kind).
    pub fn add(&mut self, x: Val) {
        match x {
            Val::F(x) => self.f += x,
            Val::I(x) => self.i = self.i.wrapping_add(x),
            Val::B(x) => self.i = self.i.wrapping_add(i64::from(x)),
        }
    }

    /// The running value: an `f32` for a float source, an integer otherwise.
    pub fn value(&self) -> Val {
        if self.float {
            Val::F(self.f)
        } else {
            Val::I(self.i)
        }
    }
}

/// A total order in which NaN is larger than every number (two NaNs are equal).
pub fn cmp_nan_max(a: Val, b: Val) -> Ordering {
    match (a, b) {
        (Val::F(x), Val::F(y)) => match (x.is_nan(), y.is_nan()) {
            (true, true) => Ordering::Equal,
            (true, false) => Ordering::Greater,
            (false, true) => Ordering::Less,
            (false, false) => x.partial_cmp(&y).unwrap_or(Ordering::Equal),
        },
        (Val::I(x), Val::I(y)) => x.cmp(&y),
        (Val::B(x), Val::B(y)) => x.cmp(&y),
        // Mixed types cannot occur within one tensor.
        _ => Ordering::Equal,
    }
}

/// Sets `order` to the indices `0..len` stably sorted by `at(i)` under [`cmp_nan_max`]: ascending, or
/// descending (equal values keep their index order in both directions). `topk` is the first `k` of the
/// descending order; `argsort` the whole.
pub fn sort_indices(order: &mut Vec<usize>, len: usize, at: impl Fn(usize) -> Val, descending: bool) {
    order.clear();
    order.extend(0..len);
    if descending {
        order.sort_by(|&a, &b| cmp_nan_max(at(b), at(a)));
    } else {
        order.sort_by(|&a, &b| cmp_nan_max(at(a), at(b)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_rounds_and_wraps() {
        let mut d = TensorData::BF16(vec![bf16::ZERO; 2]);
        store(&mut d, 1, Val::F(1.0 + 1.0 / 256.0)).unwrap();
        assert_eq!(load(&d, 1), Some(Val::F(1.0)));
        assert_eq!(store(&mut d, 2, Val::F(0.0)), Err(StoreError::OutOfBounds));
        assert_eq!(store(&mut d, 0, Val::I(1)), Err(StoreError::Type));
        let mut i = TensorData::I32(vec![0]);
        store(&mut i, 0, Val::I(1 << 32 | 5)).unwrap();
        assert_eq!(load(&i, 0), Some(Val::I(5)));
    }

    #[test]
    fn reductions_continue_bit_identically() {
        let xs = [0.1f32, 1e8, -1e8, 0.3, 7.0];
        let mut one = Acc::new(ReduceOp::Sum, ScalarTy::F32).unwrap();
        for (i, &x) in xs.iter().enumerate() {
            one = one.add(ReduceOp::Sum, ScalarTy::F32, i as i64, Val::F(x)).unwrap();
        }
        let mut a = Acc::new(ReduceOp::Sum, ScalarTy::F32).unwrap();
        for (i, &x) in xs[..2].iter().enumerate() {
            a = a.add(ReduceOp::Sum, ScalarTy::F32, i as i64, Val::F(x)).unwrap();
        }
        let mut b = Acc::start(ReduceOp::Sum, a.finish()).unwrap();
        for (i, &x) in xs[2..].iter().enumerate() {
            b = b.add(ReduceOp::Sum, ScalarTy::F32, i as i64, Val::F(x)).unwrap();
        }
        assert_eq!(one.finish(), b.finish());
        assert!(Acc::start(ReduceOp::ArgMax, Val::I(0)).is_err());
        assert_eq!(Acc::new(ReduceOp::Max, ScalarTy::I32).unwrap().finish(), Val::I(i64::from(i32::MIN)));
    }

    #[test]
    fn binary_errors() {
        assert_eq!(binary(BinOp::Div, Val::I(7), Val::I(0)), Err(OpError::DivByZero { a: 7, op: BinOp::Div }));
        assert_eq!(binary(BinOp::Div, Val::I(-7), Val::I(2)), Ok(Val::I(-4)));
        assert_eq!(binary(BinOp::Mod, Val::I(-7), Val::I(2)), Ok(Val::I(1)));
        assert!(matches!(binary(BinOp::Add, Val::I(1), Val::F(1.0)), Err(OpError::Type(_))));
        assert_eq!(cast(DType::I32, Val::F(f32::NAN)), Val::I(0));
    }

    #[test]
    fn sort_is_stable_with_nan_largest() {
        let v = [Val::F(1.0), Val::F(f32::NAN), Val::F(1.0), Val::F(3.0)];
        let mut o = Vec::new();
        sort_indices(&mut o, 4, |i| v[i], true);
        assert_eq!(o, vec![1, 3, 0, 2]);
        sort_indices(&mut o, 4, |i| v[i], false);
        assert_eq!(o, vec![0, 2, 3, 1]);
    }
}

//! Symbolic dimensions: polynomials with integer coefficients over dim symbols, kept in a canonical form
//! so that two dims are equal exactly when their forms are equal (`T * K` == `K * T`, `E + 1 - 1` == `E`).
//! A division or remainder that does not simplify stays an opaque atom (`H / G`), evaluated at launch,
//! where `/` must divide exactly.

use std::collections::BTreeSet;
use std::fmt;

/// An opaque factor of a monomial.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Atom {
    Sym(String),
    /// `a / b`, exact.
    Div(Box<Dim>, Box<Dim>),
    /// `a % b`, floor remainder.
    Mod(Box<Dim>, Box<Dim>),
}

/// A dimension: `Σ coef · Π atoms`, terms sorted by their atoms, no zero coefficient, atoms sorted.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Dim {
    terms: Vec<(Vec<Atom>, i64)>,
}

/// Why a dim could not be evaluated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DimError {
    Unbound(String),
    Inexact { dividend: i64, divisor: i64, expr: String },
    DivByZero { expr: String },
    Overflow { expr: String },
}

impl fmt::Display for DimError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DimError::Unbound(s) => write!(f, "dim `{s}` has no value"),
            DimError::Inexact { dividend, divisor, expr } => {
                write!(f, "`{expr}` must divide exactly, but {dividend} is not a multiple of {divisor}")
            }
            DimError::DivByZero { expr } => write!(f, "`{expr}` divides by zero"),
            DimError::Overflow { expr } => write!(f, "`{expr}` overflows 64 bits"),
        }
    }
}

impl Dim {
    pub fn constant(c: i64) -> Dim {
        let mut d = Dim { terms: vec![(Vec::new(), c)] };
        d.normalize();
        d
    }

    pub fn zero() -> Dim {
        Dim::default()
    }

    pub fn one() -> Dim {
        Dim::constant(1)
    }

    pub fn sym(name: impl Into<String>) -> Dim {
        Dim { terms: vec![(vec![Atom::Sym(name.into())], 1)] }
    }

    fn atom(a: Atom) -> Dim {
        Dim { terms: vec![(vec![a], 1)] }
    }

    fn normalize(&mut self) {
        for (atoms, _) in self.terms.iter_mut() {
            atoms.sort();
        }
        self.terms.sort();
        let mut out: Vec<(Vec<Atom>, i64)> = Vec::with_capacity(self.terms.len());
        for (atoms, c) in std::mem::take(&mut self.terms) {
            match out.last_mut() {
                Some((a, k)) if *a == atoms => *k = k.saturating_add(c),
                _ => out.push((atoms, c)),
            }
        }
        out.retain(|(_, c)| *c != 0);
        self.terms = out;
    }

    /// The value, if the dim is a constant.
    pub fn as_const(&self) -> Option<i64> {
        match self.terms.as_slice() {
            [] => Some(0),
            [(atoms, c)] if atoms.is_empty() => Some(*c),
            _ => None,
        }
    }

    /// The symbol's name, if the dim is exactly one symbol.
    pub fn as_sym(&self) -> Option<&str> {
        match self.terms.as_slice() {
            [(atoms, 1)] => match atoms.as_slice() {
                [Atom::Sym(s)] => Some(s),
                _ => None,
            },
            _ => None,
        }
    }

    /// Whether every coefficient (also inside divisions) is at most `limit` in magnitude. Arithmetic on
    /// dims saturates, so a dim built from huge numbers fails this check instead of wrapping around.
    pub fn within(&self, limit: i64) -> bool {
        self.terms.iter().all(|(atoms, c)| {
            c.unsigned_abs() <= limit.unsigned_abs()
                && atoms.iter().all(|a| match a {
                    Atom::Sym(_) => true,
                    Atom::Div(x, y) | Atom::Mod(x, y) => x.within(limit) && y.within(limit),
                })
        })
    }

    /// The atom, if the dim is exactly one atom (coefficient 1).
    pub fn as_atom(&self) -> Option<&Atom> {
        match self.terms.as_slice() {
            [(atoms, 1)] if atoms.len() == 1 => atoms.first(),
            _ => None,
        }
    }

    pub fn is_one(&self) -> bool {
        self.as_const() == Some(1)
    }

    /// Every symbol the dim mentions, also inside divisions.
    pub fn symbols(&self) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        self.collect_symbols(&mut out);
        out
    }

    fn collect_symbols(&self, out: &mut BTreeSet<String>) {
        for (atoms, _) in &self.terms {
            for a in atoms {
                match a {
                    Atom::Sym(s) => {
                        out.insert(s.clone());
                    }
                    Atom::Div(x, y) | Atom::Mod(x, y) => {
                        x.collect_symbols(out);
                        y.collect_symbols(out);
                    }
                }
            }
        }
    }

    pub fn add(&self, o: &Dim) -> Dim {
        let mut d = Dim { terms: self.terms.iter().chain(o.terms.iter()).cloned().collect() };
        d.normalize();
        d
    }

    pub fn neg(&self) -> Dim {
        Dim { terms: self.terms.iter().map(|(a, c)| (a.clone(), c.saturating_neg())).collect() }
    }

    pub fn sub(&self, o: &Dim) -> Dim {
        self.add(&o.neg())
    }

    pub fn mul(&self, o: &Dim) -> Dim {
        let mut terms = Vec::with_capacity(self.terms.len() * o.terms.len());
        for (a1, c1) in &self.terms {
            for (a2, c2) in &o.terms {
                let mut atoms = a1.clone();
                atoms.extend(a2.iter().cloned());
                terms.push((atoms, c1.saturating_mul(*c2)));
            }
        }
        let mut d = Dim { terms };
        d.normalize();
        d
    }

    /// Divides each term by the monomial `(atoms, c)` if every term is a multiple of it.
    fn div_by_monomial(&self, atoms: &[Atom], c: i64) -> Option<Dim> {
        if c == 0 {
            return None;
        }
        let mut terms = Vec::with_capacity(self.terms.len());
        for (a, k) in &self.terms {
            if k % c != 0 {
                return None;
            }
            let mut rest = a.clone();
            for x in atoms {
                let pos = rest.iter().position(|y| y == x)?;
                rest.remove(pos);
            }
            terms.push((rest, k / c));
        }
        let mut d = Dim { terms };
        d.normalize();
        Some(d)
    }

    /// Exact division `self / o`; stays symbolic (and is checked at launch) when it does not simplify.
    pub fn div(&self, o: &Dim) -> Dim {
        if o.is_one() {
            return self.clone();
        }
        if self == o && !o.terms.is_empty() {
            return Dim::one();
        }
        if let [(atoms, c)] = o.terms.as_slice() {
            if let Some(d) = self.div_by_monomial(atoms, *c) {
                return d;
            }
        }
        if let (Some(a), Some(b)) = (self.as_const(), o.as_const()) {
            if b != 0 && a % b == 0 {
                return Dim::constant(a / b);
            }
        }
        Dim::atom(Atom::Div(Box::new(self.clone()), Box::new(o.clone())))
    }

    /// Floor remainder `self % o`.
    pub fn rem(&self, o: &Dim) -> Dim {
        if let (Some(a), Some(b)) = (self.as_const(), o.as_const()) {
            if b != 0 {
                return Dim::constant(floor_mod(a, b));
            }
        }
        if let [(atoms, c)] = o.terms.as_slice() {
            if self.div_by_monomial(atoms, *c).is_some() {
                return Dim::zero();
            }
        }
        Dim::atom(Atom::Mod(Box::new(self.clone()), Box::new(o.clone())))
    }

    /// Replaces a symbol by a dim everywhere, re-simplifying.
    pub fn substitute(&self, name: &str, value: &Dim) -> Dim {
        let mut acc = Dim::zero();
        for (atoms, c) in &self.terms {
            let mut t = Dim::constant(*c);
            for a in atoms {
                let f = match a {
                    Atom::Sym(s) if s == name => value.clone(),
                    Atom::Sym(_) => Dim::atom(a.clone()),
                    Atom::Div(x, y) => x.substitute(name, value).div(&y.substitute(name, value)),
                    Atom::Mod(x, y) => x.substitute(name, value).rem(&y.substitute(name, value)),
                };
                t = t.mul(&f);
            }
            acc = acc.add(&t);
        }
        acc
    }

    /// Evaluates with the given symbol values. Division must be exact; arithmetic must not overflow.
    pub fn eval(&self, env: &dyn Fn(&str) -> Option<i64>) -> Result<i64, DimError> {
        let overflow = || DimError::Overflow { expr: self.to_string() };
        let mut acc: i64 = 0;
        for (atoms, c) in &self.terms {
            let mut t = *c;
            for a in atoms {
                let v = match a {
                    Atom::Sym(s) => env(s).ok_or_else(|| DimError::Unbound(s.clone()))?,
                    Atom::Div(x, y) => {
                        let (p, q) = (x.eval(env)?, y.eval(env)?);
                        if q == 0 {
                            return Err(DimError::DivByZero { expr: Dim::atom(a.clone()).to_string() });
                        }
                        if p % q != 0 {
                            return Err(DimError::Inexact {
                                dividend: p,
                                divisor: q,
                                expr: Dim::atom(a.clone()).to_string(),
                            });
                        }
                        p / q
                    }
                    Atom::Mod(x, y) => {
                        let (p, q) = (x.eval(env)?, y.eval(env)?);
                        if q == 0 {
                            return Err(DimError::DivByZero { expr: Dim::atom(a.clone()).to_string() });
                        }
                        floor_mod(p, q)
                    }
                };
                t = t.checked_mul(v).ok_or_else(overflow)?;
            }
            acc = acc.checked_add(t).ok_or_else(overflow)?;
        }
        Ok(acc)
    }

    /// Substitutes every symbol that `env` knows; the rest stay symbolic.
    pub fn partial_eval(&self, env: &dyn Fn(&str) -> Option<i64>) -> Dim {
        let mut d = self.clone();
        for s in self.symbols() {
            if let Some(v) = env(&s) {
                d = d.substitute(&s, &Dim::constant(v));
            }
        }
        d
    }

    /// If the dim is `a·X + b` in its only symbol `X` (no division involving `X`), returns `(X, a, b)`.
    pub fn as_linear(&self) -> Option<(String, i64, i64)> {
        let mut sym: Option<(String, i64)> = None;
        let mut b = 0;
        for (atoms, c) in &self.terms {
            match atoms.as_slice() {
                [] => b = *c,
                [Atom::Sym(s)] if sym.is_none() => sym = Some((s.clone(), *c)),
                _ => return None,
            }
        }
        sym.map(|(s, a)| (s, a, b))
    }
}

/// Integer division rounding toward negative infinity (`b != 0`).
pub fn floor_div(a: i64, b: i64) -> i64 {
    let q = a.wrapping_div(b);
    if (a % b != 0) && ((a < 0) != (b < 0)) {
        q - 1
    } else {
        q
    }
}

/// The remainder of [`floor_div`]: it has the sign of `b` (`b != 0`).
pub fn floor_mod(a: i64, b: i64) -> i64 {
    let r = a.wrapping_rem(b);
    if r != 0 && ((r < 0) != (b < 0)) {
        r + b
    } else {
        r
    }
}

fn fmt_atom(a: &Atom, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    let paren = |d: &Dim, f: &mut fmt::Formatter<'_>| -> fmt::Result {
        if d.terms.len() > 1 || d.terms.first().is_some_and(|(a, c)| a.len() + (*c != 1) as usize > 1) {
            write!(f, "({d})")
        } else {
            write!(f, "{d}")
        }
    };
    match a {
        Atom::Sym(s) => f.write_str(s),
        Atom::Div(x, y) => {
            paren(x, f)?;
            f.write_str(" / ")?;
            paren(y, f)
        }
        Atom::Mod(x, y) => {
            paren(x, f)?;
            f.write_str(" % ")?;
            paren(y, f)
        }
    }
}

impl fmt::Display for Dim {
    /// `T * K`, `E + 1`, `H / G`, `2 * D - 1`: symbolic terms first, the constant last.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.terms.is_empty() {
            return f.write_str("0");
        }
        let ordered =
            self.terms.iter().filter(|(a, _)| !a.is_empty()).chain(self.terms.iter().filter(|(a, _)| a.is_empty()));
        for (i, (atoms, c)) in ordered.enumerate() {
            let mag = c.unsigned_abs();
            if i == 0 {
                if *c < 0 {
                    f.write_str("-")?;
                }
            } else {
                f.write_str(if *c < 0 { " - " } else { " + " })?;
            }
            if atoms.is_empty() {
                write!(f, "{mag}")?;
                continue;
            }
            if mag != 1 {
                write!(f, "{mag} * ")?;
            }
            for (j, a) in atoms.iter().enumerate() {
                if j > 0 {
                    f.write_str(" * ")?;
                }
                // A division or remainder inside a product keeps its own grouping.
                if atoms.len() > 1 || mag != 1 {
                    if let Atom::Div(..) | Atom::Mod(..) = a {
                        f.write_str("(")?;
                        fmt_atom(a, f)?;
                        f.write_str(")")?;
                        continue;
                    }
                }
                fmt_atom(a, f)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(x: &str) -> Dim {
        Dim::sym(x)
    }

    #[test]
    fn canonical_equality() {
        assert_eq!(s("T").mul(&s("K")), s("K").mul(&s("T")));
        assert_eq!(s("E").add(&Dim::one()).sub(&Dim::one()), s("E"));
        assert_eq!(s("T").mul(&s("K")).div(&s("K")), s("T"));
        assert_eq!(s("D").mul(&Dim::constant(4)).div(&Dim::constant(2)), s("D").mul(&Dim::constant(2)));
        assert_ne!(s("H").div(&s("G")), s("H"));
    }

    #[test]
    fn display() {
        assert_eq!(s("T").mul(&s("K")).to_string(), "K * T");
        assert_eq!(s("E").add(&Dim::one()).to_string(), "E + 1");
        assert_eq!(s("H").div(&s("G")).to_string(), "H / G");
        assert_eq!(s("T").sub(&s("S")).to_string(), "-S + T");
        assert_eq!(Dim::constant(-3).to_string(), "-3");
        assert_eq!(s("E").div(&Dim::constant(8)).mul(&s("T")).to_string(), "T * (E / 8)");
    }

    #[test]
    fn eval_and_errors() {
        let env = |n: &str| match n {
            "H" => Some(12),
            "G" => Some(5),
            "T" => Some(7),
            _ => None,
        };
        assert_eq!(s("H").add(&s("T")).eval(&env), Ok(19));
        assert!(matches!(s("H").div(&s("G")).eval(&env), Err(DimError::Inexact { .. })));
        assert_eq!(s("H").rem(&s("G")).eval(&env), Ok(2));
        assert!(matches!(s("X").eval(&env), Err(DimError::Unbound(_))));
        let big = Dim::constant(i64::MAX).mul(&s("T"));
        assert!(matches!(big.eval(&env), Err(DimError::Overflow { .. })));
    }

    #[test]
    fn linear_solve_form() {
        let d = s("E").add(&Dim::one());
        assert_eq!(d.as_linear(), Some(("E".to_string(), 1, 1)));
        let k = s("T").mul(&s("K")).partial_eval(&|n| (n == "K").then_some(8));
        assert_eq!(k.as_linear(), Some(("T".to_string(), 8, 0)));
        assert_eq!(s("T").mul(&s("K")).as_linear(), None);
    }
}

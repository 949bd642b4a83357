//! Launch-time checks shared by every executor: binding dim symbols from the arguments' shapes, checking
//! dtypes, ranks, sizes, `where` constraints and the compiler's deferred shape equalities.

use crate::diag::{Code, Diagnostic};
use crate::dim::{Dim, DimError};
use crate::dtype::DType;
use crate::graph::{Graph, ParamKind};
use crate::tensor::Tensor;
use std::collections::BTreeMap;

/// The arguments of a launch: tensors (scalars are rank-0 tensors) and `dim` parameters, by name.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Args {
    pub tensors: BTreeMap<String, Tensor>,
    /// Values of `dim` parameters; may also name any other dim symbol, which must then agree.
    pub dims: BTreeMap<String, i64>,
}

/// The largest tensor a launch may describe, in elements (so that sizes and byte counts cannot overflow).
pub const MAX_ELEMENTS: u64 = 1 << 40;

/// Every dim symbol's value for one launch.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Binding {
    pub dims: BTreeMap<String, i64>,
}

impl Binding {
    pub fn get(&self, name: &str) -> Option<i64> {
        self.dims.get(name).copied()
    }

    pub fn eval(&self, d: &Dim) -> Result<i64, DimError> {
        d.eval(&|s| self.get(s))
    }

    /// A concrete shape, or an error message if a dim does not evaluate to a size.
    pub fn shape(&self, dims: &[Dim]) -> Result<Vec<usize>, String> {
        let mut out = Vec::with_capacity(dims.len());
        let mut total: u64 = 1;
        for d in dims {
            let v = self.eval(d).map_err(|e| e.to_string())?;
            if v < 0 {
                return Err(format!("dim `{d}` is {v}, which is negative"));
            }
            total = total.saturating_mul(v as u64);
            if total > MAX_ELEMENTS {
                return Err(format!("a tensor of shape [{}] has more than 2^40 elements", fmt_dims(dims)));
            }
            out.push(v as usize);
        }
        Ok(out)
    }
}

pub fn fmt_dims(dims: &[Dim]) -> String {
    dims.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")
}

fn fmt_shape(s: &[usize]) -> String {
    format!("[{}]", s.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", "))
}

/// Checks the arguments against the kernel's signature and binds every dim. Collects every error it can.
pub fn bind(graph: &Graph, args: &Args) -> Result<Binding, Vec<Diagnostic>> {
    bind_impl(graph, args, false)
}

/// Binds every dim from `dims` alone (and the `where` clause), for compiling a kernel at concrete sizes
/// without its tensors (`kc build --dims`): every dim a parameter or an output uses must be given or fixed.
pub fn bind_dims(graph: &Graph, dims: &BTreeMap<String, i64>) -> Result<Binding, Vec<Diagnostic>> {
    bind_impl(graph, &Args { tensors: BTreeMap::new(), dims: dims.clone() }, true)
}

fn bind_impl(graph: &Graph, args: &Args, dims_only: bool) -> Result<Binding, Vec<Diagnostic>> {
    let mut errs = Vec::new();
    let mut env: BTreeMap<String, i64> = BTreeMap::new();
    let mut origin: BTreeMap<String, String> = BTreeMap::new();

    for name in args.tensors.keys() {
        let ok = graph.params.iter().any(|p| &p.name == name && matches!(p.kind, ParamKind::Tensor { .. }));
        if !ok {
            let mut d = Diagnostic::error(
                Code::UnknownArg,
                graph.span,
                format!("kernel `{}` has no tensor or scalar parameter `{name}`", graph.name),
            );
            if graph.params.iter().any(|p| &p.name == name) {
                d = d.with_help(format!("`{name}` is a `dim` parameter: pass it as a dim"));
            }
            errs.push(d);
        }
    }
    for (name, &v) in &args.dims {
        let is_dim_param = graph.params.iter().any(|p| &p.name == name && p.kind == ParamKind::Dim);
        if !is_dim_param && !graph.dims.iter().any(|d| d == name) {
            errs.push(Diagnostic::error(
                Code::UnknownArg,
                graph.span,
                format!("kernel `{}` has no dim `{name}`", graph.name),
            ));
            continue;
        }
        if v < 0 {
            errs.push(Diagnostic::error(Code::ArgShape, graph.span, format!("dim `{name}` = {v} is negative")));
            continue;
        }
        env.insert(name.clone(), v);
        origin.insert(name.clone(), "given".to_string());
    }
    for (name, v) in &graph.fixed {
        if let Some(&g) = env.get(name) {
            if g != *v {
                let c = graph
                    .constraints
                    .iter()
                    .find(|c| c.lhs.as_sym() == Some(name.as_str()) || c.rhs.as_sym() == Some(name.as_str()));
                let span = c.map_or(graph.span, |c| c.span);
                errs.push(
                    Diagnostic::error(
                        Code::ConstraintBroken,
                        span,
                        format!("dim `{name}` is fixed to {v}, but {g} was given"),
                    )
                    .with_label(format!("`{name}` fixed here")),
                );
            }
        }
        env.insert(name.clone(), *v);
        origin.insert(name.clone(), "the where clause".to_string());
    }

    // Check dtypes and ranks, collect the axes to bind from.
    let mut axes: Vec<(usize, usize, &Dim, usize)> = Vec::new(); // (param, axis, dim, actual)
    for (pi, p) in graph.params.iter().enumerate() {
        match &p.kind {
            ParamKind::Dim => {
                if !env.contains_key(&p.name) {
                    errs.push(
                        Diagnostic::error(Code::MissingArg, p.span, format!("dim parameter `{}` is not given", p.name))
                            .with_label("declared here"),
                    );
                }
            }
            ParamKind::Tensor { dtype, shape, .. } => {
                let Some(t) = args.tensors.get(&p.name) else {
                    if dims_only {
                        continue;
                    }
                    let what = if shape.is_empty() { "scalar" } else { "tensor" };
                    errs.push(
                        Diagnostic::error(
                            Code::MissingArg,
                            p.span,
                            format!("{what} parameter `{}` is not given", p.name),
                        )
                        .with_label("declared here"),
                    );
                    continue;
                };
                if t.dtype() != *dtype {
                    errs.push(
                        Diagnostic::error(
                            Code::ArgDType,
                            p.span,
                            format!("`{}` is declared {dtype} but the argument holds {}", p.name, t.dtype()),
                        )
                        .with_label(format!("declared {dtype} here")),
                    );
                }
                if t.shape.len() != shape.len() {
                    errs.push(
                        Diagnostic::error(
                            Code::ArgShape,
                            p.span,
                            format!(
                                "`{}` has rank {} ([{}]) but the argument has rank {} ({})",
                                p.name,
                                shape.len(),
                                fmt_dims(shape),
                                t.shape.len(),
                                fmt_shape(&t.shape)
                            ),
                        )
                        .with_label("declared here"),
                    );
                    continue;
                }
                for (ax, d) in shape.iter().enumerate() {
                    axes.push((pi, ax, d, t.shape[ax]));
                }
            }
        }
    }

    solve_axes(graph, &axes, &mut env, &mut origin);

    // Every axis must now agree with its argument.
    for &(pi, ax, d, actual) in &axes {
        let p = &graph.params[pi];
        match d.eval(&|s| env.get(s).copied()) {
            Ok(v) if v == actual as i64 => {}
            Ok(v) => {
                let t = &args.tensors[&p.name];
                let from: Vec<String> =
                    d.symbols().iter().map(|s| format!("`{s}` = {} (from {})", env[s], origin[s])).collect();
                let mut diag = Diagnostic::error(
                    Code::ArgShape,
                    p.span,
                    format!(
                        "`{}` has shape {} but the signature needs axis {ax} to be `{d}` = {v}",
                        p.name,
                        fmt_shape(&t.shape)
                    ),
                )
                .with_label(format!(
                    "declared [{}] here",
                    fmt_dims(match &p.kind {
                        ParamKind::Tensor { shape, .. } => shape,
                        ParamKind::Dim => &[],
                    })
                ));
                if !from.is_empty() {
                    diag = diag.with_note(format!("bound: {}", from.join(", ")));
                }
                errs.push(diag);
            }
            Err(DimError::Unbound(_)) => {
                errs.push(
                    Diagnostic::error(
                        Code::ArgShape,
                        p.span,
                        format!("axis {ax} of `{}` has size {actual}, which fits no value of `{d}`", p.name),
                    )
                    .with_label("declared here"),
                );
            }
            Err(e) => errs.push(Diagnostic::error(Code::InexactDim, p.span, format!("`{}` axis {ax}: {e}", p.name))),
        }
    }
    if !errs.is_empty() {
        return Err(errs);
    }

    for c in &graph.constraints {
        let l = c.lhs.eval(&|s| env.get(s).copied());
        let r = c.rhs.eval(&|s| env.get(s).copied());
        match (l, r) {
            (Ok(a), Ok(b)) => {
                if !c.op.holds(a, b) {
                    let vals: Vec<String> =
                        c.lhs.symbols().union(&c.rhs.symbols()).map(|s| format!("{s} = {}", env[s])).collect();
                    errs.push(
                        Diagnostic::error(
                            Code::ConstraintBroken,
                            c.span,
                            format!("the launch breaks the constraint `{}`", c.text),
                        )
                        .with_label(format!("{a} {} {b} is false", c.op.symbol()))
                        .with_note(format!("with {}", vals.join(", "))),
                    );
                }
            }
            (Err(DimError::Unbound(s)), _) | (_, Err(DimError::Unbound(s))) => {
                errs.push(Diagnostic::error(
                    Code::MissingArg,
                    c.span,
                    format!("dim `{s}` has no value: give it with the launch's dims"),
                ));
            }
            (Err(e), _) | (_, Err(e)) => {
                errs.push(Diagnostic::error(Code::InexactDim, c.span, format!("in the constraint `{}`: {e}", c.text)));
            }
        }
    }
    if !errs.is_empty() {
        return Err(errs);
    }
    let binding = Binding { dims: env };
    if dims_only {
        for p in &graph.params {
            if let ParamKind::Tensor { shape, .. } = &p.kind {
                if let Err(e) = binding.shape(shape) {
                    let code = if e.contains("more than 2^40") { Code::ResourceLimit } else { Code::MissingArg };
                    errs.push(
                        Diagnostic::error(code, p.span, format!("the shape of `{}`: {e}", p.name))
                            .with_label("declared here")
                            .with_help("give every dim with --dims NAME=N,..."),
                    );
                }
            }
        }
        if !errs.is_empty() {
            return Err(errs);
        }
    }
    for a in &graph.asserts {
        match (binding.eval(&a.lhs), binding.eval(&a.rhs)) {
            (Ok(x), Ok(y)) if x == y => {}
            (Ok(x), Ok(y)) => errs.push(
                Diagnostic::error(
                    Code::ConstraintBroken,
                    a.span,
                    format!("{}: `{}` = {x} but `{}` = {y}", a.what, a.lhs, a.rhs),
                )
                .with_label("needs them equal"),
            ),
            (Err(e), _) | (_, Err(e)) => {
                errs.push(Diagnostic::error(Code::InexactDim, a.span, format!("{}: {e}", a.what)))
            }
        }
    }
    for o in &graph.outputs {
        if let Err(e) = binding.shape(&o.shape) {
            let code = if e.contains("more than 2^40") { Code::ResourceLimit } else { Code::InexactDim };
            errs.push(Diagnostic::error(code, o.span, format!("output `{}`: {e}", o.name)));
        }
    }
    if errs.is_empty() {
        Ok(binding)
    } else {
        Err(errs)
    }
}

/// Binds symbols from axes: a single-symbol axis binds directly; a linear one with one unknown symbol is
/// solved. Repeats until nothing changes. Never overrides a known symbol.
fn solve_axes(
    graph: &Graph,
    axes: &[(usize, usize, &Dim, usize)],
    env: &mut BTreeMap<String, i64>,
    origin: &mut BTreeMap<String, String>,
) {
    loop {
        let mut progress = false;
        for &(pi, ax, d, actual) in axes {
            let pd = d.partial_eval(&|s| env.get(s).copied());
            if pd.as_const().is_some() {
                continue;
            }
            if let Some((sym, a, b)) = pd.as_linear() {
                let n = actual as i64 - b;
                if a != 0 && n % a == 0 && n / a >= 0 {
                    env.insert(sym.clone(), n / a);
                    origin.insert(sym, format!("`{}` axis {ax}", graph.params[pi].name));
                    progress = true;
                }
            }
        }
        if !progress {
            return;
        }
    }
}

/// The dims that the given arguments determine, without checking anything: `args.dims`, the dims fixed
/// by the `where` clause, and those solved from the shapes of the tensors given. For callers that must
/// make the missing arguments (random inputs) before a launch; [`bind`] then checks everything.
pub fn infer_dims(graph: &Graph, args: &Args) -> BTreeMap<String, i64> {
    let mut env: BTreeMap<String, i64> = args.dims.clone();
    for (name, v) in &graph.fixed {
        env.entry(name.clone()).or_insert(*v);
    }
    let mut axes = Vec::new();
    for (pi, p) in graph.params.iter().enumerate() {
        if let (ParamKind::Tensor { shape, .. }, Some(t)) = (&p.kind, args.tensors.get(&p.name)) {
            if t.shape.len() == shape.len() {
                for (ax, d) in shape.iter().enumerate() {
                    axes.push((pi, ax, d, t.shape[ax]));
                }
            }
        }
    }
    solve_axes(graph, &axes, &mut env, &mut BTreeMap::new());
    env
}

/// The dtype a parameter expects, for callers that convert inputs before a launch.
pub fn param_dtype(graph: &Graph, name: &str) -> Option<DType> {
    graph.params.iter().find_map(|p| match &p.kind {
        ParamKind::Tensor { dtype, .. } if p.name == name => Some(*dtype),
        _ => None,
    })
}

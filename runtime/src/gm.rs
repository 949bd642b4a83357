//! Global memory for the executors of tile programs (the simulator and the JIT): the checks of a launch's
//! arguments against the kernel and the program, one flat array per GM tensor, and the results read back.

use kc_ir::diag::{Code, Diagnostic};
use kc_ir::graph::{Graph, ParamKind};
use kc_ir::interp::Limits;
use kc_ir::launch::{self, Args, Binding};
use kc_ir::span::Span;
use kc_ir::tensor::{numel, Tensor, TensorData};
use kc_ir::tile::{Launch, LibOp, Loc, Region, Stmt, TensorId, TensorRole, TileProgram};

/// The most cores a launch may have.
pub const MAX_CORES: u64 = 1 << 12;

/// One `(name, tensor)` per entry of `graph.results`, in order.
pub type Results = Vec<(String, Tensor)>;

/// Binds `args` to `graph`'s signature (every check the interpreter makes), checks that `prog` is
/// specialized to the bound dims and that GM plus the largest launch's buffers fit `limits.max_bytes`, and
/// sets up global memory: a `Param(i)` tensor is a copy of the argument converted to the tensor's dtype (the
/// caller's arguments are never modified, so a failed run leaves them as they were); every other tensor
/// starts as zeros; a workspace holds `per_core` bytes for each core of the largest launch that uses it.
/// `who` names the executor in messages ("simulating", "running").
pub fn setup(
    prog: &TileProgram,
    graph: &Graph,
    args: &Args,
    limits: &Limits,
    who: &str,
) -> Result<(Binding, Vec<TensorData>), Vec<Diagnostic>> {
    setup_borrowing(prog, graph, args, limits, who, &|_| false)
}

/// [`setup`], except that a `Param` tensor for which `borrow` is true and whose argument already has the
/// tensor's dtype is not copied: its entry is left empty (`Bool(vec![])`) and the caller reads the
/// argument in place (for tensors that no statement writes, or updated in place); an `Output` tensor for
/// which `borrow` is true is not allocated either (it is written into an `inout` argument's memory), nor
/// is an intermediate or workspace for which `borrow` is true (the caller supplies memory of its own, of
/// [`tensor_elems`] elements: the JIT executor's arena).
pub fn setup_borrowing(
    prog: &TileProgram,
    graph: &Graph,
    args: &Args,
    limits: &Limits,
    who: &str,
    borrow: &dyn Fn(TensorId) -> bool,
) -> Result<(Binding, Vec<TensorData>), Vec<Diagnostic>> {
    let binding = launch::bind(graph, args)?;
    let span = graph.span;
    let ierr = |msg: String| vec![internal(span, msg)];

    // The program must be specialized to the launch's dims.
    let mut errs = Vec::new();
    for (name, &v) in &prog.dims {
        match binding.get(name) {
            Some(b) if b == v => {}
            Some(b) => errs.push(
                Diagnostic::error(
                    Code::ArgShape,
                    span,
                    format!(
                        "the tile program of `{}` was compiled for `{name}` = {v}, but the launch has `{name}` = {b}",
                        prog.kernel
                    ),
                )
                .with_help("compile the kernel for the launch's dims"),
            ),
            None => {
                errs.push(internal(span, format!("the program is specialized to dim `{name}`, which the kernel lacks")))
            }
        }
    }
    if !errs.is_empty() {
        return Err(errs);
    }

    // Sizes of GM tensors and launches' buffers, checked before anything is allocated.
    let mut sizes = Vec::with_capacity(prog.tensors.len());
    let mut total: u64 = 0;
    for (ti, t) in prog.tensors.iter().enumerate() {
        let Some(elems) = tensor_elems(prog, ti) else {
            return Err(ierr(format!("GM tensor `{}` has more than 2^40 elements", t.name)));
        };
        sizes.push(elems as usize);
        total = total.saturating_add(elems.saturating_mul(t.dtype.size_bytes() as u64));
    }
    let mut largest_launch: u64 = 0;
    for l in &prog.launches {
        let cores = u64::from(l.cube_cores) + u64::from(l.vector_cores);
        if cores > MAX_CORES {
            return Err(ierr(format!("launch `{}` has {cores} cores, more than {MAX_CORES}", l.name)));
        }
        let mut bytes: u64 = 0;
        for b in &l.buffers {
            let n = if b.mem.on_cube() { l.cube_cores } else { l.vector_cores };
            let one = b
                .shape
                .iter()
                .try_fold(1u64, |a, &d| a.checked_mul(d))
                .and_then(|e| e.checked_mul(u64::from(b.slots)))
                .and_then(|e| e.checked_mul(b.dtype.size_bytes() as u64))
                .filter(|&e| e <= 1 << 32);
            let Some(one) = one else {
                return Err(ierr(format!(
                    "buffer `{}` of launch `{}` is larger than any on-chip memory",
                    b.name, l.name
                )));
            };
            bytes = bytes.saturating_add(one.saturating_mul(u64::from(n)));
        }
        largest_launch = largest_launch.max(bytes);
    }
    let need = total.saturating_add(largest_launch);
    if need > limits.max_bytes {
        return Err(vec![Diagnostic::error(
            Code::ResourceLimit,
            span,
            format!(
                "{who} `{}` needs {need} bytes ({total} of global memory, {largest_launch} of on-chip \
                 buffers), more than the limit of {} bytes",
                prog.kernel, limits.max_bytes
            ),
        )]);
    }

    // Global memory.
    let mut gm: Vec<TensorData> = Vec::with_capacity(prog.tensors.len());
    for (t, &elems) in prog.tensors.iter().zip(&sizes) {
        let data = match &t.role {
            TensorRole::Param(pi) => {
                let p = graph
                    .params
                    .get(*pi)
                    .ok_or_else(|| ierr(format!("GM tensor `{}` is parameter #{pi}, which does not exist", t.name)))?;
                if !matches!(p.kind, ParamKind::Tensor { .. }) {
                    return Err(ierr(format!("GM tensor `{}` is the dim parameter `{}`", t.name, p.name)));
                }
                let a = args
                    .tensors
                    .get(&p.name)
                    .ok_or_else(|| ierr(format!("parameter `{}` has no argument after binding", p.name)))?;
                if numel(&a.shape) != Some(a.len()) {
                    return Err(vec![Diagnostic::error(
                        Code::ArgShape,
                        p.span,
                        format!(
                            "the argument `{}` has shape {} but holds {} elements",
                            p.name,
                            fmt_shape(&a.shape),
                            a.len()
                        ),
                    )]);
                }
                let want: Vec<u64> = a.shape.iter().map(|&d| d as u64).collect();
                if want != t.shape {
                    return Err(ierr(format!(
                        "GM tensor `{}` has shape {} but the argument `{}` has shape {}",
                        t.name,
                        fmt_shape_u64(&t.shape),
                        p.name,
                        fmt_shape(&a.shape)
                    )));
                }
                if a.dtype() == t.dtype && borrow(TensorId(gm.len() as u32)) {
                    TensorData::Bool(Vec::new())
                } else if a.dtype() == t.dtype {
                    // A copy in huge pages (a written parameter: the caller's tensor stays as it was).
                    let mut z = Tensor::zeros(t.dtype, vec![elems]).data;
                    huge_pages(&mut z);
                    match (&mut z, &a.data) {
                        (TensorData::F32(d), TensorData::F32(s)) => d.copy_from_slice(s),
                        (TensorData::BF16(d), TensorData::BF16(s)) => d.copy_from_slice(s),
                        (TensorData::F16(d), TensorData::F16(s)) => d.copy_from_slice(s),
                        (TensorData::I32(d), TensorData::I32(s)) => d.copy_from_slice(s),
                        (TensorData::Bool(d), TensorData::Bool(s)) => d.copy_from_slice(s),
                        _ => z = a.data.clone(),
                    }
                    z
                } else {
                    a.cast(t.dtype).data
                }
            }
            TensorRole::Output(i) if *i >= graph.results.len() => {
                return Err(ierr(format!(
                    "GM tensor `{}` is result #{i}, but the kernel has {} results",
                    t.name,
                    graph.results.len()
                )))
            }
            TensorRole::Output(_) | TensorRole::Intermediate(_) | TensorRole::Workspace { .. }
                if borrow(TensorId(gm.len() as u32)) =>
            {
                TensorData::Bool(Vec::new())
            }
            _ => {
                let mut z = Tensor::zeros(t.dtype, vec![elems]).data;
                huge_pages(&mut z);
                z
            }
        };
        gm.push(data);
    }

    Ok((binding, gm))
}

/// The elements GM tensor `ti` of `prog` holds (a workspace: `per_core` bytes for each core of the largest
/// launch that uses it); `None` beyond [`launch::MAX_ELEMENTS`].
pub fn tensor_elems(prog: &TileProgram, ti: usize) -> Option<u64> {
    let t = prog.tensors.get(ti)?;
    let elems = match &t.role {
        TensorRole::Workspace { per_core, .. } => {
            let cores = prog
                .launches
                .iter()
                .filter(|l| uses_tensor(l, TensorId(ti as u32)))
                .map(|l| u64::from(l.cube_cores) + u64::from(l.vector_cores))
                .max()
                .unwrap_or(0);
            per_core.checked_mul(cores).map(|b| b / t.dtype.size_bytes() as u64)
        }
        _ => t.shape.iter().try_fold(1u64, |a, &d| a.checked_mul(d)),
    };
    elems.filter(|&n| n <= launch::MAX_ELEMENTS)
}

/// The unit-private workspaces of launch `l` of `prog` (`TensorRole::Workspace` with `unit_private`, used
/// by that launch only, in a launch with cube cores and a whole number of vector cores per cube core): per
/// tensor, its index, the elements of one unit's area and its bytes. The host JIT addresses such a tensor relative to
/// the running unit's area (cube core `q`, or vector core `v` with `v / ratio == q`: elements `q · e ..
/// (q + 1) · e`), and the executor hands each thread one area of `e` elements that the units it runs reuse.
pub fn unit_private_workspaces(prog: &TileProgram, l: &Launch) -> Vec<(usize, u64, usize)> {
    if l.cube_cores == 0 || !l.vector_cores.is_multiple_of(l.cube_cores) {
        return Vec::new();
    }
    let mut out = Vec::new();
    for (ti, t) in prog.tensors.iter().enumerate() {
        let TensorRole::Workspace { per_core, unit_private: true } = t.role else { continue };
        let id = TensorId(ti as u32);
        let users = prog.launches.iter().filter(|x| uses_tensor(x, id)).count();
        let e = per_core / t.dtype.size_bytes() as u64;
        if users == 1 && uses_tensor(l, id) && e > 0 && e <= launch::MAX_ELEMENTS {
            out.push((ti, e, (e * t.dtype.size_bytes() as u64) as usize));
        }
    }
    out
}

/// The results: the final contents of the `Output(i)` tensors (`results[i]`; for an `inout` result without
/// an `Output` tensor, the final contents of its `Param` tensor), checked against the kernel's result types.
pub fn results(
    prog: &TileProgram,
    graph: &Graph,
    binding: &Binding,
    mut gm: Vec<TensorData>,
) -> Result<Results, Vec<Diagnostic>> {
    let sources = result_sources(prog, graph, binding, &|ti| gm[ti].len())?;
    let mut out = Vec::with_capacity(sources.len());
    for (k, (ti, shape)) in sources.iter().enumerate() {
        let last_use = !sources[k + 1..].iter().any(|(o, _)| o == ti);
        let data =
            if last_use { std::mem::replace(&mut gm[*ti], TensorData::Bool(Vec::new())) } else { gm[*ti].clone() };
        out.push((graph.results[k].name.clone(), Tensor { shape: shape.clone(), data }));
    }
    Ok(out)
}

/// For each of `graph.results`, the GM tensor that holds it and its shape, checked against the kernel's
/// result types (`len(ti)`: the elements GM tensor `ti` holds).
pub fn result_sources(
    prog: &TileProgram,
    graph: &Graph,
    binding: &Binding,
    len: &dyn Fn(usize) -> usize,
) -> Result<Vec<(usize, Vec<usize>)>, Vec<Diagnostic>> {
    let span = graph.span;
    let ierr = |msg: String| vec![internal(span, msg)];
    let mut sources = Vec::with_capacity(graph.results.len());
    for (ri, r) in graph.results.iter().enumerate() {
        let by_output = prog.tensors.iter().position(|t| t.role == TensorRole::Output(ri));
        let by_param = r.inout.and_then(|pi| prog.tensors.iter().position(|t| t.role == TensorRole::Param(pi)));
        let Some(ti) = by_output.or(by_param) else {
            return Err(ierr(format!("no GM tensor holds result #{ri} (`{}`)", r.name)));
        };
        let t = &prog.tensors[ti];
        let shape: Option<Vec<usize>> = t.shape.iter().map(|&d| usize::try_from(d).ok()).collect();
        let Some(shape) = shape.filter(|s| numel(s) == Some(len(ti))) else {
            return Err(ierr(format!("GM tensor `{}` has a shape that does not match its size", t.name)));
        };
        if let Some(node) = graph.nodes.get(r.value.index()) {
            let want = binding.shape(&node.shape).map_err(|e| ierr(format!("result `{}`: {e}", r.name)))?;
            if node.dtype != t.dtype || want != shape {
                return Err(ierr(format!(
                    "result `{}` is {} {} but GM tensor `{}` is {} {}",
                    r.name,
                    node.dtype,
                    fmt_shape(&want),
                    t.name,
                    t.dtype,
                    fmt_shape(&shape)
                )));
            }
        }
        sources.push((ti, shape));
    }
    Ok(sources)
}

/// A copy of `t` in memory that Linux is asked to back with transparent huge pages (as global memory is):
/// for callers that keep tensors across many launches, e.g. `kc bench`'s in-place steps.
pub fn huge_copy(t: &Tensor) -> Tensor {
    let mut z = Tensor::zeros(t.dtype(), t.shape.clone());
    huge_pages(&mut z.data);
    match (&mut z.data, &t.data) {
        (TensorData::F32(d), TensorData::F32(s)) if d.len() == s.len() => d.copy_from_slice(s),
        (TensorData::BF16(d), TensorData::BF16(s)) if d.len() == s.len() => d.copy_from_slice(s),
        (TensorData::F16(d), TensorData::F16(s)) if d.len() == s.len() => d.copy_from_slice(s),
        (TensorData::I32(d), TensorData::I32(s)) if d.len() == s.len() => d.copy_from_slice(s),
        (TensorData::Bool(d), TensorData::Bool(s)) if d.len() == s.len() => d.copy_from_slice(s),
        _ => return t.clone(),
    }
    z
}

/// Asks Linux for transparent huge pages on a large zeroed tensor (its pages are touched for the first time
/// by the kernel's writes: 512 times fewer page faults). Advice only: nothing changes if it is refused.
fn huge_pages(d: &mut TensorData) {
    const HUGE: usize = 2 << 20;
    let (p, bytes) = match d {
        TensorData::F32(v) => (v.as_mut_ptr() as usize, v.len() * 4),
        TensorData::BF16(v) => (v.as_mut_ptr() as usize, v.len() * 2),
        TensorData::F16(v) => (v.as_mut_ptr() as usize, v.len() * 2),
        TensorData::I32(v) => (v.as_mut_ptr() as usize, v.len() * 4),
        TensorData::Bool(v) => (v.as_mut_ptr() as usize, v.len()),
    };
    let start = p.div_ceil(HUGE) * HUGE;
    let end = (p + bytes) / HUGE * HUGE;
    if end <= start {
        return;
    }
    #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
    {
        const SYS_MADVISE: i64 = 28;
        const MADV_HUGEPAGE: i64 = 14;
        // SAFETY: madvise on whole pages inside a live allocation of ours; MADV_HUGEPAGE changes no contents.
        // The kernel clobbers rcx and r11.
        unsafe {
            std::arch::asm!(
                "syscall",
                inlateout("rax") SYS_MADVISE => _,
                in("rdi") start,
                in("rsi") end - start,
                in("rdx") MADV_HUGEPAGE,
                lateout("rcx") _,
                lateout("r11") _,
                options(nostack),
            );
        }
    }
}

pub(crate) fn internal(span: Span, msg: String) -> Diagnostic {
    Diagnostic::error(Code::Internal, span, format!("internal error in the tile executor: {msg}"))
}

pub(crate) fn fmt_shape(s: &[usize]) -> String {
    format!("[{}]", s.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", "))
}

fn fmt_shape_u64(s: &[u64]) -> String {
    format!("[{}]", s.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", "))
}

/// Calls `f` on each region a library operation writes (its results, and a scan's carry).
fn library_writes<'a>(op: &'a LibOp, f: &mut impl FnMut(&'a Region)) {
    match op {
        LibOp::TopK { values, indices, .. } => values.iter().chain(indices.iter()).for_each(f),
        LibOp::ArgSort { dst, .. } | LibOp::BinCount { dst, .. } => f(dst),
        LibOp::CumSum { dst, carry, .. } => {
            f(dst);
            carry.iter().for_each(f);
        }
    }
}

/// The GM tensors some statement of the program writes (copies, gathers, vector statements, reductions,
/// library operations and mmads into GM).
pub fn written(prog: &TileProgram) -> std::collections::BTreeSet<TensorId> {
    fn region(r: &Region, out: &mut std::collections::BTreeSet<TensorId>) {
        if let Loc::Gm(t) = r.loc {
            out.insert(t);
        }
    }
    fn stmts(ss: &[Stmt], out: &mut std::collections::BTreeSet<TensorId>) {
        for s in ss {
            match s {
                Stmt::For { body, .. } | Stmt::If { then: body, .. } => stmts(body, out),
                Stmt::Copy { dst, .. }
                | Stmt::Gather { dst, .. }
                | Stmt::Vector { dst, .. }
                | Stmt::Reduce { dst, .. } => region(dst, out),
                Stmt::Mmad { c, .. } => region(c, out),
                Stmt::Library { op, .. } => library_writes(op, &mut |r| region(r, out)),
                _ => {}
            }
        }
    }
    let mut out = std::collections::BTreeSet::new();
    for l in &prog.launches {
        stmts(&l.cube, &mut out);
        stmts(&l.vector, &mut out);
    }
    out
}

/// Whether a launch reads or writes GM tensor `t`.
pub fn uses_tensor(l: &Launch, t: TensorId) -> bool {
    let mut used = std::collections::BTreeSet::new();
    named(&l.cube, &mut used);
    named(&l.vector, &mut used);
    used.contains(&t)
}

/// Adds every GM tensor that a statement of `body` reads or writes (a region in GM, or a gather's source).
pub fn named(body: &[Stmt], out: &mut std::collections::BTreeSet<TensorId>) {
    fn region(r: &Region, out: &mut std::collections::BTreeSet<TensorId>) {
        if let Loc::Gm(t) = r.loc {
            out.insert(t);
        }
    }
    for s in body {
        match s {
            Stmt::For { body, .. } | Stmt::If { then: body, .. } => named(body, out),
            Stmt::Copy { src, dst, .. } | Stmt::Reduce { src, dst, .. } => {
                region(src, out);
                region(dst, out);
            }
            Stmt::Gather { src, index, dst, .. } => {
                out.insert(*src);
                region(index, out);
                region(dst, out);
            }
            Stmt::Mmad { a, b, c, .. } => {
                for r in [a, b, c] {
                    region(r, out);
                }
            }
            Stmt::Vector { dst, expr, .. } => {
                region(dst, out);
                let (mut reads, mut scalars) = (Vec::new(), Vec::new());
                crate::inplace::vreads(expr, &mut reads, &mut scalars);
                for (_, r) in reads {
                    region(r, out);
                }
            }
            Stmt::Library { op, src, .. } => {
                region(src, out);
                library_writes(op, &mut |r| region(r, out));
            }
            Stmt::Set { .. }
            | Stmt::SetFlag { .. }
            | Stmt::WaitFlag { .. }
            | Stmt::Barrier { .. }
            | Stmt::CrossSet { .. }
            | Stmt::CrossWait { .. } => {}
        }
    }
}

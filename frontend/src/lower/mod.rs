//! Lowering: AST to graph IR.
//!
//! [`compile`] reads the standard library, the root file and every file it `use`s; collects the `fn`s and
//! `kernel`s; and lowers each kernel of the root file to a [`Graph`]: names are resolved in lexical
//! scopes, `fn` calls are inlined and typed at each call, `for` loops are unrolled, shapes are inferred with
//! symbolic dims (dims fixed by `where D == 8` are substituted), dtypes follow the contract's rules,
//! whole-tensor operations broadcast like NumPy, and index-notation ranges are inferred from use.
//! Each kernel is checked by the IR verifier before it is returned (a failure there is a compiler bug,
//! reported as E0900). Lowering never stops at the first error.

mod expr;
mod hint;
mod stmt;
mod tval;

use crate::ast::{self, Item};
use crate::parser;
use crate::source::{Loader, SourceMap};
use kc_ir::{Code, Diagnostic, Dim, FileId, Graph, Node, Program, Span, VarId};
use std::collections::{BTreeMap, BTreeSet};
pub(crate) use tval::{GVar, TVal};

/// The standard library, always in scope.
pub const STD_SOURCE: &str = include_str!("std.ker");
pub const STD_NAME: &str = "<std>";

/// Limits that keep compilation bounded on pathological input.
pub const MAX_USE_DEPTH: usize = 32;
pub const MAX_INLINE_DEPTH: usize = 64;
/// The most graph nodes one kernel may lower to (after unrolling and inlining).
pub const MAX_NODES: usize = 20_000;
/// The most expression nodes lowering may build for one kernel (inlining can grow expressions fast).
pub const MAX_WORK: usize = 4_000_000;
/// The largest dimension (and dim coefficient) a kernel may write: the launch limit on elements.
pub const MAX_DIM: i64 = kc_ir::launch::MAX_ELEMENTS as i64;
/// The most iterations of one `for` loop.
pub const MAX_UNROLL: i64 = 1024;
/// The most statements and `for` iterations lowering may go through for one kernel, after unrolling and
/// inlining: nested loops whose bodies build nothing (empty, or only aliases and errors) never reach
/// [`MAX_NODES`] or [`MAX_WORK`], but still take time for every iteration.
pub const MAX_STEPS: usize = 100_000;

/// Compiles the file `root` of `sources` (and every file it `use`s, read through `loader` and added to
/// `sources`), with the standard library in scope, to a program of lowered, verified kernels.
/// Never stops at the first error: returns every kernel that lowered without error and every diagnostic.
pub fn compile(sources: &mut SourceMap, root: FileId, loader: &dyn Loader) -> (Program, Vec<Diagnostic>) {
    let mut diags = Vec::new();
    let std_id = match sources.find(STD_NAME) {
        Some(id) => id,
        None => sources.add(STD_NAME, STD_SOURCE),
    };
    let mut modules: Vec<(FileId, ast::Module)> = Vec::new();
    let mut loaded: BTreeSet<FileId> = BTreeSet::new();
    load_file(sources, std_id, loader, &mut modules, &mut loaded, &mut Vec::new(), &mut diags);
    load_file(sources, root, loader, &mut modules, &mut loaded, &mut Vec::new(), &mut diags);

    // Collect fns (user fns may shadow the standard library's) and the root file's kernels.
    let mut fns: BTreeMap<String, &ast::FnDef> = BTreeMap::new();
    let mut fn_file: BTreeMap<String, FileId> = BTreeMap::new();
    let mut kernels: Vec<&ast::KernelDef> = Vec::new();
    let mut kernel_names: BTreeMap<String, Span> = BTreeMap::new();
    for (file, m) in &modules {
        for item in &m.items {
            match item {
                Item::Fn(f) => {
                    let shadowing_std = fn_file.get(&f.name.name) == Some(&std_id) && *file != std_id;
                    if let Some(prev) = fns.get(&f.name.name).filter(|_| !shadowing_std) {
                        diags.push(
                            Diagnostic::error(
                                Code::DuplicateItem,
                                f.name.span,
                                format!("fn `{}` is defined twice", f.name.name),
                            )
                            .with_label("defined again here")
                            .with_secondary(prev.name.span, "first defined here"),
                        );
                        continue;
                    }
                    fns.insert(f.name.name.clone(), f);
                    fn_file.insert(f.name.name.clone(), *file);
                }
                Item::Kernel(k) if *file == root => {
                    if let Some(prev) = kernel_names.get(&k.name.name) {
                        diags.push(
                            Diagnostic::error(
                                Code::DuplicateItem,
                                k.name.span,
                                format!("kernel `{}` is defined twice", k.name.name),
                            )
                            .with_label("defined again here")
                            .with_secondary(*prev, "first defined here"),
                        );
                        continue;
                    }
                    kernel_names.insert(k.name.name.clone(), k.name.span);
                    kernels.push(k);
                }
                Item::Kernel(_) | Item::Use { .. } => {}
            }
        }
    }
    for (name, f) in &fns {
        if fn_file.get(name) == Some(&std_id) {
            continue;
        }
        if let Some(k) = kernel_names.get(name) {
            diags.push(
                Diagnostic::error(Code::DuplicateItem, *k, format!("`{name}` names both a kernel and a fn"))
                    .with_secondary(f.name.span, "the fn"),
            );
        }
    }

    let std_fns: BTreeMap<String, &ast::FnDef> = modules
        .iter()
        .filter(|(f, _)| *f == std_id)
        .flat_map(|(_, m)| m.items.iter())
        .filter_map(|i| match i {
            Item::Fn(f) => Some((f.name.name.clone(), f)),
            _ => None,
        })
        .collect();
    let mut program = Program::default();
    for k in kernels {
        let mut lw = Lowerer::new(&fns, &std_fns, std_id, &kernel_names);
        let graph = lw.kernel(k);
        let failed = lw.diags.iter().any(|d| d.is_error());
        // An error inside an unrolled loop or an inlined fn is reported once.
        let mut seen: BTreeSet<(Code, Span, String)> = BTreeSet::new();
        diags.extend(lw.diags.drain(..).filter(|d| seen.insert((d.code, d.primary.span, d.message.clone()))));
        if let (Some(g), false) = (graph, failed) {
            match kc_ir::verify::verify(&g) {
                Ok(()) => program.kernels.push(g),
                Err(errs) => {
                    let msgs: Vec<String> = errs.iter().take(5).map(|e| e.to_string()).collect();
                    diags.push(
                        Diagnostic::error(
                            Code::Internal,
                            k.name.span,
                            format!("internal error: kernel `{}` lowered to invalid IR", k.name.name),
                        )
                        .with_note(msgs.join("\n"))
                        .with_note("this is a bug in kc; please report it with this file"),
                    );
                }
            }
        }
    }
    (program, diags)
}

fn load_file(
    sources: &mut SourceMap,
    file: FileId,
    loader: &dyn Loader,
    modules: &mut Vec<(FileId, ast::Module)>,
    loaded: &mut BTreeSet<FileId>,
    stack: &mut Vec<FileId>,
    diags: &mut Vec<Diagnostic>,
) {
    if !loaded.insert(file) {
        return;
    }
    let Some(src) = sources.get(file) else { return };
    let (name, text) = (src.name.clone(), src.text.clone());
    let (module, mut ds) = parser::parse(file, &text);
    diags.append(&mut ds);
    stack.push(file);
    for item in &module.items {
        if let Item::Use { path, span } = item {
            if stack.len() >= MAX_USE_DEPTH {
                diags.push(Diagnostic::error(
                    Code::UseCycle,
                    *span,
                    format!("`use` nested deeper than {MAX_USE_DEPTH} files"),
                ));
                continue;
            }
            match loader.load(&name, path) {
                Ok((resolved, text)) => {
                    let id = match sources.find(&resolved) {
                        Some(id) => id,
                        None => sources.add(resolved.clone(), text),
                    };
                    if stack.contains(&id) {
                        diags.push(
                            Diagnostic::error(
                                Code::UseCycle,
                                *span,
                                format!("`{resolved}` is already being read: the files `use` each other in a cycle"),
                            )
                            .with_help("move the shared fns to a file that both use"),
                        );
                        continue;
                    }
                    load_file(sources, id, loader, modules, loaded, stack, diags);
                }
                Err(msg) => {
                    diags.push(Diagnostic::error(Code::UseNotFound, *span, msg).with_label("this file cannot be read"))
                }
            }
        }
    }
    stack.pop();
    modules.push((file, module));
}

/// What a `let` or an assignment bound, for the schedule hints written before it.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum StmtBound {
    /// A stored value: a new node, or an existing one when the value is exactly that node.
    Node(kc_ir::ValueId),
    /// A `let` of a dim (`let R = H / G;`): no value is stored.
    Dim,
    /// A value inside an inlined fn called from index notation: computed element by element, never stored.
    Lazy,
    /// The statement failed (its error is reported).
    Failed,
}

/// What a name stands for while lowering.
#[derive(Clone, Debug)]
pub(crate) enum Bind {
    /// A read-only value: an input parameter, a fn argument.
    Val(TVal),
    /// A `let` value; `x = ...` rebinds it, keeping its storage type.
    Let {
        tv: TVal,
        storage: kc_ir::DType,
    },
    /// A declared output, with its value once assigned.
    Output {
        idx: usize,
        value: Option<(TVal, kc_ir::ValueId)>,
    },
    /// An `inout` parameter: its current value, and the node of its assignment.
    Inout {
        param: usize,
        tv: TVal,
        assigned: Option<kc_ir::ValueId>,
    },
    Dim(Dim),
    Index(VarId),
    /// A name whose definition failed (its error is reported); uses stay silent.
    Poison,
}

#[derive(Default)]
pub(crate) struct Scope {
    pub names: BTreeMap<String, Bind>,
    /// A fn body's outermost scope: lookups do not see past it.
    pub barrier: bool,
}

/// Lowers one kernel.
pub(crate) struct Lowerer<'a> {
    /// The fns user code sees (user fns shadow the standard library's).
    pub fns: &'a BTreeMap<String, &'a ast::FnDef>,
    /// The standard library's fns: what its own bodies see.
    pub std_fns: &'a BTreeMap<String, &'a ast::FnDef>,
    pub std_file: FileId,
    /// Shape facts from the `where` clause and from dim divisions (all checked at launch).
    pub equal_syms: Vec<(String, String)>,
    /// Dim divisions `x / y` that did not simplify: each must divide exactly at launch.
    pub divisions: Vec<(Dim, Dim, Span)>,
    pub diags: Vec<Diagnostic>,
    pub vars: Vec<GVar>,
    pub nodes: Vec<Node>,
    pub scopes: Vec<Scope>,
    /// Dims fixed by the `where` clause, substituted everywhere.
    pub fixed: BTreeMap<String, i64>,
    /// Facts `X % c == 0` from the `where` clause, for proving shapes equal.
    pub divisible: Vec<(Dim, i64)>,
    pub graph: Graph,
    pub call_stack: Vec<String>,
    /// The file of each fn being inlined (the innermost last).
    pub fn_files: Vec<FileId>,
    /// The span of each fn call being inlined.
    pub call_sites: Vec<Span>,
    /// The file's kernels (not values: a name that is one gets a clear error).
    pub kernel_names: &'a BTreeMap<String, Span>,
    /// Inside a branch of `where(c, a, b)`: element reads there may be guarded.
    pub masked: u32,
    /// The index variables being bound by the statements and reductions being lowered, whose uses count
    /// for range inference.
    pub collecting: Vec<VarId>,
    pub too_big: bool,
    /// Expression nodes built so far, against [`MAX_WORK`].
    pub work: usize,
    /// Statements and `for` iterations gone through so far, against [`MAX_STEPS`].
    pub steps: usize,
}

impl<'a> Lowerer<'a> {
    fn new(
        fns: &'a BTreeMap<String, &'a ast::FnDef>,
        std_fns: &'a BTreeMap<String, &'a ast::FnDef>,
        std_file: FileId,
        kernel_names: &'a BTreeMap<String, Span>,
    ) -> Lowerer<'a> {
        Lowerer {
            fns,
            std_fns,
            std_file,
            equal_syms: Vec::new(),
            divisions: Vec::new(),
            diags: Vec::new(),
            vars: Vec::new(),
            nodes: Vec::new(),
            scopes: vec![Scope::default()],
            fixed: BTreeMap::new(),
            divisible: Vec::new(),
            graph: Graph::default(),
            call_stack: Vec::new(),
            fn_files: Vec::new(),
            call_sites: Vec::new(),
            kernel_names,
            masked: 0,
            collecting: Vec::new(),
            too_big: false,
            work: 0,
            steps: 0,
        }
    }

    /// Reports an error. One that arises inside the standard library points at the user's call.
    pub(crate) fn err(&mut self, mut d: Diagnostic) {
        if d.primary.span.file == self.std_file {
            if let Some(site) = self.call_sites.iter().rev().find(|s| s.file != self.std_file).copied() {
                let inner =
                    std::mem::replace(&mut d.primary, kc_ir::Label { span: site, message: "in this call".into() });
                let msg = if inner.message.is_empty() { "in the standard library".to_string() } else { inner.message };
                d.secondary.insert(0, kc_ir::Label { span: inner.span, message: msg });
            }
        }
        self.diags.push(d);
    }

    /// The scopes a name can be found in: from the innermost fn body's outermost scope (a barrier: fns
    /// are lexically closed) or from the kernel's, to the innermost.
    fn visible(&self) -> std::ops::Range<usize> {
        self.scopes.iter().rposition(|s| s.barrier).unwrap_or(0)..self.scopes.len()
    }

    pub(crate) fn lookup(&self, name: &str) -> Option<&Bind> {
        self.scopes[self.visible()].iter().rev().find_map(|s| s.names.get(name))
    }

    pub(crate) fn lookup_mut(&mut self, name: &str) -> Option<&mut Bind> {
        let r = self.visible();
        self.scopes[r].iter_mut().rev().find_map(|s| s.names.get_mut(name))
    }

    /// Every name visible here, for "did you mean" suggestions.
    pub(crate) fn visible_names(&self) -> Vec<String> {
        self.scopes[self.visible()].iter().rev().flat_map(|s| s.names.keys().cloned()).collect()
    }

    pub(crate) fn define(&mut self, name: &str, b: Bind) {
        if let Some(s) = self.scopes.last_mut() {
            s.names.insert(name.to_string(), b);
        }
    }

    /// Substitutes the fixed dims.
    pub(crate) fn norm(&self, d: &Dim) -> Dim {
        let mut d = d.clone();
        for (k, v) in &self.fixed {
            d = d.substitute(k, &Dim::constant(*v));
        }
        d
    }

    /// Whether two dims are equal for every size the `where` clause allows, as far as the compiler can
    /// tell: `Some(true)` proven, `Some(false)` disproven (they differ at some allowed sizes), `None` unsure.
    pub(crate) fn dims_equal(&self, a: &Dim, b: &Dim) -> Option<bool> {
        if a == b {
            return Some(true);
        }
        // A fact `X % c == 0` lets `X` be written `c * X'`, which makes `c * (X / c)` simplify to `X`.
        let (mut pa, mut pb) = (a.clone(), b.clone());
        for (x, y) in &self.equal_syms {
            pa = pa.substitute(y, &Dim::sym(x));
            pb = pb.substitute(y, &Dim::sym(x));
        }
        for (x, c) in &self.divisible {
            if let (Some(sym), true) = (x.as_sym(), *c > 0) {
                let scaled = Dim::constant(*c).mul(&Dim::sym(format!("{sym}'")));
                pa = pa.substitute(sym, &scaled);
                pb = pb.substitute(sym, &scaled);
            }
        }
        if pa == pb {
            return Some(true);
        }
        let syms: Vec<String> = a.symbols().union(&b.symbols()).cloned().collect();
        // Probe with sizes that satisfy every divisibility fact: multiples of every divisor.
        let m: i64 = self.divisible.iter().fold(1i64, |acc, (_, c)| lcm(acc, c.abs().max(1)));
        let primes = [3i64, 5, 7, 11, 13, 17, 19, 23];
        let mut all_equal = true;
        for probe in 0..4 {
            let env: BTreeMap<&str, i64> =
                syms.iter().enumerate().map(|(i, s)| (s.as_str(), m * primes[(i + probe) % primes.len()])).collect();
            let f = |s: &str| env.get(s).copied();
            match (a.eval(&f), b.eval(&f)) {
                (Ok(x), Ok(y)) if x != y => all_equal = false,
                (Ok(_), Ok(_)) => {}
                _ => return None,
            }
        }
        if all_equal {
            None
        } else {
            Some(false)
        }
    }
}

fn lcm(a: i64, b: i64) -> i64 {
    fn gcd(a: i64, b: i64) -> i64 {
        if b == 0 {
            a
        } else {
            gcd(b, a % b)
        }
    }
    let g = gcd(a, b).max(1);
    (a / g).saturating_mul(b).min(1 << 20)
}

/// Edit distance, for suggestions.
pub(crate) fn suggest<'n>(name: &str, candidates: impl IntoIterator<Item = &'n str>) -> Option<String> {
    fn dist(a: &str, b: &str) -> usize {
        let a: Vec<char> = a.chars().collect();
        let b: Vec<char> = b.chars().collect();
        let mut prev: Vec<usize> = (0..=b.len()).collect();
        let mut prev2: Vec<usize> = prev.clone();
        for i in 1..=a.len() {
            let mut cur = vec![i; b.len() + 1];
            for j in 1..=b.len() {
                let c = if a[i - 1] == b[j - 1] { 0 } else { 1 };
                cur[j] = (prev[j] + 1).min(cur[j - 1] + 1).min(prev[j - 1] + c);
                // An adjacent transposition counts as one edit.
                if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                    cur[j] = cur[j].min(prev2[j - 2] + 1);
                }
            }
            prev2 = std::mem::replace(&mut prev, cur);
        }
        prev[b.len()]
    }
    // A name of one or two letters is too short to guess what was meant.
    if name.chars().count() <= 2 {
        return None;
    }
    let limit = (name.chars().count() / 3).max(1);
    candidates
        .into_iter()
        .filter(|c| *c != name)
        .map(|c| (dist(name, c), c))
        .filter(|(d, _)| *d <= limit)
        .min()
        .map(|(_, c)| c.to_string())
}

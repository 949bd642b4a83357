//! Fusion on every kernel: structural invariants, and the properties the compiler promises for the
//! reference kernels (what stays out of global memory).

use crate::common;
use kc_ir::passes::fuse::{fuse, gm_intermediates, Fusion, FusionConfig, GroupKind};
use kc_ir::{Graph, NodeKind, ValueId};
use std::collections::BTreeSet;

fn fused(file: &str) -> Vec<(Graph, Fusion)> {
    let prog = common::compile_ok(common::kernel_path(file));
    prog.kernels
        .into_iter()
        .map(|g| {
            let f = fuse(&g, &FusionConfig::default());
            (g, f)
        })
        .collect()
}

fn all_kernels() -> Vec<(Graph, Fusion)> {
    let mut names: Vec<String> = std::fs::read_dir(common::repo_root().join("kernels"))
        .expect("kernels/ exists")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.ends_with(".ker"))
        .collect();
    names.sort();
    names.iter().flat_map(|n| fused(n.trim_end_matches(".ker"))).collect()
}

/// Every computed node is in exactly one group (or inlined), results are stored, every stored value is
/// read by another group or is a result, and the groups can run in some order (no cycle between groups).
#[test]
fn groups_partition_the_graph_and_can_be_ordered() {
    for (g, f) in all_kernels() {
        let results: BTreeSet<ValueId> = g.results.iter().map(|r| r.value).collect();
        for (i, n) in g.nodes.iter().enumerate() {
            let v = ValueId(i as u32);
            let homes: Vec<usize> =
                f.groups.iter().enumerate().filter(|(_, gr)| gr.nodes.contains(&v)).map(|(k, _)| k).collect();
            match n.kind {
                NodeKind::Param(_) => assert!(homes.is_empty(), "{}: a parameter is in a group", g.name),
                _ => {
                    assert!(homes.len() <= 1, "{}: %{i} is in groups {homes:?}", g.name);
                    assert_eq!(f.group_of[i], homes.first().copied(), "{}: group_of of %{i}", g.name);
                    if homes.is_empty() {
                        assert!(
                            kc_ir::passes::fuse::is_copy(&g, v),
                            "{}: %{i} is in no group but is not a copy",
                            g.name
                        );
                        assert!(!results.contains(&v), "{}: result %{i} is in no group", g.name);
                    }
                }
            }
        }
        for r in &results {
            if let Some(k) = f.group_of[r.index()] {
                assert!(f.groups[k].stored.contains(r), "{}: result %{} is not stored", g.name, r.0);
            }
        }
        assert!(
            kc_ir::passes::tile::group_order(&f).is_some(),
            "{}: the groups depend on each other in a cycle",
            g.name
        );
    }
}

/// AdamW is one fused elementwise pass: each input read once, each output written once.
#[test]
fn adamw_is_one_pass() {
    let (g, f) = fused("adamw").remove(0);
    assert_eq!(f.groups.len(), 1, "{}", kc_ir::passes::fuse::print_fusion(&g, &f));
    assert!(gm_intermediates(&g, &f).is_empty());
    assert_eq!(f.groups[0].stored.len(), 3, "param, m and v");
}

/// Row-wise kernels keep at most one value per row in global memory.
#[test]
fn row_kernels_store_no_row_sized_intermediates() {
    for file in ["rmsnorm", "softmax", "cross_entropy", "layernorm", "rmsnorm_bwd"] {
        for (g, f) in fused(file) {
            let rows = g.params.iter().find_map(|p| match &p.kind {
                kc_ir::ParamKind::Tensor { shape, .. } if shape.len() == 2 => Some(shape[0].clone()),
                _ => None,
            });
            for v in gm_intermediates(&g, &f) {
                let shape = &g.node(v).shape;
                let per_row = shape.is_empty() || (shape.len() == 1 && Some(&shape[0]) == rows.as_ref());
                assert!(per_row, "{}: %{} {:?} is stored whole", g.name, v.0, shape);
            }
        }
    }
}

/// Attention forward and backward never store a [B, H, S, T] value: one score group each.
#[test]
fn attention_keeps_scores_on_chip() {
    for file in ["attention", "attention_full", "attention_bwd"] {
        let (g, f) = fused(file).remove(0);
        let text = kc_ir::passes::fuse::print_fusion(&g, &f);
        let scores: Vec<&kc_ir::passes::fuse::Group> =
            f.groups.iter().filter(|gr| gr.kind == GroupKind::Score).collect();
        assert_eq!(scores.len(), 1, "{file}: {text}");
        let score_shape = &scores[0].space;
        assert_eq!(score_shape.len(), 4, "{file}: the scores are [B, H, S, T]");
        for gr in &f.groups {
            for v in &gr.stored {
                assert!(&g.node(*v).shape != score_shape, "{file}: score-shaped %{} is stored:\n{text}", v.0);
            }
        }
        // Every matmul of the kernel is in the score group.
        for (i, _) in g.nodes.iter().enumerate() {
            if kc_ir::passes::fuse::contraction(&g, ValueId(i as u32)).is_some() {
                assert_eq!(f.group_of[i], f.groups.iter().position(|gr| gr.kind == GroupKind::Score), "{file}: %{i}");
            }
        }
    }
}

/// The experts' FFN is grouped matmuls on the cube; the hidden activations never reach global memory.
#[test]
fn moe_experts_is_a_grouped_matmul_chain() {
    let (g, f) = fused("moe_experts").remove(0);
    let h = g.nodes.iter().position(|n| n.name.as_deref() == Some("h")).expect("h");
    let k = f.group_of[h].expect("h is grouped");
    assert_eq!(f.groups[k].kind, GroupKind::GroupedMatmul);
    assert!(!f.groups[k].stored.contains(&ValueId(h as u32)), "h is stored");
    let c = kc_ir::passes::fuse::contraction(&g, ValueId(h as u32)).expect("h is a contraction");
    assert_eq!(c.count, 2, "h holds the gate and up matmuls");
    assert!(c.grouped);
}

/// A schedule hint keeps a node apart: it gets its own group and is stored.
#[test]
fn unfused_hint_keeps_a_node_apart() {
    let (g, _) = fused("rmsnorm").remove(0);
    let rstd = ValueId(g.nodes.iter().position(|n| n.name.as_deref() == Some("rstd")).expect("rstd") as u32);
    let f = fuse(&g, &FusionConfig { unfused: BTreeSet::from([rstd]), ..Default::default() });
    let k = f.group_of[rstd.index()].expect("grouped");
    assert_eq!(f.groups[k].nodes, vec![rstd]);
    assert!(f.unfused.iter().any(|u| u.producer == rstd && u.reason.contains("schedule hint")));
}

/// Compiles a source string that must compile without diagnostics.
fn compile_src(src: &str) -> Graph {
    let mut sources = kc_frontend::SourceMap::new();
    let id = sources.add("hints.ker", src);
    let (program, diags) = kc_frontend::compile(&mut sources, id, &common::FsLoader);
    assert!(diags.is_empty(), "{}", kc_frontend::render(&diags, &sources, false));
    program.kernels.into_iter().next().expect("one kernel")
}

/// `#[unfused]` written in source reaches fusion through `FusionConfig::from_hints`: the value gets its own
/// group and is stored, where without the hint it is fused with its consumer.
#[test]
fn unfused_in_source_keeps_a_node_apart() {
    let src = "kernel k(x: f32[T, D], w: f32[D]) -> y: f32[T, D] {
    #[unfused] let r[t] = rsqrt(sum[d](x[t, d] * x[t, d]) / D + 1e-6);
    #[tile(t: 8)] y[t, d] = x[t, d] * r[t] * w[d];
}
";
    let g = compile_src(src);
    let r = ValueId(g.nodes.iter().position(|n| n.name.as_deref() == Some("r")).expect("r") as u32);
    let y = g.results[0].value;
    let cfg = FusionConfig::from_hints(&g);
    assert_eq!(cfg.unfused, BTreeSet::from([r]), "only `r` is unfused (a tile hint is not)");
    let f = fuse(&g, &cfg);
    let text = kc_ir::passes::fuse::print_fusion(&g, &f);
    let k = f.group_of[r.index()].expect("r is grouped");
    assert_eq!(f.groups[k].nodes, vec![r], "{text}");
    assert!(f.groups[k].stored.contains(&r), "{text}");
    assert_ne!(f.group_of[y.index()], Some(k), "{text}");
    assert!(
        f.unfused.iter().any(|u| u.producer == r && u.consumer == y && u.reason.contains("schedule hint")),
        "{text}"
    );
    // The same kernel without the hint fuses `r` into `y`'s group: the hint is what keeps it apart.
    let plain = compile_src(&src.replace("#[unfused] ", ""));
    assert!(plain.hints.iter().all(|h| h.kind != kc_ir::HintKind::Unfused));
    let f = fuse(&plain, &FusionConfig::from_hints(&plain));
    assert_eq!(f.group_of[r.index()], f.group_of[y.index()], "{}", kc_ir::passes::fuse::print_fusion(&plain, &f));
    // The graph IR shows the hints.
    let printed = kc_ir::print::print_graph(&g);
    assert!(printed.contains("#[unfused]") && printed.contains("#[tile(t: 8)]"), "{printed}");
}

//! Renderers for the cost model's [`Timeline`]:
//! - [`chrome_trace`]: a Chrome trace-event JSON document (the "JSON Object Format") for Perfetto
//!   (ui.perfetto.dev) and chrome://tracing: a process per core, a thread per pipe, a complete event per
//!   slice, flow events for the flags, and a `launches` process on top;
//! - [`html_timeline`]: a self-contained HTML page (inline SVG and CSS, no script) for a quick look.
//!
//! Times go out in microseconds (Chrome's unit), rounded to whole nanoseconds so that slices that touch in
//! cycles still touch after the importer turns them back into integer nanoseconds (Perfetto takes
//! `llround(ts * 1000)`): adjacent slices never come out overlapping, which Perfetto would reject as badly nested.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;

use serde::Serialize;

use super::timeline::{CoreRef, Flow, Slice, Timeline};
use crate::tile::Pipe;

/// The process id of the `launches` track. Not 0: Perfetto treats pid 0 as the kernel's swapper.
const LAUNCH_PID: u64 = 1;

/// The clock to convert cycles with: `clock_ghz` unless it is not a positive number (then 1 GHz).
fn clock_ghz(t: &Timeline) -> f64 {
    if t.clock_ghz.is_finite() && t.clock_ghz > 0.0 {
        t.clock_ghz
    } else {
        1.0
    }
}

/// A time in cycles, with NaN and infinities read as 0 and negative times as 0.
fn cycles(x: f64) -> f64 {
    if x.is_finite() {
        x.max(0.0)
    } else {
        0.0
    }
}

/// The position of `pipe` in [`Pipe::ALL`].
fn pipe_index(pipe: Pipe) -> usize {
    Pipe::ALL.iter().position(|&p| p == pipe).unwrap_or(0)
}

/// Cube cores first, then vector cores, each in index order.
fn core_order(core: CoreRef) -> (bool, u32) {
    (!core.cube, core.index)
}

/// The last moment anything in the timeline happens, in cycles (0 if nothing does).
fn total_cycles(t: &Timeline) -> f64 {
    let launches = t.launches.iter().map(|l| cycles(l.end));
    let slices = t.slices.iter().map(|s| cycles(s.end));
    let flows = t.flows.iter().map(|f| cycles(f.wait_at).max(cycles(f.set_at)));
    launches.chain(slices).chain(flows).fold(0.0, f64::max)
}

/// The Chrome trace-event JSON document of `t` (the JSON Object Format), for Perfetto and chrome://tracing.
///
/// - The launches are process `launches` (pid 1, sorted first), one thread, an `X` event per launch.
/// - Each core is a process named by [`CoreRef::name`]: cube core `i` is pid `B + i`, vector core `i` is pid
///   `2B + i`, where `B` is 1000 (or the next power of ten above the largest core index); the sort index is
///   the pid, so cube cores come first, in index order.
/// - Each pipe of a core is a thread: tid = the pipe's position in [`Pipe::ALL`], named by [`Pipe::name`].
///   Only the (core, pipe) pairs that have a slice or a flag end get a thread.
/// - Each slice is an `X` event (`cat` = the pipe's name; args `count`, `amount`, `launch`, `cycles`).
/// - Each flag is a flow: an `s` event where it was set and an `f` event (binding to the enclosing slice)
///   where it was waited on, with the same `id`; `cat` is `flag` or `cross-flag`.
///
/// The same timeline always gives the same bytes.
pub fn chrome_trace(t: &Timeline) -> String {
    let ghz = clock_ghz(t);
    // Whole nanoseconds, as f64.
    let ns = |c: f64| (cycles(c) / ghz).round();
    let us = |ns: f64| ns / 1000.0;
    let span_cycles = |start: f64, end: f64| (cycles(end) - cycles(start)).max(0.0);

    let max_index = t
        .slices
        .iter()
        .map(|s| s.core.index)
        .chain(t.flows.iter().flat_map(|f| [f.from.0.index, f.to.0.index]))
        .max()
        .unwrap_or(0);
    let mut base: u64 = 1000;
    while base <= u64::from(max_index) {
        base *= 10;
    }
    let pid = |c: CoreRef| if c.cube { base } else { 2 * base } + u64::from(c.index);

    // pid -> (core name, used tids).
    let mut procs: BTreeMap<u64, (String, BTreeSet<usize>)> = BTreeMap::new();
    let mut use_thread = |core: CoreRef, pipe: Pipe| {
        procs.entry(pid(core)).or_insert_with(|| (core.name(), BTreeSet::new())).1.insert(pipe_index(pipe));
    };
    for s in &t.slices {
        use_thread(s.core, s.pipe);
    }
    for f in &t.flows {
        use_thread(f.from.0, f.from.1);
        use_thread(f.to.0, f.to.1);
    }

    let mut events: Vec<Event> = Vec::with_capacity(t.slices.len() + 2 * t.flows.len() + 4 * procs.len() + 16);
    fn meta<'a>(pid: u64, tid: usize, name: &'static str, args: Args<'a>) -> Event<'a> {
        Event { ph: "M", pid, tid, ts: 0.0, dur: None, name, cat: None, id: None, bp: None, args: Some(args) }
    }
    if !t.launches.is_empty() {
        events.push(meta(LAUNCH_PID, 0, "process_name", Args::Name { name: "launches" }));
        events.push(meta(LAUNCH_PID, 0, "process_sort_index", Args::Sort { sort_index: 0 }));
        events.push(meta(LAUNCH_PID, 0, "thread_name", Args::Name { name: "launches" }));
        events.push(meta(LAUNCH_PID, 0, "thread_sort_index", Args::Sort { sort_index: 0 }));
    }
    for (&p, (name, tids)) in &procs {
        events.push(meta(p, 0, "process_name", Args::Name { name }));
        events.push(meta(p, 0, "process_sort_index", Args::Sort { sort_index: p }));
        for &tid in tids {
            events.push(meta(p, tid, "thread_name", Args::Name { name: Pipe::ALL[tid].name() }));
            events.push(meta(p, tid, "thread_sort_index", Args::Sort { sort_index: tid as u64 }));
        }
    }

    for (index, l) in t.launches.iter().enumerate() {
        let (start, end) = (ns(l.start), ns(l.end.max(l.start)));
        events.push(Event {
            ph: "X",
            pid: LAUNCH_PID,
            tid: 0,
            ts: us(start),
            dur: Some(us(end - start)),
            name: &l.name,
            cat: Some("launch"),
            id: None,
            bp: None,
            args: Some(Args::Launch {
                index,
                cube_cores: l.cube_cores,
                vector_cores: l.vector_cores,
                cycles: span_cycles(l.start, l.end),
            }),
        });
    }

    for s in &t.slices {
        let (start, end) = (ns(s.start), ns(s.end.max(s.start)));
        events.push(Event {
            ph: "X",
            pid: pid(s.core),
            tid: pipe_index(s.pipe),
            ts: us(start),
            dur: Some(us(end - start)),
            name: &s.name,
            cat: Some(s.pipe.name()),
            id: None,
            bp: None,
            args: Some(Args::Slice {
                count: s.count,
                amount: s.amount,
                launch: t.launches.get(s.launch as usize).map_or("", |l| l.name.as_str()),
                cycles: span_cycles(s.start, s.end),
            }),
        });
    }

    for (i, f) in t.flows.iter().enumerate() {
        let cat = Some(if f.cross { "cross-flag" } else { "flag" });
        let (set, wait) = (ns(f.set_at), ns(f.wait_at));
        let (from, to) = (f.from, f.to);
        let end = |ph, pid, tid, ts, bp| Event {
            ph,
            pid,
            tid,
            ts,
            dur: None,
            name: &f.label,
            cat,
            id: Some(i + 1),
            bp,
            args: None,
        };
        events.push(end("s", pid(from.0), pipe_index(from.1), us(set), None));
        events.push(end("f", pid(to.0), pipe_index(to.1), us(wait.max(set)), Some("e")));
    }

    let doc = Doc {
        trace_events: events,
        display_time_unit: "ns",
        other_data: OtherData {
            kernel: &t.kernel,
            target: &t.target,
            clock_ghz: t.clock_ghz,
            truncated: t.truncated,
            total_cycles: total_cycles(t),
        },
    };
    serde_json::to_string(&doc).expect("a trace serializes")
}

/// The trace document (JSON Object Format).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Doc<'a> {
    trace_events: Vec<Event<'a>>,
    display_time_unit: &'static str,
    other_data: OtherData<'a>,
}

#[derive(Serialize)]
struct OtherData<'a> {
    kernel: &'a str,
    target: &'a str,
    clock_ghz: f64,
    truncated: bool,
    total_cycles: f64,
}

/// One trace event; `None` fields are left out.
#[derive(Serialize)]
struct Event<'a> {
    ph: &'static str,
    pid: u64,
    tid: usize,
    ts: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    dur: Option<f64>,
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    cat: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    bp: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    args: Option<Args<'a>>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Args<'a> {
    Name { name: &'a str },
    Sort { sort_index: u64 },
    Launch { index: usize, cube_cores: u32, vector_cores: u32, cycles: f64 },
    Slice { count: u32, amount: u64, launch: &'a str, cycles: f64 },
}

// ---------------------------------------------------------------------------------------------------------
// HTML

/// Above this many cores, only the first few of each kind are drawn.
const MAX_CORES: usize = 64;
const SHOWN_CUBE: usize = 4;
const SHOWN_VECTOR: usize = 8;
/// Above this many slices to draw, slices narrower than the merge width are merged into their neighbours.
const MAX_SLICE_RECTS: usize = 20_000;
/// The merge width doubles (from one pixel) until at most this many bars are left.
const MAX_MERGED_BARS: usize = 15_000;
/// At most this many flag lines; intra-core flags are drawn only if there are few.
const MAX_FLOW_LINES: usize = 3_000;
const MAX_INTRA_FLOW_LINES: usize = 500;

const PLOT_W: f64 = 1600.0;
const LEFT: f64 = 130.0;
const RIGHT: f64 = 24.0;
const ROW_H: f64 = 14.0;
const BAR_H: f64 = 11.0;
const CORE_GAP: f64 = 6.0;
const LAUNCH_Y: f64 = 2.0;
const LAUNCH_H: f64 = 18.0;
const AXIS_Y: f64 = 34.0;
const ROWS_Y: f64 = 42.0;

/// The fill of each pipe, in [`Pipe::ALL`] order (S, MTE2, MTE1, MTE3, FIX, M, V).
const PALETTE: [&str; 7] = ["#9e9e9e", "#1f77b4", "#17becf", "#2ca02c", "#9467bd", "#d62728", "#ff7f0e"];

/// A self-contained HTML page that draws `t`: a header, the launches as bands, one row per (core, pipe) with
/// slices (cube cores first), each slice a rectangle colored by pipe with a tooltip, a time axis in µs, and
/// the flags as thin lines. No script and no external file; every name is escaped.
///
/// Bounded in size: with more than 64 cores only the first 4 cube and 8 vector cores are drawn (the page
/// says how many were left out); with more than 20000 slices to draw, slices narrower than a pixel (or
/// wider, until at most 15000 bars are left) merge into their neighbours on the same row, and a merged bar
/// is as opaque as its row was busy.
pub fn html_timeline(t: &Timeline) -> String {
    let ghz = clock_ghz(t);
    let total = total_cycles(t).max(1.0);
    let total_us = total / (ghz * 1000.0);
    let x_of = |c: f64| LEFT + cycles(c) / total * PLOT_W;

    // The cores with slices, cube first; which are shown.
    let cores: BTreeSet<(bool, u32)> = t.slices.iter().map(|s| core_order(s.core)).collect();
    let (n_cube, n_vector) = (cores.iter().filter(|c| !c.0).count(), cores.iter().filter(|c| c.0).count());
    let shown: Vec<CoreRef> = if cores.len() > MAX_CORES {
        let cube = cores.iter().filter(|c| !c.0).take(SHOWN_CUBE);
        let vector = cores.iter().filter(|c| c.0).take(SHOWN_VECTOR);
        cube.chain(vector).map(|&(v, index)| CoreRef { cube: !v, index }).collect()
    } else {
        cores.iter().map(|&(v, index)| CoreRef { cube: !v, index }).collect()
    };
    let shown_set: BTreeSet<CoreRef> = shown.iter().copied().collect();

    // Rows: (core, pipe) pairs with slices, grouped by core.
    let mut pipes_of: BTreeMap<(bool, u32), [bool; 7]> = BTreeMap::new();
    for s in t.slices.iter().filter(|s| shown_set.contains(&s.core)) {
        pipes_of.entry(core_order(s.core)).or_default()[pipe_index(s.pipe)] = true;
    }
    struct Row {
        core: CoreRef,
        pipe: Pipe,
        y: f64,
    }
    let mut rows: Vec<Row> = Vec::new();
    let mut core_groups: Vec<(CoreRef, f64, f64)> = Vec::new(); // (core, top, bottom)
    let mut y = ROWS_Y;
    for (&(v, index), used) in &pipes_of {
        let core = CoreRef { cube: !v, index };
        let top = y;
        for (i, &pipe) in Pipe::ALL.iter().enumerate() {
            if used[i] {
                rows.push(Row { core, pipe, y });
                y += ROW_H;
            }
        }
        core_groups.push((core, top, y));
        y += CORE_GAP;
    }
    let rows_bottom = y.max(ROWS_Y + ROW_H);
    let row_of: HashMap<(CoreRef, Pipe), usize> = rows.iter().enumerate().map(|(i, r)| ((r.core, r.pipe), i)).collect();

    // The slices to draw, by row then start.
    let mut drawn: Vec<(usize, &Slice)> =
        t.slices.iter().filter_map(|s| row_of.get(&(s.core, s.pipe)).map(|&r| (r, s))).collect();
    drawn.sort_by(|a, b| a.0.cmp(&b.0).then(cycles(a.1.start).total_cmp(&cycles(b.1.start))));
    let bars: Vec<Bar> = if drawn.len() <= MAX_SLICE_RECTS {
        drawn.iter().map(|&(row, s)| Bar::one(row, s, &x_of)).collect()
    } else {
        let mut width = 1.0;
        loop {
            let bars = merge(&drawn, &x_of, width);
            if bars.len() <= MAX_MERGED_BARS || width > PLOT_W {
                break bars;
            }
            width *= 2.0;
        }
    };
    let merged = bars.len() < drawn.len();

    // The flags to draw.
    let flow_rows = |f: &Flow| Some((*row_of.get(&f.from)?, *row_of.get(&f.to)?));
    let cross: Vec<(&Flow, (usize, usize))> =
        t.flows.iter().filter(|f| f.cross).filter_map(|f| Some((f, flow_rows(f)?))).collect();
    let intra: Vec<(&Flow, (usize, usize))> =
        t.flows.iter().filter(|f| !f.cross).filter_map(|f| Some((f, flow_rows(f)?))).collect();
    let mut lines: Vec<(&Flow, (usize, usize))> = cross.iter().take(MAX_FLOW_LINES).cloned().collect();
    if intra.len() <= MAX_INTRA_FLOW_LINES && lines.len() + intra.len() <= MAX_FLOW_LINES {
        lines.extend(intra.iter().cloned());
    }
    let flows_left_out = cross.len() + intra.len() - lines.len();

    let svg_w = LEFT + PLOT_W + RIGHT;
    let svg_h = rows_bottom + 4.0;
    let mut h = String::with_capacity(4096 + bars.len() * 120 + lines.len() * 100);

    // Head and header.
    h.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>");
    push_esc(&mut h, &t.kernel);
    h.push_str(" — kc timeline</title>\n<style>\n");
    h.push_str(
        "body{font:13px/1.4 system-ui,sans-serif;margin:16px;color:#222}\
         h1{font-size:18px;margin:0 0 4px}\
         p{margin:2px 0}\
         .warn{color:#b00020;font-weight:bold}\
         .note{color:#555}\
         .legend{margin:6px 0 10px}\
         .legend span{display:inline-block;margin-right:14px;white-space:nowrap}\
         .legend i{display:inline-block;width:12px;height:12px;margin-right:4px;vertical-align:-2px}\
         svg{display:block}\
         svg text{font:11px system-ui,sans-serif;fill:#222}\
         .core{font-weight:bold}\
         .pipe{fill:#555}\
         .tick{fill:#555;text-anchor:middle}\
         .grid{stroke:#ddd;stroke-width:1}\
         .lb{stroke:#999;stroke-width:1;stroke-dasharray:3 3}\
         .cg0{fill:#f7f7f7}.cg1{fill:#eef2f7}\
         .l0{fill:#c9d6e8}.l1{fill:#e3eaf4}\
         .fx{stroke:#000;stroke-width:1;opacity:.7}\
         .fi{stroke:#444;stroke-width:.6;stroke-dasharray:2 2;opacity:.6}\n",
    );
    for (i, color) in PALETTE.iter().enumerate() {
        let _ = writeln!(h, ".p{i}{{fill:{color}}}");
    }
    h.push_str("</style>\n</head>\n<body>\n<h1>");
    push_esc(&mut h, &t.kernel);
    h.push_str("</h1>\n<p>target <b>");
    push_esc(&mut h, &t.target);
    let _ = writeln!(
        h,
        "</b> · clock {} GHz · total <b>{} µs</b> ({} cycles) · {}, {}, {}</p>",
        num(ghz),
        num_sig(total_us),
        num(total_cycles(t)),
        plural(t.launches.len(), "launch", "launches"),
        plural(t.slices.len(), "slice", "slices"),
        plural(t.flows.len(), "flag", "flags"),
    );
    if t.truncated {
        h.push_str(
            "<p class=\"warn\">Truncated: the model stopped recording when the timeline grew past its limit; \
             slices and flags after that point are missing (the estimate itself is complete).</p>\n",
        );
    }
    if shown.len() < cores.len() {
        let left_out = cores.len() - shown.len();
        let _ = writeln!(
            h,
            "<p class=\"note\">{} cores: showing the first {} of {} cube and {} of {} vector cores; \
             {left_out} cores left out.</p>",
            cores.len(),
            n_cube.min(SHOWN_CUBE),
            n_cube,
            n_vector.min(SHOWN_VECTOR),
            n_vector,
        );
    }
    if merged {
        let _ = writeln!(
            h,
            "<p class=\"note\">{} slices drawn as {} bars: narrow slices merged into their neighbours on the \
             same row (a merged bar is as opaque as its row was busy).</p>",
            drawn.len(),
            bars.len()
        );
    }
    if flows_left_out > 0 {
        let _ = writeln!(h, "<p class=\"note\">{flows_left_out} flags not drawn.</p>");
    }

    // Legend.
    h.push_str("<div class=\"legend\">");
    for (i, pipe) in Pipe::ALL.iter().enumerate() {
        let _ = write!(h, "<span><i style=\"background:{}\"></i>{}</span>", PALETTE[i], pipe.name());
    }
    h.push_str(
        "<span><i style=\"background:#c9d6e8\"></i>launch</span>\
         <span><i style=\"height:2px;vertical-align:3px;background:#000\"></i>cross-core flag</span>\
         <span><i style=\"height:2px;vertical-align:3px;background:#888\"></i>flag</span></div>\n",
    );

    // The drawing.
    let _ = writeln!(
        h,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{svg_w}\" height=\"{}\" viewBox=\"0 0 {svg_w} {}\">",
        num1(svg_h),
        num1(svg_h)
    );

    // Core backgrounds and labels.
    for (i, &(core, top, bottom)) in core_groups.iter().enumerate() {
        let _ = writeln!(
            h,
            "<path class=\"cg{}\" d=\"M0 {}H{}V{}H0z\"/><text class=\"core\" x=\"4\" y=\"{}\">{}</text>",
            i % 2,
            num1(top - 1.0),
            num1(svg_w),
            num1(bottom + 1.0),
            num1(top + BAR_H),
            core.name()
        );
    }
    for r in &rows {
        let _ = writeln!(
            h,
            "<text class=\"pipe\" x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>",
            num1(LEFT - 6.0),
            num1(r.y + BAR_H),
            r.pipe.name()
        );
    }

    // Time axis: ticks in µs, with grid lines down through the rows.
    let step = nice_step(total_us / 10.0);
    let decimals = (-step.log10().floor()).max(0.0) as usize;
    let _ = writeln!(h, "<text x=\"4\" y=\"{}\">µs</text>", num1(AXIS_Y));
    let mut k = 0u32;
    loop {
        let tick = f64::from(k) * step;
        if tick > total_us * (1.0 + 1e-9) || k > 1000 {
            break;
        }
        let x = LEFT + tick / total_us * PLOT_W;
        let _ = writeln!(
            h,
            "<line class=\"grid\" x1=\"{x}\" y1=\"{}\" x2=\"{x}\" y2=\"{}\"/>\
             <text class=\"tick\" x=\"{x}\" y=\"{}\">{:.*}</text>",
            num1(AXIS_Y + 3.0),
            num1(rows_bottom),
            num1(AXIS_Y),
            decimals,
            tick,
            x = num1(x)
        );
        k += 1;
    }

    // Launch bands along the top, and a dashed line where each launch starts.
    for (i, l) in t.launches.iter().enumerate() {
        let (x0, x1) = (x_of(l.start), x_of(l.end.max(l.start)));
        let w = (x1 - x0).max(1.0);
        let _ = write!(
            h,
            "<path class=\"l{}\" d=\"M{} {}h{}v{}h-{}z\"><title>",
            i % 2,
            num1(x0),
            num1(LAUNCH_Y),
            num1(w),
            num1(LAUNCH_H),
            num1(w)
        );
        push_esc(&mut h, &l.name);
        let _ = write!(
            h,
            "\n{} cube cores, {} vector cores\ncycles {}–{} ({} µs)</title></path>",
            l.cube_cores,
            l.vector_cores,
            num(cycles(l.start)),
            num(cycles(l.end)),
            num_sig((cycles(l.end) - cycles(l.start)).max(0.0) / (ghz * 1000.0))
        );
        let fits = ((w - 6.0) / 6.5).floor().max(0.0) as usize;
        if fits >= 3 {
            let _ = write!(h, "<text x=\"{}\" y=\"{}\">", num1(x0 + 3.0), num1(LAUNCH_Y + 13.0));
            let chars = l.name.chars().count();
            if chars <= fits {
                push_esc(&mut h, &l.name);
            } else {
                let cut: String = l.name.chars().take(fits - 1).collect();
                push_esc(&mut h, &cut);
                h.push('…');
            }
            h.push_str("</text>");
        }
        if t.launches.len() <= 200 && i > 0 {
            let _ = write!(
                h,
                "<line class=\"lb\" x1=\"{x}\" y1=\"{}\" x2=\"{x}\" y2=\"{}\"/>",
                num1(ROWS_Y - 2.0),
                num1(rows_bottom),
                x = num1(x0)
            );
        }
        h.push('\n');
    }

    // The slices.
    for b in &bars {
        let r = &rows[b.row];
        let w = (b.x1 - b.x0).max(0.5);
        let _ = write!(
            h,
            "<rect class=\"p{}\" x=\"{}\" y=\"{}\" width=\"{}\" height=\"{BAR_H}\"",
            pipe_index(r.pipe),
            num1(b.x0),
            num1(r.y),
            num2(w)
        );
        if b.n > 1 {
            let busy = (b.busy / (b.x1 - b.x0).max(1e-9)).clamp(0.0, 1.0);
            if busy < 0.95 {
                let _ = write!(h, " fill-opacity=\"{:.1}\"", busy.max(0.3));
            }
        }
        h.push_str("><title>");
        if b.n == 1 {
            let s = b.first;
            push_esc(&mut h, &s.name);
            let launch = t.launches.get(s.launch as usize).map_or("", |l| l.name.as_str());
            let _ = write!(
                h,
                "\ncount {}, amount {}\ncycles {}–{} ({})\n",
                s.count,
                s.amount,
                num(cycles(s.start)),
                num(cycles(s.end)),
                num((cycles(s.end) - cycles(s.start)).max(0.0))
            );
            push_esc(&mut h, launch);
        } else {
            let _ = write!(h, "{} slices: ", b.n);
            for (i, name) in b.names.iter().enumerate() {
                if i > 0 {
                    h.push_str(", ");
                }
                push_esc(&mut h, name);
            }
            if b.more_names {
                h.push_str(", …");
            }
            let _ = write!(
                h,
                "\ncycles {}–{}, busy {:.0}%",
                num(b.start),
                num(b.end),
                100.0 * (b.busy / (b.x1 - b.x0).max(1e-9)).clamp(0.0, 1.0)
            );
        }
        h.push_str("</title></rect>\n");
    }

    // The flags.
    for (f, (from, to)) in &lines {
        let y0 = rows[*from].y + BAR_H / 2.0;
        let y1 = rows[*to].y + BAR_H / 2.0;
        let _ = write!(
            h,
            "<line class=\"{}\" x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{}\"><title>",
            if f.cross { "fx" } else { "fi" },
            num1(x_of(f.set_at)),
            num1(y0),
            num1(x_of(f.wait_at)),
            num1(y1)
        );
        push_esc(&mut h, &f.label);
        let _ = writeln!(
            h,
            "\n{} {} → {} {}\nset at {}, waited until {}</title></line>",
            f.from.0.name(),
            f.from.1.name(),
            f.to.0.name(),
            f.to.1.name(),
            num(cycles(f.set_at)),
            num(cycles(f.wait_at))
        );
    }

    h.push_str("</svg>\n</body>\n</html>\n");
    h
}

/// A bar to draw: one slice, or a run of slices merged on one row.
struct Bar<'a> {
    row: usize,
    x0: f64,
    x1: f64,
    /// Pixels covered by the slices (at most `x1 - x0` unless slices overlap).
    busy: f64,
    /// Cycles, first start and last end.
    start: f64,
    end: f64,
    n: usize,
    first: &'a Slice,
    /// Up to three distinct names, and whether there were more.
    names: Vec<&'a str>,
    more_names: bool,
}

impl<'a> Bar<'a> {
    fn one(row: usize, s: &'a Slice, x_of: &impl Fn(f64) -> f64) -> Self {
        let (start, end) = (cycles(s.start), cycles(s.end).max(cycles(s.start)));
        let (x0, x1) = (x_of(start), x_of(end));
        Bar { row, x0, x1, busy: x1 - x0, start, end, n: 1, first: s, names: vec![&s.name], more_names: false }
    }
}

/// Merges, on each row, slices narrower than `width` pixels into their neighbours when less than `width`
/// pixels apart. `drawn` is sorted by row then start.
fn merge<'a>(drawn: &[(usize, &'a Slice)], x_of: &impl Fn(f64) -> f64, width: f64) -> Vec<Bar<'a>> {
    let mut bars: Vec<Bar<'a>> = Vec::new();
    for &(row, s) in drawn {
        let next = Bar::one(row, s, x_of);
        if let Some(b) = bars.last_mut() {
            let narrow = next.x1 - next.x0 < width || b.x1 - b.x0 < width;
            if b.row == row && narrow && next.x0 - b.x1 < width {
                b.x1 = b.x1.max(next.x1);
                b.busy += next.busy;
                b.end = b.end.max(next.end);
                b.n += 1;
                if !b.names.contains(&s.name.as_str()) {
                    if b.names.len() < 3 {
                        b.names.push(&s.name);
                    } else {
                        b.more_names = true;
                    }
                }
                continue;
            }
        }
        bars.push(next);
    }
    bars
}

/// Appends `s` escaped for HTML text and attribute values; control characters become spaces.
fn push_esc(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            '\n' | '\t' => out.push(c),
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
}

/// `1 launch`, `2 launches`.
fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// A number of cycles (or GHz): whole if it is whole, else with up to two decimals.
fn num(x: f64) -> String {
    if (x - x.round()).abs() < 1e-9 {
        format!("{}", x.round())
    } else {
        let s = format!("{x:.2}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

/// A coordinate with one decimal, without a trailing `.0`.
fn num1(x: f64) -> String {
    let s = format!("{x:.1}");
    match s.strip_suffix(".0") {
        Some(whole) => whole.to_string(),
        None => s,
    }
}

/// A width with two decimals, without trailing zeros.
fn num2(x: f64) -> String {
    let s = format!("{x:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// A duration in µs with four significant digits.
fn num_sig(x: f64) -> String {
    if x == 0.0 || !x.is_finite() {
        return "0".to_string();
    }
    let decimals = (3.0 - x.abs().log10().floor()).max(0.0) as usize;
    let s = format!("{x:.decimals$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// The 1, 2 or 5 times a power of ten at or above `x`.
fn nice_step(x: f64) -> f64 {
    if !(x.is_finite() && x > 0.0) {
        return 1.0;
    }
    let p = 10f64.powf(x.log10().floor());
    [1.0, 2.0, 5.0, 10.0].into_iter().map(|m| m * p).find(|&s| s >= x * (1.0 - 1e-9)).unwrap_or(10.0 * p)
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::super::timeline::LaunchSpan;
    use super::*;

    fn core(cube: bool, index: u32) -> CoreRef {
        CoreRef { cube, index }
    }

    fn slice(launch: u32, core: CoreRef, pipe: Pipe, start: f64, end: f64, name: &str) -> Slice {
        Slice { launch, core, pipe, start, end, name: name.to_string(), count: 1, amount: 4096 }
    }

    /// Two launches; a cube core and two vector cores; overlapping slices on MTE2, M, FIX, V and MTE3; an
    /// intra-core flag and a cross-core flag.
    fn small() -> Timeline {
        let (c0, v0, v1) = (core(true, 0), core(false, 0), core(false, 1));
        let mut slices = vec![
            slice(0, c0, Pipe::Mte2, 0.0, 1850.0, "copy gm->l1"),
            slice(0, c0, Pipe::Mte1, 1850.0, 2000.0, "copy l1->l0a"),
            slice(0, c0, Pipe::M, 2000.0, 5000.0, "mmad"),
            slice(0, c0, Pipe::Mte2, 1850.0, 3700.0, "copy gm->l1"),
            slice(0, c0, Pipe::Fix, 5000.0, 6000.0, "copy l0c->gm"),
            slice(1, v0, Pipe::Mte2, 6000.0, 6500.0, "copy gm->ub"),
            slice(1, v0, Pipe::V, 6500.0, 7400.0, "vector"),
            slice(1, v0, Pipe::Mte2, 6500.0, 7000.0, "copy gm->ub"),
            slice(1, v0, Pipe::Mte3, 7400.0, 7600.0, "copy ub->gm"),
            slice(1, v1, Pipe::Mte2, 6000.0, 6600.0, "copy gm->ub"),
            slice(1, v1, Pipe::V, 6600.0, 7300.0, "a<b&\"c"),
            slice(1, v1, Pipe::Mte3, 7300.0, 7700.0, "copy ub->gm"),
        ];
        slices[2].count = 8;
        slices[2].amount = 8 * 2 * 16 * 16 * 16;
        let flows = vec![
            Flow {
                launch: 0,
                from: (c0, Pipe::Mte2),
                to: (c0, Pipe::Mte1),
                set_at: 1850.0,
                wait_at: 1850.0,
                cross: false,
                label: "MTE2->MTE1 #0".to_string(),
            },
            Flow {
                launch: 1,
                from: (v0, Pipe::V),
                to: (v1, Pipe::V),
                set_at: 7000.0,
                wait_at: 7100.0,
                cross: true,
                label: "cross #3".to_string(),
            },
        ];
        Timeline {
            kernel: "matmul_softmax".to_string(),
            target: "a2".to_string(),
            clock_ghz: 1.85,
            launches: vec![
                LaunchSpan { name: "matmul".to_string(), start: 0.0, end: 6000.0, cube_cores: 1, vector_cores: 0 },
                LaunchSpan { name: "softmax".to_string(), start: 6000.0, end: 7700.0, cube_cores: 0, vector_cores: 2 },
            ],
            slices,
            flows,
            truncated: false,
        }
    }

    fn events(t: &Timeline) -> Vec<Value> {
        let doc: Value = serde_json::from_str(&chrome_trace(t)).expect("chrome trace is JSON");
        doc["traceEvents"].as_array().expect("traceEvents is an array").clone()
    }

    fn ph<'a>(events: &'a [Value], ph: &str) -> Vec<&'a Value> {
        events.iter().filter(|e| e["ph"] == ph).collect()
    }

    #[test]
    fn chrome_document_shape() {
        let t = small();
        let doc: Value = serde_json::from_str(&chrome_trace(&t)).unwrap();
        assert_eq!(doc["displayTimeUnit"], "ns");
        assert_eq!(doc["otherData"]["kernel"], "matmul_softmax");
        assert_eq!(doc["otherData"]["target"], "a2");
        assert_eq!(doc["otherData"]["clock_ghz"], 1.85);
        assert_eq!(doc["otherData"]["truncated"], false);
        let ev = doc["traceEvents"].as_array().unwrap();
        // 12 slices + 2 launches.
        assert_eq!(ph(ev, "X").len(), 14);
        for e in ev {
            for key in ["ph", "pid", "tid", "name"] {
                assert!(!e[key].is_null(), "{key} missing in {e}");
            }
        }
    }

    #[test]
    fn chrome_complete_events_times() {
        let t = small();
        let ev = events(&t);
        for e in ph(&ev, "X") {
            assert!(e["ts"].as_f64().unwrap() >= 0.0, "{e}");
            assert!(e["dur"].as_f64().unwrap() >= 0.0, "{e}");
        }
        // 1850 cycles at 1.85 GHz = 1 µs; the second MTE2 copy starts at 1 µs and lasts 1 µs.
        let mte2: Vec<&Value> = ph(&ev, "X").into_iter().filter(|e| e["cat"] == "MTE2" && e["pid"] == 1000).collect();
        assert_eq!(mte2.len(), 2);
        assert_eq!(mte2[0]["ts"].as_f64(), Some(0.0));
        assert_eq!(mte2[0]["dur"].as_f64(), Some(1.0));
        assert_eq!(mte2[1]["ts"].as_f64(), Some(1.0));
        assert_eq!(mte2[1]["dur"].as_f64(), Some(1.0));
        assert_eq!(mte2[0]["name"], "copy gm->l1");
        assert_eq!(mte2[0]["args"]["cycles"].as_f64(), Some(1850.0));
        assert_eq!(mte2[0]["args"]["launch"], "matmul");
        let mmad = ph(&ev, "X").into_iter().find(|e| e["name"] == "mmad").unwrap();
        assert_eq!(mmad["args"]["count"], 8);
        assert_eq!(mmad["args"]["amount"], 8 * 2 * 16 * 16 * 16);
        assert_eq!(mmad["cat"], "M");
        // Launches are on their own process, with their core counts.
        let launches: Vec<&Value> = ph(&ev, "X").into_iter().filter(|e| e["cat"] == "launch").collect();
        assert_eq!(launches.len(), 2);
        assert_eq!(launches[1]["name"], "softmax");
        assert_eq!(launches[1]["args"]["vector_cores"], 2);
        assert_eq!(launches[1]["args"]["cube_cores"], 0);
        assert_eq!(launches[1]["pid"], LAUNCH_PID);
    }

    #[test]
    fn chrome_adjacent_slices_do_not_overlap_after_rounding() {
        // Awkward cycle counts at an awkward clock: after Perfetto's llround(ts * 1000), each slice on a
        // thread still ends no later than the next one starts.
        let c = core(false, 0);
        let mut t = Timeline { clock_ghz: 1.3, ..Default::default() };
        let mut at = 0.0;
        for i in 0..500 {
            let len = 1.0 + f64::from(i % 7) * 0.37;
            t.slices.push(slice(0, c, Pipe::V, at, at + len, "v"));
            at += len;
        }
        let ev = events(&t);
        let ns = |v: &Value| (v.as_f64().unwrap() * 1000.0).round() as i64;
        let xs: Vec<(i64, i64)> = ph(&ev, "X").iter().map(|e| (ns(&e["ts"]), ns(&e["ts"]) + ns(&e["dur"]))).collect();
        for w in xs.windows(2) {
            assert!(w[0].1 <= w[1].0, "{:?} overlaps {:?}", w[0], w[1]);
        }
    }

    #[test]
    fn chrome_metadata_per_core_and_pipe() {
        let t = small();
        let ev = events(&t);
        let meta = ph(&ev, "M");
        let names = |kind: &str| -> Vec<(u64, u64, String)> {
            meta.iter()
                .filter(|e| e["name"] == kind)
                .map(|e| {
                    let name = e["args"]["name"].as_str().unwrap().to_string();
                    (e["pid"].as_u64().unwrap(), e["tid"].as_u64().unwrap(), name)
                })
                .collect()
        };
        let procs = names("process_name");
        let proc_names: Vec<&str> = procs.iter().map(|p| p.2.as_str()).collect();
        assert_eq!(proc_names, ["launches", "cube 0", "vector 0", "vector 1"]);
        let pids: BTreeSet<u64> = procs.iter().map(|p| p.0).collect();
        assert_eq!(pids.len(), 4, "one pid per process");
        // Sort indices put cube cores first, then vector cores, in index order.
        let sort: Vec<u64> = meta
            .iter()
            .filter(|e| e["name"] == "process_sort_index")
            .map(|e| e["args"]["sort_index"].as_u64().unwrap())
            .collect();
        assert!(sort.windows(2).all(|w| w[0] < w[1]), "{sort:?}");

        // One thread per used (core, pipe) (plus the launches' thread), named by the pipe.
        let threads = names("thread_name");
        let unique: BTreeSet<(u64, u64)> = threads.iter().map(|t| (t.0, t.1)).collect();
        assert_eq!(unique.len(), threads.len(), "a thread is named once");
        let cube: Vec<&str> = threads.iter().filter(|t| t.0 == 1000).map(|t| t.2.as_str()).collect();
        assert_eq!(cube, ["MTE2", "MTE1", "FIX", "M"]);
        let v1: Vec<&str> = threads.iter().filter(|t| t.0 == 2001).map(|t| t.2.as_str()).collect();
        assert_eq!(v1, ["MTE2", "MTE3", "V"]);
        for (pid, tid, name) in &threads {
            if *pid != LAUNCH_PID {
                assert_eq!(Pipe::ALL[*tid as usize].name(), name);
            }
        }
        // Every slice lands on a named thread.
        for e in ph(&ev, "X") {
            let key = (e["pid"].as_u64().unwrap(), e["tid"].as_u64().unwrap());
            assert!(unique.contains(&key), "{e}");
        }
    }

    #[test]
    fn chrome_flows_pair_up() {
        let t = small();
        let ev = events(&t);
        let starts = ph(&ev, "s");
        let finishes = ph(&ev, "f");
        assert_eq!(starts.len(), t.flows.len());
        assert_eq!(finishes.len(), t.flows.len());
        let ids: BTreeSet<u64> = starts.iter().map(|e| e["id"].as_u64().unwrap()).collect();
        assert_eq!(ids.len(), starts.len(), "flow ids are unique");
        for s in &starts {
            let f = finishes.iter().find(|f| f["id"] == s["id"]).expect("every s has its f");
            assert_eq!(f["bp"], "e");
            assert_eq!(f["name"], s["name"]);
            assert_eq!(f["cat"], s["cat"]);
            assert!(f["ts"].as_f64().unwrap() >= s["ts"].as_f64().unwrap());
        }
        let cross = starts.iter().find(|s| s["cat"] == "cross-flag").unwrap();
        assert_eq!(cross["name"], "cross #3");
        assert_eq!((cross["pid"].as_u64(), cross["tid"].as_u64()), (Some(2000), Some(6)));
        let cross_f = finishes.iter().find(|f| f["id"] == cross["id"]).unwrap();
        assert_eq!(cross_f["pid"].as_u64(), Some(2001));
        assert_eq!(starts.iter().filter(|s| s["cat"] == "flag").count(), 1);
    }

    #[test]
    fn outputs_are_deterministic() {
        let t = small();
        assert_eq!(chrome_trace(&t), chrome_trace(&t.clone()));
        assert_eq!(html_timeline(&t), html_timeline(&t.clone()));
    }

    #[test]
    fn degenerate_timelines_render() {
        let empty = Timeline::default();
        let doc: Value = serde_json::from_str(&chrome_trace(&empty)).unwrap();
        assert_eq!(doc["traceEvents"].as_array().unwrap().len(), 0);
        assert!(html_timeline(&empty).contains("</html>"));

        // A zero clock and a NaN time do not put nulls or NaNs into the outputs.
        let mut t = small();
        t.clock_ghz = 0.0;
        t.slices[0].end = f64::NAN;
        t.slices[1].start = -5.0;
        for e in ph(&events(&t), "X") {
            assert!(e["ts"].as_f64().unwrap() >= 0.0 && e["dur"].as_f64().unwrap() >= 0.0, "{e}");
        }
        let html = html_timeline(&t);
        assert!(!html.contains("NaN") && !html.contains("inf"));
    }

    #[test]
    fn html_draws_each_slice() {
        let t = small();
        let html = html_timeline(&t);
        assert!(html.starts_with("<!DOCTYPE html>"));
        assert_eq!(html.matches("<rect").count(), t.slices.len());
        assert_eq!(html.matches("<title>").count() - 1, t.slices.len() + t.launches.len() + t.flows.len());
        // Header.
        assert!(html.contains("matmul_softmax") && html.contains("a2") && html.contains("1.85 GHz"));
        assert!(html.contains("7700 cycles") && html.contains("2 launches, 12 slices, 2 flags"));
        assert!(!html.contains("Truncated"));
        // Legend: every pipe.
        for pipe in Pipe::ALL {
            assert!(html.contains(&format!("</i>{}</span>", pipe.name())), "{}", pipe.name());
        }
        // One row label per (core, pipe) with slices: 4 on the cube core, 3 on each vector core.
        assert_eq!(html.matches("class=\"pipe\"").count(), 10);
        for name in ["cube 0", "vector 0", "vector 1"] {
            assert_eq!(html.matches(&format!(">{name}</text>")).count(), 1);
        }
        // The cube core's rows come first.
        assert!(html.find(">cube 0<").unwrap() < html.find(">vector 0<").unwrap());
        // Launch bands, and the flags as lines (both, since there are few).
        assert!(html.contains(">matmul</text>") && html.contains(">softmax</text>"));
        assert_eq!(html.matches("<line class=\"fx\"").count(), 1);
        assert_eq!(html.matches("<line class=\"fi\"").count(), 1);
        // Self-contained.
        assert!(!html.contains("<script") && !html.contains("src=") && !html.contains("href="));
    }

    #[test]
    fn html_escapes_names() {
        let mut t = small();
        t.kernel = "k<script>alert('x')</script>".to_string();
        t.launches[0].name = "<launch & \"co\">".to_string();
        t.flows[1].label = "x<y".to_string();
        let html = html_timeline(&t);
        assert!(html.contains("a&lt;b&amp;&quot;c"));
        assert!(!html.contains("a<b&\"c"));
        assert!(html.contains("k&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;"));
        assert!(!html.contains("<script"));
        assert!(html.contains("&lt;launch &amp; &quot;co&quot;&gt;"));
        assert!(html.contains("x&lt;y") && !html.contains("x<y"));
    }

    #[test]
    fn html_truncated_note() {
        let mut t = small();
        t.truncated = true;
        assert!(html_timeline(&t).contains("Truncated"));
    }

    #[test]
    fn html_limits_cores() {
        let mut t = small();
        for i in 2..100 {
            t.slices.push(slice(1, core(false, i), Pipe::V, 6000.0, 7000.0, "vector"));
        }
        let html = html_timeline(&t);
        let note = "101 cores: showing the first 1 of 1 cube and 8 of 100 vector cores; 92 cores left out.";
        assert!(html.contains(note));
        assert!(html.contains(">vector 7</text>"));
        assert!(!html.contains(">vector 8</text>"));
        // Slices of the cube core and the first eight vector cores only.
        assert_eq!(html.matches("<rect").count(), 12 + 6);
        // The Chrome trace keeps every core.
        let procs = ph(&events(&t), "M").into_iter().filter(|e| e["name"] == "process_name").count();
        assert_eq!(procs, 1 + 101);
    }

    /// 300k slices over 16 cube and 32 vector cores: the HTML merges narrow slices and stays small.
    #[test]
    fn html_large_timeline_stays_small() {
        let mut t = Timeline { kernel: "big".into(), target: "a2".into(), clock_ghz: 1.85, ..Default::default() };
        let cores: Vec<CoreRef> = (0..16).map(|i| core(true, i)).chain((0..32).map(|i| core(false, i))).collect();
        let per_core = 300_000 / cores.len();
        for (k, &c) in cores.iter().enumerate() {
            let pipes: &[Pipe] =
                if c.cube { &[Pipe::Mte2, Pipe::Mte1, Pipe::M, Pipe::Fix] } else { &[Pipe::Mte2, Pipe::V, Pipe::Mte3] };
            let mut at = (k * 7) as f64;
            for i in 0..per_core {
                let pipe = pipes[i % pipes.len()];
                let len = 20.0 + ((i * 31 + k) % 50) as f64;
                let gap = if i % 97 == 0 { 3000.0 } else { ((i * 17) % 13) as f64 };
                t.slices.push(Slice {
                    launch: 0,
                    core: c,
                    pipe,
                    start: at,
                    end: at + len,
                    name: format!("op{}", i % 5),
                    count: 1,
                    amount: 512,
                });
                at += len / 2.0 + gap;
            }
        }
        let end = t.slices.iter().map(|s| s.end).fold(0.0, f64::max);
        t.launches.push(LaunchSpan { name: "big".into(), start: 0.0, end, cube_cores: 16, vector_cores: 32 });
        assert_eq!(t.slices.len(), 300_000);
        let html = html_timeline(&t);
        assert!(html.len() < 5_000_000, "{} bytes", html.len());
        assert!(html.contains("300000 slices drawn as"));
        let rects = html.matches("<rect").count();
        assert!(rects <= MAX_MERGED_BARS && rects > 1000, "{rects} bars");
        // Every core is shown (48 <= 64): 16 * 4 + 32 * 3 rows.
        assert_eq!(html.matches("class=\"pipe\"").count(), 16 * 4 + 32 * 3);
        let json = chrome_trace(&t);
        assert_eq!(json.matches("\"ph\":\"X\"").count(), 300_001);
    }

    #[test]
    fn number_formats() {
        assert_eq!(num(1850.0), "1850");
        assert_eq!(num(1.85), "1.85");
        assert_eq!(num(2.5), "2.5");
        assert_eq!(num1(12.0), "12");
        assert_eq!(num1(12.34), "12.3");
        assert_eq!(num_sig(4.162162), "4.162");
        assert_eq!(num_sig(1234.6), "1235");
        assert_eq!(nice_step(0.42), 0.5);
        assert_eq!(nice_step(1.0), 1.0);
        assert_eq!(nice_step(13.0), 20.0);
        assert_eq!(nice_step(60.0), 100.0);
    }
}

//! `nokv-bench plot`: grouped bar charts of `ycsb` and db_bench-format output, written as
//! standalone SVG text (no drawing dependencies). Output is deterministic for the same input.

use std::fmt::Write as _;
use std::path::PathBuf;

use clap::Subcommand;

use crate::error::{BenchError, Result};
use crate::report;
use crate::ycsb::parse_result_fields;

/// Which benchmark output to plot.
#[derive(Debug, Subcommand)]
pub enum PlotKind {
    /// Bars of ops/sec per YCSB workload and engine, ratio labels, p99 latencies below.
    Ycsb {
        /// `nokv-bench ycsb` logs; a later line wins for the same engine and workload.
        #[arg(long, required = true, num_args = 1..)]
        input: Vec<PathBuf>,
        /// SVG file to write (stdout when absent).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Chart title.
        #[arg(long)]
        title: Option<String>,
    },
    /// Bars of ops/sec per db_bench benchmark, RocksDB next to NoKV, ratio labels.
    Dbbench {
        /// RocksDB db_bench outputs, in chart order.
        #[arg(long, required = true, num_args = 1..)]
        rocksdb: Vec<PathBuf>,
        /// `nokv-bench dbbench` outputs, in chart order.
        #[arg(long, required = true, num_args = 1..)]
        nokv: Vec<PathBuf>,
        /// SVG file to write (stdout when absent).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Chart title.
        #[arg(long)]
        title: Option<String>,
    },
}

/// Runs `nokv-bench plot`.
pub fn run(kind: &PlotKind) -> Result<()> {
    let (chart, out) = match kind {
        PlotKind::Ycsb { input, out, title } => {
            let texts = read_all(input)?;
            (ycsb_chart(&texts, title.as_deref())?, out)
        }
        PlotKind::Dbbench {
            rocksdb,
            nokv,
            out,
            title,
        } => {
            let (r, n) = (read_all(rocksdb)?, read_all(nokv)?);
            (dbbench_chart(&r, &n, title.as_deref())?, out)
        }
    };
    let svg = render(&chart);
    match out {
        Some(path) => std::fs::write(path, svg).map_err(|e| BenchError::io("writing", path, e)),
        None => {
            print!("{svg}");
            Ok(())
        }
    }
}

/// One input file: its name (for error messages) and its text.
type Input = (String, String);

fn read_all(paths: &[PathBuf]) -> Result<Vec<Input>> {
    paths
        .iter()
        .map(|p| {
            let bytes = std::fs::read(p).map_err(|e| BenchError::io("reading", p, e))?;
            Ok((
                p.display().to_string(),
                String::from_utf8_lossy(&bytes).into_owned(),
            ))
        })
        .collect()
}

fn names(inputs: &[Input]) -> String {
    let v: Vec<&str> = inputs.iter().map(|(n, _)| n.as_str()).collect();
    v.join(", ")
}

/// A row of text under the chart, one cell per group, in a series' colour.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Short label left of the cells.
    pub label: String,
    /// Series whose colour the row uses.
    pub series: usize,
    /// One cell per group.
    pub cells: Vec<Option<String>>,
}

/// A grouped bar chart: one group per category, one bar per series.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Chart {
    /// Title line.
    pub title: String,
    /// Small line under the title (settings).
    pub subtitle: String,
    /// Group names, in chart order.
    pub groups: Vec<String>,
    /// Series names, in legend order.
    pub series: Vec<String>,
    /// `values[series][group]`; None draws no bar.
    pub values: Vec<Vec<Option<f64>>>,
    /// `(numerator, denominator)` series whose ratio is printed above each group.
    pub ratio: Option<(usize, usize)>,
    /// Heading of the text rows under the chart.
    pub rows_heading: String,
    /// Text rows under the chart, aligned with the groups.
    pub rows: Vec<Row>,
}

fn index_of(list: &mut Vec<String>, name: &str) -> usize {
    match list.iter().position(|n| n == name) {
        Some(i) => i,
        None => {
            list.push(name.to_string());
            list.len() - 1
        }
    }
}

fn set(grid: &mut Vec<Vec<Option<f64>>>, s: usize, g: usize, v: f64) {
    if grid.len() <= s {
        grid.resize(s + 1, Vec::new());
    }
    if grid[s].len() <= g {
        grid[s].resize(g + 1, None);
    }
    grid[s][g] = Some(v);
}

fn squared(grid: &mut [Vec<Option<f64>>], groups: usize) {
    for row in grid.iter_mut() {
        row.resize(groups, None);
    }
}

/// Builds the YCSB chart from the `ycsb engine=...` lines of the inputs.
pub fn ycsb_chart(inputs: &[Input], title: Option<&str>) -> Result<Chart> {
    let mut c = Chart {
        title: title.unwrap_or("YCSB throughput").to_string(),
        rows_heading: "p99 latency (us)".to_string(),
        ..Chart::default()
    };
    let mut p99: Vec<Vec<Option<f64>>> = Vec::new();
    for (name, text) in inputs {
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("ycsb settings: ") {
                let keep = [
                    "records",
                    "operations",
                    "threads",
                    "value_size",
                    "distribution",
                ];
                let words: Vec<&str> = rest
                    .split_whitespace()
                    .filter(|w| keep.iter().any(|k| w.split('=').next() == Some(k)))
                    .collect();
                c.subtitle = words.join("  ");
                continue;
            }
            let Some(fields) = parse_result_fields(line) else {
                continue;
            };
            let get = |k: &str| fields.iter().find(|(f, _)| f == k).map(|(_, v)| v.as_str());
            let (Some(engine), Some(wl), Some(ops)) =
                (get("engine"), get("workload"), get("ops_per_sec"))
            else {
                continue;
            };
            let num = |v: &str, what: &str| {
                v.parse::<f64>().map_err(|_| {
                    BenchError::Plot(format!("{name}: bad {what} '{v}' in line: {line}"))
                })
            };
            let ops = num(ops, "ops_per_sec")?;
            let (s, g) = (index_of(&mut c.series, engine), index_of(&mut c.groups, wl));
            set(&mut c.values, s, g, ops);
            if let Some(v) = get("p99_us") {
                set(&mut p99, s, g, num(v, "p99_us")?);
            }
        }
    }
    if c.groups.is_empty() {
        return Err(BenchError::Plot(format!(
            "no `ycsb engine=... workload=... ops_per_sec=...` lines in {}",
            names(inputs)
        )));
    }
    squared(&mut c.values, c.groups.len());
    squared(&mut p99, c.groups.len());
    let nokv = c.series.iter().position(|s| s == "nokv");
    let fjall = c.series.iter().position(|s| s == "fjall");
    c.ratio = nokv.zip(fjall);
    p99.resize(c.series.len(), vec![None; c.groups.len()]);
    c.rows = p99
        .iter()
        .enumerate()
        .map(|(s, v)| Row {
            label: c.series[s].clone(),
            series: s,
            cells: v.iter().map(|x| x.map(|x| format!("{x:.1}"))).collect(),
        })
        .collect();
    Ok(c)
}

/// Benchmarks db_bench reports that are maintenance steps, not workloads.
const NOT_WORKLOADS: &[&str] = &[
    "flush",
    "waitforcompaction",
    "compact",
    "compactall",
    "stats",
    "resetstats",
    "levelstats",
    "sstables",
    "memstats",
];

/// `(group name, ops/sec, settle ops/sec)` per result line; a repeated name gets ` #2`...
fn dbbench_results(inputs: &[Input]) -> Vec<(String, f64, Option<u64>)> {
    let mut seen: Vec<String> = Vec::new();
    let mut out = Vec::new();
    for (_, text) in inputs {
        let p = report::parse_output(text);
        for r in &p.results {
            if NOT_WORKLOADS.contains(&r.name.as_str()) {
                continue;
            }
            let n = seen.iter().filter(|s| **s == r.name).count();
            seen.push(r.name.clone());
            let group = if n == 0 {
                r.name.clone()
            } else {
                format!("{} #{}", r.name, n + 1)
            };
            let settle = p.settle.iter().find(|s| s.0 == r.name).map(|s| s.2);
            out.push((group, r.ops_per_sec as f64, settle));
        }
    }
    out
}

/// Builds the db_bench chart (RocksDB next to NoKV) from the two tools' outputs.
pub fn dbbench_chart(rocksdb: &[Input], nokv: &[Input], title: Option<&str>) -> Result<Chart> {
    let mut c = Chart {
        title: title.unwrap_or("db_bench throughput").to_string(),
        series: vec!["RocksDB".to_string(), "NoKV".to_string()],
        ratio: Some((1, 0)),
        ..Chart::default()
    };
    for (s, inputs) in [rocksdb, nokv].into_iter().enumerate() {
        let results = dbbench_results(inputs);
        if results.is_empty() {
            return Err(BenchError::Plot(format!(
                "no db_bench result lines (`name : X micros/op N ops/sec ...`) in {}",
                names(inputs)
            )));
        }
        for (group, ops, _) in results {
            let g = index_of(&mut c.groups, &group);
            set(&mut c.values, s, g, ops);
        }
    }
    squared(&mut c.values, c.groups.len());
    let mut excl = vec![None; c.groups.len()];
    for (group, _, settle) in dbbench_results(nokv) {
        let (Some(ops), Some(g)) = (settle, c.groups.iter().position(|x| *x == group)) else {
            continue;
        };
        let rocks = c.values[0][g].filter(|r| *r > 0.0);
        excl[g] = Some(match rocks {
            Some(r) => format!("{} ({:.2}x)", si(ops as f64, 1), ops as f64 / r),
            None => si(ops as f64, 1),
        });
    }
    if excl.iter().any(Option::is_some) {
        c.subtitle =
            "NoKV fill ops/s include flush+compaction settling; RocksDB's do not".to_string();
        c.rows_heading = "NoKV ops/s excluding settle (ratio to RocksDB)".to_string();
        c.rows.push(Row {
            label: "NoKV".to_string(),
            series: 1,
            cells: excl,
        });
    }
    Ok(c)
}

/// Escapes text for SVG content and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// `v` with a k/M/G suffix and at most `decimals` decimals, trailing zeros dropped.
pub fn si(v: f64, decimals: usize) -> String {
    let (x, suffix) = match v.abs() {
        a if a >= 1e9 => (v / 1e9, "G"),
        a if a >= 1e6 => (v / 1e6, "M"),
        a if a >= 1e3 => (v / 1e3, "k"),
        _ => (v, ""),
    };
    let mut s = format!("{x:.decimals$}");
    if s.contains('.') {
        s = s.trim_end_matches('0').trim_end_matches('.').to_string();
    }
    format!("{s}{suffix}")
}

/// Axis top and tick step: about five "nice" ticks (1, 2, 2.5, 5 x 10^k) with headroom.
fn axis(max: f64) -> (f64, f64) {
    let want = if max > 0.0 { max * 1.12 } else { 1.0 };
    let raw = want / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    ((want / step).ceil() * step, step)
}

const COLOURS: &[&str] = &[
    "#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#b07aa1",
];
const WIDTH: f64 = 900.0;
const LEFT: f64 = 72.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 92.0;
const BOTTOM: f64 = 400.0;
const FONT: &str = "font-family=\"DejaVu Sans, Arial, Helvetica, sans-serif\"";

/// Smallest font size of a group name; longer names go on staggered lines.
const MIN_LABEL: f64 = 9.0;
/// Vertical offset of the second line of staggered group names.
const STAGGER: f64 = 14.0;

/// Font size (at most `max`) at which `text` fits in a slot `width` wide.
fn fit_size(text: &str, width: f64, max: f64) -> f64 {
    ((width - 6.0) / (0.62 * text.chars().count().max(1) as f64)).min(max)
}

/// Font size (at most 12) at which a group name fits in a group `width` wide.
fn label_size(name: &str, width: f64) -> f64 {
    fit_size(name, width, 12.0)
}

fn colour(s: usize) -> &'static str {
    COLOURS[s % COLOURS.len()]
}

/// Renders the chart as a standalone SVG document.
pub fn render(c: &Chart) -> String {
    let group_w = (WIDTH - LEFT - RIGHT) / c.groups.len().max(1) as f64;
    // Group names too long for their slot alternate between two lines instead of shrinking.
    let stagger = c.groups.iter().any(|n| label_size(n, group_w) < MIN_LABEL);
    let below = BOTTOM + if stagger { STAGGER } else { 0.0 };
    let height = (below + 48.0 + 18.0 * c.rows.len() as f64 + 20.0).max(500.0);
    let mut s = String::new();
    // Writing to a String cannot fail; `let _` keeps the code free of unwraps.
    let _ = writeln!(
        s,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{height}\" \
viewBox=\"0 0 {WIDTH} {height}\" {FONT}>"
    );
    let _ = writeln!(s, "<title>{}</title>", escape(&c.title));
    let _ = writeln!(
        s,
        "<rect x=\"0\" y=\"0\" width=\"{WIDTH}\" height=\"{height}\" fill=\"#ffffff\"/>"
    );
    let mid = WIDTH / 2.0;
    let _ = writeln!(
        s,
        "<text x=\"{mid}\" y=\"28\" font-size=\"{:.1}\" font-weight=\"bold\" text-anchor=\"middle\">{}</text>",
        fit_size(&c.title, WIDTH - 40.0, 18.0),
        escape(&c.title)
    );
    if !c.subtitle.is_empty() {
        let _ = writeln!(
            s,
                "<text x=\"{mid}\" y=\"47\" font-size=\"{:.1}\" fill=\"#555\" text-anchor=\"middle\">{}</text>",
            fit_size(&c.subtitle, WIDTH - 40.0, 11.0),
            escape(&c.subtitle)
        );
    }
    // Legend.
    let mut x = LEFT;
    for (i, name) in c.series.iter().enumerate() {
        let _ = writeln!(
            s,
            "<rect x=\"{x}\" y=\"62\" width=\"12\" height=\"12\" fill=\"{}\"/>\
<text x=\"{:.1}\" y=\"72.5\" font-size=\"12\">{}</text>",
            colour(i),
            x + 17.0,
            escape(name)
        );
        x += 17.0 + 7.5 * name.chars().count() as f64 + 18.0;
    }
    if let Some((n, d)) = c.ratio {
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"72.5\" font-size=\"12\" fill=\"#333\" text-anchor=\"end\">ops/sec, higher is better; labels: {} / {}</text>",
            WIDTH - RIGHT,
            escape(&c.series[n]),
            escape(&c.series[d])
        );
    }
    // Axes and grid.
    let max = c
        .values
        .iter()
        .flatten()
        .flatten()
        .fold(0.0f64, |a, b| a.max(*b));
    let (top, step) = axis(max);
    let plot_h = BOTTOM - TOP;
    let y_of = |v: f64| BOTTOM - v / top * plot_h;
    let ticks = (top / step).round() as usize;
    for t in 0..=ticks {
        let v = step * t as f64;
        let y = y_of(v);
        let _ = writeln!(
            s,
            "<line x1=\"{LEFT}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke=\"{}\" stroke-width=\"1\"/>\
<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\" fill=\"#333\" text-anchor=\"end\">{}</text>",
            WIDTH - RIGHT,
            if t == 0 { "#333" } else { "#e3e3e3" },
            LEFT - 6.0,
            y + 4.0,
            si(v, 2)
        );
    }
    let _ = writeln!(
        s,
        "<text transform=\"translate(16 {:.1}) rotate(-90)\" font-size=\"12\" fill=\"#333\" text-anchor=\"middle\">ops/sec</text>",
        (TOP + BOTTOM) / 2.0
    );
    // Bars, value labels, ratios and group names.
    let bar_w = group_w * 0.76 / c.series.len().max(1) as f64;
    for (g, name) in c.groups.iter().enumerate() {
        let gx = LEFT + group_w * g as f64;
        let centre = gx + group_w / 2.0;
        let mut highest = BOTTOM;
        for (si_, row) in c.values.iter().enumerate() {
            let Some(v) = row.get(g).copied().flatten() else {
                continue;
            };
            let x = gx + group_w * 0.12 + bar_w * si_ as f64;
            let y = y_of(v);
            highest = highest.min(y);
            let _ = writeln!(
                s,
                "<rect class=\"bar\" x=\"{x:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{}\">\
<title>{} {}: {v:.0} ops/sec</title></rect>",
                bar_w - 2.0,
                BOTTOM - y,
                colour(si_),
                escape(&c.series[si_]),
                escape(name)
            );
            let label = si(v, if (1e6..1e7).contains(&v) { 2 } else { 1 });
            let size = (bar_w / (0.62 * label.len() as f64)).min(10.5);
            if size >= 7.0 {
                let _ = writeln!(
                    s,
                    "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"{size:.1}\" fill=\"#333\" text-anchor=\"middle\">{label}</text>",
                    x + (bar_w - 2.0) / 2.0,
                    y - 4.0
                );
            }
        }
        if let Some((n, d)) = c.ratio {
            let pair = (c.values[n][g], c.values[d][g]);
            if let (Some(a), Some(b)) = pair {
                let text = if b > 0.0 {
                    format!("{:.2}x", a / b)
                } else {
                    "n/a".to_string()
                };
                let _ = writeln!(
                    s,
                    "<text x=\"{centre:.1}\" y=\"{:.1}\" font-size=\"13\" font-weight=\"bold\" text-anchor=\"middle\">{text}</text>",
                    highest - 19.0
                );
            }
        }
        let size = label_size(name, group_w).max(MIN_LABEL);
        let drop = if stagger && g % 2 == 1 { STAGGER } else { 0.0 };
        let _ = writeln!(
            s,
            "<text x=\"{centre:.1}\" y=\"{:.1}\" font-size=\"{size:.1}\" text-anchor=\"middle\">{}</text>",
            BOTTOM + 18.0 + drop,
            escape(name)
        );
    }
    // Text rows under the chart, one cell per group.
    if !c.rows.is_empty() {
        let _ = writeln!(
            s,
            "<text x=\"{LEFT}\" y=\"{:.1}\" font-size=\"12\" font-weight=\"bold\" fill=\"#333\">{}</text>",
            below + 44.0,
            escape(&c.rows_heading)
        );
    }
    for (r, row) in c.rows.iter().enumerate() {
        let y = below + 62.0 + 18.0 * r as f64;
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{y:.1}\" font-size=\"11\" font-weight=\"bold\" fill=\"{}\" text-anchor=\"end\">{}</text>",
            LEFT - 6.0,
            colour(row.series),
            escape(&row.label)
        );
        for (g, cell) in row.cells.iter().enumerate() {
            let Some(cell) = cell else { continue };
            let size = ((group_w - 4.0) / (0.6 * cell.chars().count() as f64)).min(11.0);
            let _ = writeln!(
                s,
                "<text x=\"{:.1}\" y=\"{y:.1}\" font-size=\"{size:.1}\" fill=\"{}\" text-anchor=\"middle\">{}</text>",
                LEFT + group_w * (g as f64 + 0.5),
                colour(row.series),
                escape(cell)
            );
        }
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const YCSB: &str = "\
ycsb settings: nokv-bench 0.1.0 engines=nokv,fjall workloads=A,B records=1000 operations=2000 threads=2 value_size=100 (one field)
ycsb engine=nokv workload=load ops_per_sec=200000 p50_us=3.0 p95_us=5.0 p99_us=9.5 records=1000
ycsb engine=nokv workload=A ops_per_sec=150000 p50_us=4.0 p95_us=6.0 p99_us=12.5
ycsb engine=nokv workload=B ops_per_sec=300000 p50_us=2.0 p95_us=3.0 p99_us=4.5
ycsb engine=fjall workload=load ops_per_sec=100000 p50_us=6.0 p95_us=9.0 p99_us=20.0
ycsb engine=fjall workload=A ops_per_sec=120000 p50_us=5.0 p95_us=7.0 p99_us=15.0
ycsb engine=fjall workload=B ops_per_sec=250000 p50_us=2.5 p95_us=3.5 p99_us=5.5
ycsb ratio workload=load nokv_over_fjall=2.00
peak RSS     : 1234 kB
";

    fn input(text: &str) -> Vec<Input> {
        vec![("fixture.log".to_string(), text.to_string())]
    }

    fn well_formed(svg: &str) {
        assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
        assert!(svg.contains("viewBox=\"0 0 900 "));
        assert!(svg.trim_end().ends_with("</svg>"));
        // Every opened text element is closed.
        assert_eq!(svg.matches("<text").count(), svg.matches("</text>").count());
    }

    #[test]
    fn ycsb_chart_from_fixture() -> Result<()> {
        let c = ycsb_chart(&input(YCSB), None)?;
        assert_eq!(c.groups, ["load", "A", "B"]);
        assert_eq!(c.series, ["nokv", "fjall"]);
        assert_eq!(c.values[1][1], Some(120000.0));
        assert_eq!(c.rows[0].cells[1].as_deref(), Some("12.5"));
        assert!(c.subtitle.contains("records=1000"));
        let svg = render(&c);
        well_formed(&svg);
        assert_eq!(svg.matches("<rect class=\"bar\"").count(), 6);
        assert!(svg.contains(">2.00x</text>"));
        assert!(svg.contains(">1.25x</text>"));
        assert!(svg.contains(">1.20x</text>"));
        assert!(svg.contains(">p99 latency (us)</text>"));
        assert!(svg.contains(">20.0</text>"));
        assert!(svg.contains(">300k</text>"));
        // Deterministic.
        assert_eq!(svg, render(&ycsb_chart(&input(YCSB), None)?));
        Ok(())
    }

    #[test]
    fn missing_bar_and_one_engine() -> Result<()> {
        let text = "ycsb engine=nokv workload=A ops_per_sec=10 p99_us=1.0\n\
ycsb engine=fjall workload=B ops_per_sec=20 p99_us=2.0\n";
        let c = ycsb_chart(&input(text), None)?;
        let svg = render(&c);
        well_formed(&svg);
        assert_eq!(svg.matches("<rect class=\"bar\"").count(), 2);
        assert!(!svg.contains("x</text>"), "no ratio without both bars");
        Ok(())
    }

    #[test]
    fn titles_are_escaped() -> Result<()> {
        let c = ycsb_chart(&input(YCSB), Some("a<b & c>d \"q\""))?;
        let svg = render(&c);
        assert!(svg.contains("a&lt;b &amp; c&gt;d &quot;q&quot;"));
        assert!(!svg.contains("a<b"));
        Ok(())
    }

    #[test]
    fn empty_input_is_an_error() {
        let err = ycsb_chart(&input("nothing here\n"), None).map(|_| ());
        let msg = err.err().map_or(String::new(), |e| e.to_string());
        assert!(msg.contains("no `ycsb engine="), "{msg}");
        assert!(msg.contains("fixture.log"), "{msg}");
        let bad = ycsb_chart(&input("ycsb engine=nokv workload=A ops_per_sec=x\n"), None);
        assert!(matches!(bad, Err(BenchError::Plot(_))));
        let none = dbbench_chart(&input(""), &input(""), None);
        assert!(matches!(none, Err(BenchError::Plot(_))));
    }

    #[test]
    fn dbbench_chart_from_fixture() -> Result<()> {
        let rocks = "\
fillrandom   :       5.822 micros/op 171485 ops/sec 0.058 seconds 10000 operations;  166.2 MB/s
flush        :       1.000 micros/op 1000000 ops/sec 0.000 seconds 1 operations;
readrandom   :       2.000 micros/op 500000 ops/sec 0.020 seconds 10000 operations; (8618 of 10000 found)
";
        let rocks2 =
            "fillrandom   :      10.000 micros/op 100000 ops/sec 0.1 seconds 10000 operations;\n";
        let nokv = format!(
            "fillrandom   :       4.000 micros/op 250000 ops/sec 0.040 seconds 10000 operations;\n\
{}fillrandom 0.010 seconds of flush+compaction settle; 342970 ops/sec without it\n\
readrandom   :       1.000 micros/op 1000000 ops/sec 0.010 seconds 10000 operations;\n",
            report::SETTLE_PREFIX
        );
        let nokv2 =
            "fillrandom   :      20.000 micros/op 50000 ops/sec 0.2 seconds 10000 operations;\n";
        let r = vec![
            ("r1".to_string(), rocks.to_string()),
            ("r2".to_string(), rocks2.to_string()),
        ];
        let n = vec![
            ("n1".to_string(), nokv),
            ("n2".to_string(), nokv2.to_string()),
        ];
        let c = dbbench_chart(&r, &n, None)?;
        assert_eq!(c.groups, ["fillrandom", "readrandom", "fillrandom #2"]);
        let svg = render(&c);
        well_formed(&svg);
        assert_eq!(svg.matches("<rect class=\"bar\"").count(), 6);
        assert!(svg.contains(">1.46x</text>"));
        assert!(svg.contains(">2.00x</text>"));
        assert!(svg.contains(">0.50x</text>"));
        assert!(svg.contains(">343k (2.00x)</text>"));
        Ok(())
    }

    #[test]
    fn si_and_axis() {
        assert_eq!(si(0.0, 2), "0");
        assert_eq!(si(250_000.0, 2), "250k");
        assert_eq!(si(1_500_000.0, 2), "1.5M");
        assert_eq!(si(123_456.0, 1), "123.5k");
        assert_eq!(axis(300_000.0), (400_000.0, 100_000.0));
        assert_eq!(axis(0.0).0, 1.0);
    }
}

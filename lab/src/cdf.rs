//! Map-latency CDFs from `bounce-replay --json-out` (or `--json`) files: one SVG per operation
//! (`cdf-map.svg`, `cdf-unmap.svg`, ...), one line per replayed configuration and run. Left
//! panel: the CDF (fraction of operations at or below a latency) on a log latency axis; right
//! panel: its tail (fraction slower than a latency) on log-log axes, where p99 and beyond are
//! readable.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use plotters::prelude::*;
use serde_json::Value;

use crate::plots::color;

/// Operations in bounce-replay's order.
const OPS: [&str; 4] = ["map", "unmap", "sync_for_cpu", "sync_for_device"];

/// One replay run's CDF of one operation: (quantile, ns) points.
#[derive(Debug, Clone, PartialEq)]
pub struct Curve {
    pub label: String,
    pub count: u64,
    pub points: Vec<(f64, f64)>,
}

/// A run's name: its swept keys (`size=1M exhaustion=fail`), else the configuration given.
fn label(v: &Value) -> String {
    let cell: Vec<String> = v["cell"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default();
    if !cell.is_empty() {
        return cell.join(" ");
    }
    match v["config_given"].as_str() {
        Some(c) if !c.is_empty() => c.to_string(),
        _ => "default configuration".into(),
    }
}

/// The curves of operation `op` in bounce-replay JSON lines (several runs of one label are
/// numbered).
pub fn curves(text: &str, op: &str) -> Result<Vec<Curve>> {
    let mut out: Vec<Curve> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: Value =
            serde_json::from_str(line).with_context(|| format!("line {}: not JSON", n + 1))?;
        if !v["latency_ns"].is_object() {
            bail!(
                "line {}: no latency_ns: not bounce-replay JSON output",
                n + 1
            );
        }
        let l = &v["latency_ns"][op];
        if l.is_null() {
            continue;
        }
        let Some(q) = l["quantiles"].as_array() else {
            bail!(
                "line {}: latency_ns.{op} has no quantiles (bounce-replay from before 2026-12-01: \
                 replay again)",
                n + 1
            );
        };
        let points: Vec<(f64, f64)> = q
            .iter()
            .filter_map(|p| Some((p[0].as_f64()?, p[1].as_f64()?)))
            .collect();
        if points.is_empty() {
            continue;
        }
        let mut name = label(&v);
        let same = out
            .iter()
            .filter(|c| c.label == name || c.label.starts_with(&format!("{name} (run ")))
            .count();
        if same > 0 {
            name = format!("{name} (run {})", same + 1);
        }
        out.push(Curve {
            label: name,
            count: l["count"].as_u64().unwrap_or(0),
            points,
        });
    }
    Ok(out)
}

/// Three significant figures, without trailing zeros.
fn sig3(v: f64) -> String {
    let d = if v >= 100.0 {
        0
    } else if v >= 10.0 {
        1
    } else {
        2
    };
    let s = format!("{v:.d$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// "1 us", "10 ms", "3.84 ms": a log axis tick or a legend figure.
fn ns_label(ns: f64) -> String {
    match ns {
        v if v >= 1e9 => format!("{} s", sig3(v / 1e9)),
        v if v >= 1e6 => format!("{} ms", sig3(v / 1e6)),
        v if v >= 1e3 => format!("{} us", sig3(v / 1e3)),
        v => format!("{} ns", sig3(v)),
    }
}

/// Writes `cdf-OP.svg` into `out` for each operation with data; returns the file names.
pub fn plot(curves_by_op: &[(&str, Vec<Curve>)], out: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for (op, curves) in curves_by_op {
        if curves.is_empty() {
            continue;
        }
        let name = format!("cdf-{op}.svg");
        let path = out.join(&name);
        let (mut lo, mut hi) = (f64::INFINITY, 0.0f64);
        for c in curves {
            for &(_, ns) in &c.points {
                lo = lo.min(ns.max(1.0));
                hi = hi.max(ns);
            }
        }
        // Whole decades around the data.
        let lo = 10f64.powf(lo.log10().floor());
        let hi = 10f64.powf(hi.max(lo * 10.0).log10().ceil());
        let legend_rows = curves.len() as u32;
        let root = SVGBackend::new(&path, (1300, 520 + 18 * legend_rows)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow!("{e:?}"))?;
        let root = root
            .titled(
                &format!(
                    "bounce-replay: {op} latency ({} runs; hdrhistogram, 3 significant figures)",
                    curves.len()
                ),
                ("sans-serif", 20),
            )
            .map_err(|e| anyhow!("{e:?}"))?;
        let (top, legend) = root.split_vertically(470);
        let (l, r) = top.split_horizontally(650);
        let mut cdf = ChartBuilder::on(&l)
            .caption("CDF", ("sans-serif", 16))
            .margin(12)
            .margin_right(30)
            .x_label_area_size(45)
            .y_label_area_size(70)
            .build_cartesian_2d((lo..hi).log_scale(), 0.0..1.0)
            .map_err(|e| anyhow!("{e:?}"))?;
        cdf.configure_mesh()
            .x_desc(format!("{op} latency (log scale)"))
            .y_desc("fraction of operations <= latency")
            .x_label_formatter(&|v| ns_label(*v))
            .y_label_formatter(&|v| format!("{v:.1}"))
            .label_style(("sans-serif", 14))
            .draw()
            .map_err(|e| anyhow!("{e:?}"))?;
        // The tail: 1 - q down to 1e-5 (bounce-replay's finest quantile below the maximum).
        let mut tail = ChartBuilder::on(&r)
            .caption("tail (log-log)", ("sans-serif", 16))
            .margin(12)
            .margin_right(30)
            .x_label_area_size(45)
            .y_label_area_size(70)
            .build_cartesian_2d((lo..hi).log_scale(), (1e-5..1.0).log_scale())
            .map_err(|e| anyhow!("{e:?}"))?;
        tail.configure_mesh()
            .x_desc(format!("{op} latency (log scale)"))
            .y_desc("fraction of operations slower")
            .x_label_formatter(&|v| ns_label(*v))
            .y_label_formatter(&|v| format!("{v:.0e}"))
            .label_style(("sans-serif", 14))
            .draw()
            .map_err(|e| anyhow!("{e:?}"))?;
        for (i, c) in curves.iter().enumerate() {
            let col = color(i);
            // A step per quantile: the fraction q is reached at its value.
            let pts: Vec<(f64, f64)> = c.points.iter().map(|&(q, ns)| (ns.max(lo), q)).collect();
            cdf.draw_series(LineSeries::new(pts.iter().copied(), col.stroke_width(2)))
                .map_err(|e| anyhow!("{e:?}"))?;
            tail.draw_series(LineSeries::new(
                pts.iter()
                    .filter(|p| p.1 < 1.0)
                    .map(|&(ns, q)| (ns, (1.0 - q).max(1e-5))),
                col.stroke_width(2),
            ))
            .map_err(|e| anyhow!("{e:?}"))?;
            tail.draw_series(
                pts.iter()
                    .filter(|p| p.1 < 1.0)
                    .map(|&(ns, q)| Circle::new((ns, (1.0 - q).max(1e-5)), 2, col.filled())),
            )
            .map_err(|e| anyhow!("{e:?}"))?;
        }
        // The legend below both panels: one row per run.
        for (i, c) in curves.iter().enumerate() {
            let y = 8 + 18 * i as i32;
            let col = color(i);
            legend
                .draw(&PathElement::new(
                    vec![(80, y + 7), (110, y + 7)],
                    col.stroke_width(3),
                ))
                .map_err(|e| anyhow!("{e:?}"))?;
            let p = |q: f64| {
                c.points
                    .iter()
                    .find(|p| (p.0 - q).abs() < 1e-9)
                    .map_or("-".to_string(), |p| ns_label(p.1))
            };
            legend
                .draw(&Text::new(
                    format!(
                        "{}: {} ops, p50 {}, p99 {}, max {}",
                        c.label,
                        c.count,
                        p(0.5),
                        p(0.99),
                        p(1.0)
                    ),
                    (120, y),
                    ("sans-serif", 14),
                ))
                .map_err(|e| anyhow!("{e:?}"))?;
        }
        root.present().map_err(|e| anyhow!("{e:?}"))?;
        files.push(PathBuf::from(name));
    }
    Ok(files)
}

/// The CDF plots of every operation from bounce-replay JSON files (runs of all files together).
pub fn plot_files(files: &[PathBuf], out: &Path) -> Result<Vec<PathBuf>> {
    let mut text = String::new();
    for f in files {
        text.push_str(
            &std::fs::read_to_string(f).with_context(|| format!("cannot read {}", f.display()))?,
        );
        text.push('\n');
    }
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let mut by_op = Vec::new();
    for op in OPS {
        let c = curves(&text, op).with_context(|| format!("{files:?}"))?;
        by_op.push((op, c));
    }
    plot(&by_op, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(cell: &str, scale: u64) -> String {
        let q: Vec<String> = [0.0, 0.5, 0.9, 0.99, 1.0]
            .iter()
            .enumerate()
            .map(|(i, q)| format!("[{q},{}]", 200 * scale * (1 << (2 * i))))
            .collect();
        format!(
            "{{\"config_given\":\"size=1M\",\"cell\":{{\"exhaustion\":\"{cell}\"}},\
             \"latency_ns\":{{\"map\":{{\"count\":1000,\"quantiles\":[{}]}},\
             \"unmap\":{{\"count\":0,\"quantiles\":[]}}}}}}",
            q.join(",")
        )
    }

    #[test]
    fn curves_from_replay_json_and_their_plots() {
        let text = [run("fail", 1), run("transient", 3), run("fail", 1)].join("\n");
        let c = curves(&text, "map").unwrap();
        assert_eq!(c.len(), 3);
        assert_eq!(c[0].label, "exhaustion=fail");
        assert_eq!(c[2].label, "exhaustion=fail (run 2)");
        assert_eq!(c[1].points[4], (1.0, 600.0 * 256.0));
        assert!(curves(&text, "unmap").unwrap().is_empty());
        let e = curves("{\"latency_ns\":{\"map\":{\"count\":1}}}", "map").unwrap_err();
        assert!(e.to_string().contains("no quantiles"), "{e}");
        let dir = std::env::temp_dir().join(format!("lab-cdf-{}", std::process::id()));
        let f = dir.join("replay.jsonl");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(&f, &text).unwrap();
        let files = plot_files(&[f], &dir).unwrap();
        assert_eq!(files, vec![PathBuf::from("cdf-map.svg")]);
        let svg = std::fs::read_to_string(dir.join("cdf-map.svg")).unwrap();
        for s in [
            "map latency (log scale)",
            "fraction of operations &lt;= latency",
            "fraction of operations slower",
            "exhaustion=transient: 1000 ops",
            "1 us",
        ] {
            assert!(svg.contains(s), "{s} missing");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn latency_ticks() {
        assert_eq!(ns_label(100.0), "100 ns");
        assert_eq!(ns_label(1000.0), "1 us");
        assert_eq!(ns_label(1e7), "10 ms");
        assert_eq!(ns_label(3_839_999.0), "3.84 ms");
        assert_eq!(ns_label(2575.0), "2.58 us");
        assert_eq!(ns_label(641.0), "641 ns");
    }
}

//! The sweep report's plots (plotters, SVG):
//!
//! - `throughput-<workload>.svg`: MB/s and IOPS vs pool size, one line per policy (the matrix
//!   axes other than the pool size that vary), the no-bounce baseline as a dashed line;
//! - `conversions.svg`: modeled conversion time by payer (I/O path, background, start-up) per
//!   configuration;
//! - `occupancy-<workload>.svg`: bounce slots in use, and their high-water mark so far, over
//!   time (repetition 0), from the metrics files.
//!
//! Map-latency CDFs (from `bounce-replay` JSON) are in `cdf.rs`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Result;
use plotters::prelude::*;

use crate::results::Row;

pub(crate) const COLORS: [RGBColor; 12] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(23, 190, 207),
    RGBColor(188, 189, 34),
    RGBColor(127, 127, 127),
    RGBColor(0, 0, 128),
    RGBColor(128, 0, 0),
];

pub(crate) fn color(i: usize) -> RGBColor {
    COLORS[i % COLORS.len()]
}

pub(crate) type Axis = (&'static str, fn(&Row) -> String);

/// The series legend every plot draws: framed, on a translucent white ground, at `pos`.
fn legend<'a, DB: DrawingBackend + 'a, CT: plotters::coord::CoordTranslate>(
    chart: &mut ChartContext<'a, DB, CT>,
    pos: SeriesLabelPosition,
) -> Result<()> {
    chart
        .configure_series_labels()
        .position(pos)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| anyhow::anyhow!("legend: {e:?}"))
}

/// The axes (besides pool size) whose values differ between rows: they name a policy.
pub(crate) fn varying_axes(rows: &[&Row]) -> Vec<&'static str> {
    let axes: [Axis; 7] = [
        ("growth", |r| r.growth.clone()),
        ("exhaustion", |r| r.exhaustion.clone()),
        ("convert", |r| r.convert.clone()),
        ("lookup", |r| r.lookup.clone()),
        ("areas", |r| r.areas.to_string()),
        ("cpus", |r| r.cpus.to_string()),
        ("guest-swiotlb", |r| r.guest_swiotlb.to_string()),
    ];
    axes.iter()
        .filter(|(_, f)| {
            let mut v: Vec<String> = rows
                .iter()
                .filter(|r| r.pool_bytes > 0)
                .map(|r| f(r))
                .collect();
            v.sort();
            v.dedup();
            v.len() > 1
        })
        .map(|(n, _)| *n)
        .collect()
}

pub(crate) fn policy(r: &Row, axes: &[&str]) -> String {
    let parts: Vec<String> = axes
        .iter()
        .map(|a| match *a {
            "growth" => format!("growth={}", r.growth),
            "exhaustion" => format!("exhaustion={}", r.exhaustion),
            "convert" => format!("convert={}", r.convert),
            "lookup" => format!("lookup={}", r.lookup),
            "areas" => format!("areas={}", r.areas),
            "cpus" => format!("cpus={}", r.cpus),
            _ => format!("guest-swiotlb={}", r.guest_swiotlb),
        })
        .collect();
    if parts.is_empty() {
        format!("{} {}", r.exhaustion, r.convert)
    } else {
        parts.join(" ")
    }
}

pub(crate) fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        0.0
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

pub(crate) fn kib_log2(bytes: u64) -> f64 {
    (bytes as f64 / 1024.0).log2()
}

/// `256K`, `1M` for log2(KiB) at a power of two; nothing between them.
pub(crate) fn size_label(log2_kib: f64) -> String {
    let r = log2_kib.round();
    if (log2_kib - r).abs() > 1e-6 || r < 0.0 {
        return String::new();
    }
    let kib = 2f64.powf(r) as u64;
    match kib {
        k if k >= 1 << 20 && k % (1 << 20) == 0 => format!("{}G", k >> 20),
        k if k >= 1 << 10 && k % (1 << 10) == 0 => format!("{}M", k >> 10),
        k => format!("{k}K"),
    }
}

/// Decimals for axis ticks up to `max`, so small ranges do not print the same tick twice.
pub(crate) fn decimals(max: f64) -> usize {
    if max < 5.0 {
        2
    } else if max < 50.0 {
        1
    } else {
        0
    }
}

/// MB/s (10^6 bytes) from fio's KiB/s.
pub(crate) fn mb_s(kib_s: f64) -> f64 {
    kib_s * 1024.0 / 1e6
}

/// Per policy: (log2 pool KiB, mean, min, max over the ok repetitions).
pub(crate) type Series = BTreeMap<String, Vec<(f64, f64, f64, f64)>>;

pub(crate) fn stats(v: &[f64]) -> (f64, f64, f64) {
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(0.0, f64::max);
    (mean(v), min, max)
}

/// The spread of repetitions: per cell with two or more that succeeded, max / min of `f`;
/// returns (cells, median ratio, largest ratio).
pub(crate) fn spread(rows: &[&Row], f: fn(&Row) -> f64) -> Option<(usize, f64, f64)> {
    let mut by: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for r in rows.iter().filter(|r| r.ok()) {
        let key = r
            .cell_id
            .rsplit_once('|')
            .map_or(r.cell_id.as_str(), |(k, _)| k);
        by.entry(key.to_string()).or_default().push(f(r));
    }
    let mut ratios: Vec<f64> = by
        .values()
        .filter(|v| v.len() >= 2)
        .map(|v| {
            let (_, min, max) = stats(v);
            if min > 0.0 {
                max / min
            } else {
                f64::INFINITY
            }
        })
        .collect();
    if ratios.is_empty() {
        return None;
    }
    ratios.sort_by(f64::total_cmp);
    Some((
        ratios.len(),
        ratios[ratios.len() / 2],
        ratios[ratios.len() - 1],
    ))
}

/// Per policy: (pool size, mean/min/max of `f` over the ok repetitions), and the baseline's
/// mean/min/max.
pub(crate) fn series(
    rows: &[&Row],
    axes: &[&str],
    f: fn(&Row) -> f64,
) -> (Series, Option<(f64, f64, f64)>) {
    let mut acc: BTreeMap<String, BTreeMap<u64, Vec<f64>>> = BTreeMap::new();
    let mut base = Vec::new();
    for r in rows.iter().filter(|r| r.ok()) {
        if r.pool_bytes == 0 {
            base.push(f(r));
        } else {
            acc.entry(policy(r, axes))
                .or_default()
                .entry(r.pool_bytes)
                .or_default()
                .push(f(r));
        }
    }
    let s = acc
        .into_iter()
        .map(|(k, m)| {
            (
                k,
                m.into_iter()
                    .map(|(p, v)| {
                        let (m, lo, hi) = stats(&v);
                        (kib_log2(p), m, lo, hi)
                    })
                    .collect(),
            )
        })
        .collect();
    (s, (!base.is_empty()).then(|| stats(&base)))
}

pub(crate) fn draw_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    title: &str,
    y_label: &str,
    s: &Series,
    base: Option<(f64, f64, f64)>,
    pools: (f64, f64),
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let ymax = s
        .values()
        .flatten()
        .map(|p| p.3)
        .chain(base.map(|b| b.2))
        .fold(0.0f64, f64::max)
        .max(1e-9)
        * 1.5;
    // x: log2 of the pool size in KiB, labelled with sizes at the powers of two.
    let (lo, hi) = (pools.0.log2() - 0.5, pools.1.log2() + 0.5);
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(lo..hi, 0.0..ymax)
        .map_err(|e| anyhow::anyhow!("chart: {e:?}"))?;
    chart
        .configure_mesh()
        .x_labels(((hi - lo).round() as usize).max(2))
        .x_desc("bounce pool size (log scale)")
        .y_desc(y_label)
        .x_label_formatter(&|v| size_label(*v))
        .y_label_formatter(&|v| format!("{:.*}", decimals(ymax), v))
        .light_line_style(WHITE)
        .draw()
        .map_err(|e| anyhow::anyhow!("mesh: {e:?}"))?;
    let n = s.len() as f64;
    for (i, (name, pts)) in s.iter().enumerate() {
        let c = color(i);
        // Each policy a little to the side, so that the min-max bars do not hide each other.
        let dx = (i as f64 - (n - 1.0) / 2.0) * 0.04;
        chart
            .draw_series(LineSeries::new(
                pts.iter().map(|p| (p.0 + dx, p.1)),
                c.stroke_width(2),
            ))
            .map_err(|e| anyhow::anyhow!("series: {e:?}"))?
            .label(name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
        chart
            .draw_series(
                pts.iter()
                    .map(|p| Circle::new((p.0 + dx, p.1), 4, c.filled())),
            )
            .map_err(|e| anyhow::anyhow!("points: {e:?}"))?;
        chart
            .draw_series(pts.iter().map(|p| {
                PathElement::new(vec![(p.0 + dx, p.2), (p.0 + dx, p.3)], c.stroke_width(1))
            }))
            .map_err(|e| anyhow::anyhow!("ranges: {e:?}"))?;
    }
    if let Some((b, _, _)) = base {
        let pts: Vec<(f64, f64)> = (0..=40)
            .map(|i| lo + (hi - lo) * f64::from(i) / 40.0)
            .map(|x| (x, b))
            .collect();
        chart
            .draw_series(
                pts.chunks(2)
                    .map(|w| PathElement::new(w.to_vec(), BLACK.stroke_width(1))),
            )
            .map_err(|e| anyhow::anyhow!("baseline: {e:?}"))?
            .label("no bouncing (baseline)")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 8, y)], BLACK.stroke_width(1)));
    }
    legend(&mut chart, SeriesLabelPosition::UpperRight)?;
    Ok(())
}

pub(crate) fn throughput_plot(
    out: &Path,
    workload: &str,
    rows: &[&Row],
    axes: &[&str],
) -> Result<PathBuf> {
    let name = format!("throughput-{workload}.svg");
    let path = out.join(&name);
    let pools: Vec<f64> = rows
        .iter()
        .filter(|r| r.pool_bytes > 0)
        .map(|r| r.pool_bytes as f64 / 1024.0)
        .collect();
    let lo = pools.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = pools.iter().copied().fold(0.0, f64::max);
    let pools = if lo.is_finite() {
        (lo, hi)
    } else {
        (1024.0, 1024.0)
    };
    // A network transfer has a throughput and no IOPS: one panel.
    if !rows.is_empty() && rows.iter().all(|r| r.engine == "tap") {
        let root = SVGBackend::new(&path, (700, 480)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let (s, b) = series(rows, axes, |r| mb_s(r.kib_s()));
        draw_panel(
            &root,
            &format!("{workload}: network throughput"),
            "MB/s over the tap (timed in the guest)",
            &s,
            b,
            pools,
        )?;
        root.present().map_err(|e| anyhow::anyhow!("{e:?}"))?;
        return Ok(PathBuf::from(name));
    }
    let root = SVGBackend::new(&path, (1200, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let (l, r) = root.split_horizontally(600);
    let (s, b) = series(rows, axes, |r| mb_s(r.kib_s()));
    draw_panel(
        &l,
        &format!("{workload}: throughput"),
        "MB/s (read + write)",
        &s,
        b,
        pools,
    )?;
    let (s, b) = series(rows, axes, Row::iops);
    draw_panel(
        &r,
        &format!("{workload}: IOPS"),
        "IOPS (read + write)",
        &s,
        b,
        pools,
    )?;
    root.present().map_err(|e| anyhow::anyhow!("{e:?}"))?;
    Ok(PathBuf::from(name))
}

pub(crate) fn config_label(r: &Row) -> String {
    format!("{} {} {}", r.pool, r.exhaustion, r.convert)
}

pub(crate) fn conversions_plot(out: &Path, rows: &[&Row]) -> Result<Option<PathBuf>> {
    // Per configuration (workloads and repetitions averaged), ms.
    let mut acc: BTreeMap<(u64, String), Vec<[f64; 3]>> = BTreeMap::new();
    for r in rows
        .iter()
        .filter(|r| r.pool_bytes > 0 && r.metrics_lines > 0 && r.convert != "none")
    {
        acc.entry((r.pool_bytes, config_label(r)))
            .or_default()
            .push([
                r.conv_io_path_ns as f64 / 1e6,
                r.conv_background_ns as f64 / 1e6,
                r.conv_startup_ns as f64 / 1e6,
            ]);
    }
    if acc.is_empty() {
        return Ok(None);
    }
    let bars: Vec<(String, [f64; 3])> = acc
        .into_iter()
        .map(|((_, label), v)| {
            let m = |i: usize| mean(&v.iter().map(|x| x[i]).collect::<Vec<_>>());
            (label, [m(0), m(1), m(2)])
        })
        .collect();
    let ymax = bars
        .iter()
        .flat_map(|b| b.1)
        .fold(0.0f64, f64::max)
        .max(1e-3)
        * 1.4;
    let name = "conversions.svg";
    let path = out.join(name);
    let width = (160 + 110 * bars.len() as u32).max(700);
    let root = SVGBackend::new(&path, (width, 460)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let n = bars.len();
    let labels: Vec<String> = bars.iter().map(|b| b.0.clone()).collect();
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Modeled private<->shared conversion time by payer (mean per cell)",
            ("sans-serif", 18),
        )
        .margin(10)
        .x_label_area_size(50)
        .y_label_area_size(70)
        .build_cartesian_2d(-0.5..(n as f64 - 0.5), 0.0..ymax)
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n.max(2))
        .x_label_formatter(&|v| {
            let i = v.round();
            if (v - i).abs() < 1e-6 && i >= 0.0 {
                labels.get(i as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .x_desc("configuration (pool size, exhaustion policy, conversion preset)")
        .y_desc("conversion time (ms, modeled)")
        .y_label_formatter(&|v| format!("{v:.2}"))
        .draw()
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let kinds = [
        "I/O path",
        "background (growth worker)",
        "start-up (initial pool, atomic pools)",
    ];
    for (k, kind) in kinds.iter().enumerate() {
        let c = color(k);
        let x0 = -0.36 + k as f64 * 0.24;
        chart
            .draw_series(bars.iter().enumerate().map(|(i, b)| {
                let x = i as f64 + x0;
                Rectangle::new([(x, 0.0), (x + 0.22, b.1[k])], c.filled())
            }))
            .map_err(|e| anyhow::anyhow!("{e:?}"))?
            .label(*kind)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], c.filled()));
    }
    legend(&mut chart, SeriesLabelPosition::UpperRight)?;
    root.present().map_err(|e| anyhow::anyhow!("{e:?}"))?;
    Ok(Some(PathBuf::from(name)))
}

/// (seconds since start, KiB of slots in use, KiB high water so far) of each metrics line.
pub(crate) type Occupancy = Vec<(f64, f64, f64)>;

pub(crate) fn occupancy(file: &Path) -> Occupancy {
    let Ok(text) = crate::runner::read_metrics(file) else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| {
            let t = v["uptime_ms"].as_f64()? / 1e3;
            let b = &v["bounce"];
            let kib = b["slot_bytes"].as_f64().unwrap_or(2048.0) / 1024.0;
            let used = b["slots_used"].as_f64()? * kib;
            let hiwater = b["slots_used_hiwater"].as_f64().unwrap_or(0.0) * kib;
            Some((t, used, hiwater))
        })
        .collect()
}

pub(crate) fn occupancy_plot(
    dir: &Path,
    out: &Path,
    workload: &str,
    rows: &[&Row],
) -> Result<Option<PathBuf>> {
    let mut lines: Vec<(u64, String, Occupancy)> = Vec::new();
    for r in rows
        .iter()
        .filter(|r| r.pool_bytes > 0 && r.rep == 0 && !r.metrics_file.is_empty())
    {
        let pts = occupancy(&dir.join(&r.metrics_file));
        if !pts.is_empty() {
            lines.push((r.pool_bytes, config_label(r), pts));
        }
    }
    if lines.is_empty() {
        return Ok(None);
    }
    lines.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
    let tmax = lines
        .iter()
        .flat_map(|l| &l.2)
        .map(|p| p.0)
        .fold(0.0f64, f64::max)
        .max(1.0);
    let ymax = lines
        .iter()
        .flat_map(|l| &l.2)
        .map(|p| p.1.max(p.2))
        .fold(0.0f64, f64::max)
        .max(1.0)
        * 1.15;
    let name = format!("occupancy-{workload}.svg");
    let path = out.join(&name);
    // One panel per pool size, one colour per policy (the same in every panel).
    let mut pools: Vec<(u64, String)> = Vec::new();
    let mut policies: Vec<String> = Vec::new();
    for (bytes, label, _) in &lines {
        let (pool, policy) = label.split_once(' ').unwrap_or((label.as_str(), ""));
        if !pools.iter().any(|p| p.0 == *bytes) {
            pools.push((*bytes, pool.to_string()));
        }
        if !policies.iter().any(|p| p == policy) {
            policies.push(policy.to_string());
        }
    }
    policies.sort();
    let root =
        SVGBackend::new(&path, ((420 * pools.len() as u32 + 80).max(900), 500)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let root = root
        .titled(
            &format!("{workload}: bounce slots in use (thick) and high water so far (thin, dots), repetition 0"),
            ("sans-serif", 18),
        )
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let panels = root.split_evenly((1, pools.len()));
    for ((bytes, pool), area) in pools.iter().zip(&panels) {
        let mut chart = ChartBuilder::on(area)
            .caption(format!("pool {pool}"), ("sans-serif", 15))
            .margin(8)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..tmax, 0.0..ymax)
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        chart
            .configure_mesh()
            .x_desc("time since microvm started (s)")
            .y_desc("slots in use (KiB, per metrics interval)")
            .y_label_formatter(&|v| format!("{:.*}", decimals(ymax), v))
            .light_line_style(WHITE)
            .draw()
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        for (_, label, pts) in lines.iter().filter(|l| l.0 == *bytes) {
            let policy = label.split_once(' ').map_or("", |(_, p)| p);
            let c = color(policies.iter().position(|p| p == policy).unwrap_or(0));
            chart
                .draw_series(LineSeries::new(
                    pts.iter().map(|p| (p.0, p.1)),
                    c.stroke_width(2),
                ))
                .map_err(|e| anyhow::anyhow!("{e:?}"))?
                .label(policy.to_string())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2))
                });
            // The high-water mark so far: thin, with dots, same colour.
            chart
                .draw_series(LineSeries::new(
                    pts.iter().map(|p| (p.0, p.2)),
                    c.stroke_width(1),
                ))
                .map_err(|e| anyhow::anyhow!("{e:?}"))?;
            chart
                .draw_series(pts.iter().map(|p| Circle::new((p.0, p.2), 2, c.filled())))
                .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        }
        legend(&mut chart, SeriesLabelPosition::MiddleRight)?;
    }
    root.present().map_err(|e| anyhow::anyhow!("{e:?}"))?;
    Ok(Some(PathBuf::from(name)))
}

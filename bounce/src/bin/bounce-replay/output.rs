//! What a replay prints: a Markdown table (each column's median over the repetitions), one
//! JSON object per run, and CSV rows.

use bounce::{ConversionsBy, StatsSnapshot};
use serde_json::{json, Value};

use crate::engine::{Outcome, OPS};

/// The table's columns after the labels.
pub const COLUMNS: [&str; 13] = [
    "maps",
    "I/O failures",
    "deferred maps",
    "growth events (sync)",
    "transient pools",
    "conversion ms: I/O path",
    "background",
    "startup",
    "peak shared MiB",
    "map p50 ns",
    "map p90 ns",
    "map p99 ns",
    "map max ns",
];

/// The quantiles each operation's `latency_ns.OP.quantiles` lists (enough points for a CDF plot
/// from the JSON alone; 0 is the minimum, 1 the maximum).
pub const QUANTILES: [f64; 31] = [
    0.0, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7,
    0.75, 0.8, 0.85, 0.9, 0.925, 0.95, 0.975, 0.99, 0.995, 0.999, 0.9995, 0.9999, 0.99999, 1.0,
];

fn conv_ns(c: &ConversionsBy) -> u64 {
    c.to_shared.ns + c.to_private.ns
}

fn conv_calls(c: &ConversionsBy) -> u64 {
    c.to_shared.calls + c.to_private.calls
}

impl Outcome {
    /// Maps that failed, and those deferred maps that never mapped: I/O the guest would lose.
    pub fn io_failures(&self) -> u64 {
        self.map_failures + self.never_mapped
    }

    /// The table's cells, each with the number it is sorted by for the median.
    pub fn cells(&self) -> Vec<(f64, String)> {
        let s = &self.stats;
        let n = |v: u64| (v as f64, v.to_string());
        let ms = |c: &ConversionsBy| {
            let v = conv_ns(c) as f64 / 1e6;
            (v, format!("{v:.2}"))
        };
        let mib = s.shared_bytes_hiwater as f64 / (1 << 20) as f64;
        let growth = s.extensions + s.blocking.sync_growths;
        vec![
            n(s.maps),
            n(self.io_failures()),
            n(self.deferred),
            (
                growth as f64,
                format!("{} ({})", growth, s.blocking.sync_growths),
            ),
            n(s.transient_created),
            ms(&s.conversions.io_path),
            ms(&s.conversions.background),
            ms(&s.conversions.startup),
            (mib, format!("{mib:.1}")),
            n(self.percentile(0, 0.5)),
            n(self.percentile(0, 0.9)),
            n(self.percentile(0, 0.99)),
            n(self.latency[0].max()),
        ]
    }

    pub fn json(&self, trace: &str, config: &str, labels: &[(String, String)]) -> Value {
        let lat: serde_json::Map<String, Value> = OPS
            .iter()
            .enumerate()
            .map(|(i, op)| {
                let h = &self.latency[i];
                // [quantile, ns]: the CDF's points (hdrhistogram: 3 significant figures).
                let quantiles: Vec<Value> = if h.is_empty() {
                    Vec::new()
                } else {
                    QUANTILES
                        .iter()
                        .map(|&q| {
                            let v = match q {
                                q if q <= 0.0 => h.min(),
                                q if q >= 1.0 => h.max(),
                                q => h.value_at_quantile(q),
                            };
                            json!([q, v])
                        })
                        .collect()
                };
                (
                    op.to_string(),
                    json!({
                        "quantiles": quantiles,
                        "count": h.len(),
                        "p50": self.percentile(i, 0.5),
                        "p90": self.percentile(i, 0.9),
                        "p99": self.percentile(i, 0.99),
                        "max": h.max(),
                        "mean": if h.is_empty() { 0.0 } else { h.mean() },
                    }),
                )
            })
            .collect();
        let cells: serde_json::Map<String, Value> = labels
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        json!({
            "trace": trace,
            "config_given": config,
            "cell": cells,
            "records": self.records,
            "lanes": format!("{:?}", self.lanes).to_lowercase(),
            "threads": self.threads,
            "config": self.cfg,
            "wall_ns": self.wall_ns,
            "map_failures": self.map_failures,
            "map_failures_by_kind": self.failures_by_kind,
            "recorded_failed_maps": self.recorded_failures,
            "op_failures": self.op_failures,
            "skipped_records": self.skipped,
            "deferred_maps": self.deferred,
            "never_mapped": self.never_mapped,
            "live_at_end": self.live_at_end,
            "latency_ns": lat,
            "map_latency_ns": {
                "p50": self.percentile(0, 0.5),
                "p90": self.percentile(0, 0.9),
                "p99": self.percentile(0, 0.99),
                "max": self.latency[0].max(),
            },
            "stats": self.stats,
        })
    }
}

/// CSV header: the label columns, then [`csv_row`]'s.
pub fn csv_header(labels: &[String]) -> String {
    let mut h: Vec<String> = labels.iter().map(|l| csv_field(l)).collect();
    h.extend(
        [
            "run",
            "records",
            "threads",
            "wall_ns",
            "maps",
            "map_failures",
            "map_failures_by_kind",
            "recorded_failed_maps",
            "never_mapped",
            "deferred_maps",
            "skipped_records",
            "op_failures",
            "extensions",
            "sync_growths",
            "transient_pools",
            "peak_shared_bytes",
        ]
        .map(String::from),
    );
    for payer in ["io_path", "background", "startup"] {
        for f in ["calls", "ns"] {
            h.push(format!("conv_{payer}_{f}"));
        }
    }
    for op in OPS {
        for f in ["count", "p50_ns", "p90_ns", "p99_ns", "max_ns"] {
            h.push(format!("{op}_{f}"));
        }
    }
    h.join(",")
}

pub fn csv_row(labels: &[String], run: usize, o: &Outcome) -> String {
    let s: &StatsSnapshot = &o.stats;
    let mut r: Vec<String> = labels.iter().map(|l| csv_field(l)).collect();
    let kinds: Vec<String> = o
        .failures_by_kind
        .iter()
        .map(|(k, v)| format!("{k}:{v}"))
        .collect();
    r.extend([
        run.to_string(),
        o.records.to_string(),
        o.threads.to_string(),
        o.wall_ns.to_string(),
        s.maps.to_string(),
        o.map_failures.to_string(),
        csv_field(&kinds.join(";")),
        o.recorded_failures.to_string(),
        o.never_mapped.to_string(),
        o.deferred.to_string(),
        o.skipped.to_string(),
        o.op_failures.to_string(),
        s.extensions.to_string(),
        s.blocking.sync_growths.to_string(),
        s.transient_created.to_string(),
        s.shared_bytes_hiwater.to_string(),
    ]);
    let c = &s.conversions;
    for by in [&c.io_path, &c.background, &c.startup] {
        r.push(conv_calls(by).to_string());
        r.push(conv_ns(by).to_string());
    }
    for i in 0..OPS.len() {
        r.push(o.latency[i].len().to_string());
        for p in [0.5, 0.9, 0.99] {
            r.push(o.percentile(i, p).to_string());
        }
        r.push(o.latency[i].max().to_string());
    }
    r.join(",")
}

/// Quotes a CSV field when it needs it (RFC 4180).
pub fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// Each column's median over the runs (failures and deferred maps with their range).
pub fn median_cells(runs: &[Outcome]) -> Vec<String> {
    let mut cols: Vec<Vec<(f64, String)>> = vec![Vec::new(); COLUMNS.len()];
    for r in runs {
        for (c, (v, s)) in cols.iter_mut().zip(r.cells()) {
            c.push((v, s));
        }
    }
    cols.into_iter()
        .enumerate()
        .map(|(i, mut c)| {
            c.sort_by(|a, b| a.0.total_cmp(&b.0));
            let (lo, hi) = (c[0].0, c[c.len() - 1].0);
            let mid = c.swap_remove(c.len() / 2).1;
            // The counts that vary most between runs (the worker's timing) get their range.
            if (i == 1 || i == 2) && lo != hi {
                format!("{mid} ({lo}-{hi})")
            } else {
                mid
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_are_quoted_when_needed() {
        assert_eq!(csv_field("size=1M"), "size=1M");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"x\""), "\"say \"\"x\"\"\"");
    }

    #[test]
    fn header_and_row_have_the_same_width() {
        let labels = vec!["size".to_string()];
        let h = csv_header(&labels);
        assert!(h.starts_with("size,run,records"));
        assert!(h.contains("conv_io_path_calls") && h.contains("map_p99_ns"));
        let recs = vec![bounce::TraceRecord {
            len: 4096,
            ..Default::default()
        }];
        let mem = crate::engine::guest_memory(&recs).unwrap();
        let opts = crate::engine::Opts {
            timed: false,
            may_block: false,
            lanes: crate::engine::Lanes::Auto,
        };
        let o = crate::engine::replay(&recs, &mem, "size=1M", &opts).unwrap();
        let row = csv_row(&["1M".into()], 0, &o);
        assert_eq!(h.split(',').count(), row.split(',').count(), "{h}\n{row}");
        // The JSON carries each operation's CDF: quantiles rising, values not falling.
        let j = o.json("t", "size=1M", &[]);
        let q = j["latency_ns"]["map"]["quantiles"].as_array().unwrap();
        assert_eq!(q.len(), QUANTILES.len());
        let pts: Vec<(f64, u64)> = q
            .iter()
            .map(|p| (p[0].as_f64().unwrap(), p[1].as_u64().unwrap()))
            .collect();
        assert!(
            pts.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1),
            "{pts:?}"
        );
        assert_eq!(pts.last().unwrap().1, o.latency[0].max());
        assert!(j["latency_ns"]["sync_for_cpu"]["quantiles"]
            .as_array()
            .unwrap()
            .is_empty());
    }
}

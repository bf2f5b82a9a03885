//! Replays a DMA trace (JSON lines, see the crate README; `.gz` read as gzip) against pool
//! configurations and prints the statistics.
//!
//! ```text
//! bounce-replay TRACE [--config 'size=64M,...' | --config @cfg.json]...
//!               [--vary 'KEY=V1|V2|...']... [--sweep 'KEY=V1,V2;KEY2=V3,V4']
//!               [--timed] [--may-block] [--lanes auto|queue|thread|one] [--repeat N] [--json]
//!               [--csv FILE] [--json-out FILE]
//! ```
//! Each configuration is built from the `--config`s, crossed with every value of each
//! `--vary` key and each `--sweep` key (a cross product). For each, the trace's guest addresses
//! are backed by one sparse guest memory region and every record goes through the same `Dma`
//! map/sync/unmap path the devices use, so copies are real. `--lanes thread` gives each
//! recorded thread its own replay thread (as the VMM ran them: microvm serves all of a device's
//! queues on one thread; the order within a thread is kept); `--lanes queue` one per recorded
//! device queue (area locks contend as they would with a thread per queue); `--lanes one`
//! replays every record on one thread in the trace's order. The default, `auto`, is `thread`
//! when the trace records threads and `queue` for version-1 traces, which do not (`queue` as
//! the default replayed a one-thread trace on a thread per queue, with contention the recording
//! never had). `--timed`
//! keeps the recorded gaps between operations (for the worker's growth and shrink, and the time
//! a deferred map waits); without it each queue runs as fast as it can.
//!
//! `--may-block`: every map passes `MapAttrs::may_block` (as a driver passes
//! `DMA_ATTR_MAY_BLOCK`; a record's own `may_block` is always passed): with `exhaustion=throttle`
//! or `wait` a map may answer `WouldBlock`. The replay then does what a device would: it defers
//! the request and every later map of the same source (queue order is kept), and retries them in
//! order when that source's waker fires; an unmap that arrives for a deferred map is done right
//! after it maps. A map's latency runs from its first attempt to its success. A map the trace
//! recorded as failed is tried again and, if it maps, unmapped at once.
//!
//! One configuration prints its statistics as JSON; several print a Markdown table, one row
//! each (the median of `--repeat N` runs, per column); `--json` prints one JSON object per run
//! instead. `--csv FILE` and `--json-out FILE` also write one CSV row / JSON line per run.

mod engine;
mod output;
mod sweep;

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use bounce::{read_trace, TraceRecord};
use clap::Parser;

use crate::engine::{Lanes, Opts};
use crate::output::{csv_header, csv_row, median_cells, COLUMNS};
use crate::sweep::{cells, no_duplicates, parse_sweep, parse_vary, Axis};

#[derive(Parser, Debug)]
#[command(
    name = "bounce-replay",
    about = "Replays a DMA trace against bounce pool configurations",
    after_help = "Configuration keys: see bounce/README.md (`size`, `exhaustion`, `growth`, `convert`, ...)."
)]
struct Cli {
    /// The trace (JSON lines; gzip if the name ends in .gz).
    trace: PathBuf,
    /// A pool configuration: `key=value,...`, a JSON object, or `@FILE` (repeatable).
    #[arg(short, long = "config", value_name = "CONFIG")]
    configs: Vec<String>,
    /// Vary one key: `KEY=V1|V2|...` (repeatable; crossed with every configuration).
    #[arg(long, value_name = "KEY=V1|V2")]
    vary: Vec<String>,
    /// A cross product of keys: `KEY=V1,V2;KEY2=V3,V4` (after the `--vary` keys).
    #[arg(long, value_name = "SPEC")]
    sweep: Option<String>,
    /// Keep the recorded gaps between operations.
    #[arg(long)]
    timed: bool,
    /// Every map may block (`DMA_ATTR_MAY_BLOCK`): deferred and retried as a device would.
    #[arg(long)]
    may_block: bool,
    /// Replay threads: per recorded thread (`auto`: when the trace records threads, else per
    /// queue), per recorded device queue, per recorded thread, or one for all.
    #[arg(long, value_enum, default_value = "auto")]
    lanes: Lanes,
    /// Runs per configuration (a table cell is the median).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    repeat: u32,
    /// Print one JSON object per run instead of a table.
    #[arg(long)]
    json: bool,
    /// Also write one CSV row per run to FILE.
    #[arg(long, value_name = "FILE")]
    csv: Option<PathBuf>,
    /// Also write one JSON object per run (a line each) to FILE.
    #[arg(long, value_name = "FILE")]
    json_out: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bounce-replay: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load(path: &PathBuf) -> Result<Vec<TraceRecord>> {
    let file = File::open(path).with_context(|| format!("{}", path.display()))?;
    let r: Box<dyn BufRead> = if path.extension().is_some_and(|e| e == "gz") {
        Box::new(BufReader::new(flate2::read::MultiGzDecoder::new(file)))
    } else {
        Box::new(BufReader::new(file))
    };
    read_trace(r).with_context(|| format!("{}", path.display()))
}

fn run(cli: Cli) -> Result<()> {
    // Every spec is checked before the trace is read or anything runs.
    let mut axes: Vec<Axis> = Vec::new();
    for v in &cli.vary {
        axes.push(parse_vary(v).map_err(anyhow::Error::msg)?);
    }
    if let Some(s) = &cli.sweep {
        axes.extend(parse_sweep(s).map_err(anyhow::Error::msg)?);
    }
    no_duplicates(&axes).map_err(anyhow::Error::msg)?;
    let mut configs = cli.configs.clone();
    if configs.is_empty() {
        configs.push(String::new());
    }
    let cells = cells(&configs, &axes);
    let opts = Opts {
        timed: cli.timed,
        may_block: cli.may_block,
        lanes: cli.lanes,
    };
    let trace = cli.trace.display().to_string();
    let recs = load(&cli.trace)?;
    if recs.is_empty() {
        bail!("{trace}: no records");
    }
    let mem = engine::guest_memory(&recs).map_err(anyhow::Error::msg)?;
    // The recorded threads, by name where the trace gives them.
    let recorded = bounce::trace::thread_names(&recs);
    let thread_json: Vec<serde_json::Value> = recorded
        .iter()
        .map(|(t, n, c)| serde_json::json!({"thread": t, "name": n, "records": c}))
        .collect();
    let lanes = engine::resolve(cli.lanes, &recs);
    if recorded.is_empty() {
        eprintln!(
            "bounce-replay: {trace}: {} records, no threads recorded; lanes: {lanes:?}",
            recs.len()
        );
    } else {
        let names: Vec<String> = recorded
            .iter()
            .map(|(t, n, c)| format!("{t} {} ({c} records)", n.as_deref().unwrap_or("(unnamed)")))
            .collect();
        eprintln!(
            "bounce-replay: {trace}: {} records; recorded threads: {}; lanes: {lanes:?}",
            recs.len(),
            names.join(", ")
        );
    }

    // Label columns: the base configuration when there are several, then each varied key.
    let base_col = configs.len() != 1 || axes.is_empty();
    let mut label_keys: Vec<String> = if base_col {
        vec!["config".to_string()]
    } else {
        Vec::new()
    };
    label_keys.extend(axes.iter().map(|a| a.key.clone()));
    let labels_of = |l: &[String]| -> Vec<String> {
        if base_col {
            l.to_vec()
        } else {
            l[1..].to_vec()
        }
    };

    let mut csv = match &cli.csv {
        Some(p) => {
            let mut f = File::create(p).with_context(|| format!("{}", p.display()))?;
            writeln!(f, "{}", csv_header(&label_keys))?;
            Some(f)
        }
        None => None,
    };
    let mut json_out = match &cli.json_out {
        Some(p) => Some(File::create(p).with_context(|| format!("{}", p.display()))?),
        None => None,
    };
    let table = cells.len() > 1 && !cli.json;
    if table {
        if !base_col && !configs[0].is_empty() {
            println!("Base configuration: `{}`\n", configs[0]);
        }
        let mut head = label_keys.clone();
        head.extend(COLUMNS.iter().map(|c| c.to_string()));
        println!("| {} |", head.join(" | "));
        println!("|{}", " --- |".repeat(head.len()));
    }
    for (n, cell) in cells.iter().enumerate() {
        if cells.len() > 1 {
            eprintln!("bounce-replay: [{}/{}] {}", n + 1, cells.len(), cell.config);
        }
        let labels = labels_of(&cell.labels);
        let named: Vec<(String, String)> = label_keys
            .iter()
            .cloned()
            .zip(labels.iter().cloned())
            .collect();
        let mut runs = Vec::new();
        for run in 0..cli.repeat as usize {
            let o = engine::replay(&recs, &mem, &cell.config, &opts)
                .map_err(anyhow::Error::msg)
                .with_context(|| format!("configuration `{}`", cell.config))?;
            if let Some(f) = &mut csv {
                writeln!(f, "{}", csv_row(&labels, run, &o))?;
            }
            let mut j = o.json(&trace, &cell.config, &named);
            j["recorded_threads"] = serde_json::Value::Array(thread_json.clone());
            if let Some(f) = &mut json_out {
                writeln!(f, "{}", serde_json::to_string(&j)?)?;
            }
            if !table {
                if cli.json {
                    println!("{}", serde_json::to_string(&j)?);
                } else {
                    println!("{}", serde_json::to_string_pretty(&j)?);
                }
            }
            runs.push(o);
        }
        if table {
            let mut row = labels;
            row.extend(median_cells(&runs));
            println!("| {} |", row.join(" | "));
        }
    }
    Ok(())
}

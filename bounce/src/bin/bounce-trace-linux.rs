//! Converts Linux's DMA tracepoints (`dma:dma_map_*`, `dma:dma_unmap_*`, `dma:dma_sync_*`;
//! Linux 6.12+), as `trace-cmd report` or `/sys/kernel/tracing/trace` print them, into a
//! bounce trace that `bounce-replay` reads. See `bounce::linux_trace` for the mapping.
//!
//! ```text
//! # in the guest:
//! echo 1 > /sys/kernel/tracing/events/dma/enable; ...; cat /sys/kernel/tracing/trace > dma.txt
//! # or: trace-cmd record -e dma ...; trace-cmd report > dma.txt
//! bounce-trace-linux dma.txt -o dma.jsonl
//! bounce-replay dma.jsonl --sweep 'size=1M,4M;exhaustion=fail,transient'
//! ```

use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::path::PathBuf;

use anyhow::{Context, Result};
use bounce::linux_trace::convert_linux_trace;
use clap::Parser;

#[derive(Parser, Debug)]
#[command(
    name = "bounce-trace-linux",
    about = "Converts Linux DMA tracepoint text (trace-cmd report, tracefs) to a bounce trace"
)]
struct Cli {
    /// `trace-cmd report` output or a copy of /sys/kernel/tracing/trace ("-": stdin).
    input: PathBuf,
    /// The bounce trace to write (JSON lines; stdout if not given).
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// Keep the physical addresses as captured (the replay then backs all of them with memory).
    #[arg(long)]
    keep_addresses: bool,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let (recs, sum) = if cli.input.as_os_str() == "-" {
        convert_linux_trace(std::io::stdin().lock(), !cli.keep_addresses)
    } else {
        let f = File::open(&cli.input).with_context(|| format!("{}", cli.input.display()))?;
        convert_linux_trace(BufReader::new(f), !cli.keep_addresses)
    }
    .with_context(|| format!("{}", cli.input.display()))?;
    match &cli.output {
        Some(p) => bounce::write_trace(
            BufWriter::new(File::create(p).with_context(|| format!("{}", p.display()))?),
            &recs,
        ),
        None => bounce::write_trace(BufWriter::new(std::io::stdout().lock()), &recs),
    }
    .context("writing the trace")?;
    eprintln!(
        "bounce-trace-linux: {} records: {} maps ({} failed), {} unmaps, {} syncs; \
         {} unmatched unmaps/syncs dropped, {} coherent or dir=NONE events ignored, \
         {} merged dma_map_sg dropped; devices {:?}; events {:?}",
        recs.len(),
        sum.maps,
        sum.failed_maps,
        sum.unmaps,
        sum.syncs,
        sum.unmatched,
        sum.ignored,
        sum.merged_sg,
        sum.devices,
        sum.events
    );
    Ok(())
}

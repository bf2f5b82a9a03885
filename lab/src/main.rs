//! `microvm-lab`: sweeps of microvm configurations x fio workloads through the test harness,
//! and reports with plots.

mod report;
mod results;
mod runner;
mod spec;
mod sweep;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "microvm-lab", version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run every cell of SPEC.toml not already in the results directory (resumes: cells with
    /// no output, from a timeout or an interruption, run again).
    Sweep {
        spec: PathBuf,
        /// Results directory [default: lab-results/<spec name>].
        #[arg(long)]
        out: Option<PathBuf>,
        /// Print the cells and the first batch's script; run nothing.
        #[arg(long)]
        dry_run: bool,
        /// Also run again the cells that ran and failed (fio or microvm).
        #[arg(long)]
        retry_failed: bool,
    },
    /// Write SVG plots and report.md from a results directory.
    Report {
        results: PathBuf,
        /// Where to write [default: the results directory].
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    if let Err(e) = run(Cli::parse()) {
        eprintln!("microvm-lab: error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Sweep {
            spec,
            out,
            dry_run,
            retry_failed,
        } => sweep::sweep(&spec, out, dry_run, retry_failed),
        Cmd::Report { results, out } => {
            let out = out.unwrap_or_else(|| results.clone());
            let md = report::report(&results, &out)?;
            println!("{}", md.display());
            Ok(())
        }
    }
}

//! `microvm-lab`: sweeps of microvm configurations x fio workloads through the test harness,
//! and reports with plots.

mod cdf;
mod emit;
mod plots;
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
        /// Run only cell N (an index as `--dry-run` lists them; repeatable): one job of a
        /// cluster array, with its own `--out`.
        #[arg(long = "cell", value_name = "N")]
        cells: Vec<usize>,
        /// Run nothing: print the matrix as a Slurm job-array script or a GNU parallel command
        /// list, one cell per job, each writing `OUT/cells/NNNN` (merge them with `report
        /// OUT/cells --out OUT`).
        #[arg(long, value_enum, conflicts_with_all = ["cells", "dry_run"])]
        emit: Option<emit::Emit>,
        /// No progress bar.
        #[arg(long)]
        quiet: bool,
    },
    /// Write SVG plots and report.md from results directories (several are merged; a
    /// directory without results.jsonl stands for every results directory below it, as
    /// `--emit`'s jobs leave them in OUT/cells/).
    Report {
        #[arg(required = true)]
        results: Vec<PathBuf>,
        /// Where to write [default: the results directory, if there is one].
        #[arg(long)]
        out: Option<PathBuf>,
        /// `bounce-replay --json-out` files: map-latency CDF plots per operation.
        #[arg(long = "replay", value_name = "JSONL")]
        replays: Vec<PathBuf>,
    },
    /// Map-latency CDF plots from `bounce-replay --json-out` files alone.
    Cdf {
        #[arg(required = true)]
        replays: Vec<PathBuf>,
        #[arg(long)]
        out: PathBuf,
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
            cells,
            emit,
            quiet,
        } => {
            if let Some(kind) = emit {
                let s = spec::Spec::load(&spec)?;
                let abs = |p: &std::path::Path| -> Result<PathBuf> {
                    Ok(std::env::current_dir()?.join(p))
                };
                let out = abs(&out.unwrap_or_else(|| PathBuf::from("lab-results").join(&s.name)))?;
                let lab = std::env::current_exe()?;
                let spec_path = std::fs::canonicalize(&spec)?;
                let repo = microvm_tests::artifacts::repo_root();
                let job = emit::Job {
                    lab: &lab,
                    spec_path: &spec_path,
                    out: &out,
                    repo: &repo,
                };
                print!(
                    "{}",
                    match kind {
                        emit::Emit::Slurm => emit::slurm(&s, &job),
                        emit::Emit::Parallel => emit::parallel(&s, &job),
                    }
                );
                return Ok(());
            }
            let opts = sweep::Options {
                out,
                dry_run,
                retry_failed,
                cells,
                quiet,
            };
            sweep::sweep(&spec, opts, &mut sweep::HarnessBackend::new())
        }
        Cmd::Report {
            results,
            out,
            replays,
        } => {
            let out = match (out, results.as_slice()) {
                (Some(o), _) => o,
                (None, [one]) => one.clone(),
                (None, _) => anyhow::bail!("several results directories: --out is needed"),
            };
            let md = report::report(&results, &out, &replays)?;
            println!("{}", md.display());
            Ok(())
        }
        Cmd::Cdf { replays, out } => {
            for p in cdf::plot_files(&replays, &out)? {
                println!("{}", out.join(p).display());
            }
            Ok(())
        }
    }
}

//! `microvm`: boots a Linux guest on KVM.

mod acpi;
mod boot;
mod config;
mod cpu;
mod exit;
mod layout;
mod legacy;
mod memory;
mod metrics;
mod mptable;
mod seccomp;
mod serial;
mod vcpu;
mod virtio;
mod vm;

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use vmm_sys_util::terminal::Terminal;

use crate::config::{Cli, VmConfig};
use crate::exit::ExitReason;

fn main() -> ExitCode {
    let start = Instant::now();
    if let Err(e) = metrics::block_stats_signal() {
        eprintln!("microvm: cannot block SIGUSR1 for the statistics handler: {e}");
        return ExitCode::FAILURE;
    }
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp_micros()
        .init();
    let cli = Cli::parse();
    let cfg = match VmConfig::from_cli(cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("microvm: {e:#}");
            return ExitCode::from(2);
        }
    };
    let stdin = std::io::stdin();
    let raw = stdin.is_terminal() && stdin.lock().set_raw_mode().is_ok();
    let result = vm::run(&cfg, start);
    if raw {
        let _ = stdin.lock().set_canon_mode();
    }
    let code = match result {
        Ok(ExitReason::Reboot) | Ok(ExitReason::PowerOff) => ExitCode::SUCCESS,
        Ok(ExitReason::Error(e)) => {
            eprintln!("microvm: {e}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("microvm: {e:#}");
            ExitCode::FAILURE
        }
    };
    // vCPU threads may still sit in KVM_RUN; the process ending takes them with it.
    std::process::exit(if code == ExitCode::SUCCESS { 0 } else { 1 })
}

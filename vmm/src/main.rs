//! `microvm`: boots a Linux guest on KVM.

mod acpi;
mod boot;
mod config;
mod cpu;
mod exit;
mod layout;
mod legacy;
mod logger;
mod memory;
mod metrics;
mod mptable;
mod prometheus;
mod seccomp;
mod serial;
mod signals;
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
    if let Err(e) = signals::block() {
        eprintln!("microvm: cannot block the signals it handles (SIGUSR1, SIGTERM, ...): {e}");
        return ExitCode::FAILURE;
    }
    logger::init();
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
    let status = match result {
        Ok(ExitReason::Error(e)) => {
            eprintln!("microvm: {e}");
            1
        }
        Ok(reason) => reason.status(),
        Err(e) => {
            eprintln!("microvm: {e:#}");
            1
        }
    };
    // A vCPU thread that did not stop when kicked still sits in KVM_RUN: the process exit takes
    // it with it (returning from main would wait for nothing, but be explicit).
    std::process::exit(i32::from(status))
}

//! Logging to stderr through `log`/`env_logger`, controlled by `RUST_LOG` (default `info`) and
//! `RUST_LOG_STYLE` (`auto`, `always`, `never`).
//!
//! Whether stderr is a terminal (and so whether lines are coloured) is decided once, here,
//! before any seccomp filter exists. env_logger's own stderr target asks the terminal again on
//! every line (an `ioctl(TCGETS)`), which no thread's filter allows: the first log line of a
//! vCPU thread would end microvm. Lines go through a plain `write(2)` instead.

use std::io::{self, IsTerminal, Write};

use env_logger::{Builder, Env, Target, WriteStyle};

/// stderr without any terminal query: std's `Stderr` is unbuffered and only calls `write`.
struct Stderr;

impl Write for Stderr {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        io::stderr().write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The colour choice for `RUST_LOG_STYLE` (`None`: unset or `auto`) and the facts about stderr.
fn style(requested: Option<&str>, terminal: bool, no_color: bool, dumb: bool) -> WriteStyle {
    match requested {
        Some("always") => WriteStyle::Always,
        Some("never") => WriteStyle::Never,
        _ if terminal && !no_color && !dumb => WriteStyle::Always,
        _ => WriteStyle::Never,
    }
}

/// Installs the global logger. Call before any filter is installed.
pub fn init() {
    let requested = std::env::var("RUST_LOG_STYLE").ok();
    let write_style = style(
        requested.as_deref(),
        io::stderr().is_terminal(),
        std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty()),
        std::env::var("TERM").is_ok_and(|t| t == "dumb"),
    );
    Builder::from_env(Env::default().default_filter_or("info"))
        .format_timestamp_micros()
        .write_style(write_style)
        .target(Target::Pipe(Box::new(Stderr)))
        .init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_only_on_a_capable_terminal_unless_asked() {
        assert_eq!(style(None, true, false, false), WriteStyle::Always);
        assert_eq!(style(Some("auto"), true, false, false), WriteStyle::Always);
        assert_eq!(style(None, false, false, false), WriteStyle::Never);
        assert_eq!(style(None, true, true, false), WriteStyle::Never);
        assert_eq!(style(None, true, false, true), WriteStyle::Never);
        assert_eq!(
            style(Some("always"), false, false, false),
            WriteStyle::Always
        );
        assert_eq!(style(Some("never"), true, false, false), WriteStyle::Never);
    }
}

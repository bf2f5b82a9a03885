//! Run one program with a timeout, capture stdout/stderr and time when given
//! marker strings first appear on stdout.
//!
//! The same code runs on the host (direct path) and inside the outer machine (the
//! `harness-exec` helper, nested path), so console-based timings are measured the
//! same way on both paths, and the program gets the same kind of stdin, stdout and
//! stderr ([`StdioMode`]) on both.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// What the program gets as stdin, stdout and stderr.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum StdioMode {
    /// stdin `/dev/null`; stdout and stderr separate pipes.
    #[default]
    Null,
    /// stdin a pipe the harness holds open (writing nothing) until the program exits;
    /// stdout and stderr separate pipes.
    Pipes,
    /// A pseudo-terminal: its slave is stdin, stdout and stderr, and the program's
    /// controlling terminal (a new session). Everything it writes arrives merged in
    /// [`ExecReport::stdout`] (read from the master, as a terminal emulator would);
    /// [`ExecReport::stderr`] stays empty. The terminal starts in the default (cooked)
    /// mode with a 24x80 window, as a shell leaves it.
    Terminal,
    /// An interactive session: the program gets the harness's own stdin and stderr (a person's
    /// terminal, or on the nested path the outer machine's console, which QEMU connects to the
    /// harness's stdin); stdout is a pipe as in `Null`, echoed and searched for marks.
    Console,
}

impl StdioMode {
    /// The name `harness-exec --stdio` takes.
    pub fn name(self) -> &'static str {
        match self {
            StdioMode::Null => "null",
            StdioMode::Pipes => "pipes",
            StdioMode::Terminal => "terminal",
            StdioMode::Console => "console",
        }
    }

    /// Parse [`StdioMode::name`].
    pub fn from_name(s: &str) -> Result<StdioMode> {
        Ok(match s {
            "null" => StdioMode::Null,
            "pipes" => StdioMode::Pipes,
            "terminal" => StdioMode::Terminal,
            "console" => StdioMode::Console,
            _ => bail!("unknown stdio mode {s:?}: expected null, pipes, terminal or console"),
        })
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct ExecSpec {
    pub program: PathBuf,
    pub args: Vec<OsString>,
    pub timeout: Duration,
    /// Strings to look for on stdout; the time of first appearance is reported.
    pub marks: Vec<String>,
    /// Copy the child's stdout to our stdout as it arrives.
    pub echo_stdout: bool,
    /// The program's stdin, stdout and stderr.
    pub stdio: StdioMode,
    /// Send this signal to the program when this string first appears on its stdout (as the
    /// marks are timed); for tests of how a program stops.
    pub signal_at_mark: Option<(String, i32)>,
}

/// What happened.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ExecReport {
    pub stdout: String,
    pub stderr: String,
    /// Exit code, if the program exited normally.
    pub status: Option<i32>,
    /// Signal that ended the program, if any.
    pub signal: Option<i32>,
    /// The timeout expired and the program was killed.
    pub timed_out: bool,
    /// Wall time from spawn to exit, milliseconds.
    pub elapsed_ms: f64,
    /// Marker -> milliseconds from spawn to its first appearance on stdout.
    pub marks: BTreeMap<String, f64>,
    /// Milliseconds from spawn to the signal of [`ExecSpec::signal_at_mark`], if sent.
    #[serde(default)]
    pub signalled_ms: Option<f64>,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// A pseudo-terminal pair (master, slave), both close-on-exec, with a 24x80 window.
pub fn open_pty() -> Result<(OwnedFd, OwnedFd)> {
    let mut master: libc::c_int = -1;
    let mut slave: libc::c_int = -1;
    let ws = libc::winsize {
        ws_row: 24,
        ws_col: 80,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: out-pointers to locals, no name buffer, default termios, a valid winsize.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            &ws,
        )
    };
    if rc != 0 {
        bail!(
            "openpty failed: {} (is devpts mounted on /dev/pts?)",
            std::io::Error::last_os_error()
        );
    }
    // SAFETY: openpty returned two new descriptors that nothing else owns.
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    for fd in [&master, &slave] {
        // SAFETY: fcntl on a descriptor we own. The child gets the slave through dup2 onto
        // 0, 1 and 2, which clears close-on-exec there; the master must not leak into it.
        if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) } != 0 {
            bail!(
                "fcntl(FD_CLOEXEC) on a pty failed: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    Ok((master, slave))
}

/// The program's output streams as the harness reads them.
enum Output {
    /// stdout and stderr pipes (stderr not captured in [`StdioMode::Console`]).
    Pipes(File, Option<File>),
    /// A pty master: everything the program writes to the terminal.
    Terminal(File),
}

/// Start the program with `mode`'s stdio. Returns the child, its output, and (Pipes) the
/// write end of its stdin, to be dropped after it exits.
fn spawn(spec: &ExecSpec) -> Result<(Child, Output, Option<ChildStdin>)> {
    let mut cmd = Command::new(&spec.program);
    cmd.args(&spec.args);
    let cannot_start = || format!("cannot start {}", spec.program.display());
    match spec.stdio {
        StdioMode::Null | StdioMode::Pipes | StdioMode::Console => {
            cmd.stdin(match spec.stdio {
                StdioMode::Pipes => Stdio::piped(),
                StdioMode::Console => Stdio::inherit(),
                _ => Stdio::null(),
            })
            .stdout(Stdio::piped())
            .stderr(if spec.stdio == StdioMode::Console {
                Stdio::inherit()
            } else {
                Stdio::piped()
            });
            let mut child = cmd.spawn().with_context(cannot_start)?;
            let out = child
                .stdout
                .take()
                .context("child stdout was not captured")?;
            let stdin = child.stdin.take();
            let out = File::from(OwnedFd::from(out));
            let output = match child.stderr.take() {
                Some(err) => Output::Pipes(out, Some(File::from(OwnedFd::from(err)))),
                None => Output::Pipes(out, None),
            };
            Ok((child, output, stdin))
        }
        StdioMode::Terminal => {
            let (master, slave) = open_pty()?;
            cmd.stdin(Stdio::from(
                slave.try_clone().context("dup of the pty slave")?,
            ))
            .stdout(Stdio::from(
                slave.try_clone().context("dup of the pty slave")?,
            ))
            .stderr(Stdio::from(slave));
            // SAFETY: between fork and exec only async-signal-safe calls (setsid, ioctl).
            // std has already put the slave on 0, 1 and 2 when this runs.
            unsafe {
                cmd.pre_exec(|| {
                    if libc::setsid() < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    if libc::ioctl(0, libc::TIOCSCTTY as _, 0) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            let child = cmd.spawn().with_context(cannot_start)?;
            // Our copies of the slave go with `cmd`: from now on only the program (and
            // whatever it starts) holds the slave, so the master reads EIO once it is gone.
            drop(cmd);
            Ok((child, Output::Terminal(File::from(master)), None))
        }
    }
}

/// Read `src` to its end, timing the first appearance of each of `wanted` and echoing to
/// our stdout if asked. A pty master ends with EIO (the slave's last holder closed it);
/// `idle_end` (set when the program has exited) also ends the read after 300 ms without
/// data, in case something the program started still holds the slave.
fn read_output(
    mut src: File,
    start: Instant,
    wanted: Vec<String>,
    found: Arc<Mutex<BTreeMap<String, f64>>>,
    echo: bool,
    idle_end: Option<Arc<AtomicBool>>,
) -> Vec<u8> {
    let mut all = Vec::new();
    let mut buf = [0u8; 8192];
    let mut idle_since: Option<Instant> = None;
    loop {
        if let Some(done) = &idle_end {
            let mut pfd = libc::pollfd {
                fd: src.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one pollfd on a descriptor we own.
            let rc = unsafe { libc::poll(&mut pfd, 1, 50) };
            if rc == 0 {
                if done.load(Ordering::Acquire) {
                    let since = *idle_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= Duration::from_millis(300) {
                        break;
                    }
                }
                continue;
            }
            if rc < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            idle_since = None;
        }
        let n = match src.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            // EIO on a pty master: every slave descriptor is closed.
            Err(_) => break,
        };
        let now = ms(start.elapsed());
        let old_len = all.len();
        all.extend_from_slice(&buf[..n]);
        if echo {
            let mut so = std::io::stdout().lock();
            let _ = so.write_all(&buf[..n]);
            let _ = so.flush();
        }
        if let Ok(mut found) = found.lock() {
            for m in &wanted {
                if found.contains_key(m) {
                    continue;
                }
                let from = old_len.saturating_sub(m.len());
                if contains(&all[from..], m.as_bytes()) {
                    found.insert(m.clone(), now);
                }
            }
        }
    }
    all
}

/// Spawn, wait (killing the program at the timeout), and report.
pub fn execute(spec: &ExecSpec) -> Result<ExecReport> {
    let start = Instant::now();
    let (mut child, output, stdin) = spawn(spec)?;

    let marks_found: Arc<Mutex<BTreeMap<String, f64>>> = Arc::default();
    let exited = Arc::new(AtomicBool::new(false));
    let (out_src, err_src, idle_end) = match output {
        Output::Pipes(out, err) => (out, err, None),
        Output::Terminal(master) => (master, None, Some(Arc::clone(&exited))),
    };
    let out_thread = {
        let mut wanted = spec.marks.clone();
        wanted.extend(spec.signal_at_mark.iter().map(|(m, _)| m.clone()));
        let found = Arc::clone(&marks_found);
        let echo = spec.echo_stdout;
        thread::spawn(move || read_output(out_src, start, wanted, found, echo, idle_end))
    };
    let err_thread = err_src.map(|mut err| {
        thread::spawn(move || {
            let mut all = Vec::new();
            let _ = err.read_to_end(&mut all);
            all
        })
    });

    let mut timed_out = false;
    let mut signalled_ms = None;
    let status = loop {
        if let Some(st) = child.try_wait().context("waiting for the child failed")? {
            break st;
        }
        if let (Some((mark, sig)), None) = (&spec.signal_at_mark, signalled_ms) {
            if marks_found.lock().is_ok_and(|f| f.contains_key(mark)) {
                // SAFETY: a signal to our own child, not yet reaped (try_wait said running).
                unsafe { libc::kill(child.id() as libc::pid_t, *sig) };
                signalled_ms = Some(ms(start.elapsed()));
            }
        }
        if start.elapsed() >= spec.timeout {
            timed_out = true;
            log::warn!(
                "{} still running after {:?}: killing it",
                spec.program.display(),
                spec.timeout
            );
            if spec.stdio == StdioMode::Terminal {
                // The program leads its own process group: end what it started too.
                // SAFETY: a signal to the group the child leads (its pid, not yet reaped).
                unsafe { libc::kill(-(child.id() as libc::pid_t), libc::SIGKILL) };
            }
            let _ = child.kill();
            break child
                .wait()
                .context("waiting for the killed child failed")?;
        }
        thread::sleep(Duration::from_millis(2));
    };
    let elapsed_ms = ms(start.elapsed());
    // Pipes: stdin stayed open (the program never saw end of file) until it exited.
    drop(stdin);
    exited.store(true, Ordering::Release);
    let stdout = out_thread.join().unwrap_or_default();
    let stderr = err_thread
        .map(|t| t.join().unwrap_or_default())
        .unwrap_or_default();
    let marks = marks_found.lock().map(|m| m.clone()).unwrap_or_default();

    Ok(ExecReport {
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
        status: status.code(),
        signal: status.signal(),
        timed_out,
        elapsed_ms,
        marks,
        signalled_ms,
    })
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captures_output_status_and_marks() -> Result<()> {
        let rep = execute(&ExecSpec {
            program: "/bin/sh".into(),
            args: vec![
                "-c".into(),
                "echo one; sleep 0.2; echo MARK-B; echo err >&2; exit 3".into(),
            ],
            timeout: Duration::from_secs(10),
            marks: vec!["MARK-B".into(), "never".into()],
            echo_stdout: false,
            stdio: StdioMode::Null,
            signal_at_mark: None,
        })?;
        assert_eq!(rep.stdout, "one\nMARK-B\n");
        assert_eq!(rep.stderr, "err\n");
        assert_eq!(rep.status, Some(3));
        assert!(!rep.timed_out);
        let t = rep.marks.get("MARK-B").copied().unwrap_or(0.0);
        assert!(t >= 150.0, "mark time {t} ms");
        assert!(!rep.marks.contains_key("never"));
        Ok(())
    }

    #[test]
    fn signals_at_a_mark() -> Result<()> {
        let rep = execute(&ExecSpec {
            program: "/bin/sh".into(),
            args: vec![
                "-c".into(),
                "trap 'echo got-term; exit 7' TERM; echo READY; while :; do sleep 0.05; done"
                    .into(),
            ],
            timeout: Duration::from_secs(20),
            marks: vec![],
            echo_stdout: false,
            stdio: StdioMode::Null,
            signal_at_mark: Some(("READY".into(), libc::SIGTERM)),
        })?;
        assert!(!rep.timed_out, "{rep:?}");
        assert_eq!(rep.status, Some(7), "{rep:?}");
        assert!(rep.stdout.contains("got-term"), "{rep:?}");
        let sent = rep.signalled_ms.expect("signal sent");
        assert!(
            sent >= rep.marks["READY"] && sent <= rep.elapsed_ms,
            "{rep:?}"
        );
        Ok(())
    }

    #[test]
    fn kills_at_timeout() -> Result<()> {
        let rep = execute(&ExecSpec {
            program: "/bin/sleep".into(),
            args: vec!["30".into()],
            timeout: Duration::from_millis(300),
            marks: vec![],
            echo_stdout: false,
            stdio: StdioMode::Null,
            signal_at_mark: None,
        })?;
        assert!(rep.timed_out);
        assert_eq!(rep.status, None);
        assert!(rep.elapsed_ms < 5000.0);
        Ok(())
    }

    fn sh(script: &str, stdio: StdioMode, timeout: Duration) -> Result<ExecReport> {
        execute(&ExecSpec {
            program: "/bin/sh".into(),
            args: vec!["-c".into(), script.into()],
            timeout,
            marks: vec!["TTY-OK".into()],
            echo_stdout: false,
            stdio,
            signal_at_mark: None,
        })
    }

    #[test]
    fn terminal_mode_gives_a_controlling_tty_on_0_1_2() -> Result<()> {
        let rep = sh(
            "test -t 0 && test -t 1 && test -t 2 && echo TTY-OK; \
             echo to-err >&2; test \"$(tty)\" = \"$(readlink /proc/self/fd/0)\" && echo SAME-TTY; \
             sleep 0.1 </dev/tty && echo CTTY-OK; exit 5",
            StdioMode::Terminal,
            Duration::from_secs(10),
        )?;
        // Cooked mode: the terminal turns each \n into \r\n; stderr is merged into stdout.
        assert_eq!(
            rep.stdout, "TTY-OK\r\nto-err\r\nSAME-TTY\r\nCTTY-OK\r\n",
            "{rep:?}"
        );
        assert_eq!(rep.stderr, "");
        assert_eq!(rep.status, Some(5));
        assert!(!rep.timed_out);
        assert!(rep.marks.contains_key("TTY-OK"));
        Ok(())
    }

    #[test]
    fn terminal_mode_is_a_new_session() -> Result<()> {
        // The program leads its own session (its session id is its pid), so it cannot
        // reach the harness's terminal, if any.
        let rep = sh(
            "read -r _ _ _ _ _ sid _ </proc/self/stat; [ \"$sid\" = $$ ] && echo SESSION-LEADER",
            StdioMode::Terminal,
            Duration::from_secs(10),
        )?;
        assert_eq!(rep.stdout, "SESSION-LEADER\r\n", "{rep:?}");
        assert_eq!(rep.status, Some(0));
        Ok(())
    }

    #[test]
    fn terminal_mode_kills_at_timeout() -> Result<()> {
        let rep = sh(
            "echo started; sleep 30",
            StdioMode::Terminal,
            Duration::from_millis(500),
        )?;
        assert!(rep.timed_out);
        assert_eq!(rep.status, None);
        assert_eq!(rep.stdout, "started\r\n");
        assert!(rep.elapsed_ms < 5000.0);
        Ok(())
    }

    #[test]
    fn terminal_mode_ends_even_if_a_child_keeps_the_slave() -> Result<()> {
        // The background sleep (deaf to the SIGHUP the session leader's exit sends) keeps
        // the slave open after the shell exits: the read must still end (idle after exit),
        // with what the shell wrote.
        let t = Instant::now();
        let rep = sh(
            "trap '' HUP; sleep 5 & echo bye",
            StdioMode::Terminal,
            Duration::from_secs(10),
        )?;
        assert_eq!(rep.status, Some(0));
        assert_eq!(rep.stdout, "bye\r\n");
        assert!(
            t.elapsed() < Duration::from_secs(4),
            "{:?} {rep:?}",
            t.elapsed()
        );
        Ok(())
    }

    #[test]
    fn pipes_mode_gives_an_open_fifo_on_stdin() -> Result<()> {
        // stdin is a pipe nobody writes to and the harness holds open: `timeout` has to end
        // the read (it would see end of file at once if the write end were closed).
        let rep = sh(
            "test -p /dev/stdin && echo FIFO; test -t 0 || echo NOT-TTY; \
             if timeout 1 cat 2>/dev/null; then echo EOF; else echo STILL-OPEN; fi; \
             echo to-err >&2",
            StdioMode::Pipes,
            Duration::from_secs(10),
        )?;
        assert_eq!(rep.stdout, "FIFO\nNOT-TTY\nSTILL-OPEN\n", "{rep:?}");
        assert_eq!(rep.stderr, "to-err\n");
        assert_eq!(rep.status, Some(0));
        Ok(())
    }

    #[test]
    fn null_mode_gives_dev_null_on_stdin() -> Result<()> {
        let rep = sh(
            "test -p /dev/stdin || echo NOT-FIFO; test -t 0 || echo NOT-TTY; \
             test \"$(readlink /proc/self/fd/0)\" = /dev/null && echo DEV-NULL",
            StdioMode::Null,
            Duration::from_secs(10),
        )?;
        assert_eq!(rep.stdout, "NOT-FIFO\nNOT-TTY\nDEV-NULL\n", "{rep:?}");
        assert_eq!(rep.status, Some(0));
        Ok(())
    }

    #[test]
    fn stdio_mode_names_round_trip() -> Result<()> {
        for m in [StdioMode::Null, StdioMode::Pipes, StdioMode::Terminal] {
            assert_eq!(StdioMode::from_name(m.name())?, m);
        }
        assert!(StdioMode::from_name("tty").is_err());
        Ok(())
    }
}

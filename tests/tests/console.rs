//! `guest-run` on a terminal gives a usable guest console on either path: driven through a
//! pseudo-terminal as a person at a shell would, a command typed into the guest's shell runs
//! and its output comes back, and `exit` ends the guest (its init then powers off).

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use microvm_tests::{kernel_artifacts, Harness};

/// Everything the terminal shows, as it arrives, on a channel.
fn reader(master: File) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut master = master;
        let mut buf = [0u8; 4096];
        while let Ok(n) = master.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    rx
}

/// Reads from `rx` into `seen` until `want` appears after `from`; panics after `limit`.
fn wait_for(
    rx: &mpsc::Receiver<Vec<u8>>,
    seen: &mut Vec<u8>,
    from: usize,
    want: &str,
    limit: Duration,
) {
    let start = Instant::now();
    loop {
        if String::from_utf8_lossy(&seen[from.min(seen.len())..]).contains(want) {
            return;
        }
        let left = limit.saturating_sub(start.elapsed());
        assert!(
            !left.is_zero(),
            "no {want:?} within {limit:?}; the terminal showed:\n{}",
            String::from_utf8_lossy(seen)
        );
        if let Ok(chunk) = rx.recv_timeout(left.min(Duration::from_millis(200))) {
            seen.extend_from_slice(&chunk);
        }
    }
}

#[test]
fn guest_run_on_a_terminal_gives_a_usable_guest_shell() {
    let h = Harness::detect().unwrap_or_else(|e| panic!("cannot boot guests here: {e:#}"));
    kernel_artifacts().unwrap_or_else(|e| panic!("cannot build the guest: {e:#}"));
    let (master, slave) = microvm_tests::exec::open_pty().expect("openpty");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_guest-run"));
    cmd.args([
        "--cmdline",
        "console=ttyS0 reboot=k panic=1 microvm.exit=shell",
    ])
    .env("GUEST_RUN_TIMEOUT", "240")
    .stdin(Stdio::from(slave.try_clone().expect("dup")))
    .stdout(Stdio::from(slave.try_clone().expect("dup")))
    .stderr(Stdio::from(slave));
    let master_fd = master.as_raw_fd();
    // SAFETY: between fork and exec only async-signal-safe calls; the slave is on 0, 1, 2. The
    // master must not stay open in the child.
    unsafe {
        cmd.pre_exec(move || {
            libc::close(master_fd);
            if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY as _, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().expect("cannot start guest-run");
    drop(cmd);
    let mut typer = File::from(master.try_clone().expect("dup"));
    let rx = reader(File::from(master));
    let mut seen = Vec::new();

    wait_for(
        &rx,
        &mut seen,
        0,
        "microvm-init: shell",
        Duration::from_secs(400),
    );
    // Let the shell print its prompt, then type as a person would: a line, then another.
    thread::sleep(Duration::from_secs(2));
    let from = seen.len();
    typer.write_all(b"echo $((6*7))-TYPED-IN\r").expect("type");
    // The shell's echo of the typed line shows `$((6*7))`; only the command's output has 42.
    wait_for(&rx, &mut seen, from, "42-TYPED-IN", Duration::from_secs(60));
    typer.write_all(b"exit\r").expect("type");
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break st;
        }
        while let Ok(chunk) = rx.try_recv() {
            seen.extend_from_slice(&chunk);
        }
        thread::sleep(Duration::from_millis(50));
    };
    while let Ok(chunk) = rx.recv_timeout(Duration::from_millis(300)) {
        seen.extend_from_slice(&chunk);
    }
    let text = String::from_utf8_lossy(&seen);
    eprintln!("({} path) the terminal showed:\n{text}", h.path());
    assert!(status.success(), "guest-run: {status:?}\n{text}");
    assert!(text.contains("microvm ended: status=Some(0)"), "{text}");
}

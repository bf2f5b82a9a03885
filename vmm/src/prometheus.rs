//! `--metrics-socket PATH`: the `--metrics` counters as Prometheus text on a Unix socket. Each
//! connection gets the current values once its request (anything, or nothing and a half-close)
//! has arrived, and is closed: a scraper reads to EOF, e.g. `curl --http0.9 --unix-socket PATH
//! http://x/` or `socat - UNIX-CONNECT:PATH </dev/null`. The request is read and dropped before
//! the answer (closing a Unix socket with unread data makes the peer's read fail with
//! ECONNRESET). The socket is bound at set-up; on the event loop a connection costs one
//! `accept4` (non-blocking: a client that never reads cannot hold the loop, what does not fit
//! its socket buffer is dropped), a few reads, one statistics snapshot, one `send`, one
//! `close`. At most [`MAX_PENDING`] connections wait for their request; past that the oldest is
//! closed.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context};
use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use serde_json::Value;

use crate::metrics::Sources;

/// The flags of every `accept4` (the main thread's seccomp filter allows only these).
pub const ACCEPT_FLAGS: libc::c_int = libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
/// Connections waiting for their request.
pub const MAX_PENDING: usize = 16;
/// Event data of the listener (a connection's is its fd).
const LISTENER: u32 = u32::MAX;

/// The socket file stays after microvm exits: no seccomp filter allows `unlink` (a path-based
/// call no filter can restrict to this path); the next bind to the same path replaces it.
pub struct MetricsSocket {
    listener: UnixListener,
    sources: Arc<Sources>,
    pending: VecDeque<std::fs::File>,
}

impl MetricsSocket {
    /// Binds `path` (replacing a stale socket there, never another kind of file).
    pub fn bind(path: &Path, sources: Arc<Sources>) -> anyhow::Result<MetricsSocket> {
        if let Ok(m) = std::fs::symlink_metadata(path) {
            if !m.file_type().is_socket() {
                bail!(
                    "--metrics-socket {}: exists and is not a socket",
                    path.display()
                );
            }
            std::fs::remove_file(path)
                .with_context(|| format!("cannot remove the old socket {}", path.display()))?;
        }
        let listener = UnixListener::bind(path)
            .with_context(|| format!("cannot bind the metrics socket {}", path.display()))?;
        listener
            .set_nonblocking(true)
            .context("cannot make the metrics socket non-blocking")?;
        Ok(MetricsSocket {
            listener,
            sources,
            pending: VecDeque::new(),
        })
    }

    /// Takes every pending connection and waits for its request.
    fn accept(&mut self, ops: &mut EventOps) {
        loop {
            // SAFETY: accept4 on our listening socket, no peer address wanted; the returned fd
            // is owned by the File below.
            let fd = unsafe {
                libc::accept4(
                    self.listener.as_raw_fd(),
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    ACCEPT_FLAGS,
                )
            };
            if fd < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::WouldBlock {
                    log::debug!("metrics socket: accept: {e}");
                }
                return;
            }
            // SAFETY: `fd` was just returned by accept4 and is owned by nobody else.
            let conn = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
            if self.pending.len() >= MAX_PENDING {
                if let Some(old) = self.pending.pop_front() {
                    let _ = ops.remove(Events::with_data(
                        &old,
                        old.as_raw_fd() as u32,
                        EventSet::IN,
                    ));
                }
            }
            match ops.add(Events::with_data(&conn, fd as u32, EventSet::IN)) {
                Ok(()) => self.pending.push_back(conn),
                Err(e) => log::debug!("metrics socket: cannot watch a connection: {e:?}"),
            }
        }
    }

    /// The request (or its end) arrived on `fd`: drop it, answer, close.
    fn answer(&mut self, fd: i32, ops: &mut EventOps) {
        let Some(i) = self.pending.iter().position(|c| c.as_raw_fd() == fd) else {
            return;
        };
        let Some(mut conn) = self.pending.remove(i) else {
            return;
        };
        let _ = ops.remove(Events::with_data(&conn, fd as u32, EventSet::IN));
        let mut buf = [0u8; 4096];
        for _ in 0..16 {
            match conn.read(&mut buf) {
                Ok(n) if n > 0 => continue,
                _ => break,
            }
        }
        let text = text(&self.sources.line(0, false, 0));
        if let Err(e) = send_all(&conn, text.as_bytes()) {
            log::debug!("metrics socket: send: {e}");
        }
    }
}

/// Sends `bytes` on the connected socket `conn`: `send`, not `write`, because the main thread's
/// filter allows `write` only on fds that existed when it was installed.
fn send_all(conn: &impl AsRawFd, mut bytes: &[u8]) -> std::io::Result<()> {
    while !bytes.is_empty() {
        // SAFETY: sends from a live slice of the given length; MSG_NOSIGNAL: a closed peer is
        // an EPIPE error, not a SIGPIPE.
        let n = unsafe {
            libc::send(
                conn.as_raw_fd(),
                bytes.as_ptr().cast(),
                bytes.len(),
                libc::MSG_NOSIGNAL,
            )
        };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        bytes = &bytes[n as usize..];
    }
    Ok(())
}

impl MutEventSubscriber for MetricsSocket {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::with_data(&self.listener, LISTENER, EventSet::IN)) {
            log::warn!("metrics socket not on the event loop: {e:?}");
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if events.data() == LISTENER {
            self.accept(ops);
        } else {
            self.answer(events.fd(), ops);
        }
    }
}

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Every number of a metrics line as `microvm_<path>{labels} value`: an array element is
/// labelled by its index (label: the array's name) and by its own string fields (`kind`).
/// `seq`, `final` and `interval_ms` (about the file, not the VM) are left out.
pub fn text(line: &str) -> String {
    let mut out = String::new();
    let Ok(v) = serde_json::from_str::<Value>(line) else {
        return out;
    };
    walk(&v, "microvm", &mut Vec::new(), &mut out);
    out
}

fn walk(v: &Value, name: &str, labels: &mut Vec<(String, String)>, out: &mut String) {
    match v {
        Value::Number(n) => {
            let l: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
                .collect();
            let l = if l.is_empty() {
                String::new()
            } else {
                format!("{{{}}}", l.join(","))
            };
            let _ = writeln!(out, "{name}{l} {n}");
        }
        Value::Object(m) => {
            for (k, v) in m {
                if name == "microvm" && matches!(k.as_str(), "seq" | "final" | "interval_ms") {
                    continue;
                }
                walk(v, &format!("{name}_{}", sanitize(k)), labels, out);
            }
        }
        Value::Array(a) => {
            let label = sanitize(name.rsplit('_').next().unwrap_or("index"));
            for (i, e) in a.iter().enumerate() {
                let n = labels.len();
                labels.push((label.clone(), i.to_string()));
                if let Value::Object(m) = e {
                    for (k, s) in m.iter().filter_map(|(k, v)| Some((k, v.as_str()?))) {
                        labels.push((sanitize(k), s.to_string()));
                    }
                }
                walk(e, name, labels, out);
                labels.truncate(n);
            }
        }
        Value::Bool(_) | Value::String(_) | Value::Null => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn a_line_becomes_prometheus_text() {
        let t = text(
            r#"{"seq":3,"final":false,"interval_ms":100,"uptime_ms":42,"vmm":{"rss_kib":9},
               "vcpus":[{"io_out":5},{"io_out":6}],
               "devices":[{"index":0,"kind":"block","queues":[{"chains":1},{"chains":2}]}],
               "bounce":null}"#,
        );
        let lines: Vec<&str> = t.lines().collect();
        for want in [
            "microvm_uptime_ms 42",
            "microvm_vmm_rss_kib 9",
            "microvm_vcpus_io_out{vcpus=\"0\"} 5",
            "microvm_vcpus_io_out{vcpus=\"1\"} 6",
            "microvm_devices_index{devices=\"0\",kind=\"block\"} 0",
            "microvm_devices_queues_chains{devices=\"0\",kind=\"block\",queues=\"1\"} 2",
        ] {
            assert!(lines.contains(&want), "{want} missing in:\n{t}");
        }
        assert!(!t.contains("seq") && !t.contains("final") && !t.contains("interval_ms"));
        assert!(text("not json").is_empty());
    }

    #[test]
    fn a_scrape_gets_the_current_counters() {
        use event_manager::{EventManager, SubscriberOps};
        use std::sync::Mutex;
        let dir = std::env::temp_dir().join(format!("microvm-prom-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("m.sock");
        // A stale socket file is replaced; another kind of file is refused.
        let _stale = UnixListener::bind(&path).unwrap();
        let (sources, queue, vcpu) = crate::metrics::tests::sources(true);
        queue
            .chains
            .fetch_add(7, std::sync::atomic::Ordering::Relaxed);
        vcpu.mmio_write
            .fetch_add(3, std::sync::atomic::Ordering::Relaxed);
        let sock = MetricsSocket::bind(&path, Arc::new(sources)).unwrap();
        let mut events: EventManager<Arc<Mutex<MetricsSocket>>> = EventManager::new().unwrap();
        events.add_subscriber(Arc::new(Mutex::new(sock)));
        // An HTTP client sends a request first; a reader half-closes without one.
        let clients: Vec<_> = [true, false]
            .into_iter()
            .map(|request| {
                let path = path.clone();
                std::thread::spawn(move || {
                    let mut c = std::os::unix::net::UnixStream::connect(&path).unwrap();
                    if request {
                        std::io::Write::write_all(&mut c, b"GET / HTTP/1.0\r\n\r\n").unwrap();
                    } else {
                        c.shutdown(std::net::Shutdown::Write).unwrap();
                    }
                    let mut t = String::new();
                    c.read_to_string(&mut t).map(|_| t)
                })
            })
            .collect();
        while clients.iter().any(|c| !c.is_finished()) {
            events.run_with_timeout(50).unwrap();
        }
        for c in clients {
            let t = c.join().unwrap().expect("read to EOF without a reset");
            assert!(t.contains("microvm_vcpu_exits_mmio_write 3\n"), "{t}");
            assert!(t.contains("microvm_devices_total_chains{devices=\"0\",kind=\"block\"} 7\n"));
            assert!(t.contains("microvm_bounce_slots_total 128\n"), "{t}");
            assert!(t.contains("microvm_bounce_pools_slots_used{pools=\"0\",kind=\"initial\"}"));
        }
        drop(events);
        // Left for the next bind to replace (no filter allows unlink).
        assert!(path.exists());
        let (sources, _, _) = crate::metrics::tests::sources(false);
        drop(MetricsSocket::bind(&path, Arc::new(sources)).unwrap());
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, b"x").unwrap();
        let (sources, _, _) = crate::metrics::tests::sources(false);
        assert!(MetricsSocket::bind(&path, Arc::new(sources)).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

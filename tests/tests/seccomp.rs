//! microvm's seccomp filters, through the harness (direct or nested path).
//!
//! Every other guest test runs with the default filters (`--seccomp=trap`), so they show that
//! the filters let real guest work through (boot, virtio-blk, -net, -rng, the bounce pools and
//! their worker). These tests show that the filters are really on, on every kind of thread,
//! in the real binary: the hidden `--seccomp-selftest=KIND` makes that thread call getppid(2)
//! (allowed by no filter) right after installing its filter.

use microvm_tests::{kernel_artifacts, Arg, Harness, KernelArtifacts, Outcome, Run, INIT_OK};

const CMDLINE: &str = "console=ttyS0 reboot=k panic=1 microvm.test=boot";

fn setup() -> (Harness, KernelArtifacts) {
    let h = Harness::detect().unwrap_or_else(|e| panic!("cannot boot guests here: {e:#}"));
    let k = kernel_artifacts().unwrap_or_else(|e| panic!("cannot build the guest: {e:#}"));
    (h, k)
}

fn boot(h: &Harness, k: &KernelArtifacts, more: &[&str]) -> Outcome {
    let mut args = k.boot_args(CMDLINE);
    args.extend(more.iter().map(|s| Arg::s(*s)));
    let o = h
        .run(&Run::microvm(args))
        .unwrap_or_else(|e| panic!("harness run failed: {e:#}"));
    eprintln!(
        "{more:?}: status {:?}, program {:?}, outer total {:?}",
        o.status,
        o.elapsed,
        o.outer.as_ref().map(|x| x.total)
    );
    o
}

/// The line the SIGSYS handler writes for getppid on `thread`.
fn violation_line(thread: &str) -> String {
    format!(
        "microvm: seccomp: thread {thread} made a forbidden system call {} (getppid); \
         exiting with status 148",
        libc::SYS_getppid
    )
}

/// With the default mode, a forbidden call on each kind of thread ends microvm with status 148
/// and exactly the handler's line for that thread.
#[test]
fn a_forbidden_call_on_any_thread_exits_148_with_one_line() {
    let (h, k) = setup();
    // One vCPU: with two, either could trap first.
    // The worker exists only with a growing pool model (`dynamic` is on by default).
    let dma = ["--restricted-dma=4M", "--bounce", "dynamic=on"];
    for (kind, thread) in [
        ("vcpu", "vcpu0"),
        ("main", "main"),
        ("worker", "swiotlb-worker"),
    ] {
        let selftest = format!("--seccomp-selftest={kind}");
        let mut more = vec![selftest.as_str()];
        more.extend_from_slice(&dma);
        let o = boot(&h, &k, &more);
        assert!(!o.timed_out, "{kind}: microvm hung\n{}", o.describe());
        assert_eq!(o.status, Some(148), "{kind}\n{}", o.describe());
        let want = violation_line(thread);
        let hits = o.stderr.lines().filter(|l| *l == want).count();
        assert_eq!(hits, 1, "{kind}: want one {want:?}\n{}", o.describe());
        assert!(!o.stderr.contains("panicked"), "{}", o.describe());
    }
}

/// The virtio-blk device thread (`blk0`) has its own filter too.
#[test]
fn a_forbidden_call_on_the_disk_thread_exits_148_with_one_line() {
    let (h, k) = setup();
    let img = std::env::temp_dir().join(format!("microvm-seccomp-{}.img", std::process::id()));
    std::fs::File::create(&img)
        .and_then(|f| f.set_len(1 << 20))
        .unwrap_or_else(|e| panic!("{}: {e}", img.display()));
    let mut args = k.boot_args(CMDLINE);
    args.extend([
        Arg::s("--disk"),
        Arg::disk_file(0),
        Arg::s("--seccomp-selftest=device"),
    ]);
    let mut run = Run::microvm(args);
    run.disks = vec![img.clone()];
    let o = h.run(&run);
    let _ = std::fs::remove_file(&img);
    let o = o.unwrap_or_else(|e| panic!("harness run failed: {e:#}"));
    assert!(!o.timed_out, "microvm hung\n{}", o.describe());
    assert_eq!(o.status, Some(148), "{}", o.describe());
    let want = violation_line("blk0");
    let hits = o.stderr.lines().filter(|l| *l == want).count();
    assert_eq!(hits, 1, "want one {want:?}\n{}", o.describe());
}

/// `--seccomp=log`: the same forbidden calls go through (the kernel logs them) and the guest
/// runs to its end; so in the test above it is the filter, nothing else, that ends microvm.
#[test]
fn log_mode_lets_the_forbidden_call_through() {
    let (h, k) = setup();
    let o = boot(
        &h,
        &k,
        &[
            "--seccomp=log",
            "--seccomp-selftest=vcpu",
            "--restricted-dma=4M",
        ],
    );
    assert!(o.stdout.contains(INIT_OK), "{}", o.describe());
    assert!(
        o.stdout.contains("MICROVM-TEST-RESULT=PASS"),
        "{}",
        o.describe()
    );
    assert_eq!(o.status, Some(0), "{}", o.describe());
    assert!(
        o.stderr
            .contains("seccomp self-test: thread vcpu0 called getppid"),
        "{}",
        o.describe()
    );
    assert!(
        !o.stderr.contains(&violation_line("vcpu0")),
        "{}",
        o.describe()
    );
}

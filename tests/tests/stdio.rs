//! microvm with its standard streams as a shell can leave them (direct or nested path): files,
//! `/dev/null`, one file for both, and all three closed. Each thread's seccomp filter allows
//! `write` only on the fds it writes (stdout for the console, stderr for logs), so every case
//! must still boot, print, power off and exit 0; the console's output lands where stdout
//! points and the log where stderr does. (The terminal and pipe cases are `compat.rs`'s.)

use std::time::Duration;

use microvm_tests::{kernel_artifacts, microvm_binary, Harness, Run};

/// Runs microvm with each redirection in turn and reports what each left behind.
#[test]
fn files_dev_null_and_closed_streams() {
    let h = Harness::detect().unwrap_or_else(|e| panic!("cannot boot guests here: {e:#}"));
    let k = kernel_artifacts().unwrap_or_else(|e| panic!("cannot build the guest: {e:#}"));
    let microvm = microvm_binary().expect("microvm binary");
    let q = microvm_tests::sh_quote;
    let cmd = format!(
        "{} --kernel {} --initrd {} --cpus 2 --cmdline {}",
        q(&microvm.to_string_lossy()),
        q(&k.bzimage.to_string_lossy()),
        q(&k.initramfs.to_string_lossy()),
        q("console=ttyS0 reboot=k panic=1 microvm.test=boot"),
    );
    // `grep -c` counts lines; each case prints its status and what its files hold.
    let script = format!(
        "cd /tmp; \
         {cmd} </dev/null >out 2>err; echo \"files status=$?\"; \
         echo \"files out-pass=$(grep -c MICROVM-TEST-RESULT=PASS out) out-log=$(grep -c 'VM exit' out)\"; \
         echo \"files err-pass=$(grep -c MICROVM-TEST-RESULT=PASS err) err-log=$(grep -c 'VM exit' err)\"; \
         {cmd} </dev/null >/dev/null 2>/dev/null; echo \"devnull status=$?\"; \
         {cmd} </dev/null >both 2>&1; echo \"both status=$?\"; \
         echo \"both pass=$(grep -c MICROVM-TEST-RESULT=PASS both) log=$(grep -c 'VM exit' both)\"; \
         {cmd} <&- >&- 2>&-; echo \"closed status=$?\"; \
         rm -f out err both",
    );
    let run = Run {
        files_to_carry: vec![microvm, k.bzimage.clone(), k.initramfs.clone()],
        timeout: Duration::from_secs(240),
        ..Run::shell(script, vec![])
    };
    let o = h.run(&run).expect("harness run");
    let text = o.stdout.replace('\r', "");
    for want in [
        "files status=0",
        "files out-pass=1 out-log=0",
        "files err-pass=0 err-log=1",
        "devnull status=0",
        "both status=0",
        "both pass=1 log=1",
        "closed status=0",
    ] {
        assert!(text.contains(want), "no {want:?}\n{}", o.describe());
    }
}

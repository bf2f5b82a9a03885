#!/bin/bash
# Sets up a fresh machine and runs every check and test: what CI runs (.ci/run).
# Guest tests boot real guests: directly on KVM when the host's /dev/kvm runs them at hardware
# speed, otherwise inside a nested QEMU machine (the harness probes and says which).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
T0=$(date +%s)
step() { echo; echo "=== [$(( $(date +%s) - T0 ))s] $*"; }

step "install dependencies (resources/install-deps.sh)"
./resources/install-deps.sh
cargo --version

step "cargo fmt --check"
cargo fmt --all --check

step "guest kernel (resources/build-kernel.sh)"
time ./resources/build-kernel.sh

step "guest kernel without ACPI, for the compatibility matrix (resources/build-kernel.sh --variant noacpi)"
time ./resources/build-kernel.sh --variant noacpi

step "32-bit guest kernel, for tests/i386.rs (resources/build-kernel.sh --variant i386)"
time ./resources/build-kernel.sh --variant i386

step "guest initramfs (resources/build-initramfs.sh) and the 32-bit guest's (resources/build-init32.sh)"
./resources/build-initramfs.sh
./resources/build-init32.sh

step "cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings

step "cargo build --release (microvm, harness helpers)"
cargo build --release -p vmm -p microvm-tests

step "cargo nextest run --workspace"
# Guest boot tests are in the 'guest-boots' test group (.config/nextest.toml); on the
# nested path the harness runs one outer machine per free core (tests/README.md, "Slots").
RERUNS=build/runs/outer-reruns.log
rm -f "$RERUNS"
status=0
cargo nextest run --workspace --no-fail-fast || status=$?
# The harness reruns an outer machine that failed by itself (tests/README.md); a test that
# passed after a rerun shows no output, so the reruns are listed here, each with its test.
# harness::a_rerun_starts_from_the_disks_as_the_test_made_them freezes its machine on purpose.
PURPOSE=a_rerun_starts_from_the_disks_as_the_test_made_them
if [ -s "$RERUNS" ] && grep -qv "$PURPOSE" "$RERUNS"; then
    echo "harness: $(grep -cv "$PURPOSE" "$RERUNS") outer machine failure(s) were rerun:"
    grep -v "$PURPOSE" "$RERUNS"
else
    echo "harness: no outer machine was rerun"
fi
[ "$status" -eq 0 ] || exit "$status"

step "loom model of the bounce area spinlock"
# After nextest: only bounce is rebuilt with the feature, its dependencies are nextest's.
cargo test -p bounce --features loom --lib spinlock

step "Miri over bounce's buffer, queue and lookup unit tests (fuzz/README.md)"
# The tests of the unsafe copies and lookups, about 20 s under Miri; the whole list (63 tests,
# about 6 min) is in fuzz/README.md.
if cargo +nightly miri --version >/dev/null 2>&1; then
    MIRIFLAGS=-Zmiri-disable-isolation cargo +nightly miri test -p bounce --lib -- \
        dma:: owned:: queue:: lookup:: atomic:: config:: convert:: notify::
else
    echo "SKIPPED: Miri needs a nightly toolchain with the miri component" \
        "(rustup component add --toolchain nightly miri rust-src)"
fi

step "fuzz targets, ${FUZZ_SECONDS:=10} s each (fuzz/README.md)"
# The same harnesses ran above over the checked-in corpus as ordinary tests (microvm-fuzz).
if cargo +nightly --version >/dev/null 2>&1 && cargo +nightly fuzz --version >/dev/null 2>&1; then
    # The sanitizer build's dependencies are the same in every checkout: built once per
    # machine (MICROVM_FUZZ_TARGET_DIR, like the kernel store); new inputs stay in this one.
    FUZZ_BUILD=${MICROVM_FUZZ_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/microvm/fuzz-target}
    FUZZ_OUT="$(realpath -m "${CARGO_TARGET_DIR:-$ROOT/target}")/fuzz"
    for t in blk net mmio dma; do
        mkdir -p "$FUZZ_OUT/corpus/$t"
        (cd fuzz && CARGO_TARGET_DIR="$FUZZ_BUILD" cargo +nightly fuzz run -O "$t" \
            "$FUZZ_OUT/corpus/$t" "corpus/$t" -- -max_total_time="$FUZZ_SECONDS" \
            -rss_limit_mb=3000 -timeout=20 -print_final_stats=1 2>&1 | tail -15)
        # (pipefail: a crash fails the step; the input is in fuzz/artifacts/$t/.)
    done
else
    echo "SKIPPED: the fuzz targets need a nightly toolchain and cargo-fuzz" \
        "(rustup toolchain install nightly; cargo install cargo-fuzz); their corpus ran as tests above"
fi

step "done in $(( $(date +%s) - T0 ))s"

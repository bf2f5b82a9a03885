#!/bin/bash
# Installs what microvm's build, guest resources and tests need on Debian 12 (as root):
# Debian packages that are missing, and the Rust components. Safe to run again.
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive
# Where apt's sources are (a setting only for tests/tests/setup_scripts.rs).
APT_ETC=${MICROVM_APT_ETC:-/etc/apt}

# The Debian archive to add bookworm-backports from: the host of the existing Debian source.
# Either file may be missing (deb822-only machines have no sources.list): under pipefail a
# failed read must not end the script, hence the `|| true`.
debian_mirror() {
    local m
    m=$( { grep -hs '^URIs:' "$APT_ETC"/sources.list.d/*.sources | awk '{print $2}';
           awk '$1 == "deb" && $3 == "bookworm" {print $2}' "$APT_ETC/sources.list" 2>/dev/null; } |
         grep -E '/debian/?$' | head -n 1 || true)
    echo "${m:-http://deb.debian.org/debian}"
}
if [ "${1:-}" = "--print-mirror" ]; then
    debian_mirror
    exit 0
fi
PACKAGES=(
    # the nested test machine (where /dev/kvm cannot run guests; QEMU itself comes from
    # bookworm-backports, below) and the boot comparison
    linux-image-cloud-amd64
    # guest initramfs and disk tools carried into it
    busybox-static cpio xz-utils zstd e2fsprogs fio iproute2
    # tests/metrics.rs scrapes --metrics-socket with it
    curl
    # guest kernel (build-essential's gcc also compiles the 32-bit guest's init with -m32
    # -nostdlib: resources/build-init32.sh needs no gcc-multilib or 32-bit libc)
    linux-source-6.1 build-essential flex bison bc libelf-dev libssl-dev
    ca-certificates
)
missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "install-deps: installing ${missing[*]}"
    apt-get update
    apt-get install -y --no-install-recommends "${missing[@]}"
fi

# QEMU 10.0 from bookworm-backports, pinned, for the nested test machine: with bookworm's QEMU
# 7.2 the outer machine froze within a few dozen 2-vCPU guest boots (and its SVM lets XSETBV
# through unintercepted: every nested guest warned "XSAVE consistency problem"); 10.0 had no
# freeze or outer panic in 468 measured boots (tests/README.md, "The outer machine's QEMU").
# When backports moves past this version, measure the new one the same way and update the pin.
QEMU_VERSION=1:10.0.2+ds-2+deb13u1~bpo12+1
if [ "$(dpkg-query -W -f='${Version}' qemu-system-x86 2>/dev/null || true)" != "$QEMU_VERSION" ]; then
    if ! grep -rqs '^[^#]*bookworm-backports' "$APT_ETC/sources.list" "$APT_ETC/sources.list.d/"; then
        mirror=$(debian_mirror)
        echo "install-deps: adding deb $mirror bookworm-backports main"
        echo "deb $mirror bookworm-backports main" >"$APT_ETC/sources.list.d/bookworm-backports.list"
    fi
    echo "install-deps: installing qemu-system-x86 $QEMU_VERSION from bookworm-backports"
    apt-get update
    apt-get install -y --no-install-recommends -t bookworm-backports \
        "qemu-system-x86=$QEMU_VERSION" "qemu-system-common=$QEMU_VERSION" "qemu-system-data=$QEMU_VERSION" || {
        echo "install-deps: qemu-system-x86 $QEMU_VERSION is not in bookworm-backports (any more?):" \
             "apt-cache policy qemu-system-x86 lists what is; see QEMU_VERSION in $0"
        exit 1
    }
fi

command -v cargo >/dev/null || { echo "install-deps: cargo not found: install Rust with rustup first"; exit 1; }
cargo fmt --version >/dev/null 2>&1 || rustup component add rustfmt
cargo clippy --version >/dev/null 2>&1 || rustup component add clippy
cargo nextest --version >/dev/null 2>&1 || cargo install cargo-nextest --locked
# Miri for bounce's unit tests (resources/test.sh) where a nightly toolchain exists; without it
# that step says SKIPPED.
if cargo +nightly --version >/dev/null 2>&1 && ! cargo +nightly miri --version >/dev/null 2>&1; then
    rustup component add --toolchain nightly miri rust-src ||
        echo "install-deps: rustup could not add Miri to nightly; its test step will be skipped"
fi

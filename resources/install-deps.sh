#!/bin/bash
# Installs what microvm's build, guest resources and tests need on Debian 12 (as root):
# Debian packages that are missing, and the Rust components. Safe to run again.
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive
PACKAGES=(
    # the nested test machine (where /dev/kvm cannot run guests) and the boot comparison
    qemu-system-x86 linux-image-cloud-amd64
    # guest initramfs and disk tools carried into it
    busybox-static cpio xz-utils zstd e2fsprogs fio iproute2
    # tests/metrics.rs scrapes --metrics-socket with it
    curl
    # guest kernel
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

command -v cargo >/dev/null || { echo "install-deps: cargo not found: install Rust with rustup first"; exit 1; }
cargo fmt --version >/dev/null 2>&1 || rustup component add rustfmt
cargo clippy --version >/dev/null 2>&1 || rustup component add clippy
cargo nextest --version >/dev/null 2>&1 || cargo install cargo-nextest --locked

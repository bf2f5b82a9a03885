#!/bin/bash
# Sets up a fresh machine, builds microvm and the guest (kernel + busybox initramfs), and boots
# a 2-vCPU guest with a virtio-rng device and restricted DMA: it runs its self-check and powers
# off. Where the host's /dev/kvm cannot run the guest (no hardware virtualization), the harness
# runs microvm inside a nested QEMU machine and says so. Extra arguments go to microvm.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
./resources/install-deps.sh
cargo build --release -p vmm -p microvm-tests
args=("$@")
if [ "${#args[@]}" -eq 0 ]; then
    args=(--cpus 2 --rng --restricted-dma=16M
          --cmdline "console=ttyS0 reboot=k panic=1 microvm.test=boot")
fi
exec cargo run --release -q -p microvm-tests --bin guest-run -- "${args[@]}"

#!/bin/sh
# Facts about the boot that the host-side tests check.
set -e
echo "nproc=$(nproc)"
echo "cpus-online=$(cat /sys/devices/system/cpu/online)"
echo "cmdline=$(cat /proc/cmdline)"
echo "payload-sha256=$(sha256sum /payload.bin | cut -d' ' -f1)"
echo "memtotal-kb=$(awk '/^MemTotal:/ {print $2}' /proc/meminfo)"
if [ -d /sys/kernel/debug/swiotlb ]; then
    echo "swiotlb-nslabs=$(cat /sys/kernel/debug/swiotlb/io_tlb_nslabs)"
fi

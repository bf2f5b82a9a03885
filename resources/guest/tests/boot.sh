#!/bin/sh
# Facts about the boot that the host-side tests check.
set -e
echo "nproc=$(nproc)"
echo "cpus-online=$(cat /sys/devices/system/cpu/online)"
echo "cmdline=$(cat /proc/cmdline)"
echo "payload-sha256=$(sha256sum /payload.bin | cut -d' ' -f1)"
echo "memtotal-kb=$(awk '/^MemTotal:/ {print $2}' /proc/meminfo)"
# swiotlb statistics (debugfs): files present, and their values
if [ -d /sys/kernel/debug/swiotlb ]; then
    for f in /sys/kernel/debug/swiotlb/*; do
        [ -f "$f" ] && echo "swiotlb-$(basename "$f")=$(cat "$f")"
    done
    echo "swiotlb-debugfs=present"
else
    echo "swiotlb-debugfs=absent"
fi

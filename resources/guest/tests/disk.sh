#!/bin/sh
# Block device check: print the sha256 of /dev/vda, then write a known pattern
# ("MICROVM-DISK-WRITE" + 4078 zero bytes = 4096 bytes) at offset 4096 unless
# the disk is read-only. The host compares the image byte for byte.
set -e
[ -b /dev/vda ] || { echo "no /dev/vda"; exit 1; }
echo "vda-size=$(blockdev --getsize64 /dev/vda)"
echo "vda-sha256=$(sha256sum /dev/vda | cut -d' ' -f1)"
if [ "$(cat /sys/block/vda/ro)" = "1" ]; then
    echo "vda-ro=1"
else
    echo "vda-ro=0"
    { printf 'MICROVM-DISK-WRITE'; head -c 4078 /dev/zero; } | dd of=/dev/vda bs=4096 seek=1 count=1 conv=fsync 2>/dev/null
    echo "vda-written=1"
fi

#!/bin/sh
# virtio-rng (tests/tests/devices.rs): /dev/hwrng is the virtio device and gives bytes.
set -e
echo "rng-available=$(cat /sys/class/misc/hw_random/rng_available)"
echo "rng-current=$(cat /sys/class/misc/hw_random/rng_current)"
head -c 65536 /dev/hwrng > /tmp/r1
head -c 65536 /dev/hwrng > /tmp/r2
echo "rng-bytes=$(stat -c %s /tmp/r1)"
# Not constant, not repeating: the two reads differ, and the compressed size is ~ the size.
cmp -s /tmp/r1 /tmp/r2 && { echo "rng-reads-identical"; exit 1; }
echo "rng-reads-differ=1"
echo "rng-gzip-bytes=$(gzip -c /tmp/r1 | wc -c)"
echo "rng-distinct-bytes=$(od -An -v -tu1 /tmp/r1 | tr -s ' ' '\n' | grep -v '^$' | sort -u | wc -l)"

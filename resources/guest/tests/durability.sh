#!/bin/sh
# Durability under SIGKILL (tests/tests/durability.rs). Writes 4 KiB blocks to the first half
# of /dev/vda with O_DIRECT, each followed by an fsync of the device (a virtio-blk FLUSH), and
# prints DUR-ACK=<block> once both returned; meanwhile a second writer streams 64 KiB O_DIRECT
# writes over the second half. After 25 acknowledged blocks it prints the mark the host sends
# SIGKILL to microvm at, and keeps writing: the kill lands in the middle of the storm.
# Block i holds "DUR<i, 6 digits>\n" repeated, cut at 4096 bytes.
[ -b /dev/vda ] || { echo "no /dev/vda"; exit 1; }
size=$(blockdev --getsize64 /dev/vda)
half=$((size / 2))
echo "dur-vda-size=$size"
(
    while :; do
        dd if=/dev/zero of=/dev/vda bs=65536 count=$((half / 65536)) seek=$((half / 65536)) \
            oflag=direct conv=notrunc 2>/dev/null || { echo "DUR-STORM-FAILED"; exit 1; }
    done
) &
i=0
while [ $((i * 4096)) -lt $half ]; do
    yes "DUR$(printf %06d $i)" | head -c 4096 > /tmp/b
    if dd if=/tmp/b of=/dev/vda bs=4096 seek=$i oflag=direct conv=notrunc,fsync 2>/tmp/dd; then
        echo "DUR-ACK=$i"
    else
        echo "DUR-FAILED=$i: $(tr '\n' ' ' < /tmp/dd)"
        exit 1
    fi
    # Computed, so no other text on the console (the kernel's command line) matches it.
    [ $i = 24 ] && echo "DUR-KILL-$((6 * 7))-NOW"
    i=$((i + 1))
done
echo "DUR-NOT-KILLED"

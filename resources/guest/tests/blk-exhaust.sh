#!/bin/sh
# Bounce-pool exhaustion (tests/tests/devices.rs): a small write that fits the pool must
# succeed and be durable; writes bigger than the pool must fail in the guest (EIO), not
# hang or kill the VMM; the device must keep working afterwards.
[ -b /dev/vda ] || { echo "no /dev/vda"; exit 1; }
fail=0
# 1. 4 KiB of /payload.bin at offset 0, O_DIRECT + fsync: must succeed.
dd if=/payload.bin of=/tmp/small bs=4096 count=1 2>/dev/null
if dd if=/tmp/small of=/dev/vda bs=4096 count=1 oflag=direct conv=notrunc,fsync 2>/tmp/e; then
    echo "exhaust-small-write=ok"
else
    echo "exhaust-small-write=FAILED: $(tr '\n' ' ' < /tmp/e)"; fail=1
fi
# 2. Writes bigger than the pool at 1 MiB: 1 MiB O_DIRECT, then 4 MiB buffered + fsync
#    (page cache writeback makes large physically contiguous segments). One must fail.
big=0
if dd if=/dev/zero of=/dev/vda bs=1048576 count=1 seek=1 oflag=direct conv=notrunc 2>/tmp/e; then
    echo "exhaust-big-direct=ok"
else
    echo "exhaust-big-direct=EIO: $(tr '\n' ' ' < /tmp/e)"; big=$((big + 1))
fi
if dd if=/dev/zero of=/dev/vda bs=1048576 count=4 seek=2 conv=notrunc,fsync 2>/tmp/e; then
    echo "exhaust-big-buffered=ok"
else
    echo "exhaust-big-buffered=EIO: $(tr '\n' ' ' < /tmp/e)"; big=$((big + 1))
fi
echo "exhaust-big-failures=$big"
echo "exhaust-guest-io-errors=$(dmesg | grep -ci 'I/O error')"
# 3. The device still works: read the small write back with O_DIRECT.
echo 3 > /proc/sys/vm/drop_caches
if dd if=/dev/vda of=/tmp/back bs=4096 count=1 iflag=direct 2>/tmp/e && cmp -s /tmp/back /tmp/small; then
    echo "exhaust-small-readback=ok"
else
    echo "exhaust-small-readback=FAILED: $(tr '\n' ' ' < /tmp/e)"; fail=1
fi
[ "$fail" = 0 ]

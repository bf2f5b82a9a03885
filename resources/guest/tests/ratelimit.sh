#!/bin/sh
# Rate limiter through a real guest (tests/tests/ratelimit.rs): 8 MiB of O_DIRECT reads from
# /dev/vdb (no limit) and then /dev/vda (rate-limited by the host), each timed by /proc/uptime.
[ -b /dev/vda ] && [ -b /dev/vdb ] || { echo "need /dev/vda and /dev/vdb"; exit 1; }
now() { cut -d' ' -f1 /proc/uptime; }
for d in vdb vda; do
    s=$(now)
    dd if=/dev/$d of=/dev/null bs=65536 count=128 iflag=direct 2>/tmp/dd \
        || { echo "rl-$d-FAILED: $(tr '\n' ' ' < /tmp/dd)"; exit 1; }
    e=$(now)
    echo "rl-$d-ms=$(echo "$s $e" | awk '{ printf "%d", ($2 - $1) * 1000 }')"
done

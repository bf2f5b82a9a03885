#!/bin/sh
# Soak (tests/tests/soak.rs, run on demand): block, net and rng I/O at once for soak.secs=
# seconds (kernel command line, default 600). Each job prints SOAK-<JOB>=<rounds>,<failures>;
# SOAK-FAILURES= is their sum, and the script fails when it is not 0. The harness side of the
# tap is 10.0.2.1 with an httpd serving /small.bin (1 MiB) and /small.sha256.
secs=600
for w in $(cat /proc/cmdline); do
    case "$w" in soak.secs=*) secs=${w#soak.secs=} ;; esac
done
up() { cut -d. -f1 /proc/uptime; }
end=$(( $(up) + secs ))
ip link set lo up
ip addr add 10.0.2.15/24 dev eth0
ip link set eth0 up

# Block: 64 KiB O_DIRECT write + FLUSH, read back, compare; 64 slots over the first 4 MiB.
blk() {
    n=0; f=0
    while [ "$(up)" -lt $end ]; do
        dd if=/payload.bin of=/tmp/bw bs=65536 count=1 skip=$((n % 16)) 2>/dev/null
        dd if=/tmp/bw of=/dev/vda bs=65536 count=1 seek=$((n % 64)) oflag=direct \
            conv=notrunc,fsync 2>>/tmp/blk.err || f=$((f + 1))
        dd if=/dev/vda of=/tmp/br bs=65536 count=1 skip=$((n % 64)) iflag=direct \
            2>>/tmp/blk.err || f=$((f + 1))
        cmp -s /tmp/bw /tmp/br || { f=$((f + 1)); echo "soak: blk round $n: data differs"; }
        n=$((n + 1))
    done
    echo "SOAK-BLK=$n,$f"
    [ -s /tmp/blk.err ] && head -5 /tmp/blk.err
    echo "$f" > /tmp/blk.f
}

# rng: 4 KiB from /dev/hwrng, must be 4 KiB.
rng() {
    n=0; f=0
    while [ "$(up)" -lt $end ]; do
        head -c 4096 /dev/hwrng > /tmp/rr 2>/dev/null || f=$((f + 1))
        [ "$(stat -c %s /tmp/rr)" = 4096 ] || f=$((f + 1))
        n=$((n + 1))
    done
    echo "SOAK-RNG=$n,$f"
    echo "$f" > /tmp/rng.f
}

# net: 1 MiB over HTTP, sha256 against the host's; one ping.
net() {
    n=0; f=0
    want=$(wget -q -O - http://10.0.2.1:8080/small.sha256) || f=$((f + 1))
    while [ "$(up)" -lt $end ]; do
        got=$(wget -q -O - http://10.0.2.1:8080/small.bin | sha256sum | cut -d' ' -f1)
        [ "$got" = "$want" ] || { f=$((f + 1)); echo "soak: net round $n: sha256 $got"; }
        ping -c 1 -W 5 10.0.2.1 > /dev/null 2>&1 || f=$((f + 1))
        n=$((n + 1))
    done
    echo "SOAK-NET=$n,$f"
    echo "$f" > /tmp/net.f
}

echo "SOAK-START secs=$secs"
blk & rng & net &
wait
total=$(( $(cat /tmp/blk.f) + $(cat /tmp/rng.f) + $(cat /tmp/net.f) ))
echo "SOAK-FAILURES=$total"
[ "$total" = 0 ]

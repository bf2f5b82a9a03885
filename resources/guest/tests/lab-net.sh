#!/bin/sh
# One network transfer for microvm-lab (lab/; not a test) over virtio-net on a tap: the
# harness side (host or outer machine) is 10.0.3.1 with busybox httpd on port 8080 serving
# /down-<bytes>.bin and /cgi-bin/sink (reads a POST body and discards it). Parameters from
# the kernel command line: lab.dir=down|up lab.bytes=N. Times the transfer with /proc/uptime
# (10 ms resolution) and prints `lab-net=<dir> <bytes moved> <seconds>`.
DIR=down BYTES=16777216
for word in $(cat /proc/cmdline); do
    case "$word" in
        lab.dir=*) DIR=${word#lab.dir=} ;;
        lab.bytes=*) BYTES=${word#lab.bytes=} ;;
    esac
done
fail() { echo "lab-net=FAILED $*"; exit 1; }
ip link set lo up
ip addr add 10.0.3.15/24 dev eth0 || fail "no eth0"
ip link set eth0 up
# The link and the server first (ARP, httpd), outside the timed transfer.
ping -c 1 -w 20 10.0.3.1 >/dev/null 2>&1 || fail "no reply from 10.0.3.1"
now() { cut -d' ' -f1 /proc/uptime; }
case "$DIR" in
    down)
        t0=$(now)
        timeout 300 wget -q -O /tmp/down.bin "http://10.0.3.1:8080/down-$BYTES.bin" 2>/tmp/err \
            || fail "wget: $(cat /tmp/err)"
        t1=$(now)
        got=$(stat -c %s /tmp/down.bin)
        rm -f /tmp/down.bin
        ;;
    up)
        # Not zeros: busybox wget reads a --post-file as a C string (it would send 0 bytes).
        yes 0123456789abcdef | head -c "$BYTES" > /tmp/up.bin
        t0=$(now)
        timeout 300 wget -q -O /tmp/sink.txt --post-file /tmp/up.bin \
            "http://10.0.3.1:8080/cgi-bin/sink" 2>/tmp/err || fail "wget: $(cat /tmp/err)"
        t1=$(now)
        # What the server side counted.
        got=$(sed -n 's/^sink-bytes=//p' /tmp/sink.txt)
        rm -f /tmp/up.bin
        ;;
    *) fail "lab.dir=$DIR: down or up" ;;
esac
[ "$got" = "$BYTES" ] || fail "moved ${got:-0} of $BYTES bytes"
echo "lab-net=$DIR $got $(awk "BEGIN{print $t1-$t0}")"

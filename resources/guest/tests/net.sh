#!/bin/sh
# virtio-net (tests/tests/devices.rs): the harness side of the tap is 10.0.2.1 (setup
# lines: an httpd serving /down.bin and /cgi-bin/up, an nc listener on 5002). The guest
# prints the features it negotiated, pings it, downloads 4 MiB (its sha256 checked here, the receiving side), uploads 4 MiB
# (/payload.bin four times) and asks the host side for the sha256 of what it received.
set -e
ip link set lo up
ip addr add 10.0.2.15/24 dev eth0
ip link set eth0 up
echo "net-mac=$(cat /sys/class/net/eth0/address)"
# The negotiated features, one character per bit from bit 0 (virtio-net's MRG_RXBUF is 15).
f=$(cat /sys/class/net/eth0/device/features)
echo "net-features=$f"
echo "net-mrg-rxbuf=$(echo "$f" | cut -c16)"
ping -c 3 -w 20 10.0.2.1 > /tmp/ping || { cat /tmp/ping; echo "net-ping=FAILED"; exit 1; }
echo "net-ping-received=$(sed -n 's/.* \([0-9]*\) packets received.*/\1/p' /tmp/ping)"
wget -q -O /tmp/down.bin http://10.0.2.1:8080/down.bin
echo "net-down-bytes=$(stat -c %s /tmp/down.bin)"
echo "net-down-sha256=$(sha256sum /tmp/down.bin | cut -d' ' -f1)"
rm -f /tmp/down.bin
cat /payload.bin /payload.bin /payload.bin /payload.bin | nc 10.0.2.1 5002
wget -q -O - http://10.0.2.1:8080/cgi-bin/up | sed 's/^/net-/'
echo "net-rx-packets=$(cat /sys/class/net/eth0/statistics/rx_packets) net-tx-packets=$(cat /sys/class/net/eth0/statistics/tx_packets)"

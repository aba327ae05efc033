#!/usr/bin/env bash
# The kill switch's live tests (src/nft.rs, `mod live`), inside two network namespaces this
# script creates and always deletes: <p>-cli runs the tests; <p>-peer is the other end of a
# veth "uplink" (192.0.2.0/24, fd00:1::/64; behind it 198.18.0.10 "internet", 192.168.1.7,
# 10.1.2.3, 100.64.0.5) and of a veth named wgt0 standing in for the tunnel (10.8.0.0/24,
# fd00:8::/64). TCP listeners on :8080 in the peer. Needs root, nft (for the tests' checks).
# Usage: scripts/test-nft-live.sh
set -euo pipefail
cd "$(dirname "$0")/.."
P="bwks-$$-$RANDOM"
C="$P-cli"; N="$P-peer"
LPID=""
cleanup() {
  [ -n "$LPID" ] && kill "$LPID" 2>/dev/null || true
  ip netns del "$C" 2>/dev/null || true
  ip netns del "$N" 2>/dev/null || true
}
trap cleanup EXIT

BIN=$(cargo test --lib --no-run --message-format=json 2>/dev/null \
  | python3 -c 'import json,sys
for l in sys.stdin:
    m=json.loads(l)
    if m.get("reason")=="compiler-artifact" and m.get("profile",{}).get("test") and m["target"]["name"]=="blue_wireguard" and m.get("executable"):
        print(m["executable"])' | tail -1)
[ -x "$BIN" ] || { echo "no test binary"; exit 1; }

ip netns add "$C"; ip netns add "$N"
ip link add veth-up netns "$C" type veth peer name veth-pe netns "$N"
ip link add wgt0 netns "$C" type veth peer name wgt0p netns "$N"
for ns in "$C" "$N"; do ip -n "$ns" link set lo up; done
ip -n "$C" addr add 192.0.2.2/24 dev veth-up
ip -n "$C" addr add fd00:1::2/64 dev veth-up nodad
ip -n "$C" link set veth-up up
ip -n "$C" addr add 10.8.0.2/24 dev wgt0
ip -n "$C" addr add fd00:8::2/64 dev wgt0 nodad
ip -n "$C" link set wgt0 up
ip -n "$C" route add default via 192.0.2.1
ip -n "$N" addr add 192.0.2.1/24 dev veth-pe
ip -n "$N" addr add fd00:1::1/64 dev veth-pe nodad
ip -n "$N" link set veth-pe up
ip -n "$N" addr add 10.8.0.1/24 dev wgt0p
ip -n "$N" addr add fd00:8::1/64 dev wgt0p nodad
ip -n "$N" link set wgt0p up
for a in 198.18.0.10 192.168.1.7 10.1.2.3 100.64.0.5; do ip -n "$N" addr add $a/32 dev lo; done
ip netns exec "$N" python3 -c '
import socket, threading
s = socket.socket(socket.AF_INET6); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0); s.bind(("::", 8080)); s.listen(64)
while True:
    c, _ = s.accept(); c.close()' &
LPID=$!
sleep 0.3

HOST_NETNS=$(readlink /proc/self/ns/net)
ip netns exec "$C" env BLUE_WG_NFT_LIVE=1 BLUE_WG_NFT_HOST_NETNS="$HOST_NETNS" "$BIN" --ignored --test-threads=1 nft::live "$@"
echo "host namespace untouched: $(nft list tables 2>/dev/null | grep -c blue-wg || true) blue-wg tables"

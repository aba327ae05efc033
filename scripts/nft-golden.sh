#!/usr/bin/env bash
# Regenerates tests/fixtures/nft-golden-*.txt: the nf_tables batch that the `nft` program
# itself sends for the kill switch's rule sets (src/nft.rs compares its own bytes with
# these). Runs `nft` under strace inside a throwaway network namespace (never the host's);
# needs root, nft, strace, python3. Usage: scripts/nft-golden.sh
set -euo pipefail
cd "$(dirname "$0")/.."
NS="bwks-golden-$$-$RANDOM"
ip netns add "$NS"
TMP=$(mktemp -d)
trap 'ip netns del "$NS" 2>/dev/null || true; rm -rf "$TMP"' EXIT

# Spec A: IPv4 endpoint with the full tunnel's fwmark, excludes, allow_lan, no tunnel IPv6.
cat > "$TMP/a.nft" <<'NFT'
table inet blue-wg-wgsent0 {
  flags owner
  chain output {
    type filter hook output priority 0; policy drop;
    oifname "lo" accept
    oifname "wgsent0" meta nfproto ipv4 accept
    meta mark 0x0000ca6c ip daddr 192.0.2.1 udp dport 51820 accept
    icmpv6 type nd-router-solicit accept
    icmpv6 type nd-neighbor-solicit accept
    icmpv6 type nd-neighbor-advert accept
    udp dport 53 reject with icmpx admin-prohibited
    tcp dport 53 reject with tcp reset
    ip daddr 192.168.1.7 accept
    ip daddr 100.64.0.0/10 accept
    ip6 daddr 2001:db8:1::/48 accept
    ip daddr 10.0.0.0/8 accept
    ip daddr 172.16.0.0/12 accept
    ip daddr 192.168.0.0/16 accept
    ip daddr 169.254.0.0/16 accept
    ip daddr 224.0.0.0/24 accept
    ip daddr 239.0.0.0/8 accept
    ip daddr 255.255.255.255 accept
    ip6 daddr fe80::/10 accept
    ip6 daddr fc00::/7 accept
    ip6 daddr ff02::/16 accept
    meta l4proto tcp reject with tcp reset
    reject with icmpx admin-prohibited
  }
}
NFT

# Spec B: IPv6 endpoint, no fwmark (split tunnel), tunnel with IPv6, no LAN, no excludes;
# created without the owner flag (the fallback).
cat > "$TMP/b.nft" <<'NFT'
table inet blue-wg-wgx {
  chain output {
    type filter hook output priority 0; policy drop;
    oifname "lo" accept
    oifname "wgx" accept
    ip6 daddr 2001:db8::1 udp dport 443 accept
    icmpv6 type nd-router-solicit accept
    icmpv6 type nd-neighbor-solicit accept
    icmpv6 type nd-neighbor-advert accept
    udp dport 53 reject with icmpx admin-prohibited
    tcp dport 53 reject with tcp reset
    meta l4proto tcp reject with tcp reset
    reject with icmpx admin-prohibited
  }
}
NFT

decode() {
  python3 - "$1" <<'PY'
import re, struct, sys
buf = b""; on = False
for l in open(sys.argv[1]).read().split("\n"):
    if "sendmsg(" in l:
        on = True; continue
    if on:
        m = re.match(r"\s*\| [0-9a-f]{5}  (.{48})", l)
        if m:
            buf += bytes.fromhex(m.group(1).replace(" ", ""))
        elif buf:
            break
off = 0
while off < len(buf):
    ln, ty, fl, seq, pid = struct.unpack_from("<IHHII", buf, off)
    # type, flags, then everything after the nlmsghdr (nfgenmsg + attributes)
    print("%04x %04x %s" % (ty, fl, buf[off + 16:off + ln].hex()))
    off += (ln + 3) & ~3
PY
}

for s in a b; do
  ip netns exec "$NS" strace -f -e trace=sendmsg -e write=all -xx -s 65535 \
    -o "$TMP/$s.trace" nft -f "$TMP/$s.nft"
  {
    echo "# nft $(nft --version | awk '{print $2}'): the batch for this rule set (type flags body)"
    sed 's/^/# /' "$TMP/$s.nft"
    decode "$TMP/$s.trace"
  } > "tests/fixtures/nft-golden-$s.txt"
  echo "tests/fixtures/nft-golden-$s.txt: $(grep -vc '^#' "tests/fixtures/nft-golden-$s.txt") messages"
done

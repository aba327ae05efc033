#!/usr/bin/env bash
# Install what blue-wireguard needs on a Debian machine (run as root), then build the addon.
# Idempotent: packages already present are not fetched again.
set -euo pipefail
cd "$(dirname "$0")/.."

# wg-quick and wg; the userspace WireGuard for kernels without the module; ip, nft, sysctl,
# getent, unshare for the testbed; python3 for the simulated node's HTTP and DNS services; strace
# for the chaos tests that kill an owner at an exact system call; iperf3 for the bench's
# throughput section (through the tunnel, embedded vs wireguard-go); curl, an ordinary client
# of the rootless proxy in its tests.
PKGS=(wireguard-tools wireguard-go iproute2 nftables procps libc-bin util-linux python3 strace iperf3 curl ca-certificates)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  timeout 600 apt-get update -qq </dev/null
  timeout 900 apt-get install -y -qq --no-install-recommends "${missing[@]}" </dev/null >/dev/null
fi

# The kernel lane (`npm run test:kernel`): a kernel image with the WireGuard module, qemu,
# busybox and virtme-ng, to boot that kernel in a VM (this host's kernel has no module).
bash scripts/setup-kernel-lane.sh

for tool in cargo node npm; do
  command -v "$tool" >/dev/null || { echo "setup: $tool is required (Rust toolchain, Node.js >= 20)" >&2; exit 1; }
done

timeout 600 npm ci --no-audit --no-fund --loglevel=error </dev/null
timeout 900 npm run --silent build </dev/null
echo "setup: built $(ls ./*.node)" >&2

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

# Tools outside PATH: cargo-deny (the dependency tree's licenses, bans, sources and
# advisories; .ci/run) lives in ~/.cargo/bin with cargo. Installed once (~5 min to compile).
if ! command -v cargo-deny >/dev/null; then
  echo "setup: cargo install cargo-deny (once; compiles for ~5 min)" >&2
  timeout 2400 nice -n 19 cargo install --locked --quiet cargo-deny </dev/null
fi

# On a machine already set up this takes seconds: npm ci only when node_modules was not
# installed from this package-lock.json (and this Node), the build only when its inputs
# changed since the last successful one (or its outputs are gone). Both stamps are sha256s.
lock_sum=$( { node --version; cat package-lock.json; } | sha256sum | cut -d' ' -f1)
if [[ $(cat node_modules/.blue-wg-setup 2>/dev/null) != "$lock_sum" ]]; then
  echo "setup: npm ci (~30 s)" >&2
  timeout 600 npm ci --no-audit --no-fund --loglevel=error </dev/null
  echo "$lock_sum" >node_modules/.blue-wg-setup
else
  echo "setup: node_modules matches package-lock.json, npm ci skipped" >&2
fi

build_sum=$( {
  rustc --version
  node --version
  find src -type f -print0 | sort -z | xargs -0 sha256sum
  sha256sum Cargo.toml Cargo.lock build.rs types/header.d.ts package.json
} | sha256sum | cut -d' ' -f1)
node_file=blue-wireguard.linux-$(node -p 'process.arch')-gnu.node
if [[ $(cat target/.blue-wg-setup 2>/dev/null) != "$build_sum" || ! -f $node_file || ! -x blue-wg-watchdog ]]; then
  echo "setup: building the addon and its watchdog (release, LTO; ~3-6 min from scratch on 2 cores)" >&2
  timeout 1800 npm run --silent build </dev/null
  mkdir -p target && echo "$build_sum" >target/.blue-wg-setup
  echo "setup: built $(ls ./*.node)" >&2
else
  echo "setup: $node_file is up to date with src/, Cargo.*, build.rs, types/ (build skipped)" >&2
fi

#!/usr/bin/env bash
# The kernel lane (`npm run test:kernel`): this machine's kernel has no WireGuard module, so
# boot one that has (Debian's linux-image-amd64, installed by scripts/setup-kernel-lane.sh)
# in a VM with virtme-ng, over this machine's own file system, and run the tunnel tests
# against the kernel backend there:
#   __test__/kernel.test.js (auto takes kernel; no program run; status() counters; SIGKILL ->
#   watchdog; sweep), then with BLUE_WG_BACKEND=kernel the tunnel, exit-path, compat (SDK),
#   DNS, health (handshake-verified connect, update in place, watch) and kill-switch suites.
# Inside the VM, as on the host, every tunnel lives in the testbed's network namespaces,
# never in the guest's root namespace.
#
#   scripts/test-kernel.sh [--check] [-- node test args...]
#     --check     exit 0 when the lane can run here (image, modules, qemu, vng, built addon),
#                 else print why and exit 3; boots nothing
#     --bench     instead of the tests: `node testbed/bench.js` with the kernel backend vs
#                 wg-quick, inside the VM (emulated: compare the two, never with host numbers)
#
# Environment: BLUE_WG_KERNEL_IMAGE (default: the newest /boot/vmlinuz-* whose modules include
# wireguard.ko), BLUE_WG_VM_TIMEOUT (seconds for boot + tests, default 1500),
# BLUE_WG_VM_MEMORY (default 2G), BLUE_WG_VM_CPUS (default 2).
#
# The guest sees the host's file system read-only, with tmpfs or overlays on /run, /tmp,
# /etc, /var (virtme-ng): nothing it writes reaches the host except under the repository
# (--rwdir, for test output). KVM is not used: qemu crashes with `-cpu host` here, so it is
# TCG emulation (boot ~20 s; everything 10-30x slower than on the host).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD

if [[ ${1:-} == --inside ]]; then
  # ------------------------------------------------------------------ inside the guest
  shift
  mode=$1
  shift
  # Never on the host: only where virtme-ng booted us.
  grep -q 'virtme' /proc/cmdline || { echo "test-kernel: --inside runs only in the VM" >&2; exit 2; }
  echo "test-kernel: guest up at $(awk '{print $1}' /proc/uptime) s (kernel $(uname -r))" >&2
  # The testbed's node runs wireguard-go, which needs /dev/net/tun: Debian builds tun as a
  # module, and nothing in the guest loads it (nor udev makes the node) before first use.
  [[ -c /dev/net/tun ]] || modprobe tun
  # The testbed keeps each namespace's resolv.conf in /etc/netns (an overlay here, over the
  # host's /etc): a tmpfs of its own, since overlayfs on the 9p root fails to re-create a
  # directory the testbed removed (ENOENT).
  mkdir -p /etc/netns && mount -t tmpfs -o mode=0755 blue-wg-netns /etc/netns
  # Everything takes 10-30x longer under TCG: the testbed's per-command bounds follow.
  export TESTBED_CMD_TIMEOUT=${TESTBED_CMD_TIMEOUT:-60} TESTBED_READY_TIMEOUT=${TESTBED_READY_TIMEOUT:-120}
  t0=$EPOCHREALTIME
  case $mode in
    test)
      set +e
      # The suites whose expectations hold on any backend and are not timing bounds tuned
      # for the host (chaos' and emergencyCleanupSync's 1 s / 2 ms bounds miss under TCG).
      BLUE_WG_BACKEND=kernel BW_TIME_FACTOR=10 node --test --test-concurrency=1 "$@" __test__/kernel.test.js \
        __test__/tunnel.test.js __test__/exit.test.js __test__/compat.test.js __test__/dns.test.js \
        __test__/health.test.js __test__/killswitch.test.js
      rc=$?
      set -e
      ;;
    bench)
      set +e
      BLUE_WG_BACKEND=kernel node testbed/bench.js --backend kernel "$@"
      rc=$?
      set -e
      ;;
    *) echo "test-kernel: unknown mode $mode" >&2; exit 2 ;;
  esac
  echo "test-kernel: $mode took $(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }') s in the guest" >&2
  exit $rc
fi

# ---------------------------------------------------------------------- on the host
has_wireguard_ko() {
  local d=/lib/modules/$1/kernel/drivers/net/wireguard
  compgen -G "$d/wireguard.ko*" >/dev/null
}

pick_image() {
  if [[ -n ${BLUE_WG_KERNEL_IMAGE:-} ]]; then
    echo "$BLUE_WG_KERNEL_IMAGE"
    return
  fi
  local img ver
  for img in $(ls -1v /boot/vmlinuz-* 2>/dev/null | tac); do
    ver=${img#/boot/vmlinuz-}
    if has_wireguard_ko "$ver"; then
      echo "$img"
      return
    fi
  done
}

why_not() {
  local img
  img=$(pick_image)
  [[ -n $img && -r $img ]] || { echo "no kernel image with wireguard.ko under /boot (scripts/setup-kernel-lane.sh installs linux-image-amd64)"; return; }
  has_wireguard_ko "${img#/boot/vmlinuz-}" || { echo "$img has no wireguard.ko under /lib/modules"; return; }
  command -v qemu-system-x86_64 >/dev/null || { echo "qemu-system-x86_64 is missing (apt-get install qemu-system-x86)"; return; }
  command -v busybox >/dev/null || [[ -x /bin/busybox ]] || { echo "busybox is missing (apt-get install busybox-static)"; return; }
  command -v vng >/dev/null || { echo "vng is missing (pip install virtme-ng==1.42)"; return; }
  compgen -G "$REPO/*.node" >/dev/null || { echo "the addon is not built (npm run build)"; return; }
  [[ -x $REPO/blue-wg-watchdog ]] || { echo "the watchdog is not built (npm run build)"; return; }
  [[ $EUID == 0 ]] || { echo "the testbed needs root"; return; }
}

mode=test
case ${1:-} in
  --check)
    why=$(why_not)
    if [[ -n $why ]]; then
      echo "test-kernel: cannot run here: $why" >&2
      exit 3
    fi
    exit 0
    ;;
  --bench) mode=bench; shift ;;
esac
[[ ${1:-} == -- ]] && shift

why=$(why_not)
[[ -z $why ]] || { echo "test-kernel: cannot run here: $why" >&2; exit 3; }
img=$(pick_image)

# The guest's command line: the host's PATH (node, wireguard-go, python3 live on it), with the
# real python3 first (a pyenv shim costs seconds per start under TCG), and the repository as
# working directory. Quoted for the guest's shell.
path=$PATH
py=$(timeout 20 python3 -c 'import sys; print(sys.executable)' 2>/dev/null || true)
[[ -n $py ]] && path="$(dirname "$py"):$path"
args=""
for a in "$@"; do args+=" $(printf '%q' "$a")"; done
guest="cd $(printf '%q' "$REPO") && export PATH=$(printf '%q' "$path") && scripts/test-kernel.sh --inside $mode$args"

echo "test-kernel: booting ${img} (TCG, ${BLUE_WG_VM_CPUS:-2} vCPUs, ${BLUE_WG_VM_MEMORY:-2G})" >&2
t0=$(date +%s)
set +e
# Through a pipe, stdout and stderr alike: qemu opens the guest's output anew by path
# (virtme's `-chardev file,path=/proc/self/fd/1` and `/2`, truncating), which on a file our
# caller redirected to (CI's log) started at offset 0 and wrote over everything logged before.
timeout -k 10 "${BLUE_WG_VM_TIMEOUT:-1500}" vng --run "$img" --disable-kvm \
  --cpus "${BLUE_WG_VM_CPUS:-2}" --memory "${BLUE_WG_VM_MEMORY:-2G}" \
  --rwdir "$REPO" --overlay-rwdir /etc --exec "$guest" </dev/null 2>&1 | cat
rc=${PIPESTATUS[0]}
set -e
echo "test-kernel: boot + $mode took $(( $(date +%s) - t0 )) s in all (exit $rc)" >&2
exit $rc

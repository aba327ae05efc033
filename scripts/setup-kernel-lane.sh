#!/usr/bin/env bash
# Install what the kernel lane (`npm run test:kernel`, scripts/test-kernel.sh) needs on a Debian
# machine (run as root): a kernel image whose modules include wireguard.ko (installed under
# /boot and /lib/modules; the running kernel is not changed), qemu, a static busybox for the
# guest's init, and virtme-ng (PyPI only: Debian 12 has no package) to boot that kernel over
# the host's own file system. Idempotent: what is present is not fetched again.
set -euo pipefail

PKGS=(qemu-system-x86 busybox-static linux-image-amd64)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup-kernel-lane: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  timeout 600 apt-get update -qq </dev/null
  timeout 1200 apt-get install -y -qq --no-install-recommends "${missing[@]}" </dev/null >/dev/null
fi

VNG_VERSION=1.42
have=$(timeout 60 python3 -m pip show virtme-ng 2>/dev/null | sed -n 's/^Version: //p' || true)
if [[ $have != "$VNG_VERSION" ]]; then
  echo "setup-kernel-lane: pip install virtme-ng==$VNG_VERSION" >&2
  timeout 600 python3 -m pip install --quiet --disable-pip-version-check "virtme-ng==$VNG_VERSION" </dev/null
fi

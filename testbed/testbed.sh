#!/usr/bin/env bash
# blue-wireguard network-namespace testbed (see testbed/README.md).
#
#   testbed.sh up <prefix> [nclients]   create <prefix>-node / <prefix>-cli, print ONE JSON object
#   testbed.sh down <prefix>            remove everything of that testbed; idempotent, never fails
#   testbed.sh down-all-stale           down every testbed whose creator process is dead
#
# <prefix>: 3-8 chars [a-z0-9], starting with a letter (interface names are limited to 15 chars;
# ours are <prefix>v0, <prefix>v1, <prefix>n).
#
# Layout created by `up`:
#
#   <prefix>-cli                              <prefix>-node
#   ┌──────────────────────────┐  veth pair   ┌───────────────────────────────────────────┐
#   │ <prefix>v1 192.0.2.2/24  ├──────────────┤ <prefix>v0 192.0.2.1/24                   │
#   │ lo up, NO default route  │              │ <prefix>n  wireguard-go 10.8.0.1/24       │
#   │ (the code under test     │              │            mtu 1280, udp :51820           │
#   │  runs here)              │              │ lo         198.18.0.10/32 ("internet")    │
#   └──────────────────────────┘              │ node_services.py: http :80 on all addrs,  │
#                                             │   dns udp 10.8.0.1:53                     │
#                                             └───────────────────────────────────────────┘
#
# Nothing here ever touches the machine's own network namespace (no routes, rules, DNS,
# firewall, tunnels there), nor /etc/resolv.conf: each namespace gets /etc/netns/<ns>/resolv.conf,
# which `ip netns exec` bind-mounts over /etc/resolv.conf.
#
# State lives in /run/blue-wg-testbed/<prefix>/ (0700):
#   owner            "<pid> <starttime>" of the creator (TESTBED_OWNER_PID, default: our parent)
#   pids             "<pid> <starttime> <name>" of every daemon we started
#   up.json          the JSON printed by `up` (contains test private keys)
#   *.log            stdout/stderr of the daemons
#
# Environment:
#   TESTBED_OWNER_PID        creator pid recorded by `up` (for down-all-stale); default $PPID
#   TESTBED_CLIENT_IFNAMES   extra interface names (space/comma separated) whose stale
#                            /var/run/wireguard/<name>.sock `down` removes (e.g. "wgsent0")
#   TESTBED_CMD_TIMEOUT      seconds each ordinary command may take (default 10)
#   TESTBED_READY_TIMEOUT    seconds `up` waits for the daemons (default 15)
#   TESTBED_PYTHON           python3 to run node_services.py with (default: python3 on PATH)
#   TESTBED_WG_LOG_LEVEL     LOG_LEVEL for the node's wireguard-go (default "error")
#   TESTBED_QUIET=1          no progress messages on stderr (errors are still printed)

set -Eeuo pipefail

readonly STATE_ROOT=/run/blue-wg-testbed
readonly WG_RUN=/var/run/wireguard
readonly HERE=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
readonly TMO=${TESTBED_CMD_TIMEOUT:-10}
readonly READY_TMO=${TESTBED_READY_TIMEOUT:-15}

# Fixed addressing of the testbed (also reported in the JSON).
readonly NODE_VETH_ADDR=192.0.2.1 CLI_VETH_ADDR=192.0.2.2
readonly WG_PORT=51820 WG_NODE_ADDR=10.8.0.1 WG_MTU=1280
readonly TUNNEL_HOST=198.18.0.10 DNS_NAME=test.sentinel.internal

PREFIX=""

# ------------------------------------------------------------------------------ helpers

log()  { [[ ${TESTBED_QUIET:-0} == 1 ]] || printf 'testbed[%s]: %s\n' "$PREFIX" "$*" >&2; }
warn() { printf 'testbed[%s]: %s\n' "$PREFIX" "$*" >&2; }
die()  { warn "ERROR: $*"; exit 1; }

# Every external command goes through T: bounded by TMO seconds (SIGKILL 2 s later).
T() { timeout -k 2 "$TMO" "$@"; }

now_ms() { local t=${EPOCHREALTIME/./}; echo $((10#$t / 1000)); }

# wait_for SECONDS DESCRIPTION CMD...: poll CMD every 50 ms until it succeeds (bounded).
wait_for() {
    local secs=$1 desc=$2; shift 2
    local deadline=$(( $(now_ms) + secs * 1000 ))
    until "$@"; do
        (( $(now_ms) < deadline )) || { warn "timed out after ${secs}s waiting for $desc"; return 1; }
        sleep 0.05
    done
}

valid_prefix() { [[ $1 =~ ^[a-z][a-z0-9]{2,7}$ ]]; }

set_prefix() {
    valid_prefix "${1:-}" || die "bad prefix '${1:-}': want 3-8 chars [a-z0-9], starting with a letter"
    PREFIX=$1
    NODE_NS="$PREFIX-node" CLI_NS="$PREFIX-cli"
    VETH_NODE="${PREFIX}v0" VETH_CLI="${PREFIX}v1" WG_IF="${PREFIX}n"
    SD="$STATE_ROOT/$PREFIX"
}

ns_exists() { [[ -e /run/netns/$1 ]]; }

# Field 22 (starttime) of /proc/<pid>/stat: with the pid it names one process for good,
# so a recycled pid is never mistaken for ours.
proc_starttime() {
    local s
    { s=$(< "/proc/$1/stat"); } 2>/dev/null || return 1
    s=${s##*) }                # drop "pid (comm) ", comm may contain spaces
    local -a f=($s)
    [[ ${f[0]} != Z ]] || return 1   # a zombie is as good as dead
    echo "${f[19]}"
}

# pid_alive PID [STARTTIME]
pid_alive() {
    local st
    st=$(proc_starttime "$1") || return 1
    [[ -z ${2:-} || $st == "$2" ]]
}

# Resolve the real interpreter once into PY_BIN (a pyenv shim costs ~100 ms per start).
PY_BIN=""
resolve_python() {
    [[ -z $PY_BIN ]] || return 0
    PY_BIN=${TESTBED_PYTHON:-$(T python3 -c 'import sys; print(sys.executable)')}
}

# ------------------------------------------------------------------------------ down

# Kill processes given as "pid:starttime" words: SIGTERM, bounded wait, then SIGKILL.
kill_procs() {
    (( $# )) || return 0
    local w pid st left=()
    for w; do pid_alive "${w%%:*}" "${w##*:}" && kill -TERM "${w%%:*}" 2>/dev/null || true; done
    local deadline=$(( $(now_ms) + 3000 ))
    while :; do
        left=()
        for w; do pid_alive "${w%%:*}" "${w##*:}" && left+=("$w"); done
        (( ${#left[@]} )) && (( $(now_ms) < deadline )) || break
        sleep 0.05
    done
    (( ${#left[@]} )) || return 0
    log "SIGKILL to ${left[*]%%:*} (still alive 3 s after SIGTERM)"
    for w in "${left[@]}"; do
        pid=${w%%:*} st=${w##*:}
        pid_alive "$pid" "$st" && kill -KILL "$pid" 2>/dev/null || true
    done
    deadline=$(( $(now_ms) + 2000 ))
    while :; do
        local any=0
        for w in "${left[@]}"; do pid_alive "${w%%:*}" "${w##*:}" && any=1; done
        (( any )) && (( $(now_ms) < deadline )) || break
        sleep 0.05
    done
    (( ! any )) || warn "WARNING: could not kill ${left[*]%%:*}"
}

# "pid:starttime" of every process we own: the recorded daemons that are still the same
# processes, plus everything living in our two namespaces (e.g. the wireguard-go daemons
# that wg-quick started in the cli ns).
collect_procs() {
    local pid st name ns
    declare -A seen=()
    if [[ -r $SD/pids ]]; then
        while read -r pid st name; do
            [[ $pid =~ ^[0-9]+$ ]] || continue
            pid_alive "$pid" "$st" && seen[$pid]=$st
        done < "$SD/pids"
    fi
    for ns in "$NODE_NS" "$CLI_NS"; do
        ns_exists "$ns" || continue
        for pid in $(T ip netns pids "$ns" 2>/dev/null || true); do
            st=$(proc_starttime "$pid") && seen[$pid]=$st
        done
    done
    unset 'seen[$$]' 'seen[$BASHPID]'   # in case down runs inside one of the namespaces
    for pid in "${!seen[@]}"; do echo "$pid:${seen[$pid]}"; done
}

# True when nobody accepts connections on the unix socket $1 (its wireguard-go is gone).
sock_stale() {
    resolve_python || return 1
    T "$PY_BIN" - "$1" <<'EOF' 2>/dev/null
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(2)
try:
    s.connect(sys.argv[1])
except (ConnectionRefusedError, FileNotFoundError):
    sys.exit(0)      # stale
except OSError:
    sys.exit(1)      # unknown: keep it
sys.exit(1)          # live: someone is serving it
EOF
}

do_down() {
    set +e   # best effort from here on: every step runs whatever the previous one did
    local round procs ns dev name f

    # 1. processes (a few rounds, in case something forked while we were killing)
    for round in 1 2 3; do
        mapfile -t procs < <(collect_procs)
        (( ${#procs[@]} )) || break
        log "stopping pids ${procs[*]%%:*}"
        kill_procs "${procs[@]}"
    done

    # 2. interfaces: anything left inside our namespaces, and our exact names in the host
    #    namespace (only reachable there if an `up` died between two steps).
    for ns in "$NODE_NS" "$CLI_NS"; do
        ns_exists "$ns" || continue
        for dev in $(T ip -n "$ns" -o link show 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1); do
            [[ $dev == lo ]] || T ip -n "$ns" link delete dev "$dev" 2>/dev/null
        done
    done
    for dev in "$VETH_NODE" "$VETH_CLI" "$WG_IF"; do
        T ip link show dev "$dev" &>/dev/null && T ip link delete dev "$dev" 2>/dev/null
    done

    # 3. namespaces and their /etc/netns dirs, and blue-wireguard's per-namespace state dir
    #    (/run/blue-wireguard/net-<namespace inode>: records, locks, DNS state of the tunnels
    #    the code under test made there)
    local ino
    for ns in "$NODE_NS" "$CLI_NS"; do
        if ns_exists "$ns"; then
            ino=$(stat -L -c %i "/run/netns/$ns" 2>/dev/null)
            [[ $ino =~ ^[0-9]+$ ]] && rm -rf -- "/run/blue-wireguard/net-$ino"
        fi
        ns_exists "$ns" && { T ip netns delete "$ns" || warn "WARNING: could not delete netns $ns"; }
        rm -rf -- "/etc/netns/$ns"
    done
    rmdir /etc/netns 2>/dev/null   # only if empty (it did not exist before the first testbed)

    # 4. stale wireguard-go control sockets: <prefix>*.sock and TESTBED_CLIENT_IFNAMES
    local -a names=()
    for f in "$WG_RUN/$PREFIX"*.sock; do [[ -e $f ]] && names+=("$(basename -- "$f" .sock)"); done
    local -a extra=()
    IFS=', ' read -ra extra <<<"${TESTBED_CLIENT_IFNAMES:-}"
    names+=("${extra[@]}")
    for name in "${names[@]}"; do
        [[ $name =~ ^[A-Za-z0-9_=+.-]{1,15}$ ]] || { warn "ignoring bad ifname '$name'"; continue; }
        f="$WG_RUN/$name.sock"
        [[ -S $f ]] || continue
        if sock_stale "$f"; then rm -f -- "$f" && log "removed stale $f"
        else log "keeping $f: a live wireguard-go still serves it"; fi
    done

    # 5. state
    rm -rf -- "$SD"
    rmdir "$STATE_ROOT" 2>/dev/null
    return 0
}

cmd_down() {
    set_prefix "${1:-}"
    local t0; t0=$(now_ms)
    do_down
    log "down in $(( $(now_ms) - t0 )) ms"
}

cmd_down_all_stale() {
    local d p pid st n=0
    for d in "$STATE_ROOT"/*/; do
        [[ -d $d ]] || continue
        p=$(basename -- "$d")
        valid_prefix "$p" || continue
        if [[ -r $d/owner ]]; then
            read -r pid st < "$d/owner" || true
            pid_alive "${pid:-0}" "${st:-}" && continue
        else
            # no owner yet: an `up` may be starting this very moment; give it a minute
            (( $(date +%s) - $(stat -c %Y -- "$d") > 60 )) || continue
        fi
        ( set_prefix "$p"; log "creator ${pid:-?} is gone: removing"; do_down )
        n=$((n + 1))
    done
    PREFIX="" log "removed $n stale testbed(s)"
}

# ------------------------------------------------------------------------------ up

UP_DONE=0
on_up_exit() {
    local rc=$?
    (( UP_DONE )) && return 0
    (( rc )) || rc=1
    trap - ERR
    warn "up failed (exit $rc); tearing down what was created"
    for f in "$SD"/*.log; do
        [[ -s $f ]] && { warn "--- $(basename "$f") (last lines)"; tail -n 20 "$f" >&2; }
    done
    do_down
    exit "$rc"
}

# ERR trap of `up`: say which command failed and where (call chain, innermost first).
on_up_err() {
    local rc=$? cmd=$BASH_COMMAND i where=""
    for (( i = 1; i < ${#FUNCNAME[@]}; i++ )); do
        where+=" ${FUNCNAME[i]}:${BASH_LINENO[i-1]}"
    done
    warn "command failed (exit $rc) at$where: $cmd"
}

# readiness checks (polled by wait_for)
wg_ready() {
    pid_alive "$WG_PID" || die "wireguard-go exited during start-up (see log below)"
    [[ -S $WG_RUN/$WG_IF.sock ]] && T ip -n "$NODE_NS" link show dev "$WG_IF" &>/dev/null
}
http_ready() {
    pid_alive "$SVC_PID" || die "node_services.py exited during start-up (see log below)"
    timeout -k 1 2 ip netns exec "$NODE_NS" bash -c '
        exec 3<>/dev/tcp/'"$WG_NODE_ADDR"'/80 || exit 1
        printf "GET /testbed-ready HTTP/1.0\r\nHost: testbed\r\n\r\n" >&3
        IFS= read -r line <&3 && [[ $line == HTTP/1.?\ 200* ]]' &>/dev/null
}

# start_daemon NAME LOGFILE CMD...: run CMD in the background (stdio detached from ours so a
# caller reading our stdout sees EOF when we exit), record "pid starttime name", set DAEMON_PID.
# Daemons are deliberately not wrapped in `timeout`: they must outlive us; `down` ends them.
start_daemon() {
    local name=$1 logf=$2; shift 2
    "$@" </dev/null >>"$logf" 2>&1 &
    DAEMON_PID=$!
    local st
    st=$(proc_starttime "$DAEMON_PID") || st=0
    echo "$DAEMON_PID $st $name" >> "$SD/pids"
}

cmd_up() {
    set_prefix "${1:-}"
    local nclients=${2:-2}
    [[ $nclients =~ ^[0-9]+$ ]] && (( nclients >= 1 && nclients <= 253 )) \
        || die "bad nclients '$nclients': want 1..253"
    if [[ -d $SD ]] || ns_exists "$NODE_NS" || ns_exists "$CLI_NS"; then
        die "testbed $PREFIX already exists; run: $0 down $PREFIX"
    fi
    for cmd in ip wg wireguard-go timeout; do
        command -v "$cmd" >/dev/null || die "$cmd not found on PATH"
    done
    local t0; t0=$(now_ms)

    # --- state dir (a concurrent `down` may rmdir an empty STATE_ROOT: retry once).
    # Created before the teardown trap is armed, so a clash never tears down someone else's.
    { mkdir -p -m 0755 "$STATE_ROOT" && mkdir -m 0700 "$SD"; } 2>/dev/null \
        || { mkdir -p -m 0755 "$STATE_ROOT" && mkdir -m 0700 "$SD"; } \
        || die "cannot create $SD"

    # From here on, any failure (or signal) tears down what exists.
    trap on_up_exit EXIT
    trap on_up_err ERR
    trap 'warn "interrupted"; exit 130' INT TERM HUP

    # --- owner (for down-all-stale)
    local owner=${TESTBED_OWNER_PID:-$PPID} owner_st
    owner_st=$(proc_starttime "$owner") || owner_st=0
    echo "$owner $owner_st" > "$SD/owner"
    : > "$SD/pids"
    resolve_python

    # --- resolv.conf for both namespaces, before anything runs in them
    local ns
    for ns in "$NODE_NS" "$CLI_NS"; do   # (retry: a concurrent `down` may rmdir /etc/netns)
        mkdir -p "/etc/netns/$ns" 2>/dev/null || mkdir -p "/etc/netns/$ns"
    done
    printf '# blue-wireguard testbed original resolv.conf for %s\nnameserver %s\n' \
        "$CLI_NS" "$NODE_VETH_ADDR" > "/etc/netns/$CLI_NS/resolv.conf"
    printf '# blue-wireguard testbed original resolv.conf for %s\nnameserver 127.0.0.1\n' \
        "$NODE_NS" > "/etc/netns/$NODE_NS/resolv.conf"

    # --- namespaces, veth (both ends created directly inside the namespaces)
    log "creating netns $NODE_NS, $CLI_NS"
    T ip netns add "$NODE_NS"
    T ip netns add "$CLI_NS"
    T ip -n "$NODE_NS" link set lo up
    T ip -n "$CLI_NS" link set lo up
    T ip link add "$VETH_NODE" netns "$NODE_NS" type veth peer name "$VETH_CLI" netns "$CLI_NS"
    T ip -n "$NODE_NS" addr add "$NODE_VETH_ADDR/24" dev "$VETH_NODE"
    T ip -n "$CLI_NS" addr add "$CLI_VETH_ADDR/24" dev "$VETH_CLI"
    T ip -n "$NODE_NS" link set "$VETH_NODE" up
    T ip -n "$CLI_NS" link set "$VETH_CLI" up
    T ip -n "$NODE_NS" addr add "$TUNNEL_HOST/32" dev lo   # the "internet" host (no dummy links here)

    # --- keys
    local server_priv server_pub i
    local -a cpriv=() cpub=()
    server_priv=$(T wg genkey)
    server_pub=$(T wg pubkey <<<"$server_priv")
    for (( i = 0; i < nclients; i++ )); do
        cpriv[i]=$(T wg genkey)
        cpub[i]=$(T wg pubkey <<<"${cpriv[i]}")
    done

    # --- wireguard-go peer (foreground mode, so the pid we record is the daemon itself;
    #     WG_PROCESS_FOREGROUND=1 also silences its "use the kernel module" banner)
    log "starting wireguard-go $WG_IF"
    start_daemon wireguard-go "$SD/wireguard-go.log" \
        ip netns exec "$NODE_NS" env WG_PROCESS_FOREGROUND=1 \
        LOG_LEVEL="${TESTBED_WG_LOG_LEVEL:-error}" wireguard-go -f "$WG_IF"
    WG_PID=$DAEMON_PID
    wait_for "$READY_TMO" "wireguard-go interface $WG_IF" wg_ready

    local -a peer_args=()
    for (( i = 0; i < nclients; i++ )); do
        peer_args+=(peer "${cpub[i]}" allowed-ips "10.8.0.$((i + 2))/32")
    done
    T ip netns exec "$NODE_NS" wg set "$WG_IF" private-key /dev/stdin listen-port "$WG_PORT" \
        "${peer_args[@]}" <<<"$server_priv"
    T ip -n "$NODE_NS" addr add "$WG_NODE_ADDR/24" dev "$WG_IF"
    T ip -n "$NODE_NS" link set dev "$WG_IF" mtu "$WG_MTU" up

    # --- HTTP + DNS
    log "starting node_services.py"
    start_daemon node_services "$SD/node_services.log" \
        ip netns exec "$NODE_NS" "$PY_BIN" -u "$HERE/node_services.py" \
        --http-port 80 --dns-addr "$WG_NODE_ADDR" --dns-port 53 \
        --dns-name "$DNS_NAME" --dns-answer "$TUNNEL_HOST"
    SVC_PID=$DAEMON_PID
    wait_for "$READY_TMO" "HTTP server in $NODE_NS" http_ready

    # --- the one JSON object
    local clients="" sep=""
    for (( i = 0; i < nclients; i++ )); do
        clients+="$sep{\"privateKey\":\"${cpriv[i]}\",\"publicKey\":\"${cpub[i]}\",\"address\":\"10.8.0.$((i + 2))/24\"}"
        sep=","
    done
    local json
    json=$(printf '{"prefix":"%s","nodeNs":"%s","cliNs":"%s","endpoint":"%s:%s","serverPublicKey":"%s","nodeIfname":"%s","clients":[%s],"httpTunnelHost":"%s","httpNodeHost":"%s","dnsServer":"%s","dnsName":"%s","dnsAnswer":"%s","pids":[%s,%s]}' \
        "$PREFIX" "$NODE_NS" "$CLI_NS" "$NODE_VETH_ADDR" "$WG_PORT" "$server_pub" "$WG_IF" \
        "$clients" "$TUNNEL_HOST" "$WG_NODE_ADDR" "$WG_NODE_ADDR" "$DNS_NAME" "$TUNNEL_HOST" \
        "$WG_PID" "$SVC_PID")
    (umask 077; printf '%s\n' "$json" > "$SD/up.json")

    UP_DONE=1
    trap - EXIT ERR INT TERM HUP
    log "up in $(( $(now_ms) - t0 )) ms"
    printf '%s\n' "$json"
}

# ------------------------------------------------------------------------------ main

usage() {
    sed -n '2,9p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

[[ $(id -u) == 0 ]] || die "must run as root (network namespaces)"
case "${1:-}" in
    up)             shift; cmd_up "$@" ;;
    down)           shift; cmd_down "$@" ;;
    down-all-stale) shift; cmd_down_all_stale ;;
    *)              usage ;;
esac

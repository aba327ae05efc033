#!/usr/bin/env bash
# Self-test of the testbed: up, a real wg-quick tunnel from the cli namespace, HTTP and DNS
# through it, down, and a check that nothing is left behind (and that the host namespace did
# not change at all). Then the same for the node helper (testbed/index.js) unless
# SELFTEST_NODE=0.
#
#   testbed/selftest.sh [prefix]        must run as root; exit 0 = pass
set -Eeuo pipefail

HERE=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
TB="$HERE/testbed.sh"
PROBE="$HERE/probe.py"
PY=$(timeout 10 python3 -c 'import sys; print(sys.executable)')
PREFIX=${1:-st$(od -An -N3 -tx1 /dev/urandom | tr -d ' \n')}
CLIENT_IF="${PREFIX}c"          # the wg-quick interface inside the cli ns
CONFDIR=""
PIDS=()                         # every pid that must be gone at the end

say()  { printf 'selftest[%s]: %s\n' "$PREFIX" "$*" >&2; }
ok()   { say "ok   - $*"; }
fail() { say "FAIL - $*"; exit 1; }
now_ms() { local t=${EPOCHREALTIME/./}; echo $((10#$t / 1000)); }

# The host namespace as seen from outside the testbed: must be identical before and after.
host_snapshot() {
    timeout 10 ip -o link show | awk -F': ' '{print $2}'
    timeout 10 ip route show table all
    timeout 10 ip rule show
    timeout 10 nft list ruleset 2>/dev/null || true
    md5sum /etc/resolv.conf
}

# cli_run CMD...: run inside the cli ns, bounded
cli_run() { timeout -k 2 20 ip netns exec "$PREFIX-cli" "$@"; }
# json_get JSON a.0.b: one value (lists/objects printed as JSON)
json_get() {
    "$PY" -c 'import json, sys
v = json.loads(sys.argv[1])
for k in sys.argv[2].split("."):
    v = v[int(k)] if isinstance(v, list) else v[k]
print(json.dumps(v) if isinstance(v, (list, dict)) else v)' "$1" "$2"
}

cleanup() {
    local rc=$?
    [[ -n $CONFDIR ]] && rm -rf -- "$CONFDIR"
    # safety net (idempotent); the real down below is checked
    TESTBED_QUIET=1 TESTBED_CLIENT_IFNAMES="$CLIENT_IF" "$TB" down "$PREFIX" || true
    (( rc == 0 )) && say "PASS" || say "FAILED (exit $rc)"
}
trap cleanup EXIT

BEFORE=$(host_snapshot)

# ---------------------------------------------------------------- up
t0=$(now_ms)
JSON=$(TESTBED_OWNER_PID=$$ "$TB" up "$PREFIX" 2)
UP_MS=$(( $(now_ms) - t0 ))
ok "testbed up in ${UP_MS} ms"
[[ $(json_get "$JSON" cliNs) == "$PREFIX-cli" ]] || fail "unexpected JSON: $JSON"
for p in $(json_get "$JSON" pids | tr -d '[],'); do PIDS+=("$p"); done
KEY=$(json_get "$JSON" clients.0.privateKey)
SERVER_PUB=$(json_get "$JSON" serverPublicKey)
ENDPOINT=$(json_get "$JSON" endpoint)
HOST=$(json_get "$JSON" httpTunnelHost)
NODEHOST=$(json_get "$JSON" httpNodeHost)
DNS=$(json_get "$JSON" dnsServer)
DNSNAME=$(json_get "$JSON" dnsName)
DNSANSWER=$(json_get "$JSON" dnsAnswer)

grep -q 'testbed original' "/etc/netns/$PREFIX-cli/resolv.conf" || fail "cli resolv.conf missing"
[[ $(cli_run cat /etc/resolv.conf) == "$(cat "/etc/netns/$PREFIX-cli/resolv.conf")" ]] \
    || fail "ip netns exec does not show the per-namespace resolv.conf"
ok "cli ns sees its own /etc/resolv.conf"

cli_run ip route | grep -q '^default' && fail "cli ns has a default route"
if cli_run "$PY" "$PROBE" http "http://$HOST/" 2 >/dev/null 2>&1; then
    fail "$HOST reachable from the cli ns without the tunnel"
fi
ok "$HOST unreachable without the tunnel (no default route)"

# ---------------------------------------------------------------- wg-quick up (client 0)
CONFDIR=$(mktemp -d)
chmod 700 "$CONFDIR"
CONF="$CONFDIR/$CLIENT_IF.conf"
(umask 077; cat > "$CONF" <<EOF
[Interface]
PrivateKey = $KEY
Address = 10.8.0.2/24
MTU = 1280

[Peer]
PublicKey = $SERVER_PUB
Endpoint = $ENDPOINT
AllowedIPs = 10.8.0.0/24, $HOST/32
EOF
)
t0=$(now_ms)
cli_run wg-quick up "$CONF" </dev/null 2>"$CONFDIR/wg-quick.log" \
    || { cat "$CONFDIR/wg-quick.log" >&2; fail "wg-quick up"; }
ok "wg-quick up in $(( $(now_ms) - t0 )) ms"
for p in $(timeout 10 ip netns pids "$PREFIX-cli"); do PIDS+=("$p"); done   # its wireguard-go

# ---------------------------------------------------------------- HTTP through the tunnel
BODY=$(cli_run "$PY" "$PROBE" http "http://$HOST/selftest") || fail "GET http://$HOST/ through the tunnel"
[[ $(json_get "$BODY" client) == 10.8.0.2 ]] || fail "expected client 10.8.0.2, got: $BODY"
[[ $(json_get "$BODY" served_by) == "$HOST" ]] || fail "expected served_by $HOST, got: $BODY"
ok "GET http://$HOST/selftest -> $BODY"
BODY=$(cli_run "$PY" "$PROBE" http "http://$NODEHOST/") || fail "GET http://$NODEHOST/"
[[ $(json_get "$BODY" served_by) == "$NODEHOST" ]] || fail "expected served_by $NODEHOST, got: $BODY"
ok "GET http://$NODEHOST/ -> $BODY"

# ---------------------------------------------------------------- DNS through the tunnel
R=$(cli_run "$PY" "$PROBE" dns "$DNS" "$DNSNAME" A) || fail "DNS query"
[[ $(json_get "$R" rcode) == 0 && $(json_get "$R" answers.0) == "$DNSANSWER" ]] || fail "DNS A: $R"
ok "DNS $DNSNAME A -> $R"
R=$(cli_run "$PY" "$PROBE" dns "$DNS" nope.example.com A) || fail "DNS query"
[[ $(json_get "$R" rcode) == 3 ]] || fail "DNS NXDOMAIN expected: $R"
ok "DNS nope.example.com -> NXDOMAIN"
R=$(cli_run "$PY" "$PROBE" dns "$DNS" "$DNSNAME" AAAA) || fail "DNS query"
[[ $(json_get "$R" rcode) == 0 && $(json_get "$R" answers) == "[]" ]] || fail "DNS AAAA: $R"
ok "DNS $DNSNAME AAAA -> NOERROR, no data"

# ---------------------------------------------------------------- wg-quick down
cli_run wg-quick down "$CONF" </dev/null 2>>"$CONFDIR/wg-quick.log" \
    || { cat "$CONFDIR/wg-quick.log" >&2; fail "wg-quick down"; }
timeout 10 ip -n "$PREFIX-cli" link show dev "$CLIENT_IF" &>/dev/null && fail "$CLIENT_IF still exists after wg-quick down"
ok "wg-quick down removed $CLIENT_IF"

# Leave a second tunnel up on purpose: testbed down must also end the wireguard-go daemon
# that wg-quick forked inside the cli ns (the "owner was SIGKILLed" case).
cli_run wg-quick up "$CONF" </dev/null 2>>"$CONFDIR/wg-quick.log" || fail "wg-quick up (2)"
for p in $(timeout 10 ip netns pids "$PREFIX-cli"); do PIDS+=("$p"); done
ok "second tunnel left up for testbed down to clean"

# ---------------------------------------------------------------- down
t0=$(now_ms)
TESTBED_CLIENT_IFNAMES="$CLIENT_IF" "$TB" down "$PREFIX"
DOWN_MS=$(( $(now_ms) - t0 ))
ok "testbed down in ${DOWN_MS} ms"

# ---------------------------------------------------------------- nothing left
timeout 10 ip netns list | grep -q "^$PREFIX-" && fail "namespace left: $(ip netns list | grep "^$PREFIX-")"
timeout 10 ip -o link show | grep -q "$PREFIX" && fail "interface left in the host ns"
compgen -G "/etc/netns/$PREFIX-*" >/dev/null && fail "/etc/netns dir left"
[[ -e /run/blue-wg-testbed/$PREFIX ]] && fail "state dir left"
compgen -G "/var/run/wireguard/$PREFIX*.sock" >/dev/null && fail "wireguard-go socket left"
ok "no namespace, interface, /etc/netns dir, state dir or control socket left"

# Every pid must be gone. A killed daemon whose parent already exited is reparented to pid 1,
# which may take a moment to reap it: a zombie counts as gone, but wait a bit for the reaping.
running=() zombies=()
deadline=$(( $(now_ms) + 5000 ))
while :; do
    running=() zombies=()
    for p in "${PIDS[@]}"; do
        st=$(awk '{print $3}' "/proc/$p/stat" 2>/dev/null) || continue
        [[ $st == Z ]] && zombies+=("$p") || running+=("$p")
    done
    (( ${#running[@]} + ${#zombies[@]} )) && (( $(now_ms) < deadline )) || break
    sleep 0.1
done
(( ${#running[@]} == 0 )) || fail "processes still running: $(ps -o pid,comm -p "${running[*]// /,}")"
(( ${#zombies[@]} == 0 )) || say "note: ${zombies[*]} exited but not yet reaped by pid 1"
ok "all ${#PIDS[@]} pids gone (${PIDS[*]})"

AFTER=$(host_snapshot)
[[ $BEFORE == "$AFTER" ]] || fail "host namespace changed:
$(diff <(echo "$BEFORE") <(echo "$AFTER"))"
ok "host namespace (links, routes, rules, nft, /etc/resolv.conf) unchanged"

# ---------------------------------------------------------------- node helper
if [[ ${SELFTEST_NODE:-1} == 1 ]] && command -v node >/dev/null; then
    timeout -k 5 120 node --test "$HERE/selftest-node.js" >&2 || fail "node helper self-test"
    AFTER=$(host_snapshot)
    [[ $BEFORE == "$AFTER" ]] || fail "host namespace changed by the node self-test"
    ok "node helper self-test"
fi

'use strict'
// Issue 7: ownership follows the network namespace, not the temp dir (finding 4), a dead
// watchdog does not strand the tunnel (6), a stopped process stalls nobody (7), and a directory
// removed under a live tunnel (the config dir, the state dir, the whole TMPDIR) does not make its
// leftovers permanent (8e). Each test checks
// what a user would: interfaces (and their ifindex), traffic through the tunnel, resolv.conf,
// policy rules, exit status, elapsed time. These are promises of every backend: each test runs
// for the embedded and the wg-quick backend (helpers.BACKENDS), with keys of their own. The
// addon only runs in agents and probes inside the testbeds' cli namespaces; this process
// observes from outside (see helpers.js).
const { test, before, after } = require('node:test')
const assert = require('node:assert/strict')
const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')
const { spawnSync } = require('node:child_process')

const testbed = require('../testbed')
const {
  startAgent, runAgent, assertClean, resolvConfPath, linkExists, sleep, procGone, procState,
  nsProcesses, nsInode, ifindex, waitClean, parseRecord, killAgent, stateDir, stateFiles,
  BACKENDS, clientBase,
} = require('./helpers')
const { runProbe } = require('./fixtures/probe-run.js')

const FULL = ['0.0.0.0/0', '::/0']
const PROBE_PY = path.join(__dirname, '..', 'testbed', 'probe.py')
const AGENTS = 8 // 4a: concurrent agents (one testbed client key each)
/** The first client key of the second backend's runs (helpers.clientBase): each general
 *  promise here is checked for both backends, and they never share a key. */
const SPARE = AGENTS
const REPO = path.join(__dirname, '..')
let tb
let original

before(async () => {
  tb = await testbed.up({ nclients: 2 * AGENTS })
  original = fs.readFileSync(resolvConfPath(tb), 'utf8')
})
after(() => tb && tb.down())

const url = (x = tb) => `http://${x.httpTunnelHost}/`

/**
 * A view of testbed `x` whose spawnCli runs the command in a mount namespace of its own with a
 * private tmpfs on /run/wireguard. wireguard-go keeps its control socket there, and that
 * directory is otherwise shared by every network namespace of the machine: this is how two
 * agents can use the same interface name in two namespaces (4b), and how the wgsentN names of
 * `'auto'` (4a) cannot collide with another suite's tunnels. The agent's watchdog and wg-quick
 * are its children, so they share its view.
 */
function privateWg(x) {
  const script = 'mkdir -p /run/wireguard && mount -t tmpfs -o mode=0755 tmpfs /run/wireguard && exec "$0" "$@"'
  return {
    ...x,
    spawnCli: (cmd, args = [], opts) => x.spawnCli('unshare', ['-m', '--propagation', 'private', 'sh', '-c', script, cmd, ...args], opts),
  }
}

/**
 * Per-test cleanup that runs first among the test's after hooks: SIGKILLs the agents the test
 * started (`r.agent(a)`), waits (bounded) for their watchdogs to finish, and only then removes
 * the temp dirs (`r.tmp()`). An owner's watchdog needs its TMPDIR to exist to run anything,
 * so removing the dirs first (helpers.tmpdir's order) would strand a failed test's tunnels
 * and spoil the tests after it.
 */
function reaper(t) {
  const agents = []
  const dirs = []
  const more = [] // watchdogs of agents that never reported 'connected'
  t.after(async () => {
    await Promise.all(agents.map(killAgent))
    const dogs = agents.map((a) => a.events.find((e) => e.event === 'connected')?.info.watchdogPid).filter(Boolean)
    dogs.push(...more)
    for (let i = 0; i < 300 && dogs.some((p) => !procGone(p)); i++) await sleep(10)
    for (const d of dirs) fs.rmSync(d, { recursive: true, force: true })
  })
  return {
    tmp() {
      const d = fs.mkdtempSync(path.join(os.tmpdir(), 'bwtest-'))
      dirs.push(d)
      return d
    },
    agent(a) {
      agents.push(a)
      return a
    },
    watchdog(pid) {
      if (pid > 0) more.push(pid)
    },
  }
}

/** Start an agent (killed by `r` after the test if still alive); resolves once it has connected. */
async function connected(r, x, plan, opts) {
  const a = r.agent(startAgent(x, plan, opts))
  const ev = await a.next('connected', 30_000)
  return { a, info: ev.info }
}

/** GET `u` from a fresh process in x's cli namespace: the parsed answer, or { error }. */
async function httpFrom(x, u) {
  const r = await x.execCli('python3', [PROBE_PY, 'http', u])
  if (r.code !== 0) return { error: (r.stderr || r.stdout).trim() }
  return JSON.parse(r.stdout)
}

/** Resolve x's test name through x's cli namespace's resolv.conf (a fresh process). */
async function resolveFrom(x) {
  const r = await x.execCli('getent', ['ahostsv4', x.dnsName])
  return r.code === 0 ? r.stdout.split(/\s+/)[0] : `getent failed (${r.code})`
}

async function rules(x) {
  const out = {}
  for (const fam of ['-4', '-6']) out[fam] = (await x.execCli('ip', [fam, 'rule', 'show'])).stdout
  return out
}

/** The record of `name` in x's state dir, parsed (null when there is none). */
function record(x, name) {
  try {
    return parseRecord(fs.readFileSync(path.join(stateDir(x), `${name}.owner`), 'utf8'))
  } catch {
    return null
  }
}

// ------------------------------------------------------------------------------ finding 4

for (const backend of BACKENDS) {
  test(`4a: ${AGENTS} agents with different TMPDIRs in one namespace connect 'auto' at once: distinct names, nobody removes another's tunnel, all clean after (${backend})`, async (t) => {
    const r = reaper(t)
    const x = privateWg(tb)
    const tmps = Array.from({ length: AGENTS }, () => r.tmp())
    const base = clientBase(backend, SPARE)
    // Routes that do not clash: agent 0 reaches the node, agent 1 the "internet" host, the
    // others private networks nobody answers on (their tunnels only have to exist). Addresses
    // are /32: eight 10.8.0.0/24 subnet routes would send 10.8.0.1 through any of the tunnels.
    const allowed = (i) => (i === 0 ? ['10.8.0.1/32'] : i === 1 ? [`${tb.httpTunnelHost}/32`] : [`10.${100 + i}.0.0/16`])
    const config = (i) => tb.tunnelConfig(base + i, { addresses: [`10.8.0.${base + i + 2}/32`], allowedIps: allowed(i), name: 'auto' })
    const env = { BLUE_WG_BACKEND: backend }
    const agents = tmps.map((tmp, i) => r.agent(startAgent(x, { config: config(i), then: 'disconnect-on-sigusr2' }, { tmp, env })))
    const t0 = performance.now()
    const outcomes = await Promise.allSettled(agents.map((a) => a.next('connected', 60_000)))
    t.diagnostic(`${AGENTS} concurrent connects settled in ${(performance.now() - t0).toFixed(0)} ms`)
    const failed = outcomes.map((o, i) => o.status === 'rejected' && `agent ${i}: ${o.reason.message}`).filter(Boolean)
    assert.deepEqual(failed, [], 'every connect succeeds')
    const infos = outcomes.map((o) => o.value.info)
    const names = infos.map((i) => i.name)
    t.diagnostic(`names: ${names.join(' ')}; replacedStale: ${infos.map((i) => i.replacedStale).join(' ')}`)
    assert.equal(new Set(names).size, AGENTS, `names are not distinct: ${names}`)
    for (const n of names) assert.match(n, /^wgsent\d+$/)
    for (const i of infos) assert.equal(i.replacedStale, false, `${i.name}: a connect replaced something`)
    for (const i of infos) assert.equal(i.backend, backend)
    await Promise.all(agents.map((a) => a.next('waiting')))
    // The agents' wireguard-go sockets are in their private /run/wireguard (the wrapper works).
    for (const n of names) assert.equal(fs.existsSync(`/run/wireguard/${n}.sock`), false, `${n}.sock is in the shared /run/wireguard`)

    const index = {}
    for (const n of names) {
      index[n] = await ifindex(tb, n)
      assert.ok(index[n] > 0, `${n} does not exist while its agent is live`)
    }
    // The wg-quick backend's key files are in the state dir; the embedded backend writes none.
    const keyFiles = backend === 'wg-quick'
    names.forEach((n, i) => {
      const rec = record(tb, n)
      assert.equal(rec?.pid, String(agents[i].child.pid), `${n}: the record does not name its agent`)
      assert.equal(rec.backend, backend)
      assert.equal(rec.conf_path, keyFiles ? path.join(stateDir(tb), `${n}.conf`) : '')
      assert.equal(infos[i].configPath, keyFiles ? rec.conf_path : undefined)
      if (keyFiles) assert.ok(fs.existsSync(rec.conf_path), `${n}: no key file`)
    })

    // Another process's start-up cleanup (with agent 0's TMPDIR) removes nothing of theirs.
    const { byId } = await runProbe(tb, [{ id: 'e', op: 'emergency' }], { tmp: tmps[0] })
    assert.deepEqual(byId.get('e').values, [{ removed: [], warnings: [] }])
    const http0 = await httpFrom(tb, 'http://10.8.0.1/')
    assert.equal(http0.client, `10.8.0.${base + 2}`, `through agent 0's tunnel: ${JSON.stringify(http0)}`)
    const http1 = await httpFrom(tb, url())
    assert.equal(http1.client, `10.8.0.${base + 3}`, `through agent 1's tunnel: ${JSON.stringify(http1)}`)
    await sleep(300)
    for (const n of names) assert.equal(await ifindex(tb, n), index[n], `${n} was removed or replaced while its agent was live`)
    if (keyFiles) for (const i of infos) assert.ok(fs.existsSync(i.configPath), `${i.name}: a live agent's key file was swept`)

    // All disconnect at once.
    for (const a of agents) a.child.kill('SIGUSR2')
    const reports = await Promise.all(agents.map((a) => a.next('disconnected')))
    reports.forEach((r, i) => assert.equal(r.report?.gone, true, `${names[i]}: ${JSON.stringify(r.report)}`))
    const exits = await Promise.all(agents.map((a) => a.exited))
    exits.forEach((e, i) => assert.equal(e.status, 0, `agent ${i}: ${e.stderr}`))
    const clean = await waitClean(tb, { boundMs: 3000, names, tmp: tmps[0], original })
    assert.ok(clean.clean, clean.problems.join('; '))
    for (let i = 0; i < AGENTS; i++) await assertClean(tb, names[i], tmps[i], original)
  })
}

for (const backend of BACKENDS) {
  test(`4b: two namespaces share TMPDIR and a tunnel name: a SIGKILLed owner goes within 1 s, the other namespace's tunnel, key file, DNS and traffic are untouched (${backend})`, async (t) => {
    const r = reaper(t)
    const tbB = await testbed.up({ nclients: 1 })
    t.after(() => tbB.down())
    const originalB = fs.readFileSync(resolvConfPath(tbB), 'utf8')
    const tmp = r.tmp() // one TMPDIR for both agents, as two containers sharing /tmp
    const name = `${tb.prefix}s`
    const env = { BLUE_WG_BACKEND: backend }
    const A = await connected(r, privateWg(tb), {
      config: tb.tunnelConfig(clientBase(backend, SPARE), { allowedIps: FULL, name }),
      fetch: [url(tb)],
      then: 'wait',
    }, { tmp, env })
    assert.equal((await A.a.next('fetch')).ok, true)
    await A.a.next('waiting')
    const B = await connected(r, privateWg(tbB), {
      config: tbB.tunnelConfig(0, { allowedIps: FULL, name }),
      fetch: [url(tbB)],
      fetchLoop: { url: url(tbB), everyMs: 20, maxMs: 30_000 },
      then: 'disconnect',
    }, { tmp, env })
    assert.equal(B.info.name, name)
    assert.equal(B.info.backend, backend)
    assert.equal(JSON.parse((await B.a.next('fetch')).body).client, '10.8.0.2')
    await B.a.next('fetch-loop-started')

    // Each namespace has its own record, naming its own owner and namespace.
    assert.notEqual(stateDir(tb), stateDir(tbB))
    assert.equal(record(tb, name)?.pid, String(A.a.child.pid))
    assert.equal(record(tb, name).netns, String(nsInode(tb)))
    assert.equal(record(tbB, name)?.pid, String(B.a.child.pid))
    assert.equal(record(tbB, name).netns, String(nsInode(tbB)))
    const resolvA = fs.readFileSync(resolvConfPath(tb), 'utf8')
    const resolvB = fs.readFileSync(resolvConfPath(tbB), 'utf8')
    assert.match(resolvA, /^nameserver 10\.8\.0\.1$/m)
    assert.match(resolvB, /^nameserver 10\.8\.0\.1$/m)
    const indexB = await ifindex(tbB, name)
    // Each namespace has its own key file (wg-quick; the embedded backend writes none), and B's
    // connect found nothing to replace.
    const keyFiles = backend === 'wg-quick'
    assert.equal(B.info.replacedStale, false, "B's connect replaced something in a namespace where nothing was")
    const holds = (file, key) => fs.existsSync(file) && fs.readFileSync(file, 'utf8').includes(key)
    if (keyFiles) {
      assert.notEqual(A.info.configPath, B.info.configPath)
      assert.ok(holds(A.info.configPath, tb.clients[clientBase(backend, SPARE)].privateKey), "A's key file was removed or overwritten by B's connect")
    } else {
      assert.equal(A.info.configPath, undefined)
      assert.equal(B.info.configPath, undefined)
    }
    await sleep(200)

    const t0 = performance.now()
    A.a.child.kill('SIGKILL')
    // Namespace A: nothing of the tunnel left (its key dir is B's too: it is checked below).
    const w = await waitClean(tb, { t0, boundMs: 3000, names: [name], tmp: r.tmp(), original, files: 'named' })
    t.diagnostic(`A SIGKILLed -> A's namespace clean in ${w.ms.toFixed(1)} ms`)
    assert.ok(w.clean, `A's namespace not clean after ${w.ms.toFixed(0)} ms: ${w.problems.join('; ')}`)
    assert.ok(w.ms < 1000, `took ${w.ms.toFixed(0)} ms`)
    assert.equal(fs.readFileSync(resolvConfPath(tb), 'utf8'), original, "A's resolv.conf is not its original")
    assert.equal(procGone(A.info.watchdogPid), true)

    // Namespace B: untouched.
    await sleep(200)
    assert.equal(await ifindex(tbB, name), indexB, "B's interface was replaced or removed")
    assert.equal(fs.readFileSync(resolvConfPath(tbB), 'utf8'), resolvB, "B's resolv.conf was changed")
    assert.equal(record(tbB, name)?.pid, String(B.a.child.pid), "B's record was removed")
    assert.equal(procGone(B.info.watchdogPid), false, "B's watchdog was stopped")
    const http = await httpFrom(tbB, url(tbB))
    assert.equal(http.client, '10.8.0.2', `B does not reach the node through its tunnel: ${JSON.stringify(http)}`)
    assert.equal(await resolveFrom(tbB), tbB.dnsAnswer, "B's tunnel DNS does not answer")
    if (keyFiles) assert.ok(holds(B.info.configPath, tbB.clients[0].privateKey), "B's key file was removed by A's watchdog")

    B.a.child.kill('SIGUSR2')
    const loop = await B.a.next('fetch-loop')
    t.diagnostic(`B's fetch loop: ${loop.count} fetches over ${loop.durationMs} ms, ${loop.failures.length} failed, longest gap ${loop.maxGapMs} ms`)
    assert.deepEqual(loop.failures, [], "B's traffic was interrupted")
    const disc = await B.a.next('disconnected')
    assert.equal(disc.report.gone, true, JSON.stringify(disc.report))
    assert.equal((await B.a.exited).status, 0)
    await assertClean(tbB, name, tmp, originalB)
    await assertClean(tb, name, tmp, original)
    assert.ok(fs.readFileSync(resolvConfPath(tbB)).equals(Buffer.from(originalB)))
  })
}

/**
 * 4c: two full tunnels (with DNS) of two agents in one namespace; `first` of them is
 * disconnected while the other stays up.
 */
async function twoFullTunnels(t, order, backend) {
  const r = reaper(t)
  const tmps = [r.tmp(), r.tmp()]
  const names = [`${tb.prefix}f1`, `${tb.prefix}f2`]
  const dns = [['10.8.0.1', '1.1.1.1'], ['10.8.0.1']] // A: the default; B: its own, so resolv.conf tells them apart
  const base = clientBase(backend, SPARE)
  const ags = []
  for (const i of [0, 1]) {
    const config = tb.tunnelConfig(base + i, { allowedIps: FULL, name: names[i], ...(i === 1 ? { dns: dns[1] } : {}) })
    const c = await connected(r, tb, { config, then: 'disconnect-on-sigusr2' }, { tmp: tmps[i], env: { BLUE_WG_BACKEND: backend } })
    assert.deepEqual(c.info.dns, dns[i])
    assert.equal(c.info.fullTunnel, true)
    assert.equal(c.info.backend, backend)
    await c.a.next('waiting')
    ags.push(c)
  }
  // Each tunnel's fwmark (= its table): wg-quick's from the device (`wg show`); the embedded
  // device has no UAPI socket, its table is in its record.
  const marks = []
  for (const n of names) {
    if (backend === 'embedded') {
      const table = Number(record(tb, n)?.table)
      assert.ok(table > 0, `${n}: no table in its record`)
      marks.push(`0x${table.toString(16)}`)
      continue
    }
    const m = await tb.execCli('wg', ['show', n, 'fwmark'])
    assert.equal(m.code, 0, m.stderr)
    marks.push(m.stdout.trim())
  }
  assert.notEqual(marks[0], marks[1])
  const [gone, stays] = order === 'second first' ? [1, 0] : [0, 1]
  const index = await ifindex(tb, names[stays])

  ags[gone].a.child.kill('SIGUSR2')
  assert.equal((await ags[gone].a.next('disconnected')).report.gone, true)
  assert.equal((await ags[gone].a.exited).status, 0)
  assert.equal(await linkExists(tb, names[gone]), false)
  assert.deepEqual(stateFiles(tb, names[gone]), [])

  // The other one: interface, policy rules, DNS and traffic as before.
  assert.equal(await ifindex(tb, names[stays]), index)
  const mark = marks[stays]
  const table = Number(mark)
  const ipRules = await rules(tb)
  for (const fam of ['-4', '-6']) {
    assert.match(ipRules[fam], new RegExp(`not from all fwmark ${mark} lookup ${table}\\b`), `${names[stays]}'s fwmark rule (${fam}) is gone:\n${ipRules[fam]}`)
    assert.match(ipRules[fam], /from all lookup main suppress_prefixlength 0/, `the suppress_prefixlength rule (${fam}) is gone:\n${ipRules[fam]}`)
    assert.doesNotMatch(ipRules[fam], new RegExp(`fwmark ${marks[gone]} lookup ${Number(marks[gone])}\\b`), `${names[gone]}'s rule (${fam}) is left:\n${ipRules[fam]}`)
  }
  const resolv = fs.readFileSync(resolvConfPath(tb), 'utf8')
  const servers = resolv.split('\n').filter((l) => l.startsWith('nameserver ')).map((l) => l.slice('nameserver '.length))
  assert.deepEqual(servers, dns[stays], `resolv.conf does not show ${names[stays]}'s DNS:\n${resolv}`)
  assert.equal(await resolveFrom(tb), tb.dnsAnswer)
  const http = await httpFrom(tb, url())
  assert.equal(http.client, `10.8.0.${base + stays + 2}`, `not through ${names[stays]}: ${JSON.stringify(http)}`)
  assert.equal(http.served_by, tb.httpTunnelHost)

  ags[stays].a.child.kill('SIGUSR2')
  assert.equal((await ags[stays].a.next('disconnected')).report.gone, true)
  assert.equal((await ags[stays].a.exited).status, 0)
  for (const i of [0, 1]) await assertClean(tb, names[i], tmps[i], original)
  assert.ok(fs.readFileSync(resolvConfPath(tb)).equals(Buffer.from(original)), 'resolv.conf is not byte-identical to the original')
}

for (const backend of BACKENDS) {
  test(`4c: two full tunnels with DNS in one namespace: disconnecting the second leaves the first its rules, DNS and traffic; then all clean (${backend})`, (t) =>
    twoFullTunnels(t, 'second first', backend))

  test(`4c: two full tunnels with DNS in one namespace: disconnecting the first leaves the second its rules, DNS and traffic; then all clean (${backend})`, (t) =>
    twoFullTunnels(t, 'first first', backend))
}

// ------------------------------------------------------------------------------ finding 6

for (const backend of BACKENDS) {
  test(`6: the watchdog SIGKILLed, then disconnect(): gone true, nothing left (${backend})`, async (t) => {
    const r = reaper(t)
    const tmp = r.tmp()
    const name = `${tb.prefix}w`
    const base = clientBase(backend, SPARE)
    const { a, info } = await connected(r, tb, {
      config: tb.tunnelConfig(base, { allowedIps: FULL, name }),
      fetch: [url()],
      then: 'disconnect-on-sigusr2',
    }, { tmp, env: { BLUE_WG_BACKEND: backend } })
    assert.equal(info.backend, backend)
    assert.equal((await a.next('fetch')).ok, true)
    await a.next('waiting')
    process.kill(info.watchdogPid, 'SIGKILL')
    for (let i = 0; i < 200 && !procGone(info.watchdogPid); i++) await sleep(5)
    assert.equal(procGone(info.watchdogPid), true, 'the watchdog still runs')
    await sleep(100)
    assert.equal(await linkExists(tb, name), true, "the watchdog's death took the tunnel down")
    assert.equal((await httpFrom(tb, url())).client, `10.8.0.${base + 2}`, 'no traffic through the tunnel once its watchdog is dead')

    a.child.kill('SIGUSR2')
    const { report } = await a.next('disconnected')
    t.diagnostic(JSON.stringify(report))
    assert.equal(report.gone, true, JSON.stringify(report))
    assert.equal((await a.exited).status, 0)
    await assertClean(tb, name, tmp, original)
  })

  test(`6: the watchdog SIGKILLed, then the agent exits normally: its exit hook leaves nothing (${backend})`, async (t) => {
    const r = reaper(t)
    const tmp = r.tmp()
    const name = `${tb.prefix}w`
    const { a, info } = await connected(r, tb, {
      config: tb.tunnelConfig(clientBase(backend, SPARE), { allowedIps: FULL, name }),
      fetch: [url()],
      holdMs: 2000,
      then: 'drain',
    }, { tmp, env: { BLUE_WG_BACKEND: backend } })
    assert.equal(info.backend, backend)
    assert.equal((await a.next('fetch')).ok, true)
    process.kill(info.watchdogPid, 'SIGKILL')
    for (let i = 0; i < 200 && !procGone(info.watchdogPid); i++) await sleep(5)
    assert.equal(procGone(info.watchdogPid), true, 'the watchdog still runs')
    assert.equal(a.events.some((e) => e.event === 'draining'), false, 'the agent ended before its watchdog was killed')
    const exit = await a.exited
    assert.equal(exit.status, 0, exit.stderr)
    assert.ok(a.events.some((e) => e.event === 'draining'))
    await assertClean(tb, name, tmp, original)
  })
}

// ------------------------------------------------------------------------------ finding 7

/** A `wg-quick` stand-in that holds `up` until the test writes a line to $BW_SHIM_DIR/release
 *  (a FIFO: the wait starts no process), then runs the real one. */
const HOLD_UP_SHIM = `#!/bin/sh
if [ "$1" = up ]; then
  : > "$BW_SHIM_DIR/started"
  read -r _ < "$BW_SHIM_DIR/release"
fi
exec /usr/bin/wg-quick "$@"
`

/** The embedded backend runs no program but the watchdog: a watchdog stand-in
 *  (BLUE_WG_WATCHDOG_PATH) that holds its start the same way, so the connect waits for its
 *  READY (after bringing the tunnel up, before it returns), then runs the real one. */
const HOLD_WATCHDOG_SHIM = `#!/bin/sh
: > "$BW_SHIM_DIR/started"
read -r _ < "$BW_SHIM_DIR/release"
exec "$BW_REAL_WATCHDOG" "$@"
`

/**
 * 7: agent A is SIGSTOPped `when` 'connected' (idle, holding its tunnel's lock) or
 * 'connecting' (inside its connect, holding every lock a connect takes: blocked in
 * `wg-quick up`, or for the embedded backend waiting for its watchdog's READY). While it is
 * stopped, nobody waits for it; its tunnel (or its connect) is left alone; once resumed it
 * finishes and disconnects cleanly.
 */
async function stoppedOwner(t, when, backend) {
  // A stand-in still holding (the test failed before releasing it) is released before the
  // reaper's hook runs (hooks run in the order they were added), so it never stays behind.
  let release = () => {}
  t.after(() => release())
  const r = reaper(t)
  // One TMPDIR for every process here, as agents on one host share /tmp (and so shared the
  // config dir and its lock before issue 7).
  const tmpA = r.tmp()
  const nameA = `${tb.prefix}p`
  const base = clientBase(backend, SPARE)
  const backendEnv = { BLUE_WG_BACKEND: backend }
  let env = backendEnv
  let shim
  if (when === 'connecting') {
    shim = r.tmp()
    const fifo = path.join(shim, 'release')
    const mk = spawnSync('mkfifo', ['-m', '600', fifo])
    assert.equal(mk.status, 0, String(mk.stderr))
    release = () => {
      try {
        // Non-blocking: fails (ENXIO) unless the stand-in is waiting on it.
        const fd = fs.openSync(fifo, fs.constants.O_WRONLY | fs.constants.O_NONBLOCK)
        fs.writeSync(fd, 'go\n')
        fs.closeSync(fd)
      } catch {}
    }
    if (backend === 'wg-quick') {
      fs.writeFileSync(path.join(shim, 'wg-quick'), HOLD_UP_SHIM, { mode: 0o755 })
      env = { ...backendEnv, PATH: `${shim}:${process.env.PATH}`, BW_SHIM_DIR: shim }
    } else {
      fs.writeFileSync(path.join(shim, 'blue-wg-watchdog'), HOLD_WATCHDOG_SHIM, { mode: 0o755 })
      env = {
        ...backendEnv,
        BLUE_WG_WATCHDOG_PATH: path.join(shim, 'blue-wg-watchdog'),
        BW_REAL_WATCHDOG: path.join(REPO, 'blue-wg-watchdog'),
        BW_SHIM_DIR: shim,
      }
    }
  }
  const A = r.agent(startAgent(tb, {
    config: tb.tunnelConfig(base, { allowedIps: ['10.8.0.1/32'], name: nameA }),
    fetch: ['http://10.8.0.1/'],
    progress: true,
    then: 'disconnect-on-sigusr2',
  }, { tmp: tmpA, env }))
  const pidA = A.child.pid
  let indexA = null
  if (when === 'connected') {
    await A.next('waiting', 30_000)
    assert.equal(A.events.find((e) => e.event === 'fetch').ok, true)
    indexA = await ifindex(tb, nameA)
  } else {
    const held = backend === 'wg-quick' ? 'wg-quick up' : 'its watchdog start'
    for (let i = 0; i < 1000 && !fs.existsSync(path.join(shim, 'started')); i++) await sleep(10)
    assert.ok(fs.existsSync(path.join(shim, 'started')), `A never reached ${held}: ${JSON.stringify(A.events)}`)
    if (backend === 'embedded') {
      // The watchdog starts first and is waited for last: A is held once its tunnel is up.
      const up = () => A.events.some((e) => e.event === 'progress' && e.step === 'kernel-ready')
      for (let i = 0; i < 500 && !up(); i++) await sleep(10)
      assert.ok(up(), `A never brought its tunnel up: ${JSON.stringify(A.events)}`)
    }
    assert.equal(A.events.some((e) => e.event === 'connected'), false)
  }
  process.kill(pidA, 'SIGSTOP')
  t.after(() => {
    try {
      process.kill(pidA, 'SIGCONT')
    } catch {}
  })
  for (let i = 0; i < 200 && procState(pidA) !== 'T'; i++) await sleep(5)
  assert.equal(procState(pidA), 'T', 'A is not stopped')
  // Stopped inside its connect, the embedded backend has made its tun (held at the watchdog's
  // READY), wg-quick none yet (held before `wg-quick up`): it must stay as it is.
  if (when === 'connecting') {
    indexA = await ifindex(tb, nameA)
    assert.equal(indexA !== null, backend === 'embedded', `A's interface: ${indexA}`)
  }
  const recA = record(tb, nameA)
  assert.equal(recA?.pid, String(pidA), "A's record")
  r.watchdog(Number(recA.watchdog_pid))
  // A's processes (itself, its watchdog, its wireguard-go or the held wg-quick) may stay.
  const keepPids = nsProcesses(tb).map((p) => p.pid)
  t.diagnostic(`A (pid ${pidA}) stopped ${when}; its processes: ${nsProcesses(tb).map((p) => p.comm).join(', ')}`)

  // Another agent connects and disconnects another name, as fast as ever.
  const tmpB = tmpA
  const nameB = `${tb.prefix}q`
  let t0 = performance.now()
  const b = await runAgent(tb, { config: tb.tunnelConfig(base + 1, { allowedIps: [`${tb.httpTunnelHost}/32`], name: nameB }), fetch: [url()], then: 'disconnect' }, { tmp: tmpB, env: backendEnv })
  const msB = performance.now() - t0
  t.diagnostic(`B: spawn, connect, GET, disconnect, exit in ${msB.toFixed(0)} ms`)
  assert.equal(b.event('connected')?.info.name, nameB, JSON.stringify(b.events))
  assert.equal(JSON.parse(b.event('fetch').body).client, `10.8.0.${base + 3}`)
  assert.equal(b.event('disconnected').report.gone, true)
  assert.equal(b.exit.status, 0, b.exit.stderr)
  assert.ok(msB < 5000, `B took ${msB.toFixed(0)} ms`)
  let c = await waitClean(tb, { boundMs: 3000, names: [nameB], tmp: tmpB, original, files: 'named', keepPids })
  assert.ok(c.clean, c.problems.join('; '))

  // A process that only loads the addon exits at once.
  t0 = performance.now()
  const load = await runProbe(tb, [{ id: 'l', op: 'load' }], { tmp: tmpA })
  const msLoad = performance.now() - t0
  t.diagnostic(`a process that only loads the addon: started, loaded, exited in ${msLoad.toFixed(0)} ms`)
  assert.ok(load.byId.get('l').call.value.includes('connect'))
  assert.equal(load.code, 0)
  assert.ok(msLoad < 1000, `took ${msLoad.toFixed(0)} ms`)

  // emergencyCleanupSync() returns at once and leaves the stopped agent's tunnel alone.
  t0 = performance.now()
  const em = await runProbe(tb, [{ id: 'e', op: 'emergency' }], { tmp: tmpA })
  const msEm = performance.now() - t0
  const e = em.byId.get('e')
  t.diagnostic(`emergencyCleanupSync(): ${(e.nsEach[0] / 1e6).toFixed(2)} ms in the call, ${msEm.toFixed(0)} ms for the whole process`)
  assert.deepEqual(e.values, [{ removed: [], warnings: [] }])
  assert.ok(e.nsEach[0] < 200e6, `the call took ${(e.nsEach[0] / 1e6).toFixed(0)} ms`)
  assert.ok(msEm < 1000, `the process took ${msEm.toFixed(0)} ms`)
  assert.equal(await ifindex(tb, nameA), indexA, "the stopped agent's tunnel was removed or replaced (or created)")
  assert.deepEqual(record(tb, nameA), recA, "the stopped agent's record was changed or removed")

  // An agent SIGKILLed meanwhile is cleaned by its watchdog within 1 s.
  const tmpC = tmpA
  const nameC = `${tb.prefix}r`
  const C = await connected(r, tb, { config: tb.tunnelConfig(base + 2, { allowedIps: [`${tb.httpTunnelHost}/32`], name: nameC }), fetch: [url()], then: 'wait' }, { tmp: tmpC, env: backendEnv })
  assert.equal(JSON.parse((await C.a.next('fetch')).body).client, `10.8.0.${base + 4}`)
  await C.a.next('waiting')
  t0 = performance.now()
  C.a.child.kill('SIGKILL')
  c = await waitClean(tb, { t0, boundMs: 3000, names: [nameC], tmp: tmpC, original, files: 'named', keepPids })
  t.diagnostic(`C SIGKILLed -> clean in ${c.ms.toFixed(1)} ms (A still stopped)`)
  assert.ok(c.clean, `not clean after ${c.ms.toFixed(0)} ms: ${c.problems.join('; ')}`)
  assert.ok(c.ms < 1000, `took ${c.ms.toFixed(0)} ms`)

  // A resumes: it finishes what it was doing, its tunnel works, and it disconnects cleanly.
  assert.equal(procState(pidA), 'T')
  process.kill(pidA, 'SIGCONT')
  if (when === 'connecting') fs.writeFileSync(path.join(shim, 'release'), 'go\n')
  const info = (await A.next('connected', 30_000)).info
  assert.equal(info.name, nameA)
  assert.equal(info.backend, backend)
  await A.next('waiting')
  assert.equal(A.events.find((ev) => ev.event === 'fetch').ok, true)
  if (indexA !== null) assert.equal(await ifindex(tb, nameA), indexA)
  assert.equal((await httpFrom(tb, 'http://10.8.0.1/')).client, `10.8.0.${base + 2}`)
  A.child.kill('SIGUSR2')
  assert.equal((await A.next('disconnected')).report.gone, true)
  assert.equal((await A.exited).status, 0)
  await assertClean(tb, nameA, tmpA, original)
}

for (const backend of BACKENDS) {
  test(`7: an agent SIGSTOPped with its tunnel up stalls nobody, and its tunnel is left alone (${backend})`, (t) =>
    stoppedOwner(t, 'connected', backend))

  test(`7: an agent SIGSTOPped inside its connect (holding every lock a connect takes) stalls nobody (${backend})`, (t) =>
    stoppedOwner(t, 'connecting', backend))
}

// ------------------------------------------------------------------------------ finding 8e

for (const backend of BACKENDS) {
  test(`8e: the config dir removed under a full tunnel with DNS, then its owner SIGKILLed (no watchdog): a later emergencyCleanupSync() restores everything (${backend})`, async (t) => {
    const r = reaper(t)
    const tmp = r.tmp()
    const name = `${tb.prefix}e`
    const A = await connected(r, tb, {
      config: tb.tunnelConfig(clientBase(backend, SPARE), { allowedIps: FULL, name }),
      fetch: [url()],
      then: 'wait',
    }, { tmp, env: { BLUE_WG_NO_WATCHDOG: '1', BLUE_WG_BACKEND: backend } })
    assert.equal(A.info.watchdogPid, undefined)
    assert.equal(A.info.backend, backend)
    assert.equal((await A.a.next('fetch')).ok, true)
    await A.a.next('waiting')
    assert.match(fs.readFileSync(resolvConfPath(tb), 'utf8'), /^nameserver 10\.8\.0\.1$/m)
    // As tmpfiles aging (or a tidy-up script) would: the whole private dir goes.
    fs.rmSync(path.join(tmp, 'sentinel-wg'), { recursive: true, force: true })
    A.a.child.kill('SIGKILL')
    assert.equal((await A.a.exited).signal, 'SIGKILL')
    // What the killed owner left: its rules, the tunnel DNS, and with wg-quick the interface
    // (the embedded backend's tun dies with its owner).
    const survives = backend === 'wg-quick'
    assert.equal(await linkExists(tb, name), survives)
    assert.match((await rules(tb))['-4'], /suppress_prefixlength/)
    assert.notEqual(fs.readFileSync(resolvConfPath(tb), 'utf8'), original)

    // The app starts again (same TMPDIR) and calls emergencyCleanupSync() first, as the SDK does.
    const { byId } = await runProbe(tb, [{ id: 'e', op: 'emergency' }], { tmp })
    const [e] = byId.get('e').values
    t.diagnostic(JSON.stringify(e))
    assert.deepEqual(e.warnings, [])
    assert.deepEqual(e.removed.map((r) => [r.name, r.existed, r.gone]), [[name, survives, true]])
    await assertClean(tb, name, tmp, original)
    assert.ok(fs.readFileSync(resolvConfPath(tb)).equals(Buffer.from(original)), 'resolv.conf is not byte-identical to the original')
  })
}

/**
 * 8e, where the state now lives: the namespace's state dir (records, key file, DNS state) is
 * removed while a full tunnel with DNS is up, then its owner is SIGKILLed; `meanwhile` another
 * agent connects and disconnects another name first (so the state dir exists again, without
 * the dead owner's record). Its watchdog must remove everything within 1 s.
 */
async function stateDirRemoved(t, meanwhile, backend) {
  const r = reaper(t)
  const tmp = r.tmp()
  const name = `${tb.prefix}h`
  const base = clientBase(backend, SPARE)
  const env = { BLUE_WG_BACKEND: backend }
  const A = await connected(r, tb, { config: tb.tunnelConfig(base, { allowedIps: FULL, name }), fetch: [url()], then: 'wait' }, { tmp, env })
  assert.equal(A.info.backend, backend)
  assert.equal((await A.a.next('fetch')).ok, true)
  await A.a.next('waiting')
  fs.rmSync(stateDir(tb), { recursive: true, force: true })
  if (meanwhile) {
    const nameB = `${tb.prefix}i`
    const b = await runAgent(tb, { config: tb.tunnelConfig(base + 1, { allowedIps: ['10.8.0.1/32'], name: nameB }), then: 'disconnect' }, { tmp: r.tmp(), env })
    assert.equal(b.event('disconnected')?.report.gone, true, JSON.stringify(b.events))
    assert.ok(fs.existsSync(stateDir(tb)), 'the other agent did not re-create the state dir')
  }
  assert.equal(await linkExists(tb, name), true)
  const t0 = performance.now()
  A.a.child.kill('SIGKILL')
  const w = await waitClean(tb, { t0, boundMs: 3000, names: [name], tmp, original })
  t.diagnostic(`clean ${w.clean} ${w.ms.toFixed(0)} ms after the SIGKILL${w.clean ? '' : `: ${w.problems.join('; ')}`}`)
  try {
    assert.ok(w.clean, `not clean after ${w.ms.toFixed(0)} ms: ${w.problems.join('; ')}`)
    assert.ok(w.ms < 1000, `took ${w.ms.toFixed(0)} ms`)
    await assertClean(tb, name, tmp, original)
    assert.ok(fs.readFileSync(resolvConfPath(tb)).equals(Buffer.from(original)), 'resolv.conf is not byte-identical to the original')
  } finally {
    if (!w.clean) {
      // Leave the namespace clean for the tests after this one.
      await tb.execCli('ip', ['link', 'delete', 'dev', name])
      fs.writeFileSync(resolvConfPath(tb), original)
      for (const f of ['-4', '-6']) {
        for (const rule of [['not', 'fwmark', '51820', 'table', '51820'], ['table', 'main', 'suppress_prefixlength', '0']]) {
          await tb.execCli('ip', [f, 'rule', 'delete', ...rule])
        }
      }
      await tb.execCli('nft', ['delete', 'table', 'ip', `wg-quick-${name}`])
      await tb.execCli('nft', ['delete', 'table', 'ip6', `wg-quick-${name}`])
    }
  }
}

for (const backend of BACKENDS) {
  test(`8e: the namespace's state dir removed under a full tunnel with DNS, then its owner SIGKILLed: its watchdog removes everything within 1 s (${backend})`, (t) =>
    stateDirRemoved(t, false, backend))

  test(`8e: the state dir removed under a full tunnel with DNS, re-created by another agent, then its owner SIGKILLed: its watchdog removes everything within 1 s (${backend})`,
    (t) => stateDirRemoved(t, true, backend))
}

/** After a TMPDIR-gone case: the agent is dead; a start-up cleanup (with a TMPDIR that exists)
 *  removes what it left, so the tests after it start clean. */
async function sweepAfter(r, a, name) {
  await killAgent(a)
  await runProbe(tb, [{ id: 'e', op: 'emergency' }], { tmp: r.tmp() })
  const w = await waitClean(tb, { boundMs: 3000, names: [name], tmp: r.tmp(), original, files: 'named' })
  assert.ok(w.clean, `the sweep left: ${w.problems.join('; ')}`)
}

for (const backend of BACKENDS) {
  test(`8e: the agent's whole TMPDIR removed under a full tunnel with DNS: disconnect() still removes everything (${backend})`, async (t) => {
    const r = reaper(t)
    const tmp = r.tmp()
    const name = `${tb.prefix}g`
    const A = await connected(r, tb, { config: tb.tunnelConfig(clientBase(backend, SPARE), { allowedIps: FULL, name }), fetch: [url()], then: 'disconnect-on-sigusr2' }, { tmp, env: { BLUE_WG_BACKEND: backend } })
    assert.equal(A.info.backend, backend)
    assert.equal((await A.a.next('fetch')).ok, true)
    await A.a.next('waiting')
    fs.rmSync(tmp, { recursive: true, force: true })
    try {
      A.a.child.kill('SIGUSR2')
      const { report } = await A.a.next('disconnected')
      t.diagnostic(JSON.stringify(report))
      assert.equal(report.gone, true, JSON.stringify(report))
      assert.equal((await A.a.exited).status, 0)
      const w = await waitClean(tb, { boundMs: 1000, names: [name], tmp, original, files: 'named' })
      assert.ok(w.clean, w.problems.join('; '))
    } finally {
      await sweepAfter(r, A.a, name)
    }
  })

  test(`8e: the agent's whole TMPDIR removed under a full tunnel with DNS, then the agent SIGKILLed: its watchdog removes everything within 1 s (${backend})`, async (t) => {
    const r = reaper(t)
    const tmp = r.tmp()
    const name = `${tb.prefix}g`
    const A = await connected(r, tb, { config: tb.tunnelConfig(clientBase(backend, SPARE), { allowedIps: FULL, name }), fetch: [url()], then: 'wait' }, { tmp, env: { BLUE_WG_BACKEND: backend } })
    assert.equal(A.info.backend, backend)
    assert.equal((await A.a.next('fetch')).ok, true)
    await A.a.next('waiting')
    fs.rmSync(tmp, { recursive: true, force: true })
    try {
      const t0 = performance.now()
      A.a.child.kill('SIGKILL')
      const w = await waitClean(tb, { t0, boundMs: 3000, names: [name], tmp, original, files: 'named' })
      t.diagnostic(`clean ${w.clean} after ${w.ms.toFixed(0)} ms: ${w.problems.join('; ')}`)
      assert.ok(w.clean, w.problems.join('; '))
      assert.ok(w.ms < 1000, `took ${w.ms.toFixed(0)} ms`)
    } finally {
      await sweepAfter(r, A.a, name)
    }
  })
}

'use strict'
// Issue 4: a tunnel never outlives its owner. Ownership records, the per-tunnel watchdog that
// cleans up after a SIGKILLed owner, owner-aware sweeps, `name: 'auto'` for many agents, and
// WG_NAME_IN_USE between live processes. The addon only runs in agents and probes inside the
// testbed's cli namespace; this process observes from outside (see helpers.js).
const { test, before, after } = require('node:test')
const assert = require('node:assert/strict')
const { spawn, spawnSync } = require('node:child_process')
const fs = require('node:fs')
const path = require('node:path')

const testbed = require('../testbed')
const {
  tmpdir, startAgent, assertClean, resolvConfPath, sleep, procGone, procStartTime, procStatus,
  nsProcesses, ifindex, waitClean, renderRecord, parseRecord, killAgent, stateDir, stateFiles,
  BACKENDS, clientBase,
} = require('./helpers')
const { runProbe } = require('./fixtures/probe-run.js')

const FULL = ['0.0.0.0/0', '::/0']
const PROBE_PY = path.join(__dirname, '..', 'testbed', 'probe.py')
let tb
let original
let cliNetns

before(async () => {
  // 'auto' picks wgsentN: let down() remove their stale wireguard-go sockets.
  // Clients 2 and 3: the second backend's keys (helpers.clientBase).
  tb = await testbed.up({ nclients: 4, clientIfnames: ['wgsent0', 'wgsent1', 'wgsent2'] })
  original = fs.readFileSync(resolvConfPath(tb), 'utf8')
  // The namespace id the addon stores in records: /proc/self/ns/net of a process inside.
  const r = await tb.execCli('stat', ['-L', '-c', '%i', '/proc/self/ns/net'])
  assert.equal(r.code, 0, r.stderr)
  cliNetns = r.stdout.trim()
})
after(() => tb && tb.down())

const url = () => `http://${tb.httpTunnelHost}/`

/** Start an agent, killed in t.after if still alive; resolves once it has connected. */
async function connected(t, plan, opts) {
  const a = startAgent(tb, plan, opts)
  t.after(() => killAgent(a))
  const ev = await a.next('connected', 30_000)
  return { a, info: ev.info }
}

/** The cli namespace's state dir (records, locks, key files, DNS state) as the addon makes it
 *  (0700, root's, every level), for a test that plants files there; returns its path. */
function makeStateDir() {
  const dir = stateDir(tb)
  for (const d of [path.dirname(dir), dir]) {
    if (fs.existsSync(d)) continue
    fs.mkdirSync(d, { mode: 0o700 })
    fs.chmodSync(d, 0o700)
  }
  return dir
}

/** The files of tunnel `name` in the state dir (and the namespace's saved resolv.conf). */
function stateListing(name) {
  let all = []
  try {
    all = fs.readdirSync(stateDir(tb))
  } catch {}
  return all.filter((f) => f.startsWith(`${name}.`) || f === 'resolv.orig').sort()
}

for (const backend of BACKENDS) {
  test(`watchdog: a SIGKILLed owner leaves nothing behind within 1 s, without a new process (${backend})`, async (t) => {
    const tmp = tmpdir(t)
    const name = `${tb.prefix}c`
    const { a, info } = await connected(t, {
      config: tb.tunnelConfig(clientBase(backend, 2), { allowedIps: FULL, name }),
      fetch: [url()],
      then: 'wait',
    }, { tmp, env: { BLUE_WG_BACKEND: backend } })
    assert.equal(info.backend, backend)
    assert.equal((await a.next('fetch')).ok, true)
    await a.next('waiting')
    // What there is to clean: DNS, rules, key file (wg-quick only), record, the watchdog. The
    // key file, the record, the lock, the tunnel's DNS entry and the saved original resolv.conf
    // are in the namespace's state dir (not in TMPDIR).
    assert.match(fs.readFileSync(resolvConfPath(tb), 'utf8'), /nameserver 10\.8\.0\.1/)
    const dir = stateDir(tb)
    const keyFile = backend === 'wg-quick' ? path.join(dir, `${name}.conf`) : undefined
    assert.deepEqual(stateListing(name), [...(keyFile ? [`${name}.conf`] : []), `${name}.dns`, `${name}.lock`, `${name}.owner`, 'resolv.orig'])
    assert.equal(info.configPath, keyFile)
    const rec = parseRecord(fs.readFileSync(path.join(stateDir(tb), `${name}.owner`), 'utf8'))
    assert.equal(rec.pid, String(a.child.pid))
    assert.equal(rec.watchdog_pid, String(info.watchdogPid))
    assert.equal(rec.netns, cliNetns)
    assert.match(rec.netns_cookie, /^[1-9]\d*$/, 'the record names the namespace by its cookie too')
    assert.equal(rec.backend, backend)
    assert.equal(rec.conf_path, keyFile ?? '')
    assert.equal(procGone(info.watchdogPid), false)

    const t0 = performance.now()
    a.child.kill('SIGKILL')
    const r = await waitClean(tb, { t0, boundMs: 3000, names: [name], tmp, original })
    t.diagnostic(`SIGKILL -> clean state: ${r.ms.toFixed(1)} ms`)
    const seen = { ...r.seen, node: (r.seen.node || []).filter((p) => p !== a.child.pid) }
    if (!seen.node.length) delete seen.node
    t.diagnostic(`processes met in the namespace meanwhile (the dead owner aside): ${JSON.stringify(seen)}`)
    assert.ok(r.clean, `not clean after ${r.ms.toFixed(0)} ms: ${r.problems.join('; ')}`)
    assert.ok(r.ms < 1000, `took ${r.ms.toFixed(0)} ms`)
    // Only the watchdog and what it runs did the work: no process of the app (node) started.
    assert.deepEqual(seen.node, undefined, 'a node process ran in the namespace')
    assert.equal((await a.exited).signal, 'SIGKILL')
    assert.equal(procGone(info.watchdogPid), true, 'the watchdog exits after cleaning')
    await assertClean(tb, name, tmp, original)
  })
}

test('watchdog: a separate small process while up, gone right after a normal disconnect', async (t) => {
  const tmp = tmpdir(t)
  const name = `${tb.prefix}c`
  const { a, info } = await connected(t, {
    config: tb.tunnelConfig(0, { allowedIps: FULL, name }),
    then: 'disconnect-on-sigusr2',
  }, { tmp })
  await a.next('waiting')
  const wd = info.watchdogPid
  assert.equal(typeof wd, 'number')
  assert.notEqual(wd, a.child.pid)
  assert.equal(procGone(wd), false)
  assert.equal(procStatus(wd, 'PPid'), String(a.child.pid), 'the owner started it')
  assert.match(fs.readFileSync(`/proc/${wd}/cmdline`, 'utf8').split('\0')[0], /blue-wg-watchdog$/)
  const rssKb = Number(procStatus(wd, 'VmRSS').split(/\s+/)[0])
  const ticks = () => {
    const f = fs.readFileSync(`/proc/${wd}/stat`, 'utf8').slice(fs.readFileSync(`/proc/${wd}/stat`, 'utf8').lastIndexOf(')') + 2).split(' ')
    return Number(f[11]) + Number(f[12]) // utime + stime
  }
  const before = ticks()
  await sleep(500)
  const idleTicks = ticks() - before
  t.diagnostic(`watchdog pid ${wd}: VmRSS ${rssKb} kB (${(rssKb / 1024).toFixed(2)} MB); CPU over 500 ms idle: ${idleTicks} ticks; state ${procStatus(wd, 'State')}`)
  assert.ok(rssKb < 10 * 1024, `watchdog RSS ${rssKb} kB`)
  assert.ok(idleTicks <= 1, `the idle watchdog used ${idleTicks} ticks`)

  a.child.kill('SIGUSR2')
  const ev = await a.next('disconnected')
  // Checked at once: the disconnect resolved only after the watchdog was gone.
  assert.equal(procGone(wd), true, `watchdog ${wd} still runs after disconnect (${procStatus(wd, 'State')})`)
  assert.equal(ev.report.gone, true)
  assert.equal((await a.exited).status, 0)
  await assertClean(tb, name, tmp, original)
})

for (const backend of BACKENDS) {
  test(`two live agents with name 'auto': one is SIGKILLed, the other's tunnel passes traffic throughout (${backend})`, async (t) => {
    const tmp = tmpdir(t) // one TMPDIR for both (their records are the namespace's either way)
    const env = { BLUE_WG_BACKEND: backend }
    const c = clientBase(backend, 2)
    // Split tunnels with distinct routes (two /32 routes to one host on two links would clash).
    const A = await connected(t, {
      config: tb.tunnelConfig(c, { allowedIps: ['10.8.0.1/32'], name: 'auto' }),
      fetch: ['http://10.8.0.1/'],
      then: 'wait',
    }, { tmp, env })
    assert.equal(A.info.name, 'wgsent0')
    assert.equal(A.info.backend, backend)
    assert.equal(JSON.parse((await A.a.next('fetch')).body).client, `10.8.0.${c + 2}`)
    const B = await connected(t, {
      config: tb.tunnelConfig(c + 1, { allowedIps: [`${tb.httpTunnelHost}/32`], name: 'auto' }),
      fetch: [url()],
      fetchLoop: { url: url(), everyMs: 20, maxMs: 30_000 },
      then: 'disconnect',
    }, { tmp, env })
    assert.equal(B.info.name, 'wgsent1')
    assert.equal(JSON.parse((await B.a.next('fetch')).body).client, `10.8.0.${c + 3}`)
    await B.a.next('fetch-loop-started')
    const indexB = await ifindex(tb, 'wgsent1')
    assert.ok(indexB > 0)
    const wgGoB = nsProcesses(tb).filter((p) => /wireguard-go.*wgsent1/.test(p.cmdline)).map((p) => p.pid)
    const keepPids = [B.a.child.pid, B.info.watchdogPid, ...wgGoB]
    await sleep(200)

    const t0 = performance.now()
    A.a.child.kill('SIGKILL')
    const r = await waitClean(tb, { t0, boundMs: 3000, names: ['wgsent0'], files: 'named', tmp, original, keepPids })
    t.diagnostic(`A SIGKILLed -> wgsent0 and its record gone in ${r.ms.toFixed(1)} ms`)
    assert.ok(r.clean, r.problems.join('; '))
    assert.ok(r.ms < 1000, `took ${r.ms.toFixed(0)} ms`)
    assert.equal(procGone(A.info.watchdogPid), true)

    // A third process's start-up cleanup sweeps dead owners only.
    const { byId } = await runProbe(tb, [{ id: 'e', op: 'emergency', n: 1 }], { tmp })
    assert.deepEqual(byId.get('e').values, [{ removed: [], warnings: [] }])
    await sleep(200)
    assert.equal(await ifindex(tb, 'wgsent1'), indexB, "B's interface was replaced or removed")
    assert.ok(fs.existsSync(path.join(stateDir(tb), 'wgsent1.owner')), "B's record was removed")
    // The wg-quick backend's key file (the embedded backend writes none).
    if (backend === 'wg-quick') assert.ok(fs.existsSync(path.join(stateDir(tb), 'wgsent1.conf')), "B's key file was removed")
    assert.equal(procGone(B.info.watchdogPid), false, "B's watchdog was stopped")

    B.a.child.kill('SIGUSR2')
    const loop = await B.a.next('fetch-loop')
    t.diagnostic(`B's fetch loop: ${loop.count} fetches over ${loop.durationMs} ms, ${loop.failures.length} failed, longest gap between successes ${loop.maxGapMs} ms`)
    assert.deepEqual(loop.failures, [], "B's traffic was interrupted")
    assert.ok(loop.count >= 20, `only ${loop.count} fetches`)
    const disc = await B.a.next('disconnected')
    assert.equal(disc.report.gone, true)
    assert.equal((await B.a.exited).status, 0)
    await assertClean(tb, 'wgsent1', tmp, original)
    await assertClean(tb, 'wgsent0', tmp, original)
  })
}

test('explicit-name conflict: the second live process gets WG_NAME_IN_USE naming the owner pid', async (t) => {
  const tmp = tmpdir(t)
  const name = `${tb.prefix}x`
  const A = await connected(t, {
    config: tb.tunnelConfig(0, { name }),
    fetch: [url()],
    then: 'disconnect-on-sigusr2',
  }, { tmp })
  await A.a.next('waiting')
  const index = await ifindex(tb, name)

  const B = startAgent(tb, { config: tb.tunnelConfig(1, { name }), then: 'disconnect' }, { tmp })
  t.after(() => killAgent(B))
  const err = await B.next('error')
  assert.equal(err.code, 'WG_NAME_IN_USE', JSON.stringify(err))
  assert.match(err.message, new RegExp(`\\b${A.a.child.pid}\\b`), err.message)
  assert.equal((await B.exited).status, 2)

  // A is untouched and still works.
  assert.equal(await ifindex(tb, name), index)
  const rec = parseRecord(fs.readFileSync(path.join(stateDir(tb), `${name}.owner`), 'utf8'))
  assert.equal(rec.pid, String(A.a.child.pid))
  const probe = await tb.execCli('python3', [PROBE_PY, 'http', url()])
  assert.equal(probe.code, 0, probe.stderr)
  assert.equal(JSON.parse(probe.stdout).client, '10.8.0.2')
  assert.equal(procGone(A.info.watchdogPid), false)

  A.a.child.kill('SIGUSR2')
  assert.equal((await A.a.next('disconnected')).report.gone, true)
  assert.equal((await A.a.exited).status, 0)
  await assertClean(tb, name, tmp, original)
})

test('pid reuse: a record whose pid now belongs to another process (other start time) is dead', async (t) => {
  const tmp = tmpdir(t)
  const state = makeStateDir()
  const name = `${tb.prefix}r`
  const sleeper = spawn('sleep', ['30'], { stdio: 'ignore' })
  t.after(() => sleeper.kill('SIGKILL'))
  await new Promise((r) => sleeper.once('spawn', r))
  const start = procStartTime(sleeper.pid)
  const record = (startTime) => renderRecord({
    name, pid: sleeper.pid, startTime, netns: cliNetns, confPath: path.join(state, `${name}.conf`),
  })
  const ops = [
    { id: 'c', op: 'connect', args: [tb.tunnelConfig(0, { name })], undo: false },
    { id: 'f', op: 'fetch', url: url() },
    { id: 'd', op: 'disconnect', args: [name] },
  ]

  // Control: the same pid with its real start time is a live owner.
  fs.writeFileSync(path.join(state, `${name}.owner`), record(start), { mode: 0o600 })
  let { byId } = await runProbe(tb, ops.slice(0, 1), { tmp })
  const c0 = byId.get('c').call
  assert.equal(c0.ok, false, JSON.stringify(c0))
  assert.equal(c0.error.code, 'WG_NAME_IN_USE')
  assert.match(c0.error.message, new RegExp(`\\b${sleeper.pid}\\b`))
  assert.ok(fs.existsSync(path.join(state, `${name}.owner`)), "a live owner's record is kept")

  // The pid is alive, but the process is not the one that wrote the record.
  fs.writeFileSync(path.join(state, `${name}.owner`), record(start + 1), { mode: 0o600 })
  ;({ byId } = await runProbe(tb, ops, { tmp }))
  const c = byId.get('c').call
  assert.equal(c.ok, true, JSON.stringify(c))
  assert.equal(c.value.name, name)
  assert.equal(c.value.replacedStale, true)
  assert.equal(byId.get('f').ok, true, JSON.stringify(byId.get('f')))
  assert.equal(byId.get('d').call.value.gone, true)
  assert.equal(procGone(sleeper.pid), false, 'the unrelated process is left alone')
  await assertClean(tb, name, tmp, original)
})

test('the sweep: an old key file with no owner is shredded; a dead owner\'s record without an interface, and an unreadable record, are dropped', async (t) => {
  const tmp = tmpdir(t)
  const dir = makeStateDir() // key files live in the namespace's state dir, with the records
  const state = dir
  const orphan = `${tb.prefix}k` // key file, no record, a minute old
  const young = `${tb.prefix}y` // key file, no record, just written (its writer may be at work)
  const dead = `${tb.prefix}d` // record of a dead owner, no interface
  const cut = `${tb.prefix}e` // an empty record: its owner was killed inside claim, a minute ago
  const key = '[Interface]\nPrivateKey = ' + tb.clients[0].privateKey + '\n'
  const orphanConf = path.join(dir, `${orphan}.conf`)
  fs.writeFileSync(orphanConf, key, { mode: 0o600 })
  // An open descriptor shows what happened to the bytes (a hard link would make the file one
  // the addon must not write: it only zero-fills a file of ours with a single link).
  const witness = fs.openSync(orphanConf, 'r')
  t.after(() => fs.closeSync(witness))
  const minuteAgo = new Date(Date.now() - 60_000)
  fs.utimesSync(orphanConf, minuteAgo, minuteAgo)
  fs.writeFileSync(path.join(dir, `${young}.conf`), key, { mode: 0o600 })
  const deadPid = spawnSync('true').pid
  fs.writeFileSync(path.join(dir, `${dead}.conf`), key, { mode: 0o600 })
  fs.writeFileSync(path.join(state, `${dead}.owner`), renderRecord({
    name: dead, pid: deadPid, startTime: 1, netns: cliNetns, confPath: path.join(dir, `${dead}.conf`),
  }), { mode: 0o600 })

  fs.writeFileSync(path.join(state, `${cut}.owner`), '', { mode: 0o600 })
  fs.utimesSync(path.join(state, `${cut}.owner`), minuteAgo, minuteAgo)

  const { byId } = await runProbe(tb, [{ id: 'e', op: 'emergency', n: 1 }], { tmp })
  const [e] = byId.get('e').values
  assert.deepEqual(e.warnings, [], JSON.stringify(e))
  // The dead owner's tunnel had no interface: its report says so, and nothing else was removed.
  assert.deepEqual(e.removed.map((r) => [r.name, r.existed, r.gone]), [[dead, false, true]], JSON.stringify(e))
  const ours = [orphan, young, dead, cut]
  const left = fs.readdirSync(dir).filter((f) => ours.some((n) => f.startsWith(`${n}.`)) && !f.endsWith('.lock')).sort()
  assert.deepEqual(left, [`${young}.conf`], `left: ${left}`)
  for (const n of [dead, cut]) assert.deepEqual(stateFiles(tb, n), [], `the record of ${n} is still in ${state}`)
  assert.equal(fs.fstatSync(witness).nlink, 0, 'the orphan key file was not deleted')
  const bytes = Buffer.alloc(Buffer.byteLength(key) + 16)
  assert.equal(fs.readSync(witness, bytes, 0, bytes.length, 0), Buffer.byteLength(key))
  assert.ok(bytes.every((b) => b === 0), 'the orphan key file was not zero-filled before deletion')
  t.diagnostic(`swept: ${orphan}.conf (zero-filled), ${dead}.owner + ${dead}.conf, the empty ${cut}.owner; kept the fresh ${young}.conf`)
})

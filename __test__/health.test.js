'use strict'
// Issue 9: "connected" means packets flow. connect resolves only after the first handshake
// with the node, and a dead node is refused (WG_NO_CONNECTIVITY, retryable) with nothing
// left; status() reads the device's counters; a host-name endpoint resolves in-process with a
// bound; every rejection says whether a retry may help.
const { test, before, after } = require('node:test')
const assert = require('node:assert/strict')
const fs = require('node:fs')
const path = require('node:path')
const crypto = require('node:crypto')
const testbed = require('../testbed')
const { startFixture } = require('../testbed/fixtures/checks.js')
const { tmpdir, assertClean, resolvConfPath, BACKENDS, DEFAULT_BACKEND, clientBase } = require('./helpers')

const STEPS = path.join(__dirname, 'fixtures', 'steps-agent.js')
const FULL = ['0.0.0.0/0', '::/0']
/** How much slower than this host the run is (the kernel lane's TCG VM sets 10). */
const SLOW = Number(process.env.BW_TIME_FACTOR) || 1
let tb
let original

before(async () => {
  tb = await testbed.up({ nclients: 3 })
  original = fs.readFileSync(resolvConfPath(tb), 'utf8')
})
after(() => tb && tb.down())

/** Run the steps agent to its end: { events, exit, all(name), one(name) }. */
async function runSteps(t, steps, { env = {} } = {}) {
  const tmp = tmpdir(t)
  const a = startFixture(tb, STEPS, { env: { BW_STEPS: JSON.stringify(steps), ...env }, tmp })
  const exit = await a.exited
  const all = (n) => a.events.filter((e) => e.event === n)
  return { events: a.events, exit, tmp, stderr: a.stderr(), all, one: (n) => all(n)[0] }
}

/** A random valid WireGuard public key nobody holds the private key of. */
const strangerKey = () => crypto.randomBytes(32).toString('base64')

for (const backend of BACKENDS) {
  test(`${backend}: connect resolves after the first handshake; status reads the device; counters grow by a download`, async (t) => {
    const name = `${tb.prefix}h${backend[0]}`
    const client = clientBase(backend, 1)
    const r = await runSteps(t, [
      { op: 'connect', config: tb.tunnelConfig(client, { name }), options: { backend } },
      { op: 'status', name },
      { op: 'fetch', url: `http://${tb.httpTunnelHost}/bytes/1048576` },
      { op: 'status', name },
      { op: 'disconnect', name },
    ])
    const c = r.one('connected')
    assert.ok(c, JSON.stringify(r.events) + r.stderr)
    const steps = c.info.steps.map((s) => s.step)
    assert.ok(steps.indexOf('handshake') > steps.indexOf('kernel-ready'), steps.join(' '))
    assert.equal(typeof c.info.handshakeMs, 'number')
    assert.ok(c.info.handshakeMs <= c.info.connectMs, JSON.stringify(c.info))
    const [before, afterDl] = r.all('status').map((e) => e.status)
    assert.equal(before.healthy, true, JSON.stringify(before))
    assert.equal(typeof before.lastHandshakeAgoMs, 'number')
    assert.ok(before.lastHandshakeAgoMs >= 0 && before.lastHandshakeAgoMs < 10_000, JSON.stringify(before))
    assert.equal(before.endpoint, tb.endpoint)
    const dl = r.one('fetch')
    assert.equal(dl.ok, true, JSON.stringify(dl))
    assert.equal(dl.bytes, 1048576)
    assert.ok(afterDl.rxBytes - before.rxBytes >= 1048576, `rx grew by ${afterDl.rxBytes - before.rxBytes}`)
    assert.ok(afterDl.txBytes > before.txBytes)
    assert.equal(r.one('disconnected').report.gone, true)
    await assertClean(tb, name, r.tmp, original)
  })
}

for (const backend of BACKENDS) {
  test(`${backend}: without a persistent keepalive the handshake is still started and verified`, async (t) => {
    const name = `${tb.prefix}q${backend[0]}`
    const base = tb.tunnelConfig(clientBase(backend, 1), { name })
    const config = { ...base, peer: { ...base.peer, persistentKeepalive: 0 } }
    const r = await runSteps(t, [
      { op: 'connect', config, options: { backend, handshakeTimeoutMs: 3000 * SLOW } },
      { op: 'disconnect', name },
    ])
    const c = r.one('connected')
    assert.ok(c, JSON.stringify(r.events) + r.stderr)
    assert.ok(c.info.handshakeMs < 3000 * SLOW, JSON.stringify(c.info.steps))
    assert.equal(c.status.healthy, true)
    await assertClean(tb, name, r.tmp, original)
  })
}

const dead = [
  ['a wrong node key', (c) => ({ ...c, peer: { ...c.peer, publicKey: strangerKey() } })],
  ['a wrong port', (c) => ({ ...c, peer: { ...c.peer, endpoint: tb.endpoint.replace(/:\d+$/, ':51999') } })],
  ['an unreachable address', (c) => ({ ...c, peer: { ...c.peer, endpoint: '192.0.2.77:51820' } })],
]
for (const [what, mangle] of dead) {
  test(`a dead node (${what}) is refused within the timeout: WG_NO_CONNECTIVITY, retryable, full tunnel and DNS rolled back`, async (t) => {
    const name = `${tb.prefix}d`
    const config = mangle(tb.tunnelConfig(0, { name, allowedIps: FULL }))
    const r = await runSteps(t, [{ op: 'connect', config, options: { handshakeTimeoutMs: 1500 } }, { op: 'status', name }])
    const e = r.one('error')
    assert.ok(e, JSON.stringify(r.events) + r.stderr)
    assert.equal(e.code, 'WG_NO_CONNECTIVITY', e.message)
    assert.equal(e.retryable, true)
    assert.match(e.message, /no handshake .* within 1500 ms/)
    assert.ok(e.ms >= 1500 && e.ms < 1500 + 2500 * SLOW, `took ${e.ms} ms`)
    assert.equal(r.one('status').status.exists, false)
    await assertClean(tb, name, r.tmp, original)
  })
}

test('handshakeTimeoutMs: 0 does not wait (and reports no handshake time); a bad value is INVALID_OPTIONS, not retryable', async (t) => {
  const name = `${tb.prefix}z`
  const config = tb.tunnelConfig(0, { name, peer: { ...tb.tunnelConfig(0).peer, publicKey: strangerKey() } })
  const bad = [-1, 1.5, '5000', 120001].map((v) => ({ op: 'connect', config, options: { handshakeTimeoutMs: v } }))
  const r = await runSteps(t, [...bad, { op: 'connect', config, options: { handshakeTimeoutMs: 0 } }, { op: 'disconnect', name }])
  const errors = r.all('error')
  assert.equal(errors.length, bad.length, JSON.stringify(r.events))
  for (const e of errors) {
    assert.equal(e.code, 'INVALID_OPTIONS', e.message)
    assert.equal(e.retryable, false)
    assert.match(e.message, /handshakeTimeoutMs/)
  }
  const c = r.one('connected')
  assert.ok(c, JSON.stringify(r.events))
  assert.equal(c.info.handshakeMs, undefined)
  assert.ok(!c.info.steps.some((s) => s.step === 'handshake'))
  assert.equal(c.status.healthy, false, 'no handshake yet: not healthy')
  assert.equal(r.one('disconnected').report.gone, true)
  await assertClean(tb, name, r.tmp, undefined)
})

test('a host-name endpoint resolves in-process (hosts file); an unresolvable one is refused fast, not retryable, nothing left', async (t) => {
  const hosts = `/etc/netns/${tb.cliNs}/hosts`
  fs.writeFileSync(hosts, `127.0.0.1 localhost\n${tb.endpoint.split(':')[0]} node.bw-test\n`)
  t.after(() => fs.rmSync(hosts, { force: true }))
  const name = `${tb.prefix}n`
  const port = tb.endpoint.split(':')[1]
  const base = tb.tunnelConfig(0, { name })
  const r = await runSteps(t, [
    { op: 'connect', config: { ...base, peer: { ...base.peer, endpoint: `no-such-node.invalid:${port}` } } },
    { op: 'connect', config: { ...base, peer: { ...base.peer, endpoint: `node.bw-test:${port}` } } },
    { op: 'fetch', url: `http://${tb.httpTunnelHost}/` },
    { op: 'disconnect', name },
  ])
  const e = r.one('error')
  assert.ok(e, JSON.stringify(r.events))
  assert.equal(e.code, 'WG_ENDPOINT_UNRESOLVED', e.message)
  assert.equal(e.retryable, false)
  assert.match(e.message, /no-such-node\.invalid/)
  assert.ok(e.ms < 3000 + 500 * SLOW, `took ${e.ms} ms`)
  const c = r.one('connected')
  assert.ok(c, JSON.stringify(r.events) + r.stderr)
  const resolved = c.info.steps.find((s) => s.step === 'resolve')
  assert.ok(resolved, JSON.stringify(c.info.steps))
  assert.equal(c.info.endpoint, tb.endpoint)
  assert.equal(r.one('fetch').ok, true)
  assert.equal(r.one('disconnected').report.gone, true)
  await assertClean(tb, name, r.tmp, original)
})

test(`every rejection carries retryable (${DEFAULT_BACKEND})`, async (t) => {
  const r = await runSteps(t, [
    { op: 'connect', config: { privateKey: 'nope' } },
    { op: 'update', name: 'bw-none0', patch: { dns: [] } },
  ])
  const errors = r.all('error')
  assert.equal(errors.length, 2, JSON.stringify(r.events))
  for (const e of errors) assert.equal(typeof e.retryable, 'boolean', JSON.stringify(e))
  assert.equal(errors[0].retryable, false)
})

test(`update: split -> full -> split in place (${DEFAULT_BACKEND}): same interface, a keep-alive stream loses nothing, rules and DNS follow`, async (t) => {
  const tmp = tmpdir(t)
  const name = `${tb.prefix}u`
  const split = tb.tunnelConfig(0, { name }).peer.allowedIps
  const a = startFixture(tb, STEPS, {
    tmp,
    env: {
      BW_STEPS: JSON.stringify([
        { op: 'connect', config: tb.tunnelConfig(0, { name }) },
        { op: 'stream-start', url: `http://${tb.httpTunnelHost}:8080/stream`, everyMs: 5 },
        { op: 'sleep', ms: 300 },
        { op: 'update', name, patch: { allowedIps: FULL } },
        { op: 'sleep', ms: 300 },
        { op: 'pause' },
        { op: 'update', name, patch: { allowedIps: split } },
        { op: 'sleep', ms: 300 },
        { op: 'pause' },
        { op: 'stream-stop' },
        { op: 'disconnect', name },
      ]),
    },
  })
  t.after(() => a.child.exitCode === null && a.child.kill('SIGKILL'))
  const rules = async () => (await tb.execCli('ip', ['-4', 'rule', 'show'])).stdout
  const resolv = () => fs.readFileSync(resolvConfPath(tb), 'utf8')

  const c = await a.next('connected')
  assert.equal(c.info.fullTunnel, false)
  assert.equal(resolv(), original)
  const full = await a.next('updated')
  await a.next('paused')
  assert.equal(full.info.fullTunnel, true)
  assert.deepEqual(full.info.allowedIps, FULL)
  assert.deepEqual(full.info.dns, ['10.8.0.1', '1.1.1.1'], 'a full tunnel gets the default DNS')
  assert.equal(full.status.index, c.status.index, 'the interface was replaced')
  assert.match(await rules(), /not from all fwmark/)
  assert.match(resolv(), /nameserver 10\.8\.0\.1/)
  assert.ok(full.ms < 200 * SLOW, `split -> full took ${full.ms} ms`)
  a.child.kill('SIGUSR2')
  const back = (await a.waitFor((e) => e.event === 'updated' && e !== full, 'second update'))
  await a.waitFor((e) => e.event === 'paused' && a.events.filter((x) => x.event === 'paused').length === 2, 'second pause')
  assert.equal(back.info.fullTunnel, false)
  assert.equal(back.status.index, c.status.index)
  assert.doesNotMatch(await rules(), /fwmark|suppress_prefixlength/)
  assert.equal(resolv(), original, 'DNS restored when the tunnel is split again')
  a.child.kill('SIGUSR2')
  const s = await a.next('stream')
  assert.deepEqual(s.failures, [], 'requests lost across the switches')
  assert.ok(s.ok >= 15, `only ${s.ok} requests`) // ~40 ms each: the node answers in two writes (delayed ACK)
  assert.equal(s.sockets, 1, 'the keep-alive connection was dropped')
  assert.equal((await a.next('disconnected')).report.gone, true)
  await a.exited
  await assertClean(tb, name, tmp, original)
})

test('update: bad patches are refused before anything changes; a tunnel not up is WG_NOT_CONNECTED', async (t) => {
  const name = `${tb.prefix}v`
  const r = await runSteps(t, [
    { op: 'update', name, patch: { dns: [] } },
    { op: 'connect', config: tb.tunnelConfig(0, { name }) },
    { op: 'update', name, patch: { mtu: 1400 } },
    { op: 'update', name, patch: { allowedIps: ['not-a-net'] } },
    { op: 'update', name, patch: { endpoint: 'no-such-node.invalid:51820' } },
    { op: 'status', name },
    { op: 'fetch', url: `http://${tb.httpTunnelHost}/still` },
    { op: 'disconnect', name },
  ])
  const errors = r.all('error')
  assert.deepEqual(errors.map((e) => e.code), ['WG_NOT_CONNECTED', 'INVALID_OPTIONS', 'INVALID_OPTIONS', 'WG_ENDPOINT_UNRESOLVED'], JSON.stringify(errors))
  assert.ok(errors.every((e) => e.retryable === false))
  assert.match(errors[1].message, /mtu.*new connect/)
  const c = r.one('connected')
  const st = r.one('status').status
  assert.equal(st.index, c.status.index)
  assert.equal(st.healthy, true)
  assert.equal(r.one('fetch').ok, true, 'the tunnel still works after refused updates')
  assert.equal(r.one('disconnected').report.gone, true)
  await assertClean(tb, name, r.tmp, original)
})

test('update of a wg-quick tunnel is refused with WG_NOT_AVAILABLE and changes nothing', async (t) => {
  const name = `${tb.prefix}g`
  const r = await runSteps(t, [
    { op: 'connect', config: tb.tunnelConfig(clientBase('wg-quick', 1), { name }), options: { backend: 'wg-quick' } },
    { op: 'update', name, patch: { dns: [] } },
    { op: 'status', name },
    { op: 'fetch', url: `http://${tb.httpTunnelHost}/after-refusal` },
    { op: 'disconnect', name },
  ])
  const c = r.one('connected')
  assert.ok(c, JSON.stringify(r.events) + r.stderr)
  const e = r.one('error')
  assert.equal(e?.code, 'WG_NOT_AVAILABLE', JSON.stringify(e))
  assert.equal(e.retryable, false)
  const st = r.one('status').status
  assert.equal(st.index, c.status.index, 'the tunnel was taken down or replaced')
  assert.equal(r.one('fetch').ok, true)
  assert.equal(r.one('disconnected').report.gone, true)
  await assertClean(tb, name, r.tmp, original)
})

test('watch: reports a node that stops answering mid-session, its recovery, and the interface gone; it does not keep the process alive', async (t) => {
  const tmp = tmpdir(t)
  const name = `${tb.prefix}w`
  const W = SLOW > 1 ? 4 : 1 // the watch's own timings, stretched where everything is slow
  const a = startFixture(tb, STEPS, {
    tmp,
    env: {
      BW_STEPS: JSON.stringify([
        { op: 'connect', config: tb.tunnelConfig(0, { name }) },
        { op: 'watch', name, options: { intervalMs: 100, noReplyMs: 2000 * W } },
        { op: 'stream-start', url: `http://${tb.httpTunnelHost}:8080/watch`, everyMs: 20 },
        { op: 'sleep', ms: 3000 * W }, // longer than noReplyMs, with the node answering
        { op: 'pause' }, // the test drops the node's WireGuard traffic
        { op: 'sleep', ms: 4000 * W },
        { op: 'pause' }, // the test lets it through again
        { op: 'sleep', ms: 4000 * W },
        { op: 'stream-stop' },
        { op: 'disconnect', name },
        { op: 'sleep', ms: 500 },
      ]),
    },
  })
  t.after(() => a.child.exitCode === null && a.child.kill('SIGKILL'))
  const health = () => a.events.filter((e) => e.event === 'health').map((e) => e.health)
  const port = tb.endpoint.split(':')[1]
  const nft = (...args) => tb.execNode('nft', args)

  await a.next('paused', 30_000 * W)
  assert.deepEqual(health(), [], 'a healthy tunnel was reported unhealthy')
  for (const cmd of [
    ['add', 'table', 'inet', 'bwdrop'],
    ['add', 'chain', 'inet', 'bwdrop', 'in', '{ type filter hook input priority 0 ; }'],
    ['add', 'rule', 'inet', 'bwdrop', 'in', 'udp', 'dport', port, 'drop'],
    // Both ways, as a node that stopped: its retransmissions must not reach us either.
    ['add', 'chain', 'inet', 'bwdrop', 'out', '{ type filter hook output priority 0 ; }'],
    ['add', 'rule', 'inet', 'bwdrop', 'out', 'udp', 'sport', port, 'drop'],
  ]) assert.equal((await nft(...cmd)).code, 0, cmd.join(' '))
  a.child.kill('SIGUSR2')
  await a.waitFor(() => a.events.filter((e) => e.event === 'paused').length === 2, 'second pause', 30_000 * W)
  const down = health()
  assert.equal(down.length, 1, JSON.stringify(down))
  assert.equal(down[0].event, 'unhealthy')
  assert.match(down[0].reason, /nothing received/)
  assert.equal(down[0].name, name)
  assert.equal(typeof down[0].rxBytes, 'number')
  assert.equal((await nft('delete', 'table', 'inet', 'bwdrop')).code, 0)
  a.child.kill('SIGUSR2')
  const exit = await a.exited
  const events = health().map((e) => e.event)
  assert.deepEqual(events, ['unhealthy', 'healthy', 'gone'], JSON.stringify(health()))
  assert.equal(a.events.at(-1).event, 'done')
  assert.equal(exit.code, 0, 'the process ended by itself with the watch still subscribed')
  await assertClean(tb, name, tmp, original)
})

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
    assert.ok(e.ms >= 1500 && e.ms < 4000, `took ${e.ms} ms`)
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
  assert.ok(e.ms < 3500, `took ${e.ms} ms`)
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

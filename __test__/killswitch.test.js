'use strict'
// Issue 10: a kill switch that lets nothing out around a full tunnel (not a socket bound to
// the physical interface, not DNS to the host's resolver, not traffic whose policy rules were
// deleted) and never outlives its owner; and exclusions that go around the tunnel.
// The cli namespace gets a default route over the underlay (via the node's veth address), so
// the "internet" host 198.18.0.10 is reachable both through the tunnel (the server then sees
// 10.8.0.2) and around it (it sees 192.0.2.2).
const { test, before, after } = require('node:test')
const assert = require('node:assert/strict')
const fs = require('node:fs')
const path = require('node:path')
const testbed = require('../testbed')
const { startFixture } = require('../testbed/fixtures/checks.js')
const { tmpdir, assertClean, resolvConfPath, waitClean, killAgent } = require('./helpers')

const STEPS = path.join(__dirname, 'fixtures', 'steps-agent.js')
const FULL = ['0.0.0.0/0', '::/0']
const UNDERLAY_GW = '192.0.2.1'
const UNDERLAY_SELF = '192.0.2.2'
/** How much slower than this host the run is (the kernel lane's TCG VM sets 10). */
const SLOW = Number(process.env.BW_TIME_FACTOR) || 1
let tb
let original

before(async () => {
  tb = await testbed.up({ nclients: 1 })
  original = fs.readFileSync(resolvConfPath(tb), 'utf8')
  const r = await tb.execCli('ip', ['route', 'add', 'default', 'via', UNDERLAY_GW])
  assert.equal(r.code, 0, r.stderr)
})
after(() => tb && tb.down())

/** A TCP connect (and GET) or a UDP send from the cli namespace, optionally bound to the
 *  underlay interface (SO_BINDTODEVICE): 'ok', or the error's name. */
async function probe({ host, port = 80, udp = false, bindDev = null }) {
  const py = `
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM if ${udp ? 'True' : 'False'} else socket.SOCK_STREAM)
s.settimeout(${1.5 * SLOW})
${bindDev ? `s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b'${bindDev}')` : ''}
try:
    if ${udp ? 'True' : 'False'}:
        s.sendto(b'x', ('${host}', ${port}))
        print('ok')
    else:
        s.connect(('${host}', ${port}))
        s.sendall(b'GET /probe HTTP/1.0\\r\\n\\r\\n')
        print('ok' if s.recv(64).startswith(b'HTTP/') else 'bad')
except Exception as e:
    print(type(e).__name__)
`
  const r = await tb.execCli('python3', ['-c', py], { timeoutMs: 5000 * SLOW })
  return r.stdout.trim()
}

const nftTables = async () => (await tb.execCli('nft', ['list', 'tables'])).stdout

/** Start the steps agent; it connects (`config`) and pauses; returns the handle. */
async function startPaused(t, config, { extra = [], options } = {}) {
  const tmp = tmpdir(t)
  const a = startFixture(tb, STEPS, {
    tmp,
    env: { BW_STEPS: JSON.stringify([{ op: 'connect', config, options }, ...extra, { op: 'pause' }, { op: 'disconnect', name: config.name }]) },
  })
  t.after(() => killAgent({ child: a.child, exited: a.exited }))
  const first = await a.waitFor((e) => e.event === 'connected' || e.event === 'error', 'connect')
  assert.equal(first.event, 'connected', JSON.stringify(first) + a.stderr())
  await a.next('paused')
  return { a, tmp, info: first.info }
}

test('kill switch: nothing leaves around the full tunnel (bound socket, deleted rules, DNS); everything works again after disconnect', async (t) => {
  const name = `${tb.prefix}k`
  const dev = `${tb.prefix}v1`
  assert.equal(await probe({ host: UNDERLAY_GW, bindDev: dev }), 'ok', 'the underlay works before')
  const { a, tmp, info } = await startPaused(t, tb.tunnelConfig(0, { name, allowedIps: FULL, killSwitch: true, exclude: [] }), {
    extra: [{ op: 'fetch', url: `http://${tb.httpTunnelHost}/through` }],
  })
  assert.equal(info.killSwitch, true)
  assert.ok(info.steps.some((s) => s.step === 'kill-switch'), JSON.stringify(info.steps))
  const through = a.events.find((e) => e.event === 'fetch')
  assert.equal(JSON.parse(through.body).client, '10.8.0.2', 'through the tunnel')
  assert.match(await nftTables(), new RegExp(`table inet blue-wg-${name}`))
  // Routing bypassed: a socket bound to the physical interface.
  assert.notEqual(await probe({ host: UNDERLAY_GW, bindDev: dev }), 'ok', 'a bound socket got out')
  assert.notEqual(await probe({ host: UNDERLAY_GW, port: 53, udp: true, bindDev: dev }), 'ok', 'DNS to the host resolver got out')
  // Our policy rules deleted: traffic falls to the main table's underlay default, and stops.
  const rules = (await tb.execCli('ip', ['-4', 'rule', 'show'])).stdout
  const prios = [...rules.matchAll(/^(\d+):.*(?:suppress_prefixlength|fwmark)/gm)].map((m) => m[1])
  assert.equal(prios.length, 2, rules)
  for (const p of prios) assert.equal((await tb.execCli('ip', ['-4', 'rule', 'del', 'priority', p])).code, 0)
  assert.notEqual(await probe({ host: tb.httpTunnelHost }), 'ok', 'traffic leaked once the rules were deleted')
  a.child.kill('SIGUSR2')
  assert.equal((await a.next('disconnected')).report.gone, true)
  await a.exited
  assert.doesNotMatch(await nftTables(), /blue-wg-/)
  assert.equal(await probe({ host: UNDERLAY_GW, bindDev: dev }), 'ok', 'the underlay works again')
  await assertClean(tb, name, tmp, original)
})

test('kill switch: a SIGKILLed owner takes it along at once; the host works again within 1 s', async (t) => {
  const name = `${tb.prefix}s`
  const { a, tmp } = await startPaused(t, tb.tunnelConfig(0, { name, allowedIps: FULL, killSwitch: true, dns: [] }))
  assert.notEqual(await probe({ host: UNDERLAY_GW, bindDev: `${tb.prefix}v1` }), 'ok')
  a.child.kill('SIGKILL')
  await a.exited
  const t0 = performance.now()
  const r = await waitClean(tb, { t0, boundMs: 3000 * SLOW, names: [name], tmp, original })
  assert.ok(r.clean && r.ms < 1000 * SLOW, `${r.ms} ms: ${r.problems}`)
  assert.doesNotMatch(await nftTables(), /blue-wg-/)
  assert.equal(await probe({ host: UNDERLAY_GW, bindDev: `${tb.prefix}v1` }), 'ok')
})

for (const killSwitch of [false, true]) {
  test(`exclude (kill switch ${killSwitch ? 'on' : 'off'}): excluded destinations, by CIDR and by name, go around the tunnel; the rest through it; update() changes it live`, async (t) => {
    const hosts = `/etc/netns/${tb.cliNs}/hosts`
    fs.writeFileSync(hosts, `127.0.0.1 localhost\n${tb.httpTunnelHost} rpc.bw-test\n`)
    t.after(() => fs.rmSync(hosts, { force: true }))
    const name = `${tb.prefix}x`
    const other = tb.httpNodeHost // the node's tunnel address: only ever through the tunnel
    const client = (e) => JSON.parse(e.body).client
    const tmp = tmpdir(t)
    const a = startFixture(tb, STEPS, {
      tmp,
      env: {
        BW_STEPS: JSON.stringify([
          { op: 'connect', config: tb.tunnelConfig(0, { name, allowedIps: FULL, killSwitch, dns: [], exclude: [`${tb.httpTunnelHost}/32`] }) },
          { op: 'fetch', url: `http://${tb.httpTunnelHost}/excluded-cidr` },
          { op: 'fetch', url: `http://${other}/through` },
          { op: 'update', name, patch: { exclude: ['rpc.bw-test'] } },
          { op: 'fetch', url: `http://${tb.httpTunnelHost}/excluded-name` },
          { op: 'update', name, patch: { exclude: [] } },
          { op: 'fetch', url: `http://${tb.httpTunnelHost}/not-excluded` },
          { op: 'disconnect', name },
        ]),
      },
    })
    await a.exited
    const err = a.events.find((e) => e.event === 'error')
    assert.equal(err, undefined, JSON.stringify(err) + a.stderr())
    const f = a.events.filter((e) => e.event === 'fetch')
    assert.deepEqual(f.map((e) => e.ok), [true, true, true, true], JSON.stringify(f))
    assert.equal(client(f[0]), UNDERLAY_SELF, 'an excluded CIDR went through the tunnel')
    assert.equal(client(f[1]), '10.8.0.2')
    assert.equal(client(f[2]), UNDERLAY_SELF, 'an excluded name went through the tunnel')
    assert.equal(client(f[3]), '10.8.0.2', 'no longer excluded, yet around the tunnel')
    const updated = a.events.filter((e) => e.event === 'updated')
    assert.deepEqual(updated[0].info.exclude, [`${tb.httpTunnelHost}/32`])
    assert.equal(updated[0].info.killSwitch, killSwitch)
    await assertClean(tb, name, tmp, undefined)
    assert.doesNotMatch(await nftTables(), /blue-wg-/)
  })
}

test('kill switch: one per namespace; refused on the wg-quick backend; bad exclusions are INVALID_OPTIONS', async (t) => {
  const { a } = await startPaused(t, tb.tunnelConfig(0, { name: `${tb.prefix}1`, allowedIps: FULL, killSwitch: true, dns: [] }))
  const tmp = tmpdir(t)
  const b = startFixture(tb, STEPS, {
    tmp,
    env: {
      BW_STEPS: JSON.stringify([
        { op: 'connect', config: tb.tunnelConfig(0, { name: `${tb.prefix}2`, killSwitch: true }) },
        { op: 'connect', config: tb.tunnelConfig(0, { name: `${tb.prefix}3`, killSwitch: true }), options: { backend: 'wg-quick' } },
        { op: 'connect', config: tb.tunnelConfig(0, { name: `${tb.prefix}4`, exclude: ['0.0.0.0/1', '128.0.0.0/1'] }) },
        { op: 'connect', config: tb.tunnelConfig(0, { name: `${tb.prefix}5`, exclude: ['bad host!'] }) },
        { op: 'connect', config: tb.tunnelConfig(0, { name: `${tb.prefix}6`, killSwitch: 'yes' }) },
        { op: 'connect', config: tb.tunnelConfig(0, { name: `${tb.prefix}7` }), options: { killSwitch: true } },
      ]),
    },
  })
  await b.exited
  const errors = b.events.filter((e) => e.event === 'error')
  assert.deepEqual(errors.map((e) => e.code), Array(6).fill('INVALID_OPTIONS'), JSON.stringify(errors))
  assert.match(errors[0].message, /already has a kill switch/)
  assert.match(errors[1].message, /kernel or embedded/)
  assert.match(errors[2].message, /wider than a \/8/)
  assert.match(errors[5].message, /put killSwitch in the config/)
  a.child.kill('SIGUSR2')
  assert.equal((await a.next('disconnected')).report.gone, true)
  await a.exited
  assert.doesNotMatch(await nftTables(), /blue-wg-/)
})

test('compat: installWgTunnel(confPath, { killSwitch, exclude }) applies them to the SDK file; SIGTERM takes it all away', async (t) => {
  const tmp = tmpdir(t)
  const name = `${tb.prefix}c`
  const c = tb.tunnelConfig(0)
  const a = startFixture(tb, path.join(__dirname, 'fixtures', 'sdk-agent.mjs'), {
    tmp,
    env: {
      BW_SDK: JSON.stringify({
        steps: [
          { op: 'write', name, privateKey: c.privateKey, address: c.addresses[0], serverPublicKey: c.peer.publicKey, endpoint: c.peer.endpoint, allowedIps: FULL },
          { op: 'install', name, options: { killSwitch: true, exclude: [`${tb.httpTunnelHost}/32`] } },
          { op: 'wait' },
        ],
      }),
    },
  })
  t.after(() => a.child.exitCode === null && a.child.kill('SIGKILL'))
  const installed = await a.waitFor((e) => e.op === 'install', 'install', 30_000)
  assert.equal(installed.ok, true, JSON.stringify(installed))
  await a.waitFor((e) => e.op === 'wait', 'wait')
  assert.match(await nftTables(), new RegExp(`blue-wg-${name}`))
  assert.notEqual(await probe({ host: UNDERLAY_GW, bindDev: `${tb.prefix}v1` }), 'ok')
  const r = await tb.execCli('python3', ['-c', `import urllib.request,json;print(json.load(urllib.request.urlopen('http://${tb.httpTunnelHost}/x',timeout=${3 * SLOW}))['client'])`], { timeoutMs: 5000 * SLOW })
  assert.equal(r.stdout.trim(), UNDERLAY_SELF, 'the excluded host went through the tunnel')
  a.child.kill('SIGTERM')
  const x = await a.exited
  assert.equal(x.status, 143)
  assert.doesNotMatch(await nftTables(), /blue-wg-/)
  fs.rmSync(path.join(tmp, 'sentinel-wg', `${name}.conf`)) // the SDK's file, the SDK's to remove
  await assertClean(tb, name, tmp, undefined)
})

test('kill switch: replacing a tunnel (another identity on the same name) keeps the table, narrowed, and the new tunnel adopts it', async (t) => {
  const tb2 = tb
  const name = `${tb2.prefix}r`
  const tmp = tmpdir(t)
  const a = startFixture(tb2, STEPS, {
    tmp,
    env: {
      BW_STEPS: JSON.stringify([
        { op: 'connect', config: tb2.tunnelConfig(0, { name, allowedIps: FULL, killSwitch: true, dns: [] }) },
        { op: 'connect', config: { ...tb2.tunnelConfig(0, { name, allowedIps: FULL, killSwitch: true, dns: [] }), addresses: ['10.8.0.9/24'] } },
        { op: 'disconnect', name },
      ]),
    },
  })
  await a.exited
  const [first, second] = a.events.filter((e) => e.event === 'connected')
  assert.ok(second, JSON.stringify(a.events) + a.stderr())
  assert.equal(second.info.replacedStale, true)
  assert.ok(second.info.steps.some((s) => s.step === 'kill-switch'), JSON.stringify(second.info.steps))
  const detail = second.progress.find(([s]) => s === 'kill-switch')[1]
  assert.match(detail, /kept from the tunnel replaced/)
  assert.equal(first.info.killSwitch, true)
  assert.equal(a.events.find((e) => e.event === 'disconnected').report.gone, true)
  assert.doesNotMatch(await nftTables(), /blue-wg-/)
  await assertClean(tb2, name, tmp, undefined)
})

test('kill switch: a failed connect (a dead node) leaves no table and the host works', async (t) => {
  const name = `${tb.prefix}f`
  const tmp = tmpdir(t)
  const base = tb.tunnelConfig(0, { name, allowedIps: FULL, killSwitch: true, dns: [] })
  const dead = { ...base, peer: { ...base.peer, publicKey: require('node:crypto').randomBytes(32).toString('base64') } }
  const a = startFixture(tb, STEPS, { tmp, env: { BW_STEPS: JSON.stringify([{ op: 'connect', config: dead, options: { handshakeTimeoutMs: 1000 * SLOW } }]) } })
  await a.exited
  const e = a.events.find((x) => x.event === 'error')
  assert.equal(e?.code, 'WG_NO_CONNECTIVITY', JSON.stringify(a.events))
  assert.doesNotMatch(await nftTables(), /blue-wg-/)
  assert.equal(await probe({ host: UNDERLAY_GW, bindDev: `${tb.prefix}v1` }), 'ok')
  await assertClean(tb, name, tmp, undefined)
})

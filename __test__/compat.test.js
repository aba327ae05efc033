'use strict'
// blue-wireguard/compat as the SDK uses it: config files written by the SDK, installWgTunnel,
// verify-before-capture, watchdogCheck, uninstallWgTunnel, hostile files.
const { test, before, after } = require('node:test')
const assert = require('node:assert/strict')
const fs = require('node:fs')
const path = require('node:path')
const readline = require('node:readline')
const testbed = require('../testbed')
const { tmpdir, assertClean, resolvConfPath, linkExists, expectedBackend, DEFAULT_BACKEND } = require('./helpers')

const SDK = path.join(__dirname, 'fixtures', 'sdk-agent.mjs')
const FULL = ['0.0.0.0/0', '::/0']
let tb
let original

before(async () => {
  tb = await testbed.up()
  original = fs.readFileSync(resolvConfPath(tb), 'utf8')
})
after(() => tb && tb.down())

/** The fields of an SDK config file for testbed client 0. */
const file = (name, allowedIps, extra = {}) => ({
  op: 'write',
  name,
  privateKey: tb.clients[0].privateKey,
  address: tb.clients[0].address,
  serverPublicKey: tb.serverPublicKey,
  endpoint: tb.endpoint,
  allowedIps,
  ...extra,
})

/** Run the SDK stand-in; resolves { results, exit }. With `until`, resolves as soon as a step
 *  with that op has reported (the process keeps running; `child` is returned). */
function sdk(steps, { tmp, env = {}, until } = {}) {
  const child = tb.spawnCli(process.execPath, [SDK], {
    env: { BW_SDK: JSON.stringify({ steps }), TMPDIR: tmp, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  const results = []
  let stderr = ''
  child.stderr.on('data', (d) => (stderr += d))
  const exited = new Promise((resolve) => child.on('exit', (code, signal) => resolve({ code, signal, stderr })))
  return new Promise((resolve) => {
    readline.createInterface({ input: child.stdout }).on('line', (l) => {
      results.push(JSON.parse(l))
      if (until && l.includes(`"op":"${until}"`)) resolve({ results, child, exited })
    })
    exited.then((exit) => resolve({ results, exit, child, exited }))
  })
}

const ok = (r, i) => {
  assert.equal(r.results[i].ok, true, JSON.stringify(r.results[i]))
  return r.results[i].value
}

test('every export has the kind the SDK expects, and behaves with no tunnel up', async (t) => {
  const tmp = tmpdir(t)
  const r = await sdk(
    [{ op: 'exports' }, { op: 'constants' }, { op: 'watchdog' }, { op: 'uninstall' }, { op: 'disconnect' }, { op: 'emergency' }, { op: 'teardown', name: `${tb.prefix}z` }],
    { tmp },
  )
  assert.deepEqual(ok(r, 0), {
    installWgTunnel: 'function',
    uninstallWgTunnel: 'function',
    connectWireGuard: 'function',
    disconnectWireGuard: 'function',
    emergencyCleanupSync: 'function',
    watchdogCheck: 'function',
    teardownLinuxInterface: 'function',
    IS_ADMIN: 'boolean',
    WG_EXE: 'null',
    WG_QUICK: 'string',
    WG_AVAILABLE: 'boolean',
  })
  assert.deepEqual(ok(r, 1), { IS_ADMIN: true, WG_EXE: null, WG_QUICK: '/usr/bin/wg-quick', WG_AVAILABLE: true })
  assert.deepEqual(ok(r, 2), { active: false })
  assert.equal(ok(r, 3), null)
  assert.equal(ok(r, 4), null)
  assert.equal(ok(r, 5), null)
  const rep = ok(r, 6)
  assert.equal(rep.existed, false)
  assert.equal(r.exit.code, 0)
})

test('an SDK-written full-tunnel file (with DNS =) goes up, passes traffic and DNS, and uninstalls completely', async (t) => {
  const tmp = tmpdir(t)
  const name = `${tb.prefix}c`
  const r = await sdk(
    [
      file(name, FULL, { dns: ['10.8.0.1', '1.1.1.1'] }),
      { op: 'install', name },
      { op: 'fetch', url: `http://${tb.httpTunnelHost}/sdk` },
      { op: 'watchdog' },
      { op: 'uninstall' },
      { op: 'watchdog' },
    ],
    { tmp },
  )
  const confPath = ok(r, 0)
  assert.equal(ok(r, 1), name)
  const fetched = ok(r, 2)
  assert.equal(JSON.parse(fetched.body).client, '10.8.0.2')
  const wd = ok(r, 3)
  assert.equal(wd.active, true)
  assert.equal(wd.name, name)
  assert.equal(typeof wd.uptimeMs, 'number')
  assert.equal(ok(r, 4), null)
  assert.deepEqual(ok(r, 5), { active: false })
  assert.equal(fs.existsSync(confPath), false, 'the SDK config file is zero-filled and deleted')
  assert.equal(r.exit.code, 0)
  await assertClean(tb, name, tmp, original)
})

test('verify-before-capture: two consecutive installWgTunnel calls on the same name', async (t) => {
  const tmp = tmpdir(t)
  const name = `${tb.prefix}c`
  const r = await sdk(
    [
      file(name, [`${tb.httpNodeHost}/32`]),
      { op: 'install', name },
      { op: 'fetch', url: `http://${tb.httpNodeHost}/verify` },
      { op: 'ifindex', name },
      file(name, FULL, { dns: ['10.8.0.1'] }),
      { op: 'install', name },
      { op: 'ifindex', name },
      { op: 'fetch', url: `http://${tb.httpTunnelHost}/captured` },
      { op: 'disconnect' },
    ],
    { tmp },
  )
  assert.equal(ok(r, 1), name)
  assert.equal(ok(r, 2).status, 200)
  assert.equal(ok(r, 5), name)
  // The second install is an update in place (native backends): the same interface.
  if (DEFAULT_BACKEND !== 'wg-quick') assert.equal(ok(r, 6), ok(r, 3), 'the interface was replaced')
  assert.equal(JSON.parse(ok(r, 7).body).path, '/captured')
  assert.equal(ok(r, 8), null)
  await assertClean(tb, name, tmp, original)
})

test('the legacy connectWireGuard(wgInstance) path writes wgsent0.conf in the private dir and installs it', async (t) => {
  const tmp = tmpdir(t)
  const f = file('wgsent0', [`${tb.httpNodeHost}/32`])
  const r = await sdk([{ ...f, op: 'legacy' }, { op: 'fetch', url: `http://${tb.httpNodeHost}/legacy` }, { op: 'disconnect' }], { tmp })
  assert.equal(ok(r, 0), 'wgsent0')
  assert.equal(ok(r, 1).status, 200)
  await assertClean(tb, 'wgsent0', tmp, original)
})

test('a SIGKILLed owner followed by a new installWgTunnel on the same name succeeds', async (t) => {
  const tmp = tmpdir(t)
  const name = `${tb.prefix}c`
  const steps = [file(name, FULL, { dns: ['10.8.0.1'] }), { op: 'install', name }, { op: 'wait' }]
  // Without its watchdog, the killed owner leaves the tunnel up, as the seed saw.
  const first = await sdk(steps, { tmp, env: { BLUE_WG_NO_WATCHDOG: '1' }, until: 'wait' })
  t.after(() => first.child.kill('SIGKILL'))
  assert.equal(ok(first, 1), name)
  first.child.kill('SIGKILL')
  await first.exited
  // wg-quick's and the kernel backend's interfaces outlive their owner; the embedded
  // backend's tun dies with it.
  assert.equal(await linkExists(tb, name), ['wg-quick', 'kernel'].includes(expectedBackend()))
  const r = await sdk([...steps.slice(0, 2), { op: 'fetch', url: `http://${tb.httpTunnelHost}/again` }, { op: 'uninstall' }], { tmp })
  assert.equal(ok(r, 1), name)
  assert.equal(JSON.parse(ok(r, 2).body).path, '/again')
  await assertClean(tb, name, tmp, original)
})

const forbidden = [
  ['PostUp', (m) => `PostUp = touch ${m}`],
  ['PreUp', (m) => `PreUp = touch ${m}`],
  ['PostDown', (m) => `PostDown = touch ${m}`],
  ['PreDown', (m) => `PreDown = touch ${m}`],
  ['SaveConfig', () => 'SaveConfig = true'],
  ['Table', () => 'Table = off'],
  ['unknown key', () => 'FwMark = 1234'],
  ['a second [Interface]', (m) => `[Interface]\nPostUp = touch ${m}`],
]
for (const [label, line] of forbidden) {
  test(`a config file with ${label} is refused with INVALID_OPTIONS and nothing runs`, async (t) => {
    const tmp = tmpdir(t)
    const name = `${tb.prefix}c`
    const marker = path.join(tmp, 'hook-ran')
    const r = await sdk([file(name, FULL, { dns: ['10.8.0.1'], extra: line(marker) }), { op: 'install', name }], { tmp })
    assert.equal(r.results[1].ok, false)
    assert.equal(r.results[1].error.code, 'INVALID_OPTIONS', r.results[1].error.message)
    assert.match(r.results[1].error.message, /line \d+/)
    assert.equal(fs.existsSync(marker), false, 'a hook from the file ran')
    assert.equal(await linkExists(tb, name), false)
    const dir = path.join(tmp, 'sentinel-wg')
    assert.deepEqual(fs.readdirSync(dir).filter((f) => f !== `${name}.conf`), [], 'nothing but the SDK file itself')
  })
}

'use strict'
// The seed's failure and every way an owner can end: nothing may be left behind, and the exit
// status must be what Node gives without the addon.
const { test, before, after } = require('node:test')
const assert = require('node:assert/strict')
const fs = require('node:fs')
const testbed = require('../testbed')
const { tmpdir, startAgent, runAgent, assertClean, resolvConfPath, linkExists, stateDir } = require('./helpers')

const FULL = ['0.0.0.0/0', '::/0']
let tb
let original

before(async () => {
  tb = await testbed.up({ clientIfnames: ['wgsent0'] })
  original = fs.readFileSync(resolvConfPath(tb), 'utf8')
})
after(() => tb && tb.down())

/** An HTTP GET from the cli namespace (outside any agent) succeeds. */
async function reachable(url) {
  const net = require.resolve('../testbed/fixtures/net.js')
  const js = `require(${JSON.stringify(net)}).get(${JSON.stringify(url)}, 2000).then((r) => process.exit(r.ok ? 0 : 1))`
  return (await tb.execCli(process.execPath, ['-e', js])).code === 0
}

const fullPlan = (name, extra = {}) => ({
  config: tb.tunnelConfig(0, { allowedIps: FULL, name }),
  fetch: [`http://${tb.httpTunnelHost}/`],
  ...extra,
})

test('the seed: a SIGKILLed full tunnel on wgsent0 does not wedge the next connect', async (t) => {
  const tmp = tmpdir(t)
  // No watchdog for this owner: as if it died with it (e.g. a cgroup-wide kill), so the
  // killed run leaves what the seed saw, and the next connect has to converge over it.
  const a = startAgent(tb, fullPlan(undefined, { then: 'wait' }), { tmp, env: { BLUE_WG_NO_WATCHDOG: '1' } })
  t.after(() => a.child.kill('SIGKILL'))
  const { info } = await a.next('connected')
  assert.equal(info.name, 'wgsent0')
  assert.equal((await a.next('fetch')).ok, true)
  await a.next('waiting')
  a.child.kill('SIGKILL')
  assert.equal((await a.exited).status, 137)
  assert.match(fs.readFileSync(resolvConfPath(tb), 'utf8'), /nameserver 10\.8\.0\.1/)
  if (info.backend === 'embedded') {
    // What a killed embedded run leaves: tunnel DNS and the policy rules; the tun went with
    // the process, and the rules fall through to the main table (nothing is black-holed).
    assert.equal(await linkExists(tb, 'wgsent0'), false)
    assert.match((await tb.execCli('ip', ['-4', 'rule', 'show'])).stdout, /suppress_prefixlength 0/)
    assert.equal(fs.existsSync(`${stateDir(tb)}/wgsent0.conf`), false, 'no key file was ever written')
    assert.equal(await reachable(`http://${tb.endpoint.split(':')[0]}/after-kill`), true, 'traffic black-holed')
  } else if (info.backend === 'kernel') {
    // A kernel interface outlives its process (still routing): it and tunnel DNS stay; no key
    // file was ever written.
    assert.equal(await linkExists(tb, 'wgsent0'), true)
    assert.equal(fs.existsSync(`${stateDir(tb)}/wgsent0.conf`), false, 'no key file was ever written')
  } else {
    // What a killed run leaves under wireguard-go: the interface, tunnel DNS and the key file.
    assert.equal(await linkExists(tb, 'wgsent0'), true)
    assert.equal(fs.existsSync(`${stateDir(tb)}/wgsent0.conf`), true)
  }

  const r = await runAgent(tb, fullPlan(undefined, { resolve: tb.dnsName, then: 'disconnect' }), { tmp })
  const connected = r.event('connected')
  assert.ok(connected, JSON.stringify(r))
  assert.equal(connected.info.replacedStale, true)
  assert.ok(connected.steps.includes('converge'))
  assert.equal(r.event('fetch').ok, true)
  assert.equal(JSON.parse(r.event('fetch').body).client, '10.8.0.2')
  assert.equal(r.event('resolve').address, tb.dnsAnswer)
  assert.equal(r.event('disconnected').report.gone, true)
  assert.equal(r.exit.status, 0)
  await assertClean(tb, 'wgsent0', tmp, original)
})

// Each exit path of a connected owner: [then, signal, expected exit status].
const paths = [
  ['process.exit(3)', 'exit3', null, 3],
  ['uncaught exception', 'throw', null, 1],
  ['drained event loop', 'drain', null, 0],
  ['SIGINT', 'wait', 'SIGINT', 130],
  ['SIGTERM', 'wait', 'SIGTERM', 143],
  ['SIGHUP', 'wait', 'SIGHUP', 129],
]
for (const [label, then, signal, status] of paths) {
  test(`exit path ${label}: status ${status}, nothing left`, async (t) => {
    const tmp = tmpdir(t)
    const name = `${tb.prefix}c`
    const a = startAgent(tb, fullPlan(name, { then }), { tmp })
    t.after(() => a.child.kill('SIGKILL'))
    await a.next('connected')
    assert.equal((await a.next('fetch')).ok, true)
    if (signal) {
      await a.next('waiting')
      a.child.kill(signal)
    }
    const exit = await a.exited
    assert.equal(exit.status, status, exit.stderr)
    await assertClean(tb, name, tmp, original)
  })
}

test('an app SIGINT listener owns shutdown: its async work through the tunnel completes first', async (t) => {
  const tmp = tmpdir(t)
  const name = `${tb.prefix}c`
  const a = startAgent(tb, fullPlan(name, { then: 'wait', appSigint: `http://${tb.httpTunnelHost}/last-words` }), { tmp })
  t.after(() => a.child.kill('SIGKILL'))
  await a.next('waiting')
  a.child.kill('SIGINT')
  const done = await a.next('app-sigint-done')
  assert.equal(done.ok, true, 'the tunnel must still be up while the app finishes its work')
  assert.equal(JSON.parse(done.body).path, '/last-words')
  assert.equal((await a.exited).status, 0)
  await assertClean(tb, name, tmp, original)
})

test('BLUE_WG_NO_EXIT_HOOKS=1 (and no watchdog) leaves shutdown to the app', async (t) => {
  const tmp = tmpdir(t)
  const name = `${tb.prefix}c`
  const env = { BLUE_WG_NO_EXIT_HOOKS: '1', BLUE_WG_NO_WATCHDOG: '1' }
  const r = await runAgent(tb, fullPlan(name, { then: 'exit3' }), { tmp, env })
  assert.equal(r.exit.status, 3)
  if (r.event('connected').info.backend === 'embedded') {
    // The tun dies with its process; its rules (and DNS) outlive it.
    assert.equal(await linkExists(tb, name), false)
    assert.match((await tb.execCli('ip', ['-4', 'rule', 'show'])).stdout, /suppress_prefixlength 0/)
  } else {
    assert.equal(await linkExists(tb, name), true, 'without hooks the tunnel outlives the process')
  }
  // The next start converges over it.
  const r2 = await runAgent(tb, fullPlan(name, { then: 'disconnect' }), { tmp })
  assert.equal(r2.event('connected').info.replacedStale, true)
  await assertClean(tb, name, tmp, original)
})

test('a worker thread that is terminated takes its tunnel with it (napi env cleanup hook)', async (t) => {
  const tmp = tmpdir(t)
  const name = `${tb.prefix}w`
  const config = tb.tunnelConfig(0, { allowedIps: ['10.8.0.0/24'], name })
  const r = await tb.execCli(process.execPath, [require.resolve('./fixtures/worker-agent.js')], {
    env: { BW_CONFIG: JSON.stringify(config), TMPDIR: tmp },
  })
  assert.equal(r.code, 0, r.stderr)
  const out = JSON.parse(r.stdout.trim())
  assert.deepEqual(out, { name, before: true, after: false })
  await assertClean(tb, name, tmp, original)
})

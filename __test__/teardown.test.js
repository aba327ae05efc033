'use strict'
// teardownLinuxInterface (sync, never throws) and emergencyCleanupSync, each called from a
// process that did not connect the tunnel (so its registry knows nothing of it), inside the
// testbed's cli namespace. This process never loads the addon.
const { test, before, after } = require('node:test')
const assert = require('node:assert/strict')
const fs = require('node:fs')
const path = require('node:path')

const testbed = require('../testbed')
const { tmpdir, startAgent, linkExists, assertClean, ifindex } = require('./helpers.js')
const { runProbe } = require('./fixtures/probe-run.js')

let tb

before(async () => {
  tb = await testbed.up({ nclients: 2 })
})

after(async () => {
  if (tb) await tb.down()
})

// teardownLinuxInterface's three steps are the tool for tunnels that wg-quick (or the old
// SDK) made: these tests make theirs with the wg-quick backend, whatever the run's default.
process.env.BLUE_WG_BACKEND = 'wg-quick'

/** Start an agent that connects `config` and waits; killed (SIGKILL) in t.after if alive. */
async function connectedAgent(t, config, tmp, env = {}) {
  const agent = startAgent(tb, { config, fetch: [`http://${tb.httpTunnelHost}/`], then: 'wait' }, { tmp, env })
  t.after(async () => {
    if (agent.child.exitCode === null && agent.child.signalCode === null) {
      agent.child.kill('SIGKILL')
      await agent.exited
    }
  })
  const ev = await agent.next('connected', 30_000).catch(async (e) => {
    const err = agent.events.find((x) => x.event === 'error')
    throw new Error(`connect failed: ${JSON.stringify(err)}; ${e.message}`)
  })
  const fetched = await agent.next('fetch')
  assert.equal(fetched.ok, true, `no traffic through the new tunnel: ${JSON.stringify(fetched)}`)
  assert.equal(JSON.parse(fetched.body).client, '10.8.0.2')
  return { agent, info: ev.info }
}

async function teardownFromNewProcess(args, tmp) {
  const { byId } = await runProbe(tb, [{ id: 't', op: 'teardown', args }], { tmp })
  const r = byId.get('t')
  assert.equal(r.call.ok, true, `teardownLinuxInterface threw: ${JSON.stringify(r.call.error)}`)
  return r.call.value
}

async function rules() {
  const out = []
  for (const fam of ['-4', '-6']) out.push((await tb.execCli('ip', [fam, 'rule', 'show'])).stdout)
  return out.join('')
}

async function nftTables() {
  return (await tb.execCli('nft', ['list', 'tables'])).stdout
}

test('with its config present: wg-quick down <conf> removes it, then the config is shredded', async (t) => {
  const tmp = tmpdir(t)
  const name = `${tb.prefix}c`
  // No watchdog: it would remove the tunnel of the SIGKILLed owner before the teardown below.
  const { agent, info } = await connectedAgent(t, tb.tunnelConfig(0, { name }), tmp, { BLUE_WG_NO_WATCHDOG: '1' })
  assert.equal(info.fullTunnel, false)
  assert.ok(fs.existsSync(info.configPath), 'no config file after connect')
  assert.equal(await linkExists(tb, name), true)
  const index = await ifindex(tb, name)

  // While its owner lives, another process's teardown leaves the tunnel alone.
  const refused = await teardownFromNewProcess([name, info.configPath], tmp)
  t.diagnostic(JSON.stringify(refused))
  assert.equal(refused.gone, false, JSON.stringify(refused))
  assert.match(refused.steps[0].detail, new RegExp(`live process ${agent.child.pid}\\b`))
  assert.equal(await ifindex(tb, name), index, "a live owner's tunnel was replaced or removed")
  assert.ok(fs.existsSync(info.configPath), "a live owner's config was removed")

  // Its owner is gone (SIGKILL: no exit hook): now the teardown takes it down.
  agent.child.kill('SIGKILL')
  assert.equal((await agent.exited).signal, 'SIGKILL')
  assert.equal(await linkExists(tb, name), true, 'a SIGKILLed owner should leave the interface (wireguard-go)')
  const report = await teardownFromNewProcess([name, info.configPath], tmp)
  t.diagnostic(JSON.stringify(report))
  assert.equal(report.name, name)
  assert.equal(report.existed, true)
  assert.equal(report.gone, true, JSON.stringify(report))
  assert.equal(report.steps[0].step, 'wg-quick down <conf>')
  assert.equal(report.steps[0].ran, true)
  assert.equal(report.steps[0].ok, true, report.steps[0].detail)
  assert.equal(report.steps.length, 1, `ran past the first step: ${JSON.stringify(report.steps)}`)
  assert.equal(report.configRemoved, true)
  assert.equal(report.configPath, info.configPath)
  assert.equal(fs.existsSync(info.configPath), false, 'config file still there')
  assert.equal(await linkExists(tb, name), false, 'interface still there')
  await assertClean(tb, name, tmp)
})

test('with its config deleted (full tunnel, owner SIGKILLed): ip link delete and the sweep', async (t) => {
  const tmp = tmpdir(t)
  const name = `${tb.prefix}f`
  const config = tb.tunnelConfig(0, { name, allowedIps: ['0.0.0.0/0', '::/0'], dns: [] })
  // No watchdog: it would remove the tunnel of the SIGKILLed owner before the teardown below.
  const { agent, info } = await connectedAgent(t, config, tmp, { BLUE_WG_NO_WATCHDOG: '1' })
  assert.equal(info.fullTunnel, true)
  assert.deepEqual(info.dns, [])
  // What wg-quick installed for a full tunnel, so the sweep has something to remove.
  assert.match(await rules(), /fwmark/, 'no fwmark rule after a full-tunnel connect')
  assert.match(await rules(), /suppress_prefixlength/, 'no suppress_prefixlength rule')
  assert.match(await nftTables(), new RegExp(`wg-quick-${name}\\b`), 'no wg-quick nft table')

  agent.child.kill('SIGKILL')
  const exit = await agent.exited
  assert.equal(exit.signal, 'SIGKILL')
  assert.equal(await linkExists(tb, name), true, 'a SIGKILLed owner should leave the interface (wireguard-go)')
  fs.unlinkSync(info.configPath)

  const report = await teardownFromNewProcess([name, info.configPath], tmp)
  t.diagnostic(JSON.stringify(report))
  assert.equal(report.existed, true)
  assert.equal(report.gone, true, JSON.stringify(report))
  const step = (s) => report.steps.find((x) => x.step === s)
  assert.equal(report.steps[0].step, 'wg-quick down <conf>')
  assert.equal(report.steps[0].ran, false)
  assert.equal(report.steps[0].detail, 'no config file')
  assert.equal(step('wg-quick down <name>')?.ran, false, 'no /etc/wireguard config exists: step 2 must be skipped')
  assert.equal(step('ip link delete')?.ran, true, JSON.stringify(report.steps))
  assert.equal(step('ip link delete').ok, true, step('ip link delete').detail)
  assert.equal(step('sweep')?.ran, true, JSON.stringify(report.steps))
  assert.match(step('sweep').detail, /removed .*nft table ip wg-quick-/, step('sweep').detail)
  assert.equal(report.configRemoved, false, 'there was no config file to remove')
  assert.equal(await linkExists(tb, name), false)

  assert.doesNotMatch(await rules(), /fwmark|suppress_prefixlength/, 'policy rules left')
  assert.doesNotMatch(await nftTables(), new RegExp(`wg-quick-${name}\\b`), 'nft table left')
  await assertClean(tb, name, tmp)
})

test('a name that does not exist, an invalid name, wrong arguments: a report or an Error, no crash', async (t) => {
  const tmp = tmpdir(t)
  const missing = `${tb.prefix}z`
  assert.equal(await linkExists(tb, missing), false)
  const stray = path.join(tmp, `${missing}.conf`)
  fs.writeFileSync(stray, 'PrivateKey = x\n', { mode: 0o600 })
  const othersConf = path.join(tmp, 'someone-else.conf')
  fs.writeFileSync(othersConf, 'PrivateKey = x\n', { mode: 0o600 })
  const stray2 = path.join(tmp, 'stray2.conf')
  fs.writeFileSync(stray2, 'PrivateKey = x\n', { mode: 0o600 })

  const calls = [
    ['missing', [missing]],
    ['missing+conf', [missing, stray]],
    ['missing+other conf', [missing, othersConf]],
    ['bad name', ['bad name']],
    ['bad name+conf', ['bad name', stray2]],
    ['newline name', ['wg0\nx']],
    ['NUL name', ['wg\u00000']],
    ['long name', ['x'.repeat(5000)]],
    ['empty name', ['']],
    ['no arguments', []],
    ['undefined', [{ $undefined: true }]],
    ['null', [null]],
    ['number', [42]],
    ['object', [{}]],
    ['conf as number', [missing, 42]],
  ]
  const { byId, code, signal } = await runProbe(tb, calls.map(([id, args]) => ({ id, op: 'teardown', args })), { tmp })
  assert.equal(signal, null)
  assert.equal(code, 0, 'the probe process did not exit cleanly')

  const report = (id) => {
    const r = byId.get(id)
    assert.equal(r.call.ok, true, `${id}: threw ${JSON.stringify(r.call.error)}`)
    return r.call.value
  }
  const m = report('missing')
  assert.equal(m.existed, false)
  assert.equal(m.gone, true)
  assert.deepEqual(m.steps.map((s) => [s.step, s.ran, s.detail]), [['all', false, 'interface does not exist']])
  assert.equal(m.configRemoved, false)

  const mc = report('missing+conf')
  assert.equal(mc.existed, false)
  assert.equal(mc.gone, true)
  assert.equal(mc.configRemoved, true, 'a stray config of a gone interface is shredded')
  assert.equal(fs.existsSync(stray), false)
  const mo = report('missing+other conf')
  assert.equal(mo.configRemoved, false, 'a config that is not <name>.conf belongs to another interface')
  assert.equal(fs.existsSync(othersConf), true)

  for (const id of ['bad name', 'bad name+conf', 'newline name', 'NUL name', 'long name', 'empty name']) {
    const r = report(id)
    assert.equal(r.existed, false, id)
    assert.equal(r.gone, true, id)
    assert.deepEqual(r.steps.map((s) => [s.step, s.ran, s.detail]), [['all', false, 'not a valid interface name']], id)
  }
  assert.equal(report('bad name+conf').configRemoved, false, 'config removed for an invalid name')
  assert.equal(fs.existsSync(stray2), true)

  for (const id of ['no arguments', 'undefined', 'null', 'number', 'object', 'conf as number']) {
    // Never throws: a wrong argument gives a report that says what was wrong, and touches nothing.
    const r = report(id)
    assert.equal(r.existed, false, id)
    assert.equal(r.gone, false, id)
    assert.match(r.steps[0].detail, /must be a string/, id)
  }

  assert.deepEqual(fs.readdirSync(tmp).sort(), ['someone-else.conf', 'stray2.conf'])
})

test('emergencyCleanupSync() with nothing to clean: nothing removed, no warning, < 2 ms, no subprocess', async (t) => {
  const tmp = tmpdir(t)
  // Logging shims ahead of the real tools in PATH (the addon searches PATH first): any
  // subprocess the addon starts is recorded in spawn.log.
  const shims = path.join(tmp, 'shims')
  fs.mkdirSync(shims)
  for (const tool of ['ip', 'wg', 'wg-quick', 'wireguard-go', 'nft', 'resolvconf', 'resolvectl']) {
    fs.writeFileSync(
      path.join(shims, tool),
      '#!/bin/sh\n' +
        'echo "$(basename "$0") $*" >> "$BW_SPAWN_LOG"\n' +
        'for d in /usr/local/sbin /usr/local/bin /usr/sbin /usr/bin /sbin /bin; do\n' +
        '  [ -x "$d/$(basename "$0")" ] && exec "$d/$(basename "$0")" "$@"\n' +
        'done\nexit 127\n',
      { mode: 0o755 },
    )
  }
  const log = path.join(tmp, 'spawn.log')
  const env = { BW_PROBE_PATH: `${shims}:${process.env.PATH}`, BW_SPAWN_LOG: log }
  // A userspace WireGuard interface in the cli ns that no process owns (no ownership record):
  // emergencyCleanupSync leaves it alone, and a teardown of it is the positive control that the
  // shims see spawns. (A veth cannot serve: a teardown refuses it without running anything.)
  const control = `${tb.prefix}t0`
  const add = await tb.execCli('wireguard-go', [control])
  assert.equal(add.code, 0, add.stderr)
  t.after(() => tb.execCli('ip', ['link', 'delete', control]))

  const confDir = path.join(tmp, 'sentinel-wg')
  const { byId } = await runProbe(tb, [{ id: 'e', op: 'emergency', n: 50 }], { tmp, env })
  const e = byId.get('e')
  for (const v of e.values) assert.deepEqual(v, { removed: [], warnings: [] }, `returned ${JSON.stringify(v)}`)
  t.diagnostic(`median ${(e.medianNs / 1e3).toFixed(1)} µs, max ${(Math.max(...e.nsEach) / 1e3).toFixed(1)} µs over 50 calls`)
  assert.ok(e.medianNs < 2e6, `median ${e.medianNs} ns`)
  assert.equal(fs.existsSync(log) ? fs.readFileSync(log, 'utf8') : '', '', 'emergencyCleanupSync started a subprocess')
  assert.equal(fs.existsSync(confDir), false, 'emergencyCleanupSync created the config dir')
  assert.equal(await linkExists(tb, control), true, 'emergencyCleanupSync removed an interface it has no record of')

  // Positive control, same setup: a teardown that must spawn `ip` is seen by the shims.
  const control2 = await runProbe(tb, [{ id: 'control', op: 'teardown', args: [control] }], { tmp, env })
  const c = control2.byId.get('control').call.value
  assert.equal(c.gone, true, JSON.stringify(c))
  assert.match(fs.readFileSync(log, 'utf8'), new RegExp(`^ip link delete dev ${control}$`, 'm'), 'the shims did not see the control spawn')
})

test('teardownLinuxInterface(A, <config of B>) does not take down tunnel B', async (t) => {
  const tmp = tmpdir(t)
  const A = `${tb.prefix}a`
  const B = `${tb.prefix}b`
  // A's owner is SIGKILLed below (with no watchdog, its tunnel stays): a teardown from another
  // process may only remove the tunnel of a dead owner.
  const a = await connectedAgent(t, tb.tunnelConfig(0, { name: A }), tmp, { BLUE_WG_NO_WATCHDOG: '1' })
  // Client 1, routing only the node's address (A already routes 198.18.0.10/32).
  const b = startAgent(tb, { config: tb.tunnelConfig(1, { name: B, allowedIps: ['10.8.0.1/32'] }), then: 'wait' }, { tmp })
  t.after(async () => {
    if (b.child.exitCode === null && b.child.signalCode === null) {
      b.child.kill('SIGKILL')
      await b.exited
    }
    await tb.execCli('ip', ['link', 'delete', B])
  })
  const bInfo = (await b.next('connected', 30_000)).info
  const indexB = await ifindex(tb, B)
  a.agent.child.kill('SIGKILL')
  await a.agent.exited
  assert.equal(await linkExists(tb, A), true)
  const report = await teardownFromNewProcess([A, bInfo.configPath], tmp)
  t.diagnostic(JSON.stringify(report))
  assert.equal(await linkExists(tb, A), false, 'A still exists')
  assert.equal(await ifindex(tb, B), indexB, 'B was taken down (or replaced) by a teardown of A')
  assert.equal(fs.existsSync(bInfo.configPath), true, "B's config was shredded by a teardown of A")
})

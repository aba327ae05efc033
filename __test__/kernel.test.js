'use strict'
// The kernel backend (the kernel's WireGuard module, configured over netlink): `auto` takes it
// where the module is loaded or loadable; it needs no external tool and writes no key file;
// status() reads the device; its interface outlives a SIGKILLed owner, so the watchdog (or
// the next start's sweep) removes it, and only if it is a WireGuard link.
//
// Needs a kernel with the module: this machine's has none, so `npm run test:kernel` boots one
// in a VM (scripts/test-kernel.sh) and runs this file there; elsewhere it is skipped. Like
// every suite, it runs everything inside the testbed's namespaces.
const { test, before, after } = require('node:test')
const assert = require('node:assert/strict')
const fs = require('node:fs')
const path = require('node:path')
const testbed = require('../testbed')
const { tmpdir, startAgent, runAgent, assertClean, resolvConfPath, waitClean, stateDir, linkExists, kernelModuleMissing } = require('./helpers')

const FULL = ['0.0.0.0/0', '::/0']
/** The programs the other backends and the old SDK run: none may be needed. */
const TOOLS = ['wg-quick', 'wg', 'wireguard-go', 'ip', 'nft', 'bash', 'sh', 'sysctl', 'modprobe']
/** Under TCG emulation everything is 10-30x slower than on the host. */
const SLOW = 10
const skip = kernelModuleMissing() || false
let tb
let original

before(async () => {
  if (skip) return
  tb = await testbed.up()
  original = fs.readFileSync(resolvConfPath(tb), 'utf8')
})
after(() => tb && tb.down())

/** A directory of failing stand-ins for TOOLS, each logging its call to `<dir>/calls.log`. */
function standIns(t) {
  const dir = tmpdir(t)
  const bin = path.join(dir, 'bin')
  fs.mkdirSync(bin)
  const log = path.join(dir, 'calls.log')
  for (const tool of TOOLS) {
    fs.writeFileSync(path.join(bin, tool), `#!/bin/sh\necho "${tool} $*" >> ${log}\nexit 1\n`, { mode: 0o755 })
  }
  return { bin, log, calls: () => (fs.existsSync(log) ? fs.readFileSync(log, 'utf8') : '') }
}

/** `ip -d link show dev <name>` in the cli namespace ('' when there is none). */
async function linkDetails(name) {
  const r = await tb.execCli('ip', ['-d', 'link', 'show', 'dev', name])
  return r.code === 0 ? r.stdout : ''
}

test('kernel: auto takes it; with wg-quick, wg, wireguard-go, ip, nft and bash unusable: traffic, a handshake and counters in status(), no program run, no key file', { skip }, async (t) => {
  const tmp = tmpdir(t)
  const tools = standIns(t)
  const name = `${tb.prefix}k`
  const a = startAgent(
    tb,
    {
      config: tb.tunnelConfig(0, { allowedIps: FULL, name }),
      fetch: [`http://${tb.httpTunnelHost}/kernel`],
      statusAfter: true,
      resolve: tb.dnsName,
      then: 'disconnect-on-sigusr2',
    },
    { tmp, env: { BW_PATH: `${tools.bin}:${process.env.PATH}`, BLUE_WG_BACKEND: 'auto' }, script: path.join(__dirname, 'fixtures', 'path-agent.js') },
  )
  t.after(() => a.child.kill('SIGKILL'))
  const { info, status } = await a.next('connected', 20000 * SLOW)
  assert.equal(info.backend, 'kernel')
  assert.equal(status.backend, 'kernel')
  assert.equal(info.configPath, undefined)
  assert.equal(info.fullTunnel, true)
  const fetched = await a.next('fetch', 10000 * SLOW)
  assert.equal(fetched.ok, true, JSON.stringify(fetched))
  assert.equal(JSON.parse(fetched.body).client, '10.8.0.2')
  // After traffic, the device itself reports the handshake, the counters and the endpoint.
  const after = (await a.next('status')).status
  assert.equal(typeof after.lastHandshakeAgoMs, 'number', JSON.stringify(after))
  assert.ok(after.lastHandshakeAgoMs >= 0 && after.lastHandshakeAgoMs < 60000, JSON.stringify(after))
  assert.ok(after.rxBytes > 0 && after.txBytes > 0, JSON.stringify(after))
  assert.equal(after.endpoint, '192.0.2.1:51820')
  assert.equal((await a.next('resolve')).address, tb.dnsAnswer)
  await a.next('waiting')

  // What the kernel says while it is up: a wireguard link, MTU 1280, fwmark = table, the
  // table's default route, the rules.
  const details = await linkDetails(name)
  assert.match(details, /\bwireguard\b/, details)
  assert.match(details, /mtu 1280/, details)
  assert.deepEqual(fs.readdirSync(stateDir(tb)).filter((f) => f.endsWith('.conf')), [], 'the kernel backend wrote no key file')
  assert.match(fs.readFileSync(path.join(stateDir(tb), `${name}.owner`), 'utf8'), /^backend=kernel$/m)
  const route = await tb.execCli('ip', ['-4', 'route', 'show', 'table', '51820'])
  assert.match(route.stdout, new RegExp(`^default dev ${name}`, 'm'), route.stdout)
  const rules = (await tb.execCli('ip', ['-4', 'rule', 'show'])).stdout
  assert.match(rules, /^32001:\s+not from all fwmark 0xca6c lookup 51820/m, rules)
  assert.match(rules, /^32000:\s+from all lookup main suppress_prefixlength 0/m, rules)

  a.child.kill('SIGUSR2')
  const { report } = await a.next('disconnected', 10000 * SLOW)
  assert.equal(report.gone, true, JSON.stringify(report))
  assert.deepEqual(report.steps.map((s) => s.step), ['delete link', 'rules'])
  assert.equal((await a.exited).status, 0)
  assert.equal(tools.calls(), '', 'a stand-in was run')
  assert.equal(fs.existsSync(path.join(tmp, 'sentinel-wg')), false, 'a key file directory was created')
  await assertClean(tb, name, tmp, original)
})

test('kernel: a SIGKILLed owner — its interface outlives it, and the watchdog removes it, its rules and DNS', { skip }, async (t) => {
  const tmp = tmpdir(t)
  const name = `${tb.prefix}w`
  const a = startAgent(
    tb,
    { config: tb.tunnelConfig(0, { allowedIps: FULL, name }), fetch: [`http://${tb.httpTunnelHost}/`], then: 'wait' },
    { tmp, env: { BLUE_WG_BACKEND: 'kernel' } },
  )
  t.after(() => a.child.kill('SIGKILL'))
  const { info } = await a.next('connected', 20000 * SLOW)
  assert.equal(info.backend, 'kernel')
  assert.ok(info.watchdogPid > 0)
  assert.equal((await a.next('fetch', 10000 * SLOW)).ok, true)
  await a.next('waiting')
  const rec = fs.readFileSync(path.join(stateDir(tb), `${name}.owner`), 'utf8')
  assert.match(rec, /^table=51820$/m)
  const t0 = performance.now()
  a.child.kill('SIGKILL')
  await a.exited
  const r = await waitClean(tb, { t0, boundMs: 1000 * SLOW, names: [name], tmp, original })
  assert.equal(r.clean, true, r.problems.join('; '))
  t.diagnostic(`clean ${r.ms.toFixed(0)} ms after the SIGKILL (emulated)`)
})

test('kernel: without watchdog and hooks a dead owner leaves its interface up; the next start sweeps it, never a link that is not WireGuard', { skip }, async (t) => {
  const tmp = tmpdir(t)
  const dead = `${tb.prefix}d`
  const other = `${tb.prefix}e`
  const noGuard = { BLUE_WG_BACKEND: 'kernel', BLUE_WG_NO_WATCHDOG: '1', BLUE_WG_NO_EXIT_HOOKS: '1' }
  const die = (n) => runAgent(tb, { config: tb.tunnelConfig(0, { allowedIps: FULL, name: n }), fetch: [`http://${tb.httpTunnelHost}/`], then: 'exit3' }, { tmp, env: noGuard })

  // 1. The owner is gone; its kernel interface, table route and rules are not.
  let r = await die(dead)
  assert.equal(r.exit.status, 3, r.exit.stderr)
  assert.equal(r.event('fetch').ok, true)
  assert.match(await linkDetails(dead), /\bwireguard\b/, 'the interface outlived its owner')
  const rules = (await tb.execCli('ip', ['-4', 'rule', 'show'])).stdout
  assert.equal((rules.match(/not from all fwmark 0xca6c lookup 51820/g) || []).length, 1, rules)

  // 2. The next start (another tunnel) sweeps it by its record.
  r = await runAgent(
    tb,
    { config: tb.tunnelConfig(1, { allowedIps: ['10.8.0.0/24'], name: other }), fetch: [`http://${tb.httpNodeHost}/`], then: 'disconnect' },
    { tmp, env: { BLUE_WG_BACKEND: 'kernel' } },
  )
  assert.equal(r.event('fetch').ok, true, JSON.stringify(r.events))
  assert.ok(r.event('connected').steps.includes('sweep'), JSON.stringify(r.event('connected').steps))
  assert.equal(await linkExists(tb, dead), false, 'the dead owner\'s interface was swept')
  await assertClean(tb, dead, tmp, original)
  await assertClean(tb, other, tmp, original)

  // 3. A dead owner's name now held by a link that is not WireGuard: the sweep leaves it (and
  //    the record that names it); once it is gone, the record goes too.
  r = await die(dead)
  assert.equal(r.exit.status, 3, r.exit.stderr)
  assert.equal((await tb.execCli('ip', ['link', 'delete', 'dev', dead])).code, 0)
  const veth = await tb.execCli('ip', ['link', 'add', dead, 'type', 'veth', 'peer', 'name', `${tb.prefix}p`])
  assert.equal(veth.code, 0, veth.stderr)
  t.after(() => tb.execCli('ip', ['link', 'delete', 'dev', dead]))
  r = await runAgent(tb, { config: tb.tunnelConfig(1, { allowedIps: ['10.8.0.0/24'], name: other }), then: 'disconnect' }, { tmp, env: { BLUE_WG_BACKEND: 'kernel' } })
  assert.ok(r.event('connected'), JSON.stringify(r.events))
  assert.match(await linkDetails(dead), /\bveth\b/, 'a veth was deleted by the sweep')
  assert.ok(fs.existsSync(path.join(stateDir(tb), `${dead}.owner`)), 'the record of a tunnel not removed was dropped')
  assert.equal((await tb.execCli('ip', ['link', 'delete', 'dev', dead])).code, 0)
  r = await runAgent(tb, { config: tb.tunnelConfig(1, { allowedIps: ['10.8.0.0/24'], name: other }), then: 'disconnect' }, { tmp, env: { BLUE_WG_BACKEND: 'kernel' } })
  assert.ok(r.event('connected'), JSON.stringify(r.events))
  await assertClean(tb, dead, tmp, original)
  await assertClean(tb, other, tmp, original)
})

'use strict'
// The embedded backend (WireGuard inside the process): it needs no external tool and writes
// no key file; a SIGKILLed owner's tun dies with it and the watchdog removes its rules and
// DNS; reconnects never duplicate rules; backend selection and its errors.
const { test, before, after } = require('node:test')
const assert = require('node:assert/strict')
const fs = require('node:fs')
const path = require('node:path')
const testbed = require('../testbed')
const { tmpdir, startAgent, runAgent, assertClean, resolvConfPath, waitClean, stateDir, kernelModuleMissing } = require('./helpers')

const FULL = ['0.0.0.0/0', '::/0']
/** The programs the other backends and the old SDK run: none may be needed. */
const TOOLS = ['wg-quick', 'wg', 'wireguard-go', 'ip', 'nft', 'bash', 'sh', 'sysctl']
let tb
let original

before(async () => {
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

test('embedded: works with wg-quick, wg, wireguard-go, ip, nft and bash unusable; no program run, no key file written', async (t) => {
  const tmp = tmpdir(t)
  const tools = standIns(t)
  const name = `${tb.prefix}e`
  const env = { BW_PATH: `${tools.bin}:${process.env.PATH}`, BLUE_WG_BACKEND: 'auto' }
  const r = await runAgent(
    tb,
    {
      config: tb.tunnelConfig(0, { allowedIps: FULL, name }),
      fetch: [`http://${tb.httpTunnelHost}/no-tools`],
      then: 'disconnect',
    },
    { tmp, env, script: path.join(__dirname, 'fixtures', 'path-agent.js') },
  )
  const connected = r.event('connected')
  assert.ok(connected, JSON.stringify(r.events) + r.exit.stderr)
  assert.equal(connected.info.backend, 'embedded')
  assert.equal(connected.status.backend, 'embedded')
  assert.equal(connected.info.configPath, undefined)
  assert.equal(connected.info.fullTunnel, true)
  const fetched = r.event('fetch')
  assert.equal(fetched.ok, true, JSON.stringify(fetched))
  // status() right after connect reads the device: counters exist (the handshake may not yet).
  assert.equal(typeof connected.status.rxBytes, 'number')
  assert.equal(typeof connected.status.txBytes, 'number')
  assert.equal(JSON.parse(fetched.body).client, '10.8.0.2')
  assert.equal(r.event('disconnected').report.gone, true)
  assert.equal(r.exit.status, 0, r.exit.stderr)
  assert.equal(tools.calls(), '', 'a stand-in was run')
  assert.equal(fs.existsSync(path.join(tmp, 'sentinel-wg')), false, 'a key file directory was created')
  await assertClean(tb, name, tmp, original)
})

test('embedded: a SIGKILLed owner — the tun dies with it, the watchdog removes its rules and DNS within 1 s', async (t) => {
  const tmp = tmpdir(t)
  const name = `${tb.prefix}k`
  const a = startAgent(
    tb,
    { config: tb.tunnelConfig(0, { allowedIps: FULL, name }), fetch: [`http://${tb.httpTunnelHost}/`], then: 'wait' },
    { tmp, env: { BLUE_WG_BACKEND: 'embedded' } },
  )
  t.after(() => a.child.kill('SIGKILL'))
  const { info } = await a.next('connected')
  assert.equal(info.backend, 'embedded')
  assert.ok(info.watchdogPid > 0)
  assert.equal((await a.next('fetch')).ok, true)
  await a.next('waiting')
  const rec = fs.readFileSync(path.join(stateDir(tb), `${name}.owner`), 'utf8')
  assert.match(rec, /^backend=embedded$/m)
  assert.match(rec, /^table=51820$/m)
  const t0 = performance.now()
  a.child.kill('SIGKILL')
  const r = await waitClean(tb, { t0, boundMs: 3000, names: [name], tmp, original })
  assert.equal(r.clean, true, r.problems.join('; '))
  assert.ok(r.ms < 1000, `clean after ${r.ms.toFixed(0)} ms`)
})

test('embedded: reconnects after a hook-less death never duplicate rules; each tunnel has its own table', async (t) => {
  const tmp = tmpdir(t)
  const name = `${tb.prefix}d`
  const env = { BLUE_WG_BACKEND: 'embedded', BLUE_WG_NO_WATCHDOG: '1', BLUE_WG_NO_EXIT_HOOKS: '1' }
  const plan = { config: tb.tunnelConfig(0, { allowedIps: FULL, name }), fetch: [`http://${tb.httpTunnelHost}/`], then: 'exit3' }
  for (let i = 0; i < 2; i++) {
    const r = await runAgent(tb, plan, { tmp, env })
    assert.equal(r.exit.status, 3)
    assert.equal(r.event('fetch').ok, true)
  }
  // Two deaths left one set of rules (the second start swept the first's).
  for (const fam of ['-4', '-6']) {
    const rules = (await tb.execCli('ip', [fam, 'rule', 'show'])).stdout
    assert.equal(rules.match(/suppress_prefixlength 0/g).length, 1, rules)
    assert.equal(rules.match(/not from all fwmark 0xca6c lookup 51820/g).length, 1, rules)
  }
  // Two live full tunnels: the next start sweeps the dead owner's rules and takes 51820;
  // another live agent gets 51821 and rules of its own; one going leaves the other's intact.
  const live = (i, n, extra = {}) => {
    const x = startAgent(
      tb,
      { config: tb.tunnelConfig(i, { allowedIps: FULL, name: n, dns: [] }), then: 'disconnect-on-sigusr2', ...extra },
      { tmp, env: { BLUE_WG_BACKEND: 'embedded' } },
    )
    t.after(() => x.child.kill('SIGKILL'))
    return x
  }
  const other = `${tb.prefix}o`
  const b = live(1, other, { fetch: [`http://${tb.httpTunnelHost}/`] })
  await b.next('waiting')
  assert.equal(b.events.find((e) => e.event === 'fetch').ok, true)
  const c = live(0, name)
  await c.next('waiting')
  const rules = (await tb.execCli('ip', ['-4', 'rule', 'show'])).stdout
  for (const re of [
    /^32000:\s+from all lookup main suppress_prefixlength 0/gm,
    /^32001:\s+not from all fwmark 0xca6c lookup 51820/gm,
    /^32002:\s+from all lookup main suppress_prefixlength 0/gm,
    /^32003:\s+not from all fwmark 0xca6d lookup 51821/gm,
  ]) {
    assert.equal((rules.match(re) || []).length, 1, `${re} in\n${rules}`)
  }
  c.child.kill('SIGUSR2')
  assert.equal((await c.next('disconnected')).report.gone, true)
  const left = (await tb.execCli('ip', ['-4', 'rule', 'show'])).stdout
  assert.match(left, /^32001:\s+not from all fwmark 0xca6c lookup 51820/m, left)
  assert.doesNotMatch(left, /^3200[23]:/m, left)
  b.child.kill('SIGUSR2')
  assert.equal((await b.next('disconnected')).report.gone, true)
  // Both end by themselves once disconnected: nothing of the device keeps the loop alive.
  assert.equal((await c.exited).status, 0)
  assert.equal((await b.exited).status, 0)
  await assertClean(tb, other, tmp, original)
  await assertClean(tb, name, tmp, original)
})

test('backend selection: options.backend is validated; kernel without the module is WG_NOT_AVAILABLE', { skip: kernelModuleMissing() ? false : 'this kernel has the WireGuard module (kernel.test.js covers it)' }, async (t) => {
  const tmp = tmpdir(t)
  const config = tb.tunnelConfig(0, { name: `${tb.prefix}s` })
  const js = `
    const wg = require(${JSON.stringify(path.join(__dirname, '..'))})
    const config = ${JSON.stringify(config)}
    const tryIt = (o) => wg.connect(config, o).then((i) => ({ ok: i.backend }), (e) => ({ code: e.code, message: e.message }))
    ;(async () => {
      const out = {
        bad: await tryIt({ backend: 'boringtun' }),
        notString: await tryIt({ backend: 3 }),
        kernel: await tryIt({ backend: 'kernel' }),
        availability: wg.availability(),
      }
      process.stdout.write(JSON.stringify(out))
    })()`
  const r = await tb.execCli(process.execPath, ['-e', js], { env: { TMPDIR: tmp } })
  assert.equal(r.code, 0, r.stderr)
  const out = JSON.parse(r.stdout)
  assert.equal(out.bad.code, 'INVALID_OPTIONS')
  assert.match(out.bad.message, /options\.backend/)
  assert.equal(out.notString.code, 'INVALID_OPTIONS')
  assert.equal(out.kernel.code, 'WG_NOT_AVAILABLE')
  assert.match(out.kernel.message, /no WireGuard module/)
  assert.equal(out.availability.available, true)
  assert.equal(out.availability.backends[0], 'embedded')
  await assertClean(tb, `${tb.prefix}s`, tmp, original)
})

test('wg-quick with WG_QUICK_USERSPACE_IMPLEMENTATION naming a missing file: WG_NOT_AVAILABLE that names the variable, nothing run', { skip: kernelModuleMissing() ? false : 'this kernel has the WireGuard module: wg-quick needs no userspace implementation' }, async (t) => {
  const tmp = tmpdir(t)
  const name = `${tb.prefix}u`
  const js = `
    const wg = require(${JSON.stringify(path.join(__dirname, '..'))})
    wg.connect(${JSON.stringify(tb.tunnelConfig(0, { name }))}, { backend: 'wg-quick' })
      .then((i) => process.stdout.write(JSON.stringify({ ok: i.backend })), (e) => process.stdout.write(JSON.stringify({ code: e.code, message: e.message })))`
  const r = await tb.execCli(process.execPath, ['-e', js], { env: { TMPDIR: tmp, WG_QUICK_USERSPACE_IMPLEMENTATION: '/nonexistent/wireguard-go' } })
  assert.equal(r.code, 0, r.stderr)
  const out = JSON.parse(r.stdout)
  assert.equal(out.code, 'WG_NOT_AVAILABLE', JSON.stringify(out))
  assert.match(out.message, /WG_QUICK_USERSPACE_IMPLEMENTATION="\/nonexistent\/wireguard-go" is not a file/)
  await assertClean(tb, name, tmp, original)
})

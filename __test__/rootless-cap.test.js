'use strict'
// Without root, with CAP_NET_ADMIN (issue 8 item 8): an agent running as uid/gid 65534 with
// CAP_NET_ADMIN as its only capability (ambient, as systemd AmbientCapabilities= or setpriv
// give it) brings embedded tunnels up and down, split and full without DNS; its watchdog
// (which inherits the ambient capability) cleans up after a SIGKILL; and DNS it could not
// apply is refused before anything is changed. The agents run in the testbed's cli
// namespace through setpriv; everything is checked from here as a user would.
const { test, before, after } = require('node:test')
const assert = require('node:assert/strict')
const fs = require('node:fs')
const path = require('node:path')
const testbed = require('../testbed')
const { tmpdir, startAgent, runAgent, assertClean, resolvConfPath, waitClean, nsInode, nsProcesses, linkExists, procStatus, allStateFiles } = require('./helpers')

const NOBODY = 65534
const CAP_NET_ADMIN_BIT = 1n << 12n
const FULL = ['0.0.0.0/0', '::/0']
const REPO = path.join(__dirname, '..')

/** Why these tests cannot run here, or false. */
function skipReason() {
  if (process.getuid() !== 0) return 'needs root (network namespaces, setpriv to another uid)'
  const setpriv = (process.env.PATH || '').split(':').map((d) => path.join(d, 'setpriv')).find((p) => fs.existsSync(p))
  if (!setpriv) return 'setpriv (util-linux) is not installed'
  return false
}
const skip = skipReason()

/** uid/gid 65534, no supplementary groups, CAP_NET_ADMIN inheritable and ambient (so it is
 *  effective after the exec of node, and in the watchdog node execs in turn). */
const AS_NOBODY_WITH_NET_ADMIN = ['setpriv', `--reuid=${NOBODY}`, `--regid=${NOBODY}`, '--clear-groups',
  '--inh-caps=+net_admin', '--ambient-caps=+net_admin']
/** Nothing may point the agent at another state directory than a non-root one's default. */
const ENV = { BLUE_WG_BACKEND: 'embedded', XDG_RUNTIME_DIR: undefined, BLUE_WG_STATE_DIR: undefined }

let tb
let original

before(async () => {
  if (skip) return
  // The addon, the watchdog and the path to them must be usable by uid 65534.
  for (const f of ['blue-wireguard.linux-x64-gnu.node', 'blue-wg-watchdog']) {
    for (let p = path.join(REPO, f); p !== '/'; p = path.dirname(p)) {
      const st = fs.statSync(p)
      assert.ok(st.mode & (st.isDirectory() || f === 'blue-wg-watchdog' ? 0o001 : 0o004), `${p} is not usable by others (mode ${(st.mode & 0o777).toString(8)})`)
    }
  }
  assert.ok((fs.statSync('/dev/net/tun').mode & 0o006) === 0o006, '/dev/net/tun is not read-writable by others')
  tb = await testbed.up({ nclients: 1 })
  original = fs.readFileSync(resolvConfPath(tb), 'utf8')
})
after(() => tb && tb.down())

/** A private TMPDIR the non-root agent owns: its state directory is <tmp>/blue-wireguard-65534
 *  (no XDG_RUNTIME_DIR), its config dir <tmp>/sentinel-wg. */
function nobodyTmp(t) {
  const tmp = tmpdir(t)
  fs.chownSync(tmp, NOBODY, NOBODY)
  return tmp
}

/** The non-root agent's state directory for the cli namespace. */
function nobodyState(tmp) {
  return path.join(tmp, `blue-wireguard-${NOBODY}`, `net-${nsInode(tb)}`)
}

/** Files of the non-root state directory a namespace without a tunnel must not hold. */
const stateLeft = (tmp) => allStateFiles(tb, nobodyState(tmp))

/** uid and effective capabilities of a live process, from /proc. */
function creds(pid) {
  return { uid: procStatus(pid, 'Uid').split(/\s+/).map(Number), capEff: BigInt(`0x${procStatus(pid, 'CapEff')}`) }
}

function assertNobodyWithNetAdminOnly(pid, what) {
  const c = creds(pid)
  assert.deepEqual(c.uid, [NOBODY, NOBODY, NOBODY, NOBODY], `${what}: uids ${c.uid}`)
  assert.equal(c.capEff, CAP_NET_ADMIN_BIT, `${what}: CapEff ${c.capEff.toString(16)}`)
}

/** Up as uid 65534 with CAP_NET_ADMIN, HTTP through the tunnel, look at the live tunnel,
 *  disconnect: nothing left. */
async function upAndDown(t, name, allowedIps, extra = {}) {
  const tmp = nobodyTmp(t)
  const a = startAgent(
    tb,
    { config: tb.tunnelConfig(0, { name, allowedIps, ...extra }), fetch: [`http://${tb.httpTunnelHost}/`], then: 'disconnect-on-sigusr2' },
    { tmp, env: ENV, wrap: AS_NOBODY_WITH_NET_ADMIN },
  )
  t.after(() => a.child.kill('SIGKILL'))
  const { info } = await a.next('connected')
  const fetched = await a.next('fetch')
  await a.next('waiting')
  assertNobodyWithNetAdminOnly(a.child.pid, 'the agent')
  assertNobodyWithNetAdminOnly(info.watchdogPid, 'its watchdog')
  assert.equal(info.backend, 'embedded')
  assert.equal(fetched.ok, true, JSON.stringify(fetched))
  assert.equal(JSON.parse(fetched.body).client, '10.8.0.2', 'the answer did not come through the tunnel')
  assert.equal(await linkExists(tb, name), true)
  assert.ok(fs.existsSync(path.join(nobodyState(tmp), `${name}.owner`)), `no record in ${nobodyState(tmp)}`)
  a.child.kill('SIGUSR2')
  const { report } = await a.next('disconnected')
  assert.equal(report.gone, true, JSON.stringify(report))
  const exit = await a.exited
  assert.equal(exit.status, 0, exit.stderr)
  await assertClean(tb, name, tmp, original)
  assert.deepEqual(stateLeft(tmp), [], `state left in ${nobodyState(tmp)}`)
  return { info, tmp }
}

test('as uid 65534 with CAP_NET_ADMIN: a split tunnel carries traffic, disconnect leaves nothing', { skip }, async (t) => {
  const { info } = await upAndDown(t, `${tb.prefix}s`, undefined)
  assert.equal(info.fullTunnel, false)
})

test('as uid 65534 with CAP_NET_ADMIN: a full tunnel with dns: [] carries traffic, its rules go with disconnect', { skip }, async (t) => {
  const { info } = await upAndDown(t, `${tb.prefix}f`, FULL, { dns: [] })
  assert.equal(info.fullTunnel, true)
  assert.deepEqual(info.dns, [])
  assert.equal(info.dnsMethod, undefined)
})

test('as uid 65534 with CAP_NET_ADMIN: a SIGKILLed owner is cleaned by its watchdog (interface, rules, record)', { skip }, async (t) => {
  const tmp = nobodyTmp(t)
  const name = `${tb.prefix}k`
  const a = startAgent(
    tb,
    { config: tb.tunnelConfig(0, { name, allowedIps: FULL, dns: [] }), fetch: [`http://${tb.httpTunnelHost}/`], then: 'wait' },
    { tmp, env: ENV, wrap: AS_NOBODY_WITH_NET_ADMIN },
  )
  t.after(() => a.child.kill('SIGKILL'))
  const { info } = await a.next('connected')
  assert.equal((await a.next('fetch')).ok, true)
  await a.next('waiting')
  assertNobodyWithNetAdminOnly(info.watchdogPid, 'the watchdog')
  const rules = (await tb.execCli('ip', ['-4', 'rule', 'show'])).stdout
  assert.match(rules, /suppress_prefixlength 0/, rules)
  assert.deepEqual(stateLeft(tmp), [`${name}.owner`])
  const t0 = performance.now()
  a.child.kill('SIGKILL')
  // Clean = no interface, no policy rule, no process left in the namespace (the watchdog
  // exits once it has cleaned), resolv.conf untouched.
  const r = await waitClean(tb, { t0, boundMs: 3000, names: [name], tmp, original })
  assert.equal(r.clean, true, r.problems.join('; '))
  assert.ok(r.ms < 1000, `clean after ${r.ms.toFixed(0)} ms`)
  assert.deepEqual(stateLeft(tmp), [], `state left in ${nobodyState(tmp)}`)
  assert.equal((await a.exited).status, 128 + 9)
  t.diagnostic(`clean ${r.ms.toFixed(0)} ms after the SIGKILL`)
})

test('as uid 65534 with CAP_NET_ADMIN: DNS it cannot apply is refused with WG_PERMISSION_DENIED before anything is changed', { skip }, async (t) => {
  const cases = [
    ['a full tunnel with its default DNS', { allowedIps: FULL }],
    ['a split tunnel with explicit DNS', { dns: ['10.8.0.1'] }],
  ]
  for (const [what, extra] of cases) {
    const tmp = nobodyTmp(t)
    const name = `${tb.prefix}r`
    const r = await runAgent(
      tb,
      { config: tb.tunnelConfig(0, { name, ...extra }), progress: true, then: 'disconnect' },
      { tmp, env: ENV, wrap: AS_NOBODY_WITH_NET_ADMIN },
    )
    const err = r.event('error')
    assert.ok(err, `${what}: connect did not fail: ${JSON.stringify(r.events)} ${r.exit.stderr}`)
    assert.equal(err.code, 'WG_PERMISSION_DENIED', `${what}: ${err.code}: ${err.message}`)
    // The reason and the ways out, in the message.
    assert.match(err.message, /cannot write \/etc\/resolv\.conf/)
    assert.match(err.message, /dns: \[\]/)
    assert.match(err.message, /root/)
    assert.match(err.message, /write access/)
    assert.equal(r.exit.status, 2, r.exit.stderr)
    // Refused at the preflight: no later step ran.
    const steps = r.events.filter((e) => e.event === 'progress').map((e) => e.step)
    assert.deepEqual(steps, ['validate'], `${what}: steps ${steps}`)
    // Nothing was made: no state directory (no record, no lock), no config dir, no interface,
    // no watchdog or other process, resolv.conf as it was.
    assert.deepEqual(fs.readdirSync(tmp), [], `${what}: written into TMPDIR: ${fs.readdirSync(tmp)}`)
    assert.equal(await linkExists(tb, name), false, `${what}: interface ${name} exists`)
    assert.deepEqual(nsProcesses(tb).map((p) => p.cmdline), [], `${what}: processes left`)
    await assertClean(tb, name, tmp, original)
    t.diagnostic(`${what}: ${err.message}`)
  }
})

test('as uid 65534 with CAP_NET_ADMIN and write access to resolv.conf: DNS is applied and restored', { skip }, async (t) => {
  const resolv = resolvConfPath(tb)
  const st = fs.statSync(resolv)
  fs.chownSync(resolv, NOBODY, NOBODY)
  t.after(() => fs.chownSync(resolv, st.uid, st.gid))
  const tmp = nobodyTmp(t)
  const name = `${tb.prefix}d`
  const r = await runAgent(
    tb,
    { config: tb.tunnelConfig(0, { name, allowedIps: FULL }), resolve: tb.dnsName, then: 'disconnect' },
    { tmp, env: ENV, wrap: AS_NOBODY_WITH_NET_ADMIN },
  )
  const connected = r.event('connected')
  assert.ok(connected, `${JSON.stringify(r.events)} ${r.exit.stderr}`)
  assert.equal(connected.info.dnsMethod, 'resolv.conf')
  const resolved = r.event('resolve')
  assert.equal(resolved.ok, true, JSON.stringify(resolved))
  assert.equal(resolved.address, tb.dnsAnswer)
  assert.equal(r.event('disconnected').report.gone, true)
  assert.equal(r.exit.status, 0, r.exit.stderr)
  await assertClean(tb, name, tmp, original)
  assert.deepEqual(stateLeft(tmp), [], `state left in ${nobodyState(tmp)}`)
})

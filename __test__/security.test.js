'use strict'
// Issue 7: nothing a local user or another agent prepares can steer the root agent. Each test
// is one finding of the issue, tried the way an attacker on a shared host would: the attacker's
// steps run as uid/gid 65534 (setpriv, fixtures/sec-attacker.js), the victim is the addon as
// root inside the testbed's cli namespace (fixtures/sec-ops.js, agents). This process never
// loads the addon; it prepares files, starts processes in the namespace and looks.
const { test, before, after } = require('node:test')
const assert = require('node:assert/strict')
const crypto = require('node:crypto')
const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')

const testbed = require('../testbed')
const {
  tmpdir, startAgent, linkExists, resolvConfPath, sleep, procGone, ifindex, killAgent, renderRecord,
  stateDir, stateFiles, nsInode, clientBase,
} = require('./helpers.js')

const SEC = path.join(__dirname, 'fixtures', 'sec-ops.js')
const ATTACKER = path.join(__dirname, 'fixtures', 'sec-attacker.js')
const NOBODY = 65534
/** Above PID_MAX_LIMIT (2^22): never a live process. */
const DEAD_PID = 4194999
const FULL = ['0.0.0.0/0', '::/0']
/** The attacker's nameserver: must never reach resolv.conf. */
const EVIL_NS = '203.0.113.66'

let tb
let original // the namespace's resolv.conf, bytes
let ino // the cli namespace's inode (what records name)

before(async () => {
  tb = await testbed.up({ nclients: 3 }) // client 2: the second backend's key (helpers.clientBase)
  original = fs.readFileSync(resolvConfPath(tb))
  ino = nsInode(tb)
})
after(() => tb && tb.down())

// ------------------------------------------------------------------------------ local helpers

/** A root-owned work dir (0755: the attacker may enter, not write), removed after the test. */
function workdir(t) {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), 'bwsec-'))
  fs.chmodSync(d, 0o755)
  t.after(() => fs.rmSync(d, { recursive: true, force: true }))
  return d
}

/** mkdir owned by root with exactly `mode`. */
function mkdirMode(p, mode) {
  fs.mkdirSync(p)
  fs.chmodSync(p, mode)
  return p
}

/** Run the attacker's steps as uid/gid 65534 (no supplementary groups). */
async function attacker(steps) {
  const r = await tb.execCli(
    'setpriv',
    [`--reuid=${NOBODY}`, `--regid=${NOBODY}`, '--clear-groups', process.execPath, ATTACKER],
    { input: JSON.stringify(steps) },
  )
  let out = {}
  try {
    out = JSON.parse(r.stdout.trim().split('\n').pop())
  } catch {}
  assert.equal(out.ok, true, `attacker failed: ${r.stdout} ${r.stderr}`)
  assert.equal(out.uid, NOBODY)
}

/** Run fixtures/sec-ops.js (root) in the cli namespace. Resolves { byId, lines, code, signal,
 *  stderr, timedOut }; `get(id)` returns one result line or fails with the process's stderr. */
async function runSec(ops, { tmp, env = {}, timeoutMs = 60_000, forceExit = false } = {}) {
  const r = await tb.execCli(process.execPath, [SEC], {
    env: { ...(tmp === undefined ? {} : { TMPDIR: tmp }), ...env },
    input: JSON.stringify({ ops, forceExit }),
    timeoutMs,
  })
  const lines = r.stdout.split('\n').filter(Boolean).map((l) => {
    try {
      return JSON.parse(l)
    } catch {
      return { id: '$garbage', line: l }
    }
  })
  const byId = new Map(lines.map((l) => [l.id, l]))
  const get = (id) => {
    const x = byId.get(id)
    assert.ok(x, `sec-ops gave no result for ${id} (exit ${r.code}, signal ${r.signal}, timedOut ${r.timedOut})\n` +
      `stdout: ${r.stdout}\nstderr: ${r.stderr}`)
    return x
  }
  return { byId, lines, get, code: r.code, signal: r.signal, stderr: r.stderr, timedOut: r.timedOut }
}

/** Every entry under `root` (lstat, not followed): type, owner, mode, inode, size, mtime, and
 *  the content's hash or the link's target. Equal snapshots = nothing read-write touched. */
function snapshot(root) {
  const out = {}
  const walk = (rel) => {
    const p = path.join(root, rel)
    const st = fs.lstatSync(p)
    const type = st.isSymbolicLink() ? 'link' : st.isDirectory() ? 'dir' : st.isFile() ? 'file' : st.isFIFO() ? 'fifo' : 'other'
    const e = { type, uid: st.uid, mode: (st.mode & 0o7777).toString(8), ino: st.ino, size: st.size, mtimeMs: st.mtimeMs }
    if (type === 'file') e.sha256 = crypto.createHash('sha256').update(fs.readFileSync(p)).digest('hex')
    if (type === 'link') e.target = fs.readlinkSync(p)
    out[rel || '.'] = e
    if (type === 'dir') for (const f of fs.readdirSync(p).sort()) walk(path.join(rel, f))
  }
  walk('')
  return out
}

/** Create a link in the cli namespace (`ip <args>`), deleted after the test. */
async function addLink(t, name, args) {
  const r = await tb.execCli('ip', args)
  assert.equal(r.code, 0, `ip ${args.join(' ')}: ${r.stderr}`)
  t.after(() => tb.execCli('ip', ['link', 'delete', 'dev', name]))
  const idx = await ifindex(tb, name)
  assert.ok(idx > 0)
  return idx
}

/** A wg-quick file of the SDK's shape for testbed client `i`, with extra [Interface] lines. */
function wgQuickText({ i = 0, allowedIps = ['10.8.0.1/32'], extra = [] } = {}) {
  const c = tb.clients[i]
  return [
    '[Interface]',
    `PrivateKey = ${c.privateKey}`,
    `Address = ${c.address}`,
    'MTU = 1280',
    ...extra,
    '',
    '[Peer]',
    `PublicKey = ${tb.serverPublicKey}`,
    `Endpoint = ${tb.endpoint}`,
    `AllowedIPs = ${allowedIps.join(', ')}`,
    'PersistentKeepalive = 15',
    '',
  ].join('\n')
}

/** A forged ownership record: a dead owner in the cli namespace. */
function forgedRecord(name, confPath) {
  return renderRecord({
    name, pid: DEAD_PID, startTime: 4242, netns: ino, confPath, fullTunnel: true, dns: [EVIL_NS],
  })
}

/** A live agent (another SDK process) with a tunnel; SIGKILLed after the test if still alive. */
async function liveAgent(t, config, { env = {} } = {}) {
  const tmp = tmpdir(t)
  const a = startAgent(tb, { config, then: 'wait' }, { tmp, env })
  t.after(() => killAgent(a))
  const ev = await a.next('connected', 30_000)
  await a.next('waiting')
  return { a, info: ev.info, tmp }
}

/** A real tunnel whose owner is dead (no watchdog, SIGKILLed): the interface stays. Made by the
 *  wg-quick backend: only its interface outlives its owner (an embedded tun dies with it). */
async function deadOwnerTunnel(t, name) {
  const { a, info } = await liveAgent(t, tb.tunnelConfig(clientBase('wg-quick', 2), { name }), { env: { BLUE_WG_NO_WATCHDOG: '1', BLUE_WG_BACKEND: 'wg-quick' } })
  a.child.kill('SIGKILL')
  await a.exited
  t.after(() => tb.execCli('ip', ['link', 'delete', 'dev', name])) // only if a check failed
  assert.equal(await linkExists(tb, name), true, 'a SIGKILLed owner without a watchdog leaves its interface')
  return info
}

/** Poll `pred` (async) every 20 ms up to `boundMs`; true once it held. */
async function eventually(pred, boundMs = 3000) {
  const end = Date.now() + boundMs
  for (;;) {
    if (await pred()) return true
    if (Date.now() > end) return false
    await sleep(20)
  }
}

const markersIn = (dir) => fs.readdirSync(dir)

// ------------------------------------------------------------------------------ finding 1

test('finding 1: a sentinel-wg dir another user prepared in a shared /tmp is never read, run or shredded', async (t) => {
  // How the attacker's directory comes to be <TMPDIR>/sentinel-wg:
  //  'nobody-0700' / 'nobody-0777': they made it in a sticky, world-writable TMPDIR (like /tmp);
  //  'symlink': sentinel-wg is their link to a directory of theirs;
  //  'loose-parent': a root-owned 0700 sentinel-wg with root-owned files, but in a TMPDIR that
  //  is world-writable without the sticky bit (anyone could have swapped it in).
  // Each kind gets its own victims, so one that falls does not hide the next.
  let i = 0
  for (const kind of ['nobody-0700', 'nobody-0777', 'symlink', 'loose-parent']) {
    const W = `${tb.prefix}w${i}` // a real tunnel of another live agent (full, with DNS)
    const V = `${tb.prefix}f${i++}` // a veth the forged records name
    const K = `${tb.prefix}k` // what the victim tries to connect
    await t.test(kind, async (t) => {
      const w = await liveAgent(t, tb.tunnelConfig(1, { name: W, allowedIps: FULL }))
      assert.equal(w.info.dnsMethod, 'resolv.conf')
      const wIndex = await ifindex(tb, W)
      const vIndex = await addLink(t, V, ['link', 'add', V, 'type', 'veth', 'peer', 'name', `${V}p`])
      const resolvDuring = fs.readFileSync(resolvConfPath(tb)) // W's DNS: the victim must not touch it
      assert.match(resolvDuring.toString('latin1'), /nameserver 10\.8\.0\.1/)
      t.after(() => fs.writeFileSync(resolvConfPath(tb), original)) // only matters if a check failed

      const work = workdir(t)
      const markers = mkdirMode(path.join(work, 'markers'), 0o777)
      const shared = mkdirMode(path.join(work, 'shared'), kind === 'loose-parent' ? 0o777 : 0o1777)
      const cdir = path.join(shared, 'sentinel-wg')
      const files = (dir) => {
        const f = []
        for (const n of [V, W]) {
          const m = (s) => `touch ${path.join(markers, `${n}-${s}`)}`
          f.push([`${n}.owner`, forgedRecord(n, path.join(cdir, `${n}.conf`))])
          f.push([`${n}.conf`, wgQuickText({ extra: [`PreDown = ${m('predown')}`, `PostDown = ${m('postdown')}`] })])
          f.push([`${n}.resolv`, `# attacker\nnameserver ${EVIL_NS}\n`])
          f.push([`${n}.dns`, 'resolv.conf'])
        }
        return f.map(([n, text]) => ({ write: path.join(dir, n), text, mode: 0o644 }))
      }
      if (kind === 'nobody-0700' || kind === 'nobody-0777') {
        await attacker([{ mkdir: cdir, mode: kind === 'nobody-0700' ? 0o700 : 0o777 }, ...files(cdir)])
      } else if (kind === 'symlink') {
        const real = path.join(shared, 'mine')
        await attacker([{ mkdir: real, mode: 0o700 }, ...files(real), { symlink: real, path: cdir }])
      } else {
        mkdirMode(cdir, 0o700)
        for (const f of files(cdir)) fs.writeFileSync(f.write, f.text, { mode: 0o600 })
      }
      const before = snapshot(shared)

      const res = await runSec([
        { id: 'start', op: 'emergency' }, // what the SDK calls at every start
        { id: 'disconnectV', op: 'disconnect', args: [V] },
        { id: 'disconnectW', op: 'disconnect', args: [W] },
        { id: 'teardownV', op: 'teardown', args: [V, path.join(cdir, `${V}.conf`)] },
        { id: 'teardownW', op: 'teardown', args: [W, path.join(cdir, `${W}.conf`)] },
        { id: 'compatEmergency', op: 'compatEmergency' },
        { id: 'uninstallV', op: 'compatUninstall', args: [V] },
        { id: 'uninstallW', op: 'compatUninstall', args: [W] },
        { id: 'connect', op: 'connect', args: [tb.tunnelConfig(clientBase('embedded', 2), { name: K }), { backend: 'embedded' }], undo: true },
        { id: 'connectQ', op: 'connect', args: [tb.tunnelConfig(clientBase('wg-quick', 2), { name: K }), { backend: 'wg-quick' }], undo: true },
        { id: 'prepare', op: 'prepareConfigDir' },
        { id: 'again', op: 'emergency' },
        { id: 'exit', op: 'exit', code: 0 }, // the exit hooks run
      ], { tmp: shared })
      const start = res.get('start').call
      t.diagnostic(`emergencyCleanupSync(): ${JSON.stringify(start)}`)
      // A second victim that dies of SIGTERM (the signal hook cleans up, re-raises).
      const res2 = await runSec([{ id: 'e', op: 'emergency' }, { id: 'sig', op: 'signal', sig: 'SIGTERM' }], { tmp: shared })
      res2.get('sig')
      await sleep(300) // a hook or a watchdog that ran anything would have done it by now

      // What a user checks: nothing of theirs ran, nothing was deleted or rewritten.
      assert.deepEqual(markersIn(markers), [], 'a PreDown/PostDown of the attacker ran as root')
      assert.equal(await ifindex(tb, V), vIndex, 'the veth the forged record names was deleted or replaced')
      assert.equal(await linkExists(tb, `${V}p`), true, 'the veth peer is gone')
      assert.equal(await ifindex(tb, W), wIndex, "another live agent's tunnel was removed")
      assert.equal(procGone(w.a.child.pid), false)
      assert.deepEqual(fs.readFileSync(resolvConfPath(tb)), resolvDuring, 'resolv.conf was rewritten')
      assert.deepEqual(snapshot(shared), before, 'the forged files were touched (shredded, rewritten, removed, added to)')
      assert.equal(await linkExists(tb, K), false)

      // And the caller learns why.
      assert.equal(start.ok, true, JSON.stringify(start))
      assert.equal(typeof start.value, 'object', `emergencyCleanupSync() returned ${JSON.stringify(start.value)}`)
      assert.ok(
        start.value.warnings.some((w) => w.includes(cdir)),
        `no warning names ${cdir}: ${JSON.stringify(start.value.warnings)}`,
      )
      assert.ok(!start.value.removed.some((r) => [V, W].includes(r.name)), JSON.stringify(start.value.removed))
      const call = (id) => res.get(id).call
      assert.equal(call('disconnectV').ok, false, JSON.stringify(call('disconnectV')))
      assert.equal(call('disconnectV').error.code, 'WG_NAME_IN_USE')
      assert.equal(call('disconnectW').ok, false, JSON.stringify(call('disconnectW')))
      assert.equal(call('disconnectW').error.code, 'WG_NAME_IN_USE')
      assert.match(call('disconnectW').error.message, new RegExp(`live process ${w.a.child.pid}\\b`))
      for (const id of ['teardownV', 'teardownW']) {
        assert.equal(call(id).ok, true, JSON.stringify(call(id)))
        assert.equal(call(id).value.gone, false, `${id}: ${JSON.stringify(call(id).value)}`)
        assert.ok(call(id).value.steps.every((s) => !s.ran), `${id} ran a step: ${JSON.stringify(call(id).value.steps)}`)
      }
      for (const id of ['compatEmergency', 'uninstallV', 'uninstallW']) assert.equal(call(id).ok, true, JSON.stringify(call(id)))
      // connect does not need the directory (the embedded backend writes no key file, the
      // wg-quick backend's lives in the root-only state dir), so a prepared one can neither
      // stop it nor receive its key (checked by the snapshot).
      assert.equal(call('connect').ok, true, JSON.stringify(call('connect')))
      assert.equal(call('connect').value.configPath, undefined, call('connect').value.configPath)
      assert.equal(call('connectQ').ok, true, JSON.stringify(call('connectQ')))
      assert.ok(!call('connectQ').value.configPath.startsWith(cdir), call('connectQ').value.configPath)
      assert.ok(call('connectQ').value.configPath.startsWith(stateDir(tb)), call('connectQ').value.configPath)
      assert.equal(call('prepare').ok, false, JSON.stringify(call('prepare')))
      assert.equal(call('prepare').error.code, 'WG_CONFIG_DIR_UNSAFE')
      assert.ok(res.get('again').call.value.warnings.length > 0)

      // The other agent's tunnel was never disturbed: its owner still takes it down cleanly.
      w.a.child.kill('SIGTERM')
      assert.equal((await w.a.exited).status, 143)
      assert.equal(await linkExists(tb, W), false)
      assert.deepEqual(fs.readFileSync(resolvConfPath(tb)), original, 'resolv.conf did not come back to the original')
    })
  }
})

test('finding 1: a BLUE_WG_STATE_DIR that another user owns, or that is group-writable, is refused and never read', async (t) => {
  let i = 0
  for (const kind of ['owned-by-nobody', 'group-writable']) {
    const S = `${tb.prefix}s${i++}` // another live agent's real tunnel
    const K = `${tb.prefix}k`
    await t.test(kind, async (t) => {
      const s = await liveAgent(t, tb.tunnelConfig(0, { name: S }))
      const sIndex = await ifindex(tb, S)
      const resolvBefore = fs.readFileSync(resolvConfPath(tb))
      const work = workdir(t)
      const markers = mkdirMode(path.join(work, 'markers'), 0o777)
      const pub = mkdirMode(path.join(work, 'pub'), 0o1777)
      const root = path.join(pub, 'state')
      const nsDir = path.join(root, `net-${ino}`)
      const conf = path.join(root, `${S}.conf`)
      const forged = [
        [path.join(nsDir, `${S}.owner`), forgedRecord(S, conf)],
        [path.join(nsDir, `${S}.dns`), `method resolv.conf\nseq 1\nserver ${EVIL_NS}\n`],
        [path.join(nsDir, 'resolv.orig'), `blue-wireguard original v1 file 0644\nnameserver ${EVIL_NS}\n`],
        [conf, wgQuickText({ extra: [`PreDown = touch ${markers}/predown`, `PostDown = touch ${markers}/postdown`] })],
      ]
      if (kind === 'owned-by-nobody') {
        await attacker([
          { mkdir: root, mode: 0o700 },
          { mkdir: nsDir, mode: 0o700 },
          ...forged.map(([p, text]) => ({ write: p, text, mode: 0o600 })),
        ])
      } else {
        mkdirMode(root, 0o770)
        mkdirMode(nsDir, 0o700)
        for (const [p, text] of forged) fs.writeFileSync(p, text, { mode: 0o600 })
      }
      const before = snapshot(root)
      const tmp = tmpdir(t)
      const res = await runSec([
        { id: 'start', op: 'emergency' },
        { id: 'compatEmergency', op: 'compatEmergency' },
        { id: 'disconnect', op: 'disconnect', args: [S] },
        { id: 'connect', op: 'connect', args: [tb.tunnelConfig(1, { name: K })], undo: true },
        { id: 'exit', op: 'exit', code: 0 },
      ], { tmp, env: { BLUE_WG_STATE_DIR: root } })
      await sleep(300)

      assert.deepEqual(markersIn(markers), [], 'the forged config ran as root')
      assert.equal(await ifindex(tb, S), sIndex, "a forged record removed another live agent's tunnel")
      assert.equal(procGone(s.a.child.pid), false)
      assert.deepEqual(fs.readFileSync(resolvConfPath(tb)), resolvBefore, 'resolv.conf was rewritten')
      assert.deepEqual(snapshot(root), before, 'the untrusted state dir was written to')
      assert.equal(await linkExists(tb, K), false)

      const start = res.get('start').call
      t.diagnostic(JSON.stringify(start))
      assert.equal(typeof start.value, 'object', JSON.stringify(start))
      assert.deepEqual(start.value.removed, [])
      assert.ok(start.value.warnings.some((w) => w.includes(root)), `no warning names ${root}: ${JSON.stringify(start.value.warnings)}`)
      assert.equal(res.get('compatEmergency').call.ok, true)
      const d = res.get('disconnect').call
      assert.equal(d.ok, false, `disconnect(${S}) with an untrusted state dir: ${JSON.stringify(d)}`)
      const c = res.get('connect').call
      assert.equal(c.ok, false, JSON.stringify(c))
      assert.equal(c.error.code, 'WG_CONFIG_DIR_UNSAFE')
      s.a.child.kill('SIGTERM')
      assert.equal((await s.a.exited).status, 143)
      assert.equal(await linkExists(tb, S), false)
    })
  }
})

// ------------------------------------------------------------------------------ finding 2

test("finding 2: teardownLinuxInterface(name, conf) never hands wg-quick a file it cannot trust; the interface still goes", async (t) => {
  const cases = {
    // (a) the attacker's own file, in their own directory, with a PostDown
    'a file of uid 65534 in its own dir': async (name, work, markers) => {
      const pub = mkdirMode(path.join(work, 'pub'), 0o1777)
      const dir = path.join(pub, 'evil')
      const conf = path.join(dir, `${name}.conf`)
      await attacker([
        { mkdir: dir, mode: 0o755 },
        { write: conf, mode: 0o644, text: wgQuickText({ extra: [`PreDown = touch ${markers}/predown`, `PostDown = touch ${markers}/postdown`] }) },
      ])
      return { conf, why: /not trusted|uid 65534/, watch: dir }
    },
    // (b) root's own file in a private dir, but with a hook the strict parser refuses
    'a root file in a private dir with PostDown': async (name, work, markers) => {
      const dir = mkdirMode(path.join(work, 'priv'), 0o700)
      const conf = path.join(dir, `${name}.conf`)
      fs.writeFileSync(conf, wgQuickText({ extra: [`PostDown = touch ${markers}/postdown`] }), { mode: 0o600 })
      return { conf, why: /PostDown/ }
    },
    // (c) SaveConfig = true with a planted <file>.tmp link: wg-quick would write the key through it
    'a root file with SaveConfig and a planted .tmp link': async (name, work) => {
      const dir = mkdirMode(path.join(work, 'priv'), 0o700)
      const conf = path.join(dir, `${name}.conf`)
      fs.writeFileSync(conf, wgQuickText({ extra: ['SaveConfig = true'] }), { mode: 0o600 })
      const target = path.join(work, 'victim-file')
      fs.writeFileSync(target, 'must stay as it is\n', { mode: 0o644 })
      fs.symlinkSync(target, `${conf}.tmp`)
      return { conf, why: /SaveConfig/, target, link: `${conf}.tmp` }
    },
  }
  let n = 0
  for (const [label, prepare] of Object.entries(cases)) {
    await t.test(label, async (t) => {
      const name = `${tb.prefix}t${n++}`
      const work = workdir(t)
      const markers = mkdirMode(path.join(work, 'markers'), 0o777)
      await deadOwnerTunnel(t, name)
      const c = await prepare(name, work, markers)
      const watched = c.watch ? snapshot(c.watch) : null
      const t0 = Date.now()
      const res = await runSec([{ id: 'td', op: 'teardown', args: [name, c.conf] }], { tmp: tmpdir(t) })
      const r = res.get('td').call
      t.diagnostic(`${Date.now() - t0} ms: ${JSON.stringify(r)}`)
      await sleep(200)

      assert.deepEqual(markersIn(markers), [], "the config's hook ran as root")
      if (c.target) {
        assert.equal(fs.readFileSync(c.target, 'utf8'), 'must stay as it is\n', 'wg-quick wrote through the planted .tmp link')
        assert.equal(fs.readlinkSync(c.link), c.target, 'the planted link was replaced (wg-quick ran its save_config)')
      }
      if (watched) assert.deepEqual(snapshot(c.watch), watched, "the attacker's file was touched (shredded?)")
      assert.equal(await linkExists(tb, name), false, 'the interface is still there')
      assert.equal(r.ok, true, JSON.stringify(r))
      const rep = r.value
      assert.equal(rep.existed, true)
      assert.equal(rep.gone, true, JSON.stringify(rep))
      const step1 = rep.steps.find((s) => s.step === 'wg-quick down <conf>')
      assert.ok(step1, `no wg-quick down <conf> step: ${JSON.stringify(rep.steps)}`)
      assert.equal(step1.ran, false, `wg-quick ran the untrusted file: ${JSON.stringify(step1)}`)
      assert.match(step1.detail, c.why)
      const del = rep.steps.find((s) => s.step === 'ip link delete')
      assert.equal(del?.ran, true, JSON.stringify(rep.steps))
      assert.equal(del.ok, true, del.detail)
      if (c.watch) assert.equal(rep.configRemoved, false, 'an untrusted config was shredded')
      assert.equal(rep.configRemoved, !fs.existsSync(c.conf))
      assert.deepEqual(stateFiles(tb, name), [], 'the dead owner\'s record was left')
    })
  }
})

// ------------------------------------------------------------------------------ finding 3

/**
 * Every path that could delete `links` (name -> ifindex), from a process that did not create
 * them: disconnect, teardownLinuxInterface (with and without a trusted config of that name),
 * compat uninstallWgTunnel, connect over the name, emergencyCleanupSync (before and after) and
 * the compat one. Then: each link still exists with the same ifindex, and each call said why.
 */
async function nonWireGuardSurvives(t, links, work) {
  const priv = mkdirMode(path.join(work, 'priv'), 0o700)
  for (const n of Object.keys(links)) fs.writeFileSync(path.join(priv, `${n}.conf`), wgQuickText(), { mode: 0o600 })
  const ops = [{ id: 'start', op: 'emergency' }]
  for (const n of Object.keys(links)) {
    ops.push(
      { id: `disconnect ${n}`, op: 'disconnect', args: [n] },
      { id: `teardown ${n}`, op: 'teardown', args: [n] },
      { id: `teardown ${n} conf`, op: 'teardown', args: [n, path.join(priv, `${n}.conf`)] },
      { id: `uninstall ${n}`, op: 'compatUninstall', args: [n] },
      { id: `connect ${n}`, op: 'connect', args: [tb.tunnelConfig(0, { name: n })], undo: true },
    )
  }
  ops.push({ id: 'compatEmergency', op: 'compatEmergency' }, { id: 'end', op: 'emergency' })
  const tmp = tmpdir(t)
  const res = await runSec(ops, { tmp })

  const gone = []
  for (const [n, idx] of Object.entries(links)) if ((await ifindex(tb, n)) !== idx) gone.push(n)
  if (gone.length) {
    // Say which call deleted it: the first that reports ran steps for it.
    const culprits = res.lines
      .filter((l) => l.call && JSON.stringify(l.call).includes('"ip link delete","ran":true'))
      .map((l) => l.id)
    assert.fail(`deleted or replaced: ${gone.join(', ')}; calls that ran 'ip link delete': ${culprits.join(', ')}`)
  }
  // A refused connect leaves no key file behind.
  const keys = fs.existsSync(path.join(tmp, 'sentinel-wg')) ? fs.readdirSync(path.join(tmp, 'sentinel-wg')) : []
  assert.deepEqual(keys, [], 'a refused connect left its key file')
  for (const n of Object.keys(links)) {
    const d = res.get(`disconnect ${n}`).call
    assert.equal(d.ok, false, `disconnect(${n}): ${JSON.stringify(d)}`)
    assert.equal(d.error.code, 'WG_NAME_IN_USE')
    assert.match(d.error.message, /not a WireGuard interface/)
    for (const id of [`teardown ${n}`, `teardown ${n} conf`]) {
      const r = res.get(id).call
      assert.equal(r.ok, true, JSON.stringify(r))
      assert.equal(r.value.existed, true, id)
      assert.equal(r.value.gone, false, `${id}: ${JSON.stringify(r.value)}`)
      assert.ok(r.value.steps.every((s) => !s.ran), `${id} ran: ${JSON.stringify(r.value.steps)}`)
      assert.ok(r.value.steps.some((s) => /not a WireGuard interface/.test(s.detail)), JSON.stringify(r.value.steps))
      assert.equal(r.value.configRemoved, false)
    }
    assert.equal(res.get(`uninstall ${n}`).call.ok, true)
    assert.ok(res.get(`uninstall ${n}`).consoleWarn.some((w) => w.includes(n)), 'uninstallWgTunnel said nothing')
    const c = res.get(`connect ${n}`).call
    assert.equal(c.ok, false, JSON.stringify(c))
    assert.equal(c.error.code, 'WG_NAME_IN_USE', `connect({name: ${n}}): ${JSON.stringify(c.error)}`)
    assert.ok(fs.existsSync(path.join(priv, `${n}.conf`)), `root's config of ${n} was shredded`)
  }
  for (const id of ['start', 'end']) {
    const e = res.get(id).call
    assert.equal(e.ok, true, JSON.stringify(e))
    for (const r of e.value?.removed ?? []) assert.equal(r.gone, !Object.keys(links).includes(r.name), JSON.stringify(r))
  }
  return res
}

test('finding 3: a veth, a bridge or a plain TUN is never deleted by disconnect, teardown, compat, connect or the sweep', async (t) => {
  const links = {}
  const V = `${tb.prefix}v`
  links[V] = await addLink(t, V, ['link', 'add', V, 'type', 'veth', 'peer', 'name', `${V}p`])
  const B = `${tb.prefix}br`
  const br = await tb.execCli('ip', ['link', 'add', B, 'type', 'bridge'])
  if (br.code === 0) {
    t.after(() => tb.execCli('ip', ['link', 'delete', 'dev', B]))
    links[B] = await ifindex(tb, B)
  } else {
    t.diagnostic(`no bridge here: ${br.stderr.trim()}`)
  }
  const T = `${tb.prefix}tn`
  links[T] = await addLink(t, T, ['tuntap', 'add', 'dev', T, 'mode', 'tun'])
  await nonWireGuardSurvives(t, links, workdir(t))
  assert.equal(await linkExists(tb, `${V}p`), true)
})

test("finding 3: a veth that a dead owner's record names (a reused name) is refused too, connect included", async (t) => {
  const V = `${tb.prefix}v`
  const links = { [V]: await addLink(t, V, ['link', 'add', V, 'type', 'veth', 'peer', 'name', `${V}p`]) }
  // The record is root's own, in the real state dir: its owner died, and the name now belongs
  // to a veth. Only the link check stands between the sweep and the veth.
  const sdir = stateDir(tb)
  const made = []
  for (const d of ['/run/blue-wireguard', sdir]) if (!fs.existsSync(d)) made.unshift(mkdirMode(d, 0o700))
  const rec = path.join(sdir, `${V}.owner`)
  const work = workdir(t)
  fs.writeFileSync(rec, forgedRecord(V, path.join(work, 'priv', `${V}.conf`)), { mode: 0o600 })
  t.after(() => {
    fs.rmSync(rec, { force: true })
    for (const d of made) {
      try {
        fs.rmdirSync(d) // only if empty: the addon's own files there are testbed.sh down's
      } catch {}
    }
  })
  await nonWireGuardSurvives(t, links, work)
  // No record now claims the veth for a process that never had it.
  const left = fs.existsSync(rec) ? fs.readFileSync(rec, 'utf8') : ''
  assert.ok(left === '' || left.includes(`pid=${DEAD_PID}\n`), `a record now names another owner for ${V}:\n${left}`)
})

test("finding 3: a plain TUN named like another namespace's wireguard-go interface is not taken for WireGuard", async (t) => {
  // The testbed node's wireguard-go serves <prefix>n in the node namespace; its root-owned
  // control socket is in /run/wireguard, which every namespace shares. A TUN of that name in
  // the cli namespace (say, another VPN's) is not served by it.
  const N = `${tb.prefix}n`
  assert.ok(fs.statSync(`/run/wireguard/${N}.sock`).isSocket(), 'the node has no wireguard-go socket')
  const links = { [N]: await addLink(t, N, ['tuntap', 'add', 'dev', N, 'mode', 'tun']) }
  await nonWireGuardSurvives(t, links, workdir(t))
})

// ------------------------------------------------------------------------------ finding 5

/**
 * One full tunnel with the default DNS; while it is up resolv.conf (`file`) shows the tunnel's
 * servers. Then the owner disconnects ('disconnect') or is SIGKILLed with its watchdog on
 * ('sigkill'); resolves once the interface and the watchdog are gone.
 */
async function dnsRound(t, { name, how, env = {}, file }) {
  const tmp = tmpdir(t)
  const a = startAgent(
    tb,
    { config: tb.tunnelConfig(0, { name, allowedIps: FULL }), then: how === 'disconnect' ? 'disconnect-on-sigusr2' : 'wait' },
    { tmp, env },
  )
  t.after(() => killAgent(a))
  const ev = await a.next('connected', 30_000)
  await a.next('waiting')
  assert.equal(ev.info.dnsMethod, 'resolv.conf')
  assert.match(fs.readFileSync(file, 'latin1'), /nameserver 10\.8\.0\.1/, 'the tunnel DNS was not applied')
  if (how === 'disconnect') {
    a.child.kill('SIGUSR2')
    const d = await a.next('disconnected')
    assert.equal(d.report.gone, true, JSON.stringify(d.report))
    await a.exited
  } else {
    assert.ok(ev.info.watchdogPid > 0)
    a.child.kill('SIGKILL')
    await a.exited
    const clean = await eventually(async () => procGone(ev.info.watchdogPid) && !(await linkExists(tb, name)), 5000)
    assert.ok(clean, 'the watchdog did not remove the tunnel of the SIGKILLed owner')
  }
}

const show = (b) => (b === null ? 'absent' : JSON.stringify(b.toString('latin1')))

for (const [label, bytes] of [
  ['Latin-1 bytes (not UTF-8)', Buffer.from('# caf\xe9 \xab r\xe9seau \xbb\nnameserver 192.0.2.53\n', 'latin1')],
  ['the old header as its first line', Buffer.from("# blue-wireguard tunnel DNS for x; lines starting '#~ ' are the original file\nnameserver 192.0.2.53\n#~ nameserver 198.51.100.7\n")],
  ['no final newline, CRLF and a NUL', Buffer.from('nameserver 192.0.2.53\r\noptions ndots:2\u0000x', 'latin1')],
]) {
  test(`finding 5: resolv.conf holding ${label} comes back byte for byte (disconnect, and SIGKILL of the owner)`, async (t) => {
    const file = resolvConfPath(tb)
    t.after(() => fs.writeFileSync(file, original))
    for (const how of ['disconnect', 'sigkill']) {
      fs.writeFileSync(file, bytes)
      fs.chmodSync(file, 0o644)
      await dnsRound(t, { name: `${tb.prefix}d`, how, file })
      const after = fs.readFileSync(file)
      assert.ok(after.equals(bytes), `${how}: resolv.conf is ${show(after)}, was ${show(bytes)}`)
      assert.equal(fs.statSync(file).mode & 0o7777, 0o644, `${how}: mode changed`)
    }
  })
}

test('finding 5: a header of our own current format (this namespace) in a user file comes back byte for byte', async (t) => {
  const file = resolvConfPath(tb)
  t.after(() => fs.writeFileSync(file, original))
  const bytes = Buffer.from(`# blue-wireguard tunnel DNS (net ${ino}, tunnel x); do not edit\nnameserver 192.0.2.53\n`)
  fs.writeFileSync(file, bytes)
  await dnsRound(t, { name: `${tb.prefix}d`, how: 'disconnect', file })
  const after = fs.readFileSync(file)
  assert.ok(after.equals(bytes), `resolv.conf is ${show(after)}`)
})

test('finding 5 (BLUE_WG_RESOLV_CONF): an absent resolv.conf stays absent, a symlink (dangling or not) stays the same link, its target byte for byte', async (t) => {
  const work = workdir(t)
  for (const how of ['disconnect', 'sigkill']) {
    await t.test(`absent, ${how}`, async (t) => {
      const etc = mkdirMode(path.join(work, `etc-absent-${how}`), 0o755)
      const file = path.join(etc, 'resolv.conf')
      await dnsRound(t, { name: `${tb.prefix}d`, how, file, env: { BLUE_WG_RESOLV_CONF: file } })
      assert.equal(fs.existsSync(file), false, `an absent resolv.conf came back as ${show(fs.existsSync(file) ? fs.readFileSync(file) : null)}`)
      assert.deepEqual(fs.readdirSync(etc), [], 'files left beside resolv.conf')
    })
    await t.test(`dangling symlink, ${how}`, async (t) => {
      const etc = mkdirMode(path.join(work, `etc-link-${how}`), 0o755)
      const file = path.join(etc, 'resolv.conf')
      const target = path.join(etc, 'run', 'resolvconf', 'resolv.conf') // does not exist
      fs.symlinkSync(target, file)
      await dnsRound(t, { name: `${tb.prefix}d`, how, file, env: { BLUE_WG_RESOLV_CONF: file } })
      const st = fs.lstatSync(file, { throwIfNoEntry: false })
      assert.ok(st?.isSymbolicLink(), `resolv.conf is no longer a symlink (${st ? 'a regular file' : 'absent'})`)
      assert.equal(fs.readlinkSync(file), target)
      assert.equal(fs.existsSync(target), false, 'the link target was created')
      assert.deepEqual(fs.readdirSync(etc), ['resolv.conf'], 'files left beside resolv.conf')
    })
    await t.test(`symlink to a file, ${how}`, async (t) => {
      const etc = mkdirMode(path.join(work, `etc-tofile-${how}`), 0o755)
      const file = path.join(etc, 'resolv.conf')
      const run = mkdirMode(path.join(etc, 'run'), 0o755)
      const target = path.join(run, 'stub-resolv.conf')
      const bytes = Buffer.from('# managed elsewhere \xe9\nnameserver 192.0.2.53\n', 'latin1')
      fs.writeFileSync(target, bytes, { mode: 0o644 })
      fs.symlinkSync(target, file)
      await dnsRound(t, { name: `${tb.prefix}d`, how, file, env: { BLUE_WG_RESOLV_CONF: file } })
      assert.ok(fs.lstatSync(file).isSymbolicLink(), 'resolv.conf is no longer a symlink')
      assert.equal(fs.readlinkSync(file), target)
      const after = fs.readFileSync(target)
      assert.ok(after.equals(bytes), `the link's target is ${show(after)}`)
      assert.deepEqual(fs.readdirSync(etc).sort(), ['resolv.conf', 'run'], 'files left beside resolv.conf')
      assert.deepEqual(fs.readdirSync(run), ['stub-resolv.conf'], 'files left beside the target')
    })
  }
  assert.deepEqual(fs.readFileSync(resolvConfPath(tb)), original, "the namespace's own resolv.conf was touched")
})

// ------------------------------------------------------------------------------ finding 8 and others

test('finding 8: a FIFO named <name>.conf is refused at once, 10 at once do not exhaust the pool', async (t) => {
  const work = workdir(t)
  const dir = mkdirMode(path.join(work, 'priv'), 0o700)
  const fifo = path.join(dir, `${tb.prefix}q.conf`)
  const mk = await tb.execCli('mkfifo', ['-m', '600', fifo])
  assert.equal(mk.code, 0, mk.stderr)
  const N = `${tb.prefix}m` // not <prefix>n: that is the testbed node's wireguard-go (its socket is shared)
  const res = await runSec([
    { id: 'one', op: 'connectFile', args: [fifo], timeoutMs: 3000 },
    { id: 'compat', op: 'compatInstall', args: [fifo], timeoutMs: 3000 },
    { id: 'burst', op: 'fifoBurst', path: fifo, n: 10, timeoutMs: 3000 },
    { id: 'normal', op: 'connect', args: [tb.tunnelConfig(0, { name: N })], timeoutMs: 10_000, undo: true },
  ], { tmp: tmpdir(t), forceExit: true, timeoutMs: 40_000 })
  const one = res.get('one').call
  t.diagnostic(`one: ${one.ms.toFixed(1)} ms ${JSON.stringify(one.error)}`)
  assert.equal(one.settled, true, 'connectConfigFile(<fifo>) hangs')
  assert.equal(one.ok, false)
  assert.ok(one.ms < 1000, `${one.ms} ms`)
  assert.match(String(one.error.code), /^(WG_CONFIG_DIR_UNSAFE|INVALID_OPTIONS)$/, JSON.stringify(one.error))
  const compat = res.get('compat').call
  assert.equal(compat.settled, true, 'installWgTunnel(<fifo>) hangs')
  assert.equal(compat.ok, false)
  assert.ok(compat.error.code, JSON.stringify(compat.error))
  const burst = res.get('burst').calls
  const worst = Math.max(...burst.map((c) => c.ms))
  t.diagnostic(`10 in parallel: worst ${worst.toFixed(1)} ms`)
  assert.ok(burst.every((c) => c.settled && !c.ok && c.error.code), JSON.stringify(burst))
  assert.ok(worst < 1000, `${worst} ms`)
  const normal = res.get('normal').call
  t.diagnostic(`then a normal connect: ${normal.ms.toFixed(1)} ms`)
  assert.equal(normal.settled, true, 'a normal connect after the FIFO calls never settled (libuv pool exhausted)')
  assert.equal(normal.ok, true, JSON.stringify(normal))
  assert.ok(normal.ms < 3000, `${normal.ms} ms`)
  assert.equal(normal.undone.value.gone, true)
  assert.equal(fs.statSync(fifo).isFIFO(), true, 'the FIFO was removed')
  assert.equal(await linkExists(tb, N), false)
})

test('connectConfigFile / installWgTunnel refuse a file owned by another user or in a dir another user can change', async (t) => {
  const work = workdir(t)
  const name = `${tb.prefix}o`
  const text = wgQuickText()
  const pub = mkdirMode(path.join(work, 'pub'), 0o1777)
  // (1) root's private-looking dir, but the file belongs to uid 65534
  const d1 = mkdirMode(path.join(work, 'd1'), 0o755)
  fs.writeFileSync(path.join(d1, `${name}.conf`), text, { mode: 0o644 })
  fs.chownSync(path.join(d1, `${name}.conf`), NOBODY, NOBODY)
  // (2) the attacker's dir and file
  const d2 = path.join(pub, 'evil')
  // (3) root's file in a dir uid 65534 owns (they can swap it at any time)
  const d3 = path.join(pub, 'evil3')
  await attacker([
    { mkdir: d2, mode: 0o755 },
    { write: path.join(d2, `${name}.conf`), text, mode: 0o600 },
    { mkdir: d3, mode: 0o777 },
  ])
  fs.writeFileSync(path.join(d3, `${name}.conf`), text, { mode: 0o600 })
  // (4) root's file in a root dir that anyone can write (no sticky bit)
  const d4 = mkdirMode(path.join(work, 'd4'), 0o777)
  fs.writeFileSync(path.join(d4, `${name}.conf`), text, { mode: 0o600 })
  // (5) root's file with a second hard link (planted elsewhere)
  const d5 = mkdirMode(path.join(work, 'd5'), 0o700)
  fs.writeFileSync(path.join(d5, `${name}.conf`), text, { mode: 0o600 })
  fs.linkSync(path.join(d5, `${name}.conf`), path.join(d5, 'other'))

  const dirs = { 'file of 65534': d1, "65534's dir and file": d2, "root's file in 65534's dir": d3, 'world-writable dir': d4, 'hard link': d5 }
  const ops = []
  for (const [label, d] of Object.entries(dirs)) {
    const p = path.join(d, `${name}.conf`)
    ops.push(
      { id: `file ${label}`, op: 'connectFile', args: [p], undo: true, timeoutMs: 10_000 },
      { id: `compat ${label}`, op: 'compatInstall', args: [p], undo: true, timeoutMs: 10_000 },
    )
  }
  const res = await runSec(ops, { tmp: tmpdir(t) })
  for (const label of Object.keys(dirs)) {
    for (const k of ['file', 'compat']) {
      const c = res.get(`${k} ${label}`).call
      assert.equal(c.ok, false, `${k} ${label}: accepted (${JSON.stringify(c)})`)
      assert.equal(c.error.code, 'WG_CONFIG_DIR_UNSAFE', `${k} ${label}: ${JSON.stringify(c.error)}`)
      assert.ok(!res.get(`${k} ${label}`).linksAfter.some((l) => l.name === name), `${k} ${label}: the tunnel came up`)
    }
  }
  assert.equal(await linkExists(tb, name), false)
})

test('a disconnect() issued before an un-awaited connect() settles runs after it', async (t) => {
  const name = `${tb.prefix}u`
  const res = await runSec([
    { id: 'latest', op: 'unawaited', config: tb.tunnelConfig(0, { name }) },
    { id: 'byName', op: 'unawaited', config: tb.tunnelConfig(0, { name }), byName: true },
  ], { tmp: tmpdir(t) })
  for (const id of ['latest', 'byName']) {
    const r = res.get(id)
    t.diagnostic(`${id}: connect ${r.connect.ms?.toFixed(1)} ms, disconnect ${r.disconnect.ms?.toFixed(1)} ms, order ${r.order}`)
    assert.equal(r.connect.ok, true, `${id}: ${JSON.stringify(r.connect)}`)
    assert.equal(r.disconnect.ok, true, `${id}: ${JSON.stringify(r.disconnect)}`)
    assert.notEqual(r.disconnect.value, null, `${id}: disconnect resolved null and left the tunnel up`)
    assert.equal(r.disconnect.value.name, name)
    assert.equal(r.disconnect.value.gone, true, JSON.stringify(r.disconnect.value))
    assert.deepEqual(r.order, ['connect', 'disconnect'])
    assert.ok(!r.linksAfter.some((l) => l.name === name), `${id}: ${name} is still up`)
  }
  assert.equal(await linkExists(tb, name), false)
  assert.deepEqual(stateFiles(tb, name), [])
})

test('an exception thrown by onProgress is a WG_PROGRESS_CALLBACK_THREW warning; the connect still resolves', async (t) => {
  const name = `${tb.prefix}p`
  const res = await runSec([{ id: 'p', op: 'progressThrows', config: tb.tunnelConfig(0, { name }) }], { tmp: tmpdir(t) })
  const r = res.get('p')
  t.diagnostic(JSON.stringify({ steps: r.steps, warnings: r.warnings.slice(0, 2), n: r.warnings.length }))
  assert.equal(r.call.ok, true, JSON.stringify(r.call))
  assert.ok(r.steps.includes('validate') && r.steps.includes('ready'), `steps: ${r.steps}`)
  const ours = r.warnings.filter((w) => w.code === 'WG_PROGRESS_CALLBACK_THREW')
  assert.ok(ours.length >= 1, `no WG_PROGRESS_CALLBACK_THREW warning: ${JSON.stringify(r.warnings)}`)
  assert.match(ours[0].message, /boom at validate/)
  assert.deepEqual(r.uncaught, [], 'the exception escaped as an uncaught exception')
  assert.equal(r.undone?.value?.gone, true)
  assert.equal(await linkExists(tb, name), false)
  assert.deepEqual(res.get('$done').uncaught, [])
})

test('wrong argument types reject or throw INVALID_OPTIONS, not napi errors', async (t) => {
  const calls = [
    ['disconnect(42)', 'disconnect', [42]],
    ['disconnect({})', 'disconnect', [{}]],
    ['disconnect(true)', 'disconnect', [true]],
    ['status({})', 'status', [{}]],
    ['status(42)', 'status', [42]],
    ['connectConfigFile(7)', 'connectConfigFile', [7]],
    ['connectConfigFile({})', 'connectConfigFile', [{}]],
    ['connectConfigFile()', 'connectConfigFile', []],
  ]
  const res = await runSec([{ id: 'b', op: 'badArgs', calls }], { tmp: tmpdir(t) })
  const results = res.get('b').results
  for (const [label] of calls) {
    const r = results[label]
    assert.equal(r.ok, false, `${label}: ${JSON.stringify(r)}`)
    assert.equal(r.error.isError, true, label)
    assert.equal(r.error.code, 'INVALID_OPTIONS', `${label}: ${JSON.stringify(r.error)}`)
  }
})

'use strict'
// Input handling of connect(): hostile values (as a remote node could send them), unsafe
// config directories, a non-root caller, configDir() and TMPDIR, and the Buffer key form.
//
// Every call of the addon runs in a child process inside the testbed's cli namespace
// (fixtures/probe.js through fixtures/probe-run.js); this process never loads the addon.
const { test, before, after } = require('node:test')
const assert = require('node:assert/strict')
const crypto = require('node:crypto')
const fs = require('node:fs')
const path = require('node:path')

const testbed = require('../testbed')
const { tmpdir, assertClean, clientBase } = require('./helpers.js')
const { runProbe } = require('./fixtures/probe-run.js')

const REPO = path.join(__dirname, '..')
const NOBODY = 65534

let tb
let NAME
/** Interface names in the cli namespace before any test ran (lo and the veth). */
let baselineLinks

before(async () => {
  tb = await testbed.up({ nclients: 2 }) // client 1: the second backend's key (helpers.clientBase)
  NAME = `${tb.prefix}c`
  const r = await tb.execCli('ip', ['-o', 'link', 'show'])
  baselineLinks = linkNames(r.stdout)
})

after(async () => {
  if (tb) await tb.down()
})

function linkNames(ipOutput) {
  return ipOutput
    .split('\n')
    .filter(Boolean)
    .map((l) => l.split(':')[1].trim().split('@')[0])
    .sort()
}

async function cliLinks() {
  return linkNames((await tb.execCli('ip', ['-o', 'link', 'show'])).stdout)
}

/** A valid split-tunnel config of client 0 (without presharedKey / persistentKeepalive / dns). */
function validConfig(extra = {}) {
  return tb.tunnelConfig(0, { name: NAME, ...extra })
}

/** Every regular file below `dir` (following no links), as paths. */
function filesBelow(dir) {
  const out = []
  let entries
  try {
    entries = fs.readdirSync(dir, { withFileTypes: true })
  } catch {
    return out
  }
  for (const e of entries) {
    const p = path.join(dir, e.name)
    if (e.isDirectory()) out.push(...filesBelow(p))
    else if (e.isFile()) out.push(p)
  }
  return out
}

function assertNoKeyIn(dirs, key, what) {
  for (const d of dirs) {
    for (const f of filesBelow(d)) {
      assert.ok(!f.endsWith('.conf'), `${what}: a config file appeared: ${f}`)
      const body = fs.readFileSync(f, 'utf8')
      assert.ok(!body.includes(key), `${what}: the private key was written to ${f}`)
    }
  }
}

// ------------------------------------------------------------------------- hostile input

/** Set `cfg[path...] = value` (creating nothing: every parent exists in validConfig()). */
function setAt(cfg, at, value) {
  let o = cfg
  for (const k of at.slice(0, -1)) o = o[k]
  o[at[at.length - 1]] = value
}

/**
 * The cases: { id, field (as the message must name it), config, markers }.
 * Each mutates one field of a valid config; list fields put the bad value at index 1 after
 * a valid entry, so the message must name the right index.
 */
function hostileCases(markerDir) {
  const psk = crypto.randomBytes(32).toString('base64')
  const fields = [
    { field: 'privateKey', at: ['privateKey'], valid: tb.clients[0].privateKey },
    { field: 'addresses[1]', at: ['addresses', 1], valid: '10.8.0.9/24', list: ['addresses'] },
    { field: 'peer.publicKey', at: ['peer', 'publicKey'], valid: tb.serverPublicKey },
    { field: 'peer.endpoint', at: ['peer', 'endpoint'], valid: tb.endpoint },
    { field: 'peer.allowedIps[1]', at: ['peer', 'allowedIps', 1], valid: '198.18.0.10/32', list: ['peer', 'allowedIps'] },
    { field: 'peer.presharedKey', at: ['peer', 'presharedKey'], valid: psk },
    { field: 'dns[1]', at: ['dns', 1], valid: '10.8.0.1', list: ['dns'] },
    { field: 'name', at: ['name'], valid: 'wgx0' },
    { field: 'mtu', at: ['mtu'], valid: 1280, numeric: true },
    { field: 'peer.persistentKeepalive', at: ['peer', 'persistentKeepalive'], valid: 15, numeric: true },
  ]
  const cases = []
  let n = 0
  for (const f of fields) {
    const marker = () => path.join(markerDir, `m${n}`)
    const v = String(f.valid)
    const variants = [
      ['injected PostUp line', (m) => `${v}\nPostUp = touch ${m}`, true],
      ['injected PostUp after CRLF', (m) => `${v}\r\nPostUp = touch ${m}`, true],
      ['injected PostUp on the same line', (m) => `${v} PostUp = touch ${m}`, true],
      ['bare newline', () => '\n'],
      ['trailing newline', () => `${v}\n`],
      ['NUL', () => `${v}\u0000`],
      ['bare NUL', () => '\u0000'],
      ['oversize (5000 chars)', () => 'A'.repeat(5000)],
      ['empty string', () => ''],
      ['object instead of value', () => ({})],
      ['array instead of value', () => [f.valid]],
      ['boolean', () => true],
      ['31-byte Buffer', () => ({ $alloc: 31, $fill: 7 })],
    ]
    if (f.numeric) {
      variants.push(
        ['numeric string', () => v],
        ['oversize number', () => 1e300],
        ['negative', () => -1],
        ['fraction', () => f.valid + 0.5],
        ['NaN', () => ({ $num: 'NaN' })],
        ['Infinity', () => ({ $num: 'Infinity' })],
      )
    } else {
      variants.push(['number instead of string', () => 42])
    }
    if (f.field === 'privateKey') {
      variants.push(
        ['33-byte Buffer', () => ({ $alloc: 33, $fill: 7 })],
        ['all-zero 32-byte Buffer', () => ({ $alloc: 32, $fill: 0 })],
        // 32 bytes, but not a Uint8Array: its bytes would be reinterpreted as a key.
        ['Uint16Array(16)', () => ({ $typed: 'Uint16Array', $len: 16 })],
        ['Float64Array(4)', () => ({ $typed: 'Float64Array', $len: 4 })],
      )
    }
    for (const [what, make, injects] of variants) {
      n++
      const m = marker()
      const config = validConfig()
      if (f.list) {
        const list = f.list.length === 1 ? config[f.list[0]] : config[f.list[0]][f.list[1]]
        if (!list) setAt(config, f.list, [String(f.valid)]) // dns: a valid first entry
        else list.length = 1
      }
      setAt(config, f.at, make(m))
      cases.push({ id: `c${n}`, what: `${f.field}: ${what}`, field: f.field, config, markers: injects ? [m] : [] })
    }
  }
  // Whole-list problems: wrong type, empty, too many entries.
  for (const [field, at] of [['addresses', ['addresses']], ['peer.allowedIps', ['peer', 'allowedIps']], ['dns', ['dns']]]) {
    for (const [what, value] of [
      ['a string instead of an array', '10.8.0.2/24'],
      ['an object instead of an array', { 0: '10.8.0.2/24' }],
      ['100 entries', Array.from({ length: 100 }, (_, i) => `10.9.${i}.1`)],
      ['5000 entries', Array.from({ length: 5000 }, () => '10.9.0.1')],
    ]) {
      n++
      const config = validConfig()
      setAt(config, at, value)
      cases.push({ id: `c${n}`, what: `${field}: ${what}`, field, config, markers: [] })
    }
    if (field !== 'dns') {
      n++
      const config = validConfig()
      setAt(config, at, [])
      cases.push({ id: `c${n}`, what: `${field}: empty list`, field, config, markers: [] })
    }
  }
  // Unknown keys are refused, not ignored (a misspelt allowedIPs must not become a full tunnel).
  const unknown = [
    ['PostUp', (c, m) => { c.PostUp = `touch ${m}` }, true],
    ['PreDown', (c, m) => { c.PreDown = `touch ${m}` }, true],
    ['peer.PostUp', (c, m) => { c.peer.PostUp = `touch ${m}` }, true],
    ['peer.allowedIPs', (c) => { c.peer.allowedIPs = c.peer.allowedIps; delete c.peer.allowedIps }],
    ['Table', (c) => { c.Table = 'off' }],
    ['__proto__', (c) => { Object.defineProperty(c, '__proto__', { value: { x: 1 }, enumerable: true }) }],
  ]
  for (const [field, mutate, injects] of unknown) {
    n++
    const m = path.join(markerDir, `m${n}`)
    const config = validConfig()
    mutate(config, m)
    cases.push({ id: `c${n}`, what: `unknown key ${field}`, field, config, markers: injects ? [m] : [] })
  }
  // The containers themselves.
  for (const [field, what, config] of [
    ['config', 'a string', 'privateKey = x'],
    ['config', 'null', null],
    ['config', 'an array', [validConfig()]],
    ['peer', 'peer as a string', { ...validConfig(), peer: `${tb.endpoint}` }],
    ['peer', 'peer as an array', { ...validConfig(), peer: [] }],
  ]) {
    n++
    cases.push({ id: `c${n}`, what: `${field}: ${what}`, field, config, markers: [] })
  }
  return cases
}

test('hostile input is refused with INVALID_OPTIONS naming the field; nothing is written or run', async (t) => {
  const tmp = tmpdir(t)
  const markerDir = tmpdir(t)
  const cases = hostileCases(markerDir)
  const t0 = Date.now()
  const { byId } = await runProbe(
    tb,
    cases.map((c) => ({ id: c.id, op: 'connect', args: [c.config], watch: true, markers: c.markers })),
    { tmp },
  )
  t.diagnostic(`${cases.length} cases in one child process: ${Date.now() - t0} ms`)

  for (const c of cases) {
    await t.test(`${c.what}`, () => {
      const r = byId.get(c.id)
      assert.ok(r, `no result for ${c.id}`)
      const label = `${c.what} (${JSON.stringify(c.config).slice(0, 200)})`
      assert.equal(r.call.ok, false, `${label}: connect resolved: ${JSON.stringify(r.call.value)}; undone: ${JSON.stringify(r.undone)}`)
      const e = r.call.error
      assert.equal(e.isError, true, `${label}: rejected with a non-Error: ${JSON.stringify(e)}`)
      assert.equal(e.code, 'INVALID_OPTIONS', `${label}: code ${e.code}: ${e.message}`)
      // error.rs formats InvalidOptions as "invalid <field>: <reason>".
      assert.ok(e.message.includes(`invalid ${c.field}:`), `${label}: message does not name ${c.field}: ${JSON.stringify(e.message)}`)
      assert.doesNotMatch(e.message, /[\n\r\0]/, `${label}: the message echoes a control character`)
      assert.ok(e.message.length < 1000, `${label}: message of ${e.message.length} chars echoes the value`)
      assert.deepEqual(r.steps, [], `${label}: bring-up started: ${r.steps}`)
      assert.deepEqual(r.after.dir ?? [], [], `${label}: files in the config dir: ${r.after.dir}`)
      assert.deepEqual(r.after.links.sort(), baselineLinks, `${label}: interfaces changed in the cli ns`)
      for (const m of c.markers) assert.equal(r.after.markers[m], false, `${label}: PostUp ran (${m} exists)`)
    })
  }

  // And once more from here, after the whole batch.
  const dir = path.join(tmp, 'sentinel-wg')
  assert.deepEqual(fs.existsSync(dir) ? fs.readdirSync(dir) : [], [], `files left in ${dir}`)
  assert.deepEqual(fs.readdirSync(markerDir), [], 'a PostUp marker file exists')
  assert.deepEqual(await cliLinks(), baselineLinks, 'an interface was created in the cli ns')
})

// ------------------------------------------------------------------------- config dir attacks

test('an unsafe config dir is refused with WG_CONFIG_DIR_UNSAFE and no key is written into it', async (t) => {
  const keys = ['embedded', 'wg-quick'].map((b) => tb.clients[clientBase(b, 1)].privateKey)
  const attacks = [
    {
      what: 'a symlink to another directory',
      reason: /symbolic link/,
      make(tmp) {
        const target = path.join(tmp, 'elsewhere')
        fs.mkdirSync(target, { mode: 0o700 })
        fs.symlinkSync(target, path.join(tmp, 'sentinel-wg'))
        return [target]
      },
      check(tmp, [target]) {
        assert.ok(fs.lstatSync(path.join(tmp, 'sentinel-wg')).isSymbolicLink(), 'the symlink was replaced')
        assert.deepEqual(fs.readdirSync(target), [], 'files written into the symlink target')
      },
    },
    {
      what: 'a dangling symlink',
      reason: /symbolic link/,
      make(tmp) {
        const target = path.join(tmp, 'not-yet')
        fs.symlinkSync(target, path.join(tmp, 'sentinel-wg'))
        return [target]
      },
      check(_tmp, [target]) {
        assert.equal(fs.existsSync(target), false, 'the dangling symlink target was created')
      },
    },
    {
      what: 'a directory owned by uid 65534',
      reason: /owned by uid 65534/,
      make(tmp) {
        const d = path.join(tmp, 'sentinel-wg')
        fs.mkdirSync(d)
        fs.chmodSync(d, 0o700)
        fs.chownSync(d, NOBODY, NOBODY)
        return []
      },
      check(tmp) {
        assert.equal(fs.statSync(path.join(tmp, 'sentinel-wg')).uid, NOBODY, 'the planted dir was re-owned')
      },
    },
    {
      what: 'a directory of mode 0777',
      reason: /\bmode (is )?777\b/,
      make(tmp) {
        const d = path.join(tmp, 'sentinel-wg')
        fs.mkdirSync(d)
        fs.chmodSync(d, 0o777)
        return []
      },
      check(tmp) {
        assert.equal(fs.statSync(path.join(tmp, 'sentinel-wg')).mode & 0o777, 0o777, 'the mode was changed')
      },
    },
    {
      what: 'a regular file',
      reason: /not a directory/,
      make(tmp) {
        fs.writeFileSync(path.join(tmp, 'sentinel-wg'), 'planted\n')
        return []
      },
      check(tmp) {
        assert.equal(fs.readFileSync(path.join(tmp, 'sentinel-wg'), 'utf8'), 'planted\n', 'the planted file changed')
      },
    },
  ]
  for (const a of attacks) {
    await t.test(a.what, async (t) => {
      const tmp = tmpdir(t)
      const extra = a.make(tmp)
      const { byId } = await runProbe(tb, [
        { id: 'p', op: 'prepareConfigDir' },
        { id: 'c', op: 'connect', args: [tb.tunnelConfig(clientBase('embedded', 1), { name: NAME }), { backend: 'embedded' }] },
        { id: 'cq', op: 'connect', args: [tb.tunnelConfig(clientBase('wg-quick', 1), { name: NAME }), { backend: 'wg-quick' }] },
      ], { tmp })
      // The directory is refused where it is used: prepareConfigDir(), for the SDK's files.
      const p = byId.get('p')
      assert.equal(p.call.ok, false, `prepareConfigDir accepted it: ${JSON.stringify(p.call.value)}`)
      const e = p.call.error
      assert.equal(e.code, 'WG_CONFIG_DIR_UNSAFE', `code ${e.code}: ${e.message}`)
      assert.ok(e.message.includes(path.join(tmp, 'sentinel-wg')), `message does not name the dir: ${e.message}`)
      assert.match(e.message, a.reason)
      assert.match(e.message, /rm -rf .*sentinel-wg|TMPDIR/, `message does not say how to fix it: ${e.message}`)
      // connect never writes a key there: the embedded backend writes no key file at all,
      // the wg-quick backend's lives in the namespace's state dir.
      const r = byId.get('c')
      assert.equal(r.call.ok, true, `connect failed: ${JSON.stringify(r.call.error)}`)
      assert.equal(r.call.value.backend, 'embedded')
      assert.equal(r.call.value.configPath, undefined, r.call.value.configPath)
      assert.equal(r.undone?.gone, true, `disconnect: ${JSON.stringify(r.undone)}`)
      const q = byId.get('cq')
      assert.equal(q.call.ok, true, `connect (wg-quick) failed: ${JSON.stringify(q.call.error)}`)
      assert.equal(q.call.value.backend, 'wg-quick')
      assert.match(q.call.value.configPath, /^\/run\/blue-wireguard\/net-\d+\//, q.call.value.configPath)
      assert.equal(q.undone?.gone, true, `disconnect (wg-quick): ${JSON.stringify(q.undone)}`)
      a.check(tmp, extra)
      for (const key of keys) assertNoKeyIn([tmp, ...extra], key, a.what)
    })
  }
  assert.deepEqual(await cliLinks(), baselineLinks, 'an interface was created in the cli ns')
})

// ------------------------------------------------------------------------- non-root

test('a non-root caller is refused at once with WG_PERMISSION_DENIED, nothing written', async (t) => {
  // The addon and the path to it must be readable by uid 65534 for the test to mean anything.
  for (let p = path.join(REPO, 'blue-wireguard.linux-x64-gnu.node'); p !== '/'; p = path.dirname(p)) {
    const mode = fs.statSync(p).mode
    assert.ok(mode & (fs.statSync(p).isDirectory() ? 0o001 : 0o004), `${p} is not accessible to others (mode ${(mode & 0o777).toString(8)})`)
  }
  const tmp = tmpdir(t)
  fs.chownSync(tmp, NOBODY, NOBODY) // writable by the caller: a write would succeed if tried
  const { byId } = await runProbe(
    tb,
    [
      { id: 'load', op: 'load' },
      { id: 'dir', op: 'configDir' },
      { id: 'c', op: 'connect', args: [validConfig()], watch: true },
      { id: 'c2', op: 'connect', args: [validConfig({ name: 'wgsent0' })], watch: true },
    ],
    { tmp, asUser: NOBODY },
  )
  assert.ok(byId.get('load').call.value.includes('connect'), 'uid 65534 could not load the addon')
  assert.equal(byId.get('dir').call.value, path.join(tmp, 'sentinel-wg'))
  for (const id of ['c', 'c2']) {
    const r = byId.get(id)
    assert.equal(r.call.ok, false, `connect resolved as uid 65534: ${JSON.stringify(r.call.value)}`)
    assert.equal(r.call.error.code, 'WG_PERMISSION_DENIED', `${r.call.error.code}: ${r.call.error.message}`)
    assert.match(r.call.error.message, /root/)
    assert.ok(r.ms < 1000, `took ${r.ms} ms`)
    t.diagnostic(`${id}: rejected in ${r.ms.toFixed(2)} ms: ${r.call.error.message}`)
    assert.deepEqual(r.steps, ['validate'], `steps after the refusal: ${r.steps}`)
    assert.equal(r.after.dir, null, `config dir created: ${r.after.dir}`)
    assert.deepEqual(r.after.links.sort(), baselineLinks, 'an interface was created')
  }
  assert.deepEqual(fs.readdirSync(tmp), [], `written into TMPDIR: ${fs.readdirSync(tmp)}`)
})

// ------------------------------------------------------------------------- configDir

test('configDir() is <TMPDIR>/sentinel-wg', async (t) => {
  const tmp = tmpdir(t)
  const cases = [
    ['TMPDIR set', { TMPDIR: tmp }, path.join(tmp, 'sentinel-wg')],
    ['TMPDIR with a trailing slash', { TMPDIR: `${tmp}/` }, path.join(tmp, 'sentinel-wg')],
    ['TMPDIR unset', { TMPDIR: undefined }, '/tmp/sentinel-wg'],
  ]
  for (const [what, env, want] of cases) {
    const { byId } = await runProbe(tb, [{ id: 'd', op: 'configDir' }], { env })
    const d = byId.get('d')
    assert.equal(d.call.value, want, what)
    assert.equal(d.call.value, path.join(d.osTmpdir, 'sentinel-wg'), `${what}: differs from os.tmpdir()`)
  }
})

test('configDir() with TMPDIR set but empty follows os.tmpdir() (/tmp), not a relative path', async (t) => {
  const cwd = tmpdir(t)
  const r = await tb.execCli('sh', ['-c', `cd "$1" && exec "$2" "$3"`, 'sh', cwd, process.execPath, require.resolve('./fixtures/probe.js')], {
    env: { TMPDIR: '', BW_PROBE: JSON.stringify({ ops: [{ id: 'd', op: 'configDir' }] }) },
  })
  const d = r.stdout.split('\n').filter(Boolean).map((l) => JSON.parse(l)).find((l) => l.id === 'd')
  assert.ok(d, `probe failed: ${r.stderr}`)
  assert.equal(d.call.value, path.join(d.osTmpdir, 'sentinel-wg'))
})

// ------------------------------------------------------------------------- Buffer key

test('a 32-byte Buffer (and a Uint8Array view) private key works end to end', async (t) => {
  const tmp = tmpdir(t)
  const key = tb.clients[0].privateKey
  const ops = []
  for (const [id, privateKey] of [
    ['buf', { $buffer: key }], // a pooled Buffer: byteOffset != 0 in its ArrayBuffer
    ['u8', { $u8: key, $offset: 5 }],
  ]) {
    ops.push(
      { id: `${id}-connect`, op: 'connect', args: [validConfig({ privateKey })], undo: false },
      { id: `${id}-fetch`, op: 'fetch', url: `http://${tb.httpTunnelHost}/` },
      { id: `${id}-disconnect`, op: 'disconnect', args: [NAME] },
    )
  }
  const { byId } = await runProbe(tb, ops, { tmp })
  for (const id of ['buf', 'u8']) {
    const c = byId.get(`${id}-connect`)
    assert.equal(c.call.ok, true, `${id}: connect failed: ${JSON.stringify(c.call.error)}`)
    assert.equal(c.call.value.name, NAME)
    const f = byId.get(`${id}-fetch`)
    assert.equal(f.ok, true, `${id}: GET through the tunnel failed: ${JSON.stringify(f)}`)
    const body = JSON.parse(f.body)
    assert.equal(body.client, '10.8.0.2', `${id}: answered for ${body.client}`)
    assert.equal(body.served_by, tb.httpTunnelHost)
    const d = byId.get(`${id}-disconnect`)
    assert.equal(d.call.ok, true, `${id}: disconnect failed: ${JSON.stringify(d.call.error)}`)
    assert.equal(d.call.value.gone, true, `${id}: ${JSON.stringify(d.call.value)}`)
  }
  await assertClean(tb, NAME, tmp)
})

// ------------------------------------------------------------------------- name collisions

test('connect does not delete a non-WireGuard interface that has the requested name', async (t) => {
  const tmp = tmpdir(t)
  const other = `${tb.prefix}t0` // a veth pair of our own in the cli ns, standing in for eth0
  const add = await tb.execCli('ip', ['link', 'add', other, 'type', 'veth', 'peer', 'name', `${tb.prefix}t1`])
  assert.equal(add.code, 0, add.stderr)
  t.after(() => tb.execCli('ip', ['link', 'delete', other]))
  const { byId } = await runProbe(tb, [{ id: 'c', op: 'connect', args: [validConfig({ name: other })] }], { tmp })
  const r = byId.get('c')
  t.diagnostic(`connect: ${JSON.stringify(r.call.ok ? { replacedStale: r.call.value.replacedStale, undone: r.undone?.gone } : r.call.error)}`)
  assert.equal(r.call.ok, false, 'connect over a veth must be refused')
  assert.equal(r.call.error.code, 'WG_NAME_IN_USE')
  assert.match(r.call.error.message, /not a WireGuard interface \(driver veth\)/)
  const link = await tb.execCli('ip', ['-d', '-o', 'link', 'show', 'dev', other])
  assert.equal(link.code, 0, `${other} (a veth) was deleted by connect`)
  assert.match(link.stdout, /\bveth\b/, `${other} is no longer the veth: ${link.stdout}`)
})

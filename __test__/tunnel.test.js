'use strict'
// Full and split tunnels against the simulated node: traffic, DNS, IPv6 off, converge.
const { test, before, after } = require('node:test')
const assert = require('node:assert/strict')
const fs = require('node:fs')
const path = require('node:path')
const testbed = require('../testbed')
const { tmpdir, startAgent, runAgent, assertClean, resolvConfPath, stateDir } = require('./helpers')

const FULL = ['0.0.0.0/0', '::/0']
let tb
let original

before(async () => {
  tb = await testbed.up()
  original = fs.readFileSync(resolvConfPath(tb), 'utf8')
})
after(() => tb && tb.down())

const url = (host, p = '/') => `http://${host}${p}`
const body = (ev) => JSON.parse(ev.body)

test('full tunnel: traffic and DNS go through the tunnel, disconnect leaves nothing', async (t) => {
  const tmp = tmpdir(t)
  const name = `${tb.prefix}c`
  const a = startAgent(
    tb,
    {
      config: tb.tunnelConfig(0, { allowedIps: FULL, name }),
      fetch: [url(tb.httpTunnelHost, '/full')],
      resolve: tb.dnsName,
      then: 'disconnect-on-sigusr2',
    },
    { tmp },
  )
  t.after(() => a.child.kill('SIGKILL'))
  const { info, steps, status } = await a.next('connected')
  assert.equal(info.fullTunnel, true)
  assert.deepEqual(info.allowedIps, FULL)
  assert.deepEqual(info.dns, ['10.8.0.1', '1.1.1.1'])
  assert.equal(info.dnsMethod, 'resolv.conf')
  assert.equal(status.exists && status.up && status.managed, true)
  assert.equal(status.mtu, 1280)
  // The native backends (kernel, embedded) write no key file and route in-process.
  const native = info.backend !== 'wg-quick'
  const wanted = process.env.BLUE_WG_BACKEND
  if (wanted && wanted !== 'auto') assert.equal(info.backend, wanted)
  assert.deepEqual(
    steps,
    native
      ? ['validate', 'preflight', 'state-dir', 'owner-record', 'interface-up', 'routing', 'kernel-ready', 'handshake', 'dns', 'ready']
      : ['validate', 'preflight', 'state-dir', 'owner-record', 'write-config', 'interface-up', 'kernel-ready', 'handshake', 'dns', 'ready'],
  )
  const fetched = await a.next('fetch')
  assert.equal(fetched.ok, true, JSON.stringify(fetched))
  assert.deepEqual(body(fetched), { served_by: '198.18.0.10', client: '10.8.0.2', path: '/full' })
  const resolved = await a.next('resolve')
  assert.deepEqual([resolved.ok, resolved.address], [true, tb.dnsAnswer])

  await a.next('waiting')
  // While it is up: the key file is private (0600, in the namespace's 0700 state dir; the
  // native backends write none), DNS points into the tunnel, the policy rules exist.
  if (native) {
    assert.equal(info.configPath, undefined)
    assert.deepEqual(fs.readdirSync(stateDir(tb)).filter((f) => f.endsWith('.conf')), [], `the ${info.backend} backend wrote no key file`)
  } else {
    const conf = fs.statSync(info.configPath)
    assert.equal(conf.mode & 0o777, 0o600)
    assert.equal(path.dirname(info.configPath), stateDir(tb))
    assert.equal(fs.statSync(stateDir(tb)).mode & 0o777, 0o700)
    assert.doesNotMatch(fs.readFileSync(info.configPath, 'utf8'), /DNS|PostUp|PreUp/)
  }
  assert.match(fs.readFileSync(resolvConfPath(tb), 'utf8'), /^nameserver 10\.8\.0\.1$/m)
  const rules = await tb.execCli('ip', ['-4', 'rule', 'show'])
  assert.match(rules.stdout, /suppress_prefixlength 0/)

  a.child.kill('SIGUSR2')
  const { report } = await a.next('disconnected')
  assert.equal(report.gone, true)
  if (native) {
    assert.deepEqual(report.steps.map((s) => s.step), info.backend === 'kernel' ? ['delete link', 'rules'] : ['stop device', 'rules'])
  } else {
    assert.equal(report.configRemoved, true)
    assert.equal(report.steps[0].step, 'wg-quick down <conf>')
  }
  assert.equal((await a.exited).status, 0)
  await assertClean(tb, name, tmp, original)
})

test('split tunnel: only the listed networks go through the tunnel, DNS untouched', async (t) => {
  const tmp = tmpdir(t)
  const name = `${tb.prefix}c`
  const r = await runAgent(
    tb,
    {
      config: tb.tunnelConfig(0, { allowedIps: ['10.8.0.0/24'], name }),
      fetch: [url(tb.httpNodeHost, '/split'), url(tb.httpTunnelHost, '/excluded')],
      then: 'disconnect',
    },
    { tmp },
  )
  const info = r.event('connected').info
  assert.equal(info.fullTunnel, false)
  assert.deepEqual(info.dns, [])
  assert.equal(info.dnsMethod, undefined)
  const [inside, excluded] = r.events.filter((e) => e.event === 'fetch')
  assert.equal(inside.ok, true, JSON.stringify(inside))
  assert.equal(body(inside).client, '10.8.0.2')
  assert.equal(excluded.ok, false, 'a host outside AllowedIPs must not be reachable through the tunnel')
  assert.equal(r.event('disconnected').report.gone, true)
  assert.equal(r.exit.status, 0)
  await assertClean(tb, name, tmp, original)
})

test('split tunnel that includes the host reaches it, and a split tunnel with explicit DNS applies it', async (t) => {
  const tmp = tmpdir(t)
  const name = `${tb.prefix}c`
  const r = await runAgent(
    tb,
    {
      config: tb.tunnelConfig(0, { allowedIps: ['10.8.0.1', tb.httpTunnelHost], dns: ['10.8.0.1'], name }),
      fetch: [url(tb.httpTunnelHost, '/included')],
      resolve: tb.dnsName,
      then: 'disconnect',
    },
    { tmp },
  )
  const info = r.event('connected').info
  assert.deepEqual(info.allowedIps, ['10.8.0.1/32', '198.18.0.10/32'])
  assert.equal(r.event('fetch').ok, true)
  assert.equal(r.event('resolve').address, tb.dnsAnswer)
  await assertClean(tb, name, tmp, original)
})

test('full tunnel with IPv6 disabled in the namespace leaves ::/0 out and works', async (t) => {
  const tmp = tmpdir(t)
  const name = `${tb.prefix}c`
  const sysctl = (v) =>
    tb.execCli('sysctl', ['-q', '-w', `net.ipv6.conf.all.disable_ipv6=${v}`, `net.ipv6.conf.default.disable_ipv6=${v}`])
  assert.equal((await sysctl(1)).code, 0)
  t.after(() => sysctl(0))
  const r = await runAgent(
    tb,
    { config: tb.tunnelConfig(0, { allowedIps: FULL, name }), fetch: [url(tb.httpTunnelHost)], then: 'disconnect' },
    { tmp },
  )
  const connected = r.event('connected')
  assert.ok(connected, JSON.stringify(r))
  assert.equal(connected.info.ipv6, false)
  assert.deepEqual(connected.info.allowedIps, ['0.0.0.0/0'])
  assert.equal(r.event('fetch').ok, true)
  await assertClean(tb, name, tmp, original)
})

test('verify-before-capture: a second connect on the same name in the same process changes the first in place (native) or replaces it (wg-quick)', async (t) => {
  const tmp = tmpdir(t)
  const name = `${tb.prefix}c`
  const r = await runAgent(
    tb,
    {
      config: tb.tunnelConfig(0, { allowedIps: [`${tb.httpNodeHost}/32`], name }),
      fetch: [url(tb.httpNodeHost, '/verify')],
      reconnect: tb.tunnelConfig(0, { allowedIps: FULL, name }),
      fetchAfter: [url(tb.httpTunnelHost, '/captured')],
      then: 'disconnect',
    },
    { tmp },
  )
  const [first, second] = r.events.filter((e) => e.event === 'connected')
  assert.ok(second, JSON.stringify(r.events))
  assert.equal(first.info.fullTunnel, false)
  assert.equal(second.info.fullTunnel, true)
  if (first.info.backend === 'wg-quick') {
    assert.equal(second.info.replacedStale, true)
  } else {
    assert.equal(second.info.replacedStale, false)
    assert.deepEqual(second.steps, ['validate', 'update', 'handshake'])
    assert.equal(second.status.index, first.status.index, 'the interface was replaced')
  }
  const fetches = r.events.filter((e) => e.event === 'fetch')
  assert.deepEqual(fetches.map((f) => f.ok), [true, true])
  assert.equal(JSON.parse(fetches[1].body).path, '/captured')
  assert.equal(r.event('disconnected').report.gone, true)
  await assertClean(tb, name, tmp, original)
})

test('a bring-up that fails is rolled back: TUNNEL_SETUP_FAILED, and nothing is left', async (t) => {
  const tmp = tmpdir(t)
  const name = `${tb.prefix}c`
  // The last step fails, after the interface, routing and the handshake: DNS is forced onto
  // resolvconf, which is not installed here (its stand-in fails loudly if one is on PATH).
  const bin = path.join(tmp, 'bin')
  fs.mkdirSync(bin)
  fs.writeFileSync(path.join(bin, 'resolvconf'), '#!/bin/sh\necho "resolvconf: no-such-interface-record" >&2\nexit 1\n', { mode: 0o755 })
  const config = tb.tunnelConfig(0, { allowedIps: FULL, name })
  const env = { BLUE_WG_DNS_METHOD: 'resolvconf', PATH: `${bin}:${process.env.PATH}` }
  const r = await runAgent(tb, { config, then: 'disconnect' }, { tmp, env })
  const err = r.event('error')
  assert.ok(err, JSON.stringify(r.events))
  assert.equal(err.code, 'TUNNEL_SETUP_FAILED')
  assert.match(err.message, /step 'dns'/)
  assert.match(err.message, /no-such-interface-record/, 'the tool stderr is kept in the message')
  assert.equal(r.exit.status, 2)
  await assertClean(tb, name, tmp, original)
})

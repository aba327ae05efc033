'use strict'
// Rootless mode (issue 11): an agent running as uid 65534 with no capabilities at all opens
// `openProxy` in the testbed's cli namespace. The namespace has no route to the node's
// service (198.18.0.10) and its resolver does not know test.sentinel.internal: only the
// tunnel reaches them. Everything is checked from here as a user would: what the service
// saw, the proxy's answers, the port after close, and that the namespace holds nothing new.
const { test, before, after } = require('node:test')
const assert = require('node:assert/strict')
const fs = require('node:fs')
const path = require('node:path')
const testbed = require('../testbed')
const { startFixture } = require('../testbed/fixtures/checks.js')
const { tmpdir } = require('./helpers')

const NOBODY = 65534
const SCRIPT = path.join(__dirname, 'fixtures', 'proxy-agent.js')
/** uid/gid 65534, no groups, no capabilities of any kind. */
const AS_NOBODY = ['setpriv', `--reuid=${NOBODY}`, `--regid=${NOBODY}`, '--clear-groups', '--inh-caps=-all', '--bounding-set=-all']
const onPath = (p) => (process.env.PATH || '').split(':').some((d) => d && fs.existsSync(path.join(d, p)))

function skipReason() {
  if (process.getuid() !== 0) return 'needs root (network namespaces, setpriv to another uid)'
  if (!onPath('setpriv')) return 'setpriv (util-linux) is not installed'
  return false
}
const skip = skipReason()

let tb
before(async () => {
  if (skip) return
  tb = await testbed.up({ nclients: 1 })
})
after(() => tb && tb.down())

const SERVICE = () => `http://${tb.httpTunnelHost}/`
const NAME = () => tb.dnsName

/** A private TMPDIR uid 65534 owns; it must stay empty (the proxy writes no file). */
function nobodyTmp(t) {
  const tmp = tmpdir(t)
  fs.chownSync(tmp, NOBODY, NOBODY)
  return tmp
}

function run(t, plan, { tmp = nobodyTmp(t), boundMs = 60000 } = {}) {
  const a = startFixture(tb, SCRIPT, { env: { BW_AGENT: JSON.stringify(plan) }, tmp, wrap: AS_NOBODY })
  const timer = setTimeout(() => a.child.kill('SIGKILL'), boundMs)
  t.after(() => {
    clearTimeout(timer)
    a.child.kill('SIGKILL')
  })
  const ev = (name) => a.events.filter((e) => e.event === name)
  return { a, ev, tmp, exited: a.exited.then((x) => (clearTimeout(timer), x)) }
}

/** What the cli namespace holds: links, addresses, routes, rules, nftables. */
async function nsSnapshot() {
  const out = []
  for (const args of [['-o', 'link'], ['-o', 'addr'], ['route', 'show', 'table', 'all'], ['-6', 'route', 'show', 'table', 'all'], ['rule'], ['-6', 'rule']]) {
    const r = await tb.execCli('ip', args)
    // Counters and link state flags change with traffic; names, addresses and routes do not.
    // The kernel gives a new veth its IPv6 link-local address (and its multicast route) a
    // moment after the testbed made it: that is not ours.
    const lines = r.stdout.split('\n').filter((l) => !/fe80::|ff00::\/8/.test(l))
    out.push(lines.join('\n').replace(/\s+(qlen|qdisc)\s+\S+/g, '').replace(/<[^>]*>/g, '').replace(/state \S+/g, ''))
  }
  const n = await tb.execCli('nft', ['list', 'ruleset'])
  out.push(n.code === 0 ? n.stdout : `nft: ${n.code}`)
  return out.join('\n--\n')
}

const config = (extra = {}) => tb.tunnelConfig(0, { allowedIps: ['0.0.0.0/0'], dns: [tb.dnsServer], ...extra })

test('as uid 65534 with no capabilities: HTTP absolute-form, CONNECT and SOCKS5 with a host name reach a tunnel-only service, which sees the tunnel address', { skip }, async (t) => {
  const before = await nsSnapshot()
  const hostResolver = await tb.execCli('getent', ['hosts', NAME()])
  assert.notEqual(hostResolver.code, 0, `the namespace's own resolver knows ${NAME()}: the test would prove nothing`)
  const r = run(t, {
    config: config(),
    steps: [
      { op: 'http', url: SERVICE() },
      { op: 'http', url: `http://${NAME()}/by-name` },
      { op: 'connect', host: tb.httpTunnelHost, port: 80, path: '/via-connect' },
      { op: 'connect', host: NAME(), port: 80, path: '/via-connect-name' },
      { op: 'socks', host: NAME(), port: 80, path: '/via-socks' },
      { op: 'socks', host: tb.httpTunnelHost, port: 80, path: '/via-socks-ip' },
      { op: 'undici', url: `http://${NAME()}/via-undici` },
      { op: 'stats' },
    ],
  })
  const exit = await r.exited
  assert.equal(exit.status, 0, r.a.stderr())
  const [who] = r.ev('who')
  assert.deepEqual(who, { event: 'who', uid: NOBODY, capEff: '0000000000000000' })
  const [open] = r.ev('open')
  assert.ok(open, `no proxy: ${JSON.stringify(r.ev('error'))} ${r.a.stderr()}`)
  assert.match(open.httpProxy, /^http:\/\/bw:[0-9a-f]{48}@127\.0\.0\.1:\d+$/)
  assert.equal(open.socksProxy, open.httpProxy.replace(/^http:/, 'socks5:'))
  assert.ok(open.handshakeMs >= 0 && open.openMs >= open.handshakeMs, JSON.stringify(open))
  const seen = (e) => JSON.parse(e.body)
  const [byIp, byName] = r.ev('http')
  assert.equal(byIp.status, 200, JSON.stringify(byIp))
  assert.equal(seen(byIp).client, '10.8.0.2', 'the service did not see the tunnel address')
  assert.equal(byName.status, 200, JSON.stringify(byName))
  assert.deepEqual([seen(byName).client, seen(byName).path], ['10.8.0.2', '/by-name'])
  for (const c of r.ev('connect')) {
    assert.equal(c.connectStatus, 200, JSON.stringify(c))
    assert.equal(c.status, 200, JSON.stringify(c))
    assert.deepEqual([seen(c).client, seen(c).path], ['10.8.0.2', c.path])
  }
  for (const s of r.ev('socks')) {
    assert.equal(s.stage, 'done', JSON.stringify(s))
    assert.equal(s.status, 200, JSON.stringify(s))
    assert.deepEqual([seen(s).client, seen(s).path], ['10.8.0.2', s.path])
  }
  const [u] = r.ev('undici')
  assert.equal(u.status, 200, JSON.stringify(u))
  assert.deepEqual([seen(u).client, seen(u).path], ['10.8.0.2', '/via-undici'])
  const [{ stats }] = r.ev('stats')
  assert.equal(stats.healthy, true)
  assert.equal(stats.endpoint, tb.endpoint)
  assert.ok(stats.rxBytes > 0 && stats.txBytes > 0 && stats.lastHandshakeAgoMs >= 0, JSON.stringify(stats))
  const [closed] = r.ev('closed')
  assert.deepEqual([closed.first, closed.again, closed.statsAfter], [true, false, 'WG_NOT_CONNECTED'])
  assert.deepEqual(r.ev('after-close')[0], { event: 'after-close', refused: true, error: 'ECONNREFUSED' })
  assert.equal(await nsSnapshot(), before, 'the proxy changed the namespace')
  assert.deepEqual(fs.readdirSync(r.tmp), [], 'the proxy wrote files')
})

test('without the credentials, or with wrong ones, the proxy refuses (HTTP 407, SOCKS5 auth failure) and reaches nothing', { skip }, async (t) => {
  const r = run(t, {
    config: config(),
    steps: [
      { op: 'http', url: `${SERVICE()}none`, auth: 'none' },
      { op: 'http', url: `${SERVICE()}wrong`, auth: 'wrong' },
      { op: 'socks', host: tb.httpTunnelHost, port: 80, password: 'not-the-password' },
      { op: 'http', url: `${SERVICE()}right` },
    ],
  })
  assert.equal((await r.exited).status, 0, r.a.stderr())
  const [none, wrong, right] = r.ev('http')
  assert.equal(none.status, 407, JSON.stringify(none))
  assert.equal(wrong.status, 407, JSON.stringify(wrong))
  assert.doesNotMatch(none.body + wrong.body, /client/)
  assert.deepEqual(r.ev('socks')[0].reply, [1, 1], 'SOCKS5 username/password must fail')
  assert.equal(right.status, 200, 'the right credentials must still work afterwards')
})

test('curl, an ordinary client, uses both URLs as given (http:// and socks5h://) while the proxy runs; the namespace holds nothing new', { skip: skip || (!onPath('curl') && 'curl is not installed') }, async (t) => {
  const before = await nsSnapshot()
  const r = run(t, { config: config(), steps: [{ op: 'hold' }] })
  const held = await r.a.next('holding')
  assert.equal(await nsSnapshot(), before, 'an open proxy changed the namespace')
  const curl = async (proxy, url) => {
    const c = await tb.execCli('setpriv', [...AS_NOBODY.slice(1), 'curl', '-sS', '--max-time', '10', '--proxy', proxy, url])
    assert.equal(c.code, 0, `curl --proxy ${proxy.replace(/:[0-9a-f]{48}@/, ':***@')} ${url}: ${c.stderr}`)
    return JSON.parse(c.stdout)
  }
  assert.equal((await curl(held.httpProxy, `http://${NAME()}/curl-http`)).client, '10.8.0.2')
  assert.equal((await curl(held.socksProxy.replace(/^socks5:/, 'socks5h:'), `http://${NAME()}/curl-socks`)).client, '10.8.0.2')
  const anon = await tb.execCli('setpriv', [...AS_NOBODY.slice(1), 'curl', '-sS', '-o', '/dev/null', '-w', '%{http_code}', '--max-time', '10', '--proxy', `http://127.0.0.1:${new URL(held.httpProxy).port}`, SERVICE()])
  assert.equal(anon.stdout, '407')
  r.a.child.kill('SIGUSR2')
  assert.equal((await r.exited).status, 0, r.a.stderr())
  assert.equal(r.ev('after-close')[0].refused, true)
})

test('the same validation as connect: a bad config, killSwitch, and a bad port are INVALID_OPTIONS before anything starts', { skip }, async (t) => {
  const cases = [
    [{ ...config(), privateKey: 'nope' }, undefined, /privateKey/],
    [config({ killSwitch: true }), undefined, /killSwitch/],
    [config(), { port: 70000 }, /options\.port/],
    [config(), { handshakeTimeoutMs: -1 }, /handshakeTimeoutMs/],
  ]
  for (const [cfg, options, field] of cases) {
    const r = run(t, { config: cfg, options })
    assert.equal((await r.exited).status, 0, r.a.stderr())
    const [e] = r.ev('error')
    assert.ok(e, `no error for ${field}`)
    assert.equal(e.code, 'INVALID_OPTIONS', JSON.stringify(e))
    assert.match(e.message, field)
    assert.equal(e.retryable, false)
  }
})

test('a dead node (wrong port) rejects with WG_NO_CONNECTIVITY within the handshake timeout, and nothing listens', { skip }, async (t) => {
  const dead = config()
  dead.peer = { ...dead.peer, endpoint: tb.endpoint.replace(/:\d+$/, ':51999') }
  const r = run(t, { config: dead, options: { handshakeTimeoutMs: 1500 }, holdOnError: true })
  const e = await r.a.next('error')
  assert.equal(e.code, 'WG_NO_CONNECTIVITY', JSON.stringify(e))
  assert.equal(e.retryable, true)
  assert.ok(e.ms < 3000, `took ${e.ms} ms`)
  // The agent is still alive: nothing of the failed open may be left in it.
  const listening = (await tb.execCli('ss', ['-Hltnp'])).stdout
  assert.doesNotMatch(listening, new RegExp(`pid=${r.a.child.pid}\\b`), `the agent still listens:\n${listening}`)
  const udp = (await tb.execCli('ss', ['-Hunap'])).stdout
  assert.doesNotMatch(udp, new RegExp(`pid=${r.a.child.pid}\\b`), `the agent still has a UDP socket:\n${udp}`)
  r.a.child.kill('SIGUSR2')
  assert.equal((await r.exited).status, 0, r.a.stderr())
})

test('options.port: the proxy listens on that port of 127.0.0.1; a second proxy asking for it gets INVALID_OPTIONS', { skip }, async (t) => {
  const port = 20000 + Math.floor(Math.random() * 20000)
  const first = run(t, { config: config(), options: { port }, steps: [{ op: 'hold' }] })
  const held = await first.a.next('holding')
  assert.equal(new URL(held.httpProxy).port, String(port))
  const listening = (await tb.execCli('ss', ['-Hltn', `sport = :${port}`])).stdout
  const local = listening.trim().split('\n').map((l) => l.trim().split(/\s+/)[3])
  assert.deepEqual(local, [`127.0.0.1:${port}`], `it must listen on loopback only:\n${listening}`)
  const second = run(t, { config: config(), options: { port } })
  assert.equal((await second.exited).status, 0, second.a.stderr())
  const [e] = second.ev('error')
  assert.equal(e && e.code, 'INVALID_OPTIONS', JSON.stringify(second.a.events))
  assert.match(e.message, /in use/)
  first.a.child.kill('SIGUSR2')
  assert.equal((await first.exited).status, 0, first.a.stderr())
})

test('one request per connection for absolute-form HTTP: Host is the URL authority, credentials are not passed on, the answer says Connection: close, and a second request on that connection reaches nobody', { skip }, async (t) => {
  const origin = `${tb.httpTunnelHost}:8080`
  const r = run(t, {
    config: config(),
    steps: [{ op: 'keepalive', url1: `http://${origin}/headers?first`, url2: `http://${tb.httpNodeHost}:8080/headers?second` }],
  })
  assert.equal((await r.exited).status, 0, r.a.stderr())
  const [k] = r.ev('keepalive')
  assert.match(k.firstHead, /^HTTP\/1\.1 200/)
  assert.match(k.firstHead, /\r\nConnection: close$/im, 'the answer must tell the client not to reuse the connection')
  assert.doesNotMatch(k.firstHead, /keep-alive/i)
  const seen = JSON.parse(k.firstBody)
  assert.equal(seen.path, '/headers?first')
  assert.equal(seen.client, '10.8.0.2')
  const h = Object.fromEntries(Object.entries(seen.headers).map(([a, b]) => [a.toLowerCase(), b]))
  assert.equal(h.host, origin, 'Host must be the authority of the URL, not the proxy')
  assert.equal(h['proxy-authorization'], undefined, 'the credentials must not reach the origin')
  assert.equal(h.connection, 'close')
  // /headers offers keep-alive and keeps the connection open whatever the request said (as a
  // hostile origin would): had the proxy passed the second request on, it would be answered.
  assert.equal(k.responses, 1, 'the second request must not have been answered by anyone')
})

test('a client that half-closes after its request still gets the whole answer (2 MiB through CONNECT)', { skip }, async (t) => {
  const size = 2 << 20
  const r = run(t, { config: config(), steps: [{ op: 'halfclose', host: tb.httpTunnelHost, port: 8080, path: `/bytes/${size}` }] })
  assert.equal((await r.exited).status, 0, r.a.stderr())
  const [h] = r.ev('halfclose')
  assert.match(h.connectHead, /^HTTP\/1\.1 200/)
  assert.equal(h.contentLength, size)
  assert.equal(h.bodyBytes, size, JSON.stringify(h))
  assert.equal(h.hadError, false)
})

test('close() during a transfer: the client (curl, another process) is told the transfer was cut, never that it succeeded; the port is closed', { skip: skip || (!onPath('curl') && 'curl is not installed') }, async (t) => {
  const r = run(t, { config: config(), steps: [{ op: 'hold' }] })
  const held = await r.a.next('holding')
  // 48 MiB at 4 MB/s through CONNECT (--proxytunnel): still running when the proxy closes.
  const curl = tb.spawnCli('setpriv', [...AS_NOBODY.slice(1), 'curl', '-sS', '-o', '/dev/null', '--max-time', '30', '--limit-rate', '4M',
    '--proxytunnel', '--proxy', held.httpProxy, `http://${tb.httpTunnelHost}:8080/bytes/${48 << 20}`], { stdio: ['ignore', 'ignore', 'pipe'] })
  t.after(() => curl.kill('SIGKILL'))
  let stderr = ''
  curl.stderr.setEncoding('utf8').on('data', (d) => (stderr += d))
  const ended = new Promise((resolve) => curl.on('exit', (code) => resolve(code)))
  await new Promise((res) => setTimeout(res, 700))
  r.a.child.kill('SIGUSR2') // the agent closes the proxy
  const code = await ended
  // The proxy resets the connection (never a FIN). curl reports the cut transfer either as
  // the reset (56) or, when the reset finds unread data in its socket, which Linux then ends
  // as end-of-stream, as a partial transfer (18): never as a success.
  assert.ok(code === 56 || code === 18, `curl exited ${code}: ${stderr}`)
  assert.match(stderr, /reset|bytes remaining/i)
  assert.equal((await r.exited).status, 0, r.a.stderr())
  assert.equal(r.ev('closed')[0].first, true)
  assert.equal(r.ev('after-close')[0].refused, true)
})

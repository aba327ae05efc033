'use strict'
// A bench measuring process. Run ONLY inside a testbed's cli namespace (tb.spawnCli from
// testbed/bench.js), never in the host's: it brings real tunnels up.
//
//   BW_BENCH='{...plan...}' TMPDIR=<private dir> node testbed/bench/child.js
//
// Long-lived and driven by bench.js: one JSON command per stdin line, answered by result
// events and then {"event":"ack","seq":N} on stdout (stderr is free text). Several children
// can live side by side (with and without the watchdog) and take turns, because bench.js sends
// one command at a time and every command leaves the namespace clean. One process does all
// its runs, so process start-up and module load are not part of any connect figure.
//
// Commands ({seq, cmd, ...}):
//   cycle {mode: split|full, i}  connect -> first HTTP GET -> (full: DNS lookup) -> disconnect;
//                                event 'warmup' (i < 0) or 'run'
//   emergency                    emergencyCleanupSync() with nothing to clean; event 'emergency'
//   footprint {idleMs}           full tunnel up, the watchdog's VmRSS and its CPU time over
//                                idleMs of idling; event 'footprint'
//   kill {i}                     an owner process (fixtures/agent.js, a child of this one)
//                                connects a full tunnel and is SIGKILLed; time until the
//                                namespace is clean, polled every plan.kill.intervalMs without
//                                touching the addon here; event 'kill'
//   sdk {i}                      the SDK's JavaScript path, emulated (see sdkRun); event 'sdk'
//   throughput {i, server, port, seconds}
//                                split tunnel up, then iperf3 through it to the node's server
//                                (upload, then download with -R), the CPU time of the process
//                                doing the WireGuard work around each transfer and its VmRSS
//                                after them; event 'throughput' (see throughputRun)
//   proxy {i, bytes}             rootless mode against the TUN path, in turns: openProxy()
//                                (call -> resolved, after the handshake), a first GET through
//                                it, a download of `bytes` through it; then connect() a split
//                                tunnel and the same download through the TUN; event 'proxy'
//   exit                         event 'done', exit 0
// After every command it checks, untimed, that nothing is left (interface, rules, nft table,
// key files, record and DNS state in the state dir, resolv.conf, wireguard-go, watchdog); a
// leftover stops it with event 'leftover'.
const fs = require('node:fs')
const path = require('node:path')
const readline = require('node:readline')
const { execFileSync, spawn } = require('node:child_process')
const { getUntilOk, lookup } = require('../fixtures/net.js')
const { look, waitClean, ownStateDir, stateLeft } = require('../fixtures/clean.js')

const ROOT = path.join(__dirname, '..', '..')
const AGENT = path.join(__dirname, '..', 'fixtures', 'agent.js')
const plan = JSON.parse(process.env.BW_BENCH || '{}')
const say = (event, data = {}) => process.stdout.write(JSON.stringify({ event, tag: plan.tag, ...data }) + '\n')
const now = () => process.hrtime.bigint()
const ms = (a, b = now()) => Number(b - a) / 1e6
const sleep = (n) => new Promise((r) => setTimeout(r, n))

let t = now()
const wg = require(ROOT)
const requireMs = ms(t)
const ORIGINAL_RESOLV = fs.readFileSync('/etc/resolv.conf', 'utf8')
const MY_NETNS = fs.statSync('/proc/self/ns/net').ino
const CLK_TCK = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100

// ------------------------------------------------------------------------ leftover checks

function sh(cmd, args) {
  try {
    return execFileSync(cmd, args, { encoding: 'utf8', timeout: 10000, stdio: ['ignore', 'pipe', 'pipe'] })
  } catch (e) {
    return String(e.stdout || '')
  }
}

/** Live processes in this network namespace whose comm starts with `comm` (not zombies). */
function procsNamed(comm) {
  const out = []
  for (const d of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue
    try {
      if (!fs.readFileSync(`/proc/${d}/comm`, 'utf8').startsWith(comm)) continue
      if (fs.statSync(`/proc/${d}/ns/net`).ino !== MY_NETNS) continue
      const stat = fs.readFileSync(`/proc/${d}/stat`, 'utf8')
      if (stat.slice(stat.lastIndexOf(')') + 2)[0] === 'Z') continue
      out.push(Number(d))
    } catch {}
  }
  return out
}
const wireguardGo = () => procsNamed('wireguard-go')
const watchdogs = () => procsNamed('blue-wg-watchdo') // comm is cut at 15 characters

/** True while `pid` runs (a zombie counts as gone). */
function running(pid) {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8')
    return stat.slice(stat.lastIndexOf(')') + 2)[0] !== 'Z'
  } catch {
    return false
  }
}

/** What tunnel `name` left behind; [] when nothing. */
function leftovers(name, confDirs) {
  const left = []
  if (wg.status(name).exists) left.push(`interface ${name}`)
  for (const fam of ['-4', '-6']) {
    const bad = sh('ip', [fam, 'rule', 'show']).split('\n').filter((l) => /fwmark|suppress_prefixlength/.test(l))
    if (bad.length) left.push(`ip ${fam} rule: ${bad.join(' | ')}`)
  }
  if (new RegExp(`wg-quick-${name}\\b`).test(sh('nft', ['list', 'tables']))) left.push(`nft table wg-quick-${name}`)
  for (const dir of confDirs) {
    const files = fs.existsSync(dir) ? fs.readdirSync(dir) : []
    if (files.length) left.push(`files in ${dir}: ${files.join(', ')}`)
  }
  const state = stateLeft(ownStateDir(), name)
  if (state.length) left.push(`state of ${name} in ${ownStateDir()}: ${state.join(', ')}`)
  if (fs.readFileSync('/etc/resolv.conf', 'utf8') !== ORIGINAL_RESOLV) left.push('resolv.conf changed')
  const daemons = wireguardGo()
  if (daemons.length) left.push(`wireguard-go ${daemons.join(', ')}`)
  const dogs = watchdogs()
  if (dogs.length) left.push(`blue-wg-watchdog ${dogs.join(', ')}`)
  return left
}

/**
 * Wait (untimed) until the run left nothing; wireguard-go exits a moment after its interface
 * is deleted, so poll it up to 3 s. Returns ms waited; exits the bench on a real leftover.
 */
async function settle(label, name, confDirs) {
  const t0 = now()
  let left
  while ((left = leftovers(name, confDirs)).length) {
    if (ms(t0) > 3000) {
      say('leftover', { label, left })
      process.exit(3)
    }
    await sleep(10)
  }
  return ms(t0)
}

// ------------------------------------------------------------------------ the addon

async function addonRun(mode, cfg, i) {
  const r = { mode, i }
  let t0 = now()
  const info = await wg.connect(cfg)
  r.connectMs = ms(t0)
  r.watchdog = info.watchdogPid != null
  const first = await getUntilOk(plan.url, { deadlineMs: 10000 })
  r.connectFirstMs = ms(t0)
  r.firstRequestMs = first.ms
  r.attempts = first.attempts
  if (!first.ok) throw Object.assign(new Error(`${mode} run ${i}: no HTTP answer through the tunnel: ${JSON.stringify(first.last)}`), { code: 'BENCH_NO_HTTP' })
  if (!first.last.json || first.last.json.client !== plan.clientIp) throw new Error(`${mode} run ${i}: unexpected answer ${first.last.body}`)
  if (mode === 'full') {
    const l = await lookup(plan.dnsName)
    if (!l.ok || l.address !== plan.dnsAnswer) throw new Error(`full run ${i}: DNS through the tunnel failed: ${JSON.stringify(l)}`)
    r.firstLookupMs = l.ms
  }
  r.addonConnectMs = info.connectMs
  r.handshakeMs = info.handshakeMs ?? null
  if (mode === 'split' && info.backend !== 'wg-quick') {
    // update in place, split -> full -> split (issue 9), and the cost of one status() read
    // of the device, as the median of a batch
    t0 = now()
    await wg.update(info.name, { allowedIps: ['0.0.0.0/0', '::/0'], dns: [] })
    r.updateToFullMs = ms(t0)
    t0 = now()
    await wg.update(info.name, { allowedIps: cfg.peer.allowedIps })
    r.updateToSplitMs = ms(t0)
    const again = await getUntilOk(plan.url, { deadlineMs: 5000 })
    if (!again.ok) throw new Error(`split run ${i}: no HTTP answer after the updates`)
    const calls = []
    for (let k = 0; k < 101; k++) {
      const s0 = now()
      const st = wg.status(info.name)
      calls.push(ms(s0))
      if (!st.healthy) throw new Error(`split run ${i}: status() says not healthy: ${JSON.stringify(st)}`)
    }
    r.statusMs = calls.sort((a, b) => a - b)[50]
  }
  r.backend = info.backend
  r.steps = info.steps
  r.dnsMethod = info.dnsMethod || null
  t0 = now()
  const rep = await wg.disconnect(info.name)
  r.disconnectMs = ms(t0)
  if (!rep || !rep.gone || (info.configPath && !rep.configRemoved)) throw new Error(`${mode} run ${i}: disconnect did not finish: ${JSON.stringify(rep)}`)
  r.teardown = rep.steps.filter((s) => s.ran).map((s) => `${s.step} ${s.elapsedMs.toFixed(1)}`).join(', ')
  r.settleMs = await settle(`${mode} run ${i}`, info.name, [wg.configDir()])
  return r
}

// ------------------------------------------------------------------------ the watchdog

/** /proc figures of `pid`: memory (kB), CPU (utime+stime ticks, schedstat ns), switches. */
function procSample(pid) {
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8')
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
  const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8')
  const kb = (k) => {
    const m = new RegExp(`^${k}:\\s+(\\d+) kB`, 'm').exec(status)
    return m ? Number(m[1]) : null
  }
  const num = (k) => {
    const m = new RegExp(`^${k}:\\s+(\\d+)`, 'm').exec(status)
    return m ? Number(m[1]) : 0
  }
  let schedNs = null
  try {
    schedNs = Number(fs.readFileSync(`/proc/${pid}/schedstat`, 'utf8').split(' ')[0])
  } catch {}
  let pssKb = null
  try {
    const m = /^Pss:\s+(\d+) kB/m.exec(fs.readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8'))
    if (m) pssKb = Number(m[1])
  } catch {}
  return {
    cmd: fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').filter(Boolean).join(' '),
    state: f[0],
    ticks: Number(f[11]) + Number(f[12]), // utime + stime (fields 14, 15)
    schedNs,
    switches: num('voluntary_ctxt_switches') + num('nonvoluntary_ctxt_switches'),
    vmRssKb: kb('VmRSS'),
    vmHwmKb: kb('VmHWM'),
    rssAnonKb: kb('RssAnon'),
    rssFileKb: kb('RssFile'),
    pssKb,
  }
}

/** A full tunnel up; the watchdog's RSS, and the CPU it uses over idleMs of idling. */
async function footprint(idleMs) {
  const info = await wg.connect(plan.full)
  const pid = info.watchdogPid
  if (!pid) throw new Error(`footprint: no watchdogPid in ${JSON.stringify(info)} (is BLUE_WG_NO_WATCHDOG set?)`)
  await sleep(100) // past bring-up
  const a = procSample(pid)
  if (!/blue-wg-watchdog/.test(a.cmd)) throw new Error(`footprint: pid ${pid} is not the watchdog: ${a.cmd}`)
  const t0 = now()
  await sleep(idleMs)
  const b = procSample(pid)
  const idle = ms(t0)
  const ownerRssKb = procSample(process.pid).vmRssKb
  const rep = await wg.disconnect(info.name)
  if (!rep || !rep.gone) throw new Error(`footprint: disconnect did not finish: ${JSON.stringify(rep)}`)
  const exitedAfterDisconnect = !running(pid)
  await settle('footprint', info.name, [wg.configDir()])
  return {
    pid, cmd: b.cmd, state: b.state, idleMs: idle, clkTck: CLK_TCK,
    vmRssKb: b.vmRssKb, vmHwmKb: b.vmHwmKb, rssAnonKb: b.rssAnonKb, rssFileKb: b.rssFileKb, pssKb: b.pssKb,
    cpuMs: ((b.ticks - a.ticks) * 1000) / CLK_TCK,
    schedNs: a.schedNs === null || b.schedNs === null ? null : b.schedNs - a.schedNs,
    switches: b.switches - a.switches,
    ownerRssKb, exitedAfterDisconnect,
  }
}

/** Start fixtures/agent.js as our child; resolves its events up to 'waiting'. */
function startOwner(agentPlan, timeoutMs = 20000) {
  const child = spawn(process.execPath, [AGENT], {
    env: { ...process.env, BW_DEMO_AGENT: JSON.stringify(agentPlan) },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  let stderr = ''
  child.stderr.setEncoding('utf8').on('data', (d) => (stderr += d))
  const exited = new Promise((resolve) => child.on('exit', (code, signal) => resolve({ code, signal })))
  const events = {}
  const ready = new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`owner: no 'waiting' within ${timeoutMs} ms; ${stderr}`)), timeoutMs)
    readline.createInterface({ input: child.stdout }).on('line', (line) => {
      let ev
      try {
        ev = JSON.parse(line)
      } catch {
        return
      }
      events[ev.event] = ev
      if (ev.event === 'error') {
        clearTimeout(timer)
        reject(new Error(`owner: ${ev.code} ${ev.message}`))
      } else if (ev.event === 'waiting') {
        clearTimeout(timer)
        resolve(events)
      }
    })
    exited.then((x) => {
      clearTimeout(timer)
      reject(new Error(`owner exited early ${JSON.stringify(x)}; ${stderr}`))
    })
  })
  return { child, ready, exited }
}

/**
 * One owner-SIGKILL run: a child of ours connects a full tunnel (with its watchdog), fetches
 * through it, and is SIGKILLed. From the kill, poll every intervalMs (bounded) until the
 * namespace is clean: no interface, no policy rule, key dir empty, no record or DNS state in
 * the state dir, resolv.conf original.
 * Nothing of the addon runs here meanwhile (this process has no tunnel and calls nothing).
 */
async function killRun(i) {
  const k = plan.kill
  const owner = startOwner({ config: plan.full, fetch: [plan.url], then: 'wait' })
  const ev = await owner.ready
  const info = ev.connected.info
  if (!info.watchdogPid) throw new Error(`kill run ${i}: the owner has no watchdog: ${JSON.stringify(info)}`)
  if (!ev.fetch || !ev.fetch.ok) throw new Error(`kill run ${i}: no HTTP through the owner's tunnel: ${JSON.stringify(ev.fetch)}`)
  const keyDir = wg.configDir()
  const before = look({ name: info.name, keyDir, originalResolv: ORIGINAL_RESOLV }, { rules: 'always' })
  if (before.clean) throw new Error(`kill run ${i}: the namespace looks clean with the tunnel up: ${JSON.stringify(before)}`)
  const daemons = wireguardGo()
  const t0 = now()
  owner.child.kill('SIGKILL')
  const c = await waitClean({ name: info.name, keyDir, originalResolv: ORIGINAL_RESOLV, t0, intervalMs: k.intervalMs, boundMs: k.boundMs })
  if (!c.ok) {
    say('leftover', { label: `kill run ${i}: not clean ${c.ms.toFixed(0)} ms after SIGKILL`, left: c.left })
    process.exit(3)
  }
  // The processes: the watchdog exits once it has cleaned, wireguard-go once its interface is gone.
  const pids = [info.watchdogPid, ...daemons]
  while (pids.some(running) && ms(t0) < k.boundMs) await sleep(k.intervalMs)
  const processesGoneMs = ms(t0)
  const x = await owner.exited
  if (x.signal !== 'SIGKILL') throw new Error(`kill run ${i}: owner ended ${JSON.stringify(x)}, not by SIGKILL`)
  await settle(`kill run ${i}`, info.name, [keyDir])
  return {
    i, ownerPid: ev.loaded.pid, watchdogPid: info.watchdogPid, ownerConnectMs: ev.connected.callMs,
    cleanMs: c.ms, lastDirtyMs: c.lastDirtyMs, first: c.first, polls: c.polls, processesGoneMs,
  }
}

// ------------------------------------------------------------------------ throughput

/**
 * iperf3 as a client of `server`:`port` for `seconds` (download with -R), JSON output.
 * Bounded (SIGKILL after seconds + 15 s), stdin closed, stderr kept. Resolves its summary:
 * { mbps, bytes, seconds, retransmits } of the receiving side (what arrived).
 */
function iperf3Client({ server, port, seconds }, reverse) {
  const args = ['-c', server, '-p', String(port), '-t', String(seconds), '-J', '--connect-timeout', '3000', ...(reverse ? ['-R'] : [])]
  const boundMs = (seconds + 15) * 1000
  return new Promise((resolve, reject) => {
    const child = spawn('iperf3', args, { stdio: ['ignore', 'pipe', 'pipe'] })
    let out = ''
    let err = ''
    child.stdout.setEncoding('utf8').on('data', (d) => (out += d))
    child.stderr.setEncoding('utf8').on('data', (d) => (err += d))
    const timer = setTimeout(() => child.kill('SIGKILL'), boundMs)
    child.on('error', (e) => {
      clearTimeout(timer)
      reject(new Error(`iperf3 ${args.join(' ')}: ${e.message}`))
    })
    child.on('close', (code, signal) => {
      clearTimeout(timer)
      let j = null
      try {
        j = JSON.parse(out)
      } catch {}
      const rcv = j && j.end && j.end.sum_received
      if (code !== 0 || !rcv || j.error) {
        return reject(new Error(`iperf3 ${args.join(' ')} ended ${signal || code}${signal === 'SIGKILL' ? ` (bound ${boundMs} ms)` : ''}: ` +
          `${(j && j.error) || err.trim() || out.slice(0, 300)}`))
      }
      resolve({ mbps: rcv.bits_per_second / 1e6, bytes: rcv.bytes, seconds: rcv.seconds, retransmits: j.end.sum_sent ? j.end.sum_sent.retransmits ?? null : null })
    })
  })
}

/**
 * One throughput run on this child's backend: a split tunnel (the node's tunnel address is
 * in it) up, a first HTTP answer (handshake done), then iperf3 upload and download through
 * it. The process doing the WireGuard work is this one for the native backends (gotatun runs
 * on napi's threads here) and the namespace's wireguard-go for wg-quick; its utime+stime
 * (all threads; not its children's) is read around each transfer, its VmRSS after both with
 * the tunnel still up. CPU per GB is over the bytes that arrived.
 */
async function throughputRun(i, t) {
  const before = procSample(process.pid)
  const info = await wg.connect(t.killSwitch ? { ...plan.split, killSwitch: true } : plan.split)
  try {
    const first = await getUntilOk(plan.url, { deadlineMs: 10000 })
    if (!first.ok) throw new Error(`throughput run ${i}: no HTTP answer through the tunnel: ${JSON.stringify(first.last)}`)
    let worker = process.pid
    if (info.backend === 'wg-quick') {
      const daemons = wireguardGo()
      if (daemons.length !== 1) throw new Error(`throughput run ${i}: want one wireguard-go in this namespace, found ${JSON.stringify(daemons)}`)
      worker = daemons[0]
    }
    const r = { i, backend: info.backend + (info.killSwitch ? '+killSwitch' : ''), workerPid: worker, workerCmd: procSample(worker).cmd, clkTck: CLK_TCK }
    for (const [dir, reverse] of [['up', false], ['down', true]]) {
      const a = procSample(worker)
      const x = await iperf3Client(t, reverse)
      const b = procSample(worker)
      const cpuS = (b.ticks - a.ticks) / CLK_TCK
      r[dir] = { ...x, cpuS, cpuSPerGB: cpuS / (x.bytes / 1e9) }
    }
    const s = procSample(worker)
    r.vmRssKb = s.vmRssKb
    r.rssAnonKb = s.rssAnonKb
    // For the native backends the worker is this Node process: its RSS before the connect
    // tells what the tunnel and its buffers added.
    r.baseRssKb = worker === process.pid ? before.vmRssKb : null
    return r
  } finally {
    const rep = await wg.disconnect(info.name)
    // eslint-disable-next-line no-unsafe-finally -- a tunnel left up must fail the run
    if (!rep || !rep.gone) throw new Error(`throughput run ${i}: disconnect did not finish: ${JSON.stringify(rep)}`)
    await settle(`throughput run ${i}`, info.name, [wg.configDir()])
  }
}

// ------------------------------------------------------------------------ the SDK's JS path
// An emulation of the SDK's Linux path in wireguard.js (installWgTunnel / uninstallWgTunnel),
// as published (Sentinel dVPN JS SDK): write <tmp>/sentinel-wg/<name>.conf (0600), then
//   execFileSync('wg-quick', ['down', name])   (ignored; a bare name: /etc/wireguard)
//   await sleep(SDK_SLEEP_AFTER_DOWN_MS)        500 ms in the published code
//   execFileSync('wg-quick', ['up', confPath])
//   await sleep(SDK_SLEEP_AFTER_UP_MS)          1000 ms in the published code
//   execFileSync('wg', ['show'])                must mention the name
// and on disconnect: wg-quick down <confPath>, zero-fill, unlink. The sleeps are constants
// from the plan (bench.js prints them); a full tunnel is not emulated (see bench.js).

function sdkConf(c) {
  return [
    '[Interface]',
    `PrivateKey = ${c.privateKey}`,
    `Address = ${c.addresses.join(', ')}`,
    `MTU = ${c.mtu || 1280}`,
    '',
    '[Peer]',
    `PublicKey = ${c.peer.publicKey}`,
    `Endpoint = ${c.peer.endpoint}`,
    `AllowedIPs = ${c.peer.allowedIps.join(', ')}`,
    'PersistentKeepalive = 15',
    '',
  ].join('\n')
}

async function sdkRun(cfg, i) {
  const sdk = plan.sdk
  const dir = sdk.confDir
  const name = cfg.name
  const confPath = path.join(dir, `${name}.conf`)
  const r = { mode: 'sdk', i }
  const x = (args, timeout) => execFileSync(args[0], args.slice(1), { timeout, stdio: ['ignore', 'pipe', 'pipe'] })
  let t0 = now()
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 })
  fs.writeFileSync(confPath, sdkConf(cfg), { mode: 0o600 })
  let t1 = now()
  try { x(['wg-quick', 'down', name], 10000) } catch {}
  r.preDownMs = ms(t1)
  await sleep(sdk.sleepAfterDownMs)
  t1 = now()
  x(['wg-quick', 'up', confPath], 30000)
  r.upMs = ms(t1)
  await sleep(sdk.sleepAfterUpMs)
  t1 = now()
  const out = execFileSync('wg', ['show'], { encoding: 'utf8', timeout: 5000, stdio: ['ignore', 'pipe', 'pipe'] })
  r.verifyMs = ms(t1)
  if (!out.includes(name)) throw new Error(`sdk run ${i}: ${name} not in wg show`)
  r.connectMs = ms(t0)
  r.connectNoSleepMs = r.connectMs - sdk.sleepAfterDownMs - sdk.sleepAfterUpMs
  const first = await getUntilOk(plan.url, { deadlineMs: 10000 })
  r.connectFirstMs = ms(t0)
  r.firstRequestMs = first.ms
  r.attempts = first.attempts
  if (!first.ok) throw new Error(`sdk run ${i}: no HTTP answer: ${JSON.stringify(first.last)}`)
  t0 = now()
  try {
    x(['wg-quick', 'down', confPath], 15000)
  } catch (e) {
    r.downWarning = String(e.stderr || e.message).trim()
  }
  const size = fs.statSync(confPath).size
  fs.writeFileSync(confPath, Buffer.alloc(size, 0))
  fs.unlinkSync(confPath)
  r.disconnectMs = ms(t0)
  r.settleMs = await settle(`sdk run ${i}`, name, [dir, wg.configDir()])
  return r
}

// ------------------------------------------------------------------------ commands

async function emergency(calls) {
  for (let k = 0; k < 50; k++) wg.emergencyCleanupSync()
  const samples = new Array(calls)
  for (let k = 0; k < calls; k++) {
    const t0 = now()
    wg.emergencyCleanupSync()
    samples[k] = ms(t0)
  }
  await settle('emergencyCleanupSync', plan.split.name, [wg.configDir()])
  return samples
}

/** GET `url` (optionally through an HTTP proxy, absolute form, with its credentials): bytes,
 *  ms, Mbit/s of the body. */
function download(url, proxy) {
  const http = require('node:http')
  const o = { agent: false, timeout: 30000 }
  if (proxy) {
    const u = new URL(proxy)
    Object.assign(o, { host: u.hostname, port: Number(u.port), path: url,
      headers: { 'Proxy-Authorization': 'Basic ' + Buffer.from(`${decodeURIComponent(u.username)}:${decodeURIComponent(u.password)}`).toString('base64') } })
  } else {
    const u = new URL(url)
    Object.assign(o, { host: u.hostname, port: Number(u.port) || 80, path: u.pathname + u.search })
  }
  return new Promise((resolve, reject) => {
    const t0 = now()
    const req = http.get(o, (res) => {
      let bytes = 0
      res.on('data', (d) => (bytes += d.length))
      res.on('end', () => {
        const m = ms(t0)
        if (res.statusCode !== 200) return reject(new Error(`GET ${url}: ${res.statusCode}`))
        resolve({ bytes, ms: m, mbps: (bytes * 8) / (m * 1000) })
      })
    })
    req.on('timeout', () => req.destroy(new Error('timeout')))
    req.on('error', reject)
  })
}

/** Rootless mode vs the TUN path (see `proxy` above); the order swaps run by run. */
async function proxyRun(i, c) {
  const cfg = plan.split
  const big = `http://${new URL(plan.url).hostname}:8080/bytes/${c.bytes}`
  const r = { i }
  const viaProxy = async () => {
    let t0 = now()
    const p = await wg.openProxy(cfg)
    r.openMs = ms(t0)
    r.handshakeMs = p.handshakeMs
    let closed
    try {
      t0 = now()
      const first = await download(plan.url, p.httpProxy)
      r.firstRequestMs = ms(t0)
      if (first.bytes < 10) throw new Error(`proxy run ${i}: empty first answer`)
      r.proxy = await download(big, p.httpProxy)
      if (r.proxy.bytes !== c.bytes) throw new Error(`proxy run ${i}: ${r.proxy.bytes} of ${c.bytes} bytes`)
    } finally {
      closed = p.close()
    }
    if (!closed) throw new Error(`proxy run ${i}: close() said it was closed already`)
  }
  const viaTun = async () => {
    const info = await wg.connect(cfg)
    r.tun = await download(big)
    if (r.tun.bytes !== c.bytes) throw new Error(`proxy run ${i}: TUN ${r.tun.bytes} of ${c.bytes} bytes`)
    const rep = await wg.disconnect(info.name)
    if (!rep || !rep.gone) throw new Error(`proxy run ${i}: disconnect did not finish`)
    await settle(`proxy run ${i}`, info.name, [wg.configDir()])
  }
  for (const f of i % 2 ? [viaTun, viaProxy] : [viaProxy, viaTun]) await f()
  return r
}

async function run(c) {
  switch (c.cmd) {
    case 'cycle': {
      const cfg = c.mode === 'full' ? plan.full : plan.split
      say(c.i < 0 ? 'warmup' : 'run', await addonRun(c.mode, cfg, c.i))
      break
    }
    case 'emergency':
      say('emergency', { samples: await emergency(plan.emergencyCalls) })
      break
    case 'footprint':
      say('footprint', await footprint(c.idleMs))
      break
    case 'kill':
      say('kill', await killRun(c.i))
      break
    case 'sdk':
      say('sdk', await sdkRun(plan.sdk.config || plan.split, c.i))
      break
    case 'throughput':
      say('throughput', await throughputRun(c.i, c))
      break
    case 'proxy':
      say('proxy', await proxyRun(c.i, c))
      break
    case 'ks': {
      // The kill switch's cost on connect: a full tunnel (no DNS) with and without it, in turns.
      const cfg = { ...plan.full, dns: [] }
      const r = { i: c.i, with: null, without: null }
      for (const ks of c.i % 2 ? [false, true] : [true, false]) {
        const t0 = now()
        const info = await wg.connect({ ...cfg, killSwitch: ks })
        r[ks ? 'with' : 'without'] = ms(t0)
        const rep = await wg.disconnect(info.name)
        if (!rep || !rep.gone) throw new Error(`ks run ${c.i}: disconnect did not finish`)
        await settle(`ks run ${c.i}`, info.name, [wg.configDir()])
        await new Promise((res) => setTimeout(res, 30)) // past the node's 20 ms flood guard
      }
      say('ks', r)
      break
    }
    case 'exit':
      if (plan.sdk) fs.rmSync(plan.sdk.confDir, { recursive: true, force: true })
      say('done')
      return false
    default:
      throw new Error(`unknown command ${JSON.stringify(c)}`)
  }
  return true
}

async function main() {
  say('ready', { pid: process.pid, requireMs, configDir: wg.configDir() })
  for await (const line of readline.createInterface({ input: process.stdin })) {
    if (!line.trim()) continue
    const c = JSON.parse(line)
    const more = await run(c)
    say('ack', { seq: c.seq, cmd: c.cmd })
    if (!more) {
      process.stdin.destroy()
      return
    }
  }
  // stdin closed without 'exit': bench.js is gone; the exit hooks remove anything of ours
}

main().catch((e) => {
  say('error', { code: e.code, message: e.message, stack: e.stack })
  process.exitCode = 2
})

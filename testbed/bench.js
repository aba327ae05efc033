#!/usr/bin/env node
'use strict'
// npm run bench [-- RUNS] [--json PATH] [--sdk-runs N] [--calls N]
//
// Latency of the addon on one throwaway network-namespace testbed (wireguard-go peer):
//   connect            connect() call -> resolved Promise, split tunnel and full tunnel (+DNS)
//   connect+first req  connect() call -> first HTTP GET to 198.18.0.10 through the tunnel OK
//   disconnect         disconnect() call -> resolved Promise
//   emergencyCleanupSync() with nothing to clean (--calls, default 1000 calls)
//   module load        require() of the repo's index.js in a fresh process (hrtime inside it)
//   SDK JS path        an EMULATION of the SDK's wireguard.js Linux path (--sdk-runs, default
//                      min(RUNS, 10); 0 skips it): an estimate, see testbed/bench/child.js
// RUNS (default 25) connect/request/disconnect cycles per tunnel kind, after one warm-up
// cycle each that is not counted. All cycles run in ONE long-lived child process inside the
// testbed's cli namespace, so process start-up is never part of a connect figure.
//
// Prints a summary table with median, p90 (nearest rank), min, max and the targets; the last
// line of stdout is the same summary as JSON (or it goes to PATH with --json PATH).
// Exit 0 when every cycle worked and nothing was left behind (a missed target is reported,
// not an error); 1 otherwise.
//
// SAFETY: the addon never runs in this process: only children inside the testbed's cli
// namespace load it. The testbed is torn down in `finally` (and on exit/signals by
// testbed/index.js); the private TMPDIR is removed.
const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')
const crypto = require('node:crypto')
const testbed = require('./index.js')
const { startFixture, leftovers, testbedLeftovers, resolvConfPath, alive, cliProcs, onSignalOnce } = require('./fixtures/checks.js')

const ROOT = path.join(__dirname, '..')
const CHILD = path.join(__dirname, 'bench', 'child.js')

// The SDK's fixed sleeps (published wireguard.js, Linux path of installWgTunnel):
// `await sleep(500)` after the `wg-quick down <name>` attempt, `await sleep(1000)` after
// `wg-quick up` and before verifying with `wg show`. Constants, labelled in the output.
const SDK_SLEEP_AFTER_DOWN_MS = 500
const SDK_SLEEP_AFTER_UP_MS = 1000

const TARGETS = { connect: 150, disconnect: 150, emergency: 2, load: 20 } // ms

// ------------------------------------------------------------------------------------ args
function parseArgs(argv) {
  const o = { runs: 25, json: null, sdkRuns: null, calls: 1000 }
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]
    const val = () => {
      const v = argv[++i]
      if (v === undefined) usage(`${a} needs a value`)
      return v
    }
    if (a === '--json') o.json = val()
    else if (a === '--sdk-runs') o.sdkRuns = int(val(), a, 0)
    else if (a === '--calls') o.calls = int(val(), a, 1)
    else if (a === '-h' || a === '--help') usage()
    else if (/^\d+$/.test(a)) o.runs = int(a, 'RUNS', 1)
    else usage(`unknown argument ${a}`)
  }
  if (o.sdkRuns === null) o.sdkRuns = Math.min(o.runs, 10)
  return o
}
function int(v, what, min) {
  const n = Number(v)
  if (!Number.isInteger(n) || n < min) usage(`${what}: want an integer >= ${min}, got ${v}`)
  return n
}
function usage(msg) {
  if (msg) console.error(`bench: ${msg}`)
  console.error('usage: node testbed/bench.js [RUNS=25] [--json PATH] [--sdk-runs N] [--calls N]')
  process.exit(msg ? 2 : 0)
}

// ------------------------------------------------------------------------------------ stats
function stats(xs) {
  const s = [...xs].sort((a, b) => a - b)
  const n = s.length
  if (!n) return null
  const median = n % 2 ? s[(n - 1) / 2] : (s[n / 2 - 1] + s[n / 2]) / 2
  const p90 = s[Math.min(n - 1, Math.ceil(0.9 * n) - 1)]
  return { n, median, p90, min: s[0], max: s[n - 1], mean: s.reduce((a, b) => a + b, 0) / n }
}
const fmt = (v) => (v === undefined || v === null ? '-' : v < 1 ? `${(v * 1000).toFixed(1)} µs` : `${v.toFixed(1)} ms`)
const r3 = (v) => Math.round(v * 1000) / 1000

// ------------------------------------------------------------------------------------ main
async function main() {
  const opt = parseArgs(process.argv.slice(2))
  if (process.getuid() !== 0) throw new Error('must run as root (network namespaces)')
  const log = (s = '') => console.log(s)
  const T0 = Date.now()
  const prefix = `bw${crypto.randomBytes(3).toString('hex')}`
  const name = `${prefix}c` // unique: /run/wireguard/<name>.sock is shared by all namespaces
  let tb
  let tmp
  let child
  const seenDaemons = new Set()
  const rows = []
  const result = { ok: false }
  let failure = null
  // Interrupted: remove the private TMPDIR; testbed/index.js then tears the testbed down
  // (ending the child inside it) and re-raises the signal.
  onSignalOnce((sig) => {
    if (tmp) fs.rmSync(tmp, { recursive: true, force: true })
    console.log(`\nBENCH INTERRUPTED (${sig}): removed ${tmp || 'no TMPDIR'}, tearing the testbed down`)
  })

  try {
    log(`bench: ${opt.runs} runs per tunnel kind (+1 warm-up each), ${opt.calls} emergencyCleanupSync calls, ` +
      `${opt.runs} module loads, ${opt.sdkRuns} SDK-emulation runs`)
    tb = await testbed.up({ nclients: 1, prefix, clientIfnames: [name] })
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'bw-bench-'))
    const originalResolv = fs.readFileSync(resolvConfPath(tb), 'utf8')
    log(`testbed ${tb.cliNs} ⇄ ${tb.nodeNs} up in ${Date.now() - T0} ms; tunnel name ${name}; TMPDIR ${tmp}`)

    const url = `http://${tb.httpTunnelHost}/`
    const split = tb.tunnelConfig(0, { name }) // 10.8.0.0/24 + 198.18.0.10/32, no DNS
    const full = tb.tunnelConfig(0, { name, allowedIps: ['0.0.0.0/0', '::/0'] })
    delete full.dns // the default DNS of a full tunnel (10.8.0.1, 1.1.1.1)
    const plan = {
      runs: opt.runs, warmup: 1, url, clientIp: tb.clients[0].address.split('/')[0],
      dnsName: tb.dnsName, dnsAnswer: tb.dnsAnswer, split, full, emergencyCalls: opt.calls,
      sdk: { runs: opt.sdkRuns, confDir: path.join(tmp, 'sdk', 'sentinel-wg'),
        sleepAfterDownMs: SDK_SLEEP_AFTER_DOWN_MS, sleepAfterUpMs: SDK_SLEEP_AFTER_UP_MS },
    }

    // --- the long-lived child -----------------------------------------------------------
    const runs = []
    const sdkRuns = []
    let emergency = null
    const line = (r) => log(`  ${r.mode.padEnd(5)} ${String(r.i < 0 ? 'warm' : r.i + 1).padStart(4)}  ` +
      `${r.connectMs.toFixed(1).padStart(7)}  ${r.firstRequestMs.toFixed(1).padStart(8)}  ${r.connectFirstMs.toFixed(1).padStart(8)}  ` +
      `${r.disconnectMs.toFixed(1).padStart(10)}  ${(r.addonConnectMs ?? r.upMs ?? 0).toFixed(1).padStart(15)}  ${r.teardown || ''}`)
    const onEvent = (ev) => {
      if (ev.event === 'ready') {
        log(`child pid ${ev.pid} in ${tb.cliNs} (one process for every cycle); its require() took ${ev.requireMs.toFixed(1)} ms`)
        log('')
        log('  times in ms; "+1st req": connect resolved -> first HTTP GET through the tunnel answered')
        log('  kind   run   connect  +1st req  conn+req  disconnect  addon connectMs  teardown steps')
      } else if (ev.event === 'warmup') line(ev)
      else if (ev.event === 'run') {
        runs.push(ev)
        line(ev)
      } else if (ev.event === 'emergency') emergency = ev.samples
      else if (ev.event === 'sdk') {
        sdkRuns.push(ev)
        log(`  sdk   ${String(ev.i + 1).padStart(4)}  connect ${ev.connectMs.toFixed(1)} ms (no sleeps ${ev.connectNoSleepMs.toFixed(1)}; ` +
          `down-attempt ${ev.preDownMs.toFixed(1)}, up ${ev.upMs.toFixed(1)}, wg show ${ev.verifyMs.toFixed(1)}), +1st req ${ev.firstRequestMs.toFixed(1)}, ` +
          `disconnect ${ev.disconnectMs.toFixed(1)} ms`)
      } else if (ev.event === 'leftover') log(`  LEFTOVER after ${ev.label}: ${ev.left.join('; ')}`)
    }
    const c = startFixture(tb, CHILD, { env: { BW_BENCH: JSON.stringify(plan) }, tmp, onEvent })
    child = c.child
    await c.next('ready')
    const budgetMs = 60000 + (opt.runs + 1) * 2 * 5000 + opt.sdkRuns * 10000
    await c.next('done', budgetMs)
    const x = await c.exited
    if (x.status !== 0) throw new Error(`bench child exited ${JSON.stringify(x)}: ${c.stderr()}`)

    // --- state after the child ----------------------------------------------------------
    const after = await leftovers(tb, name, tmp, originalResolv)
    const bad = after.filter((k) => !k.ok)
    log('')
    log(`after ${runs.length + 2} addon cycles and ${sdkRuns.length} SDK cycles: ${bad.length ? 'LEFT: ' + bad.map((k) => `${k.what}: ${k.detail}`).join('; ') : 'nothing left (interface, rules, nft, key dir, resolv.conf, processes, socket)'}`)
    if (bad.length) throw new Error('state left behind by the bench child')

    // --- module load in fresh processes -------------------------------------------------
    const loadScript = `const t0 = process.hrtime.bigint(); require(${JSON.stringify(ROOT)}); ` +
      'const t1 = process.hrtime.bigint(); process.stdout.write(JSON.stringify({ ms: Number(t1 - t0) / 1e6 }))'
    const loads = []
    const loadWall = []
    for (let i = -1; i < opt.runs; i++) {
      const t0 = process.hrtime.bigint()
      const r = await tb.execCli(process.execPath, ['-e', loadScript], { env: { TMPDIR: tmp } })
      const wall = Number(process.hrtime.bigint() - t0) / 1e6
      if (r.code !== 0) throw new Error(`module load run failed (exit ${r.code}): ${r.stderr}`)
      if (i < 0) continue // first one warms the page cache, not counted
      loads.push(JSON.parse(r.stdout).ms)
      loadWall.push(wall)
    }
    for (const p of await cliProcs(tb)) seenDaemons.add(p.pid)
    const after2 = (await leftovers(tb, name, tmp, originalResolv)).filter((k) => !k.ok)
    if (after2.length) throw new Error(`left after module loads: ${after2.map((k) => k.what).join(', ')}`)

    // --- summary ------------------------------------------------------------------------
    const pick = (mode, key) => runs.filter((r) => r.mode === mode).map((r) => r[key])
    const add = (key, label, xs, target) => {
      const s = stats(xs)
      rows.push({ key, label, ...s, targetMs: target ?? null, pass: target == null ? null : s.median < target })
    }
    add('split.connect', 'addon split tunnel: connect', pick('split', 'connectMs'), TARGETS.connect)
    add('split.connectFirstRequest', 'addon split tunnel: connect+first request', pick('split', 'connectFirstMs'))
    add('full.connect', 'addon full tunnel (DNS): connect', pick('full', 'connectMs'), TARGETS.connect)
    add('full.connectFirstRequest', 'addon full tunnel (DNS): connect+first request', pick('full', 'connectFirstMs'))
    add('full.firstLookup', 'addon full tunnel: first DNS lookup via tunnel', pick('full', 'firstLookupMs'))
    add('split.disconnect', 'addon split tunnel: disconnect', pick('split', 'disconnectMs'), TARGETS.disconnect)
    add('full.disconnect', 'addon full tunnel: disconnect', pick('full', 'disconnectMs'), TARGETS.disconnect)
    add('emergencyCleanupSync', 'emergencyCleanupSync() no-op', emergency, TARGETS.emergency)
    add('moduleLoad', "module load: require('blue-wireguard')", loads, TARGETS.load)
    add('moduleLoad.processWall', '  (fresh node process in ns, wall, for context)', loadWall)
    if (sdkRuns.length) {
      const sp = (k) => sdkRuns.map((r) => r[k])
      add('sdk.connect', 'SDK JS path EMULATED (estimate): connect', sp('connectMs'))
      add('sdk.connectNoSleeps', '  same, minus its fixed sleeps (500+1000 ms)', sp('connectNoSleepMs'))
      add('sdk.connectFirstRequest', 'SDK JS path EMULATED: connect+first request', sp('connectFirstMs'))
      add('sdk.disconnect', 'SDK JS path EMULATED: disconnect', sp('disconnectMs'))
    }

    log('')
    log(`summary (${opt.runs} runs; medians compared with the targets; µs/ms as shown)`)
    const W = 48
    log(`  ${'metric'.padEnd(W)} ${'n'.padStart(5)} ${'median'.padStart(10)} ${'p90'.padStart(10)} ${'min'.padStart(10)} ${'max'.padStart(10)}   target`)
    log(`  ${'-'.repeat(W)} ${'-'.repeat(5)} ${'-'.repeat(10)} ${'-'.repeat(10)} ${'-'.repeat(10)} ${'-'.repeat(10)}   ${'-'.repeat(14)}`)
    for (const r of rows) {
      const tgt = r.targetMs == null ? '' : `< ${r.targetMs} ms ${r.pass ? 'ok' : 'MISS'}`
      log(`  ${r.label.padEnd(W)} ${String(r.n).padStart(5)} ${fmt(r.median).padStart(10)} ${fmt(r.p90).padStart(10)} ${fmt(r.min).padStart(10)} ${fmt(r.max).padStart(10)}   ${tgt}`)
    }
    log('')
    log(`targets: connect < ${TARGETS.connect} ms, disconnect < ${TARGETS.disconnect} ms, emergencyCleanupSync no-op < ${TARGETS.emergency} ms, module load < ${TARGETS.load} ms`)
    if (sdkRuns.length) {
      log(`SDK rows are an ESTIMATE: an emulation of the published wireguard.js Linux path (write conf, ` +
        `wg-quick down <name> attempt, sleep ${SDK_SLEEP_AFTER_DOWN_MS} ms, wg-quick up <conf>, sleep ${SDK_SLEEP_AFTER_UP_MS} ms, wg show;` +
        ' down: wg-quick down <conf>, zero-fill, unlink), split tunnel only: its full tunnel writes a DNS line that needs' +
        ' resolvconf (absent here) and does verify-before-capture, which is not emulated.')
    }
    Object.assign(result, {
      ok: true,
      runs: opt.runs,
      date: new Date().toISOString(),
      host: { kernel: os.release(), node: process.version, cpu: os.cpus()[0]?.model, cpus: os.cpus().length },
      backend: 'wg-quick + wireguard-go (userspace; no kernel module on this host)',
      testbed: tb.prefix, tunnelName: name,
      targetsMs: TARGETS,
      sdkEmulation: sdkRuns.length ? { sleepAfterDownMs: SDK_SLEEP_AFTER_DOWN_MS, sleepAfterUpMs: SDK_SLEEP_AFTER_UP_MS, tunnel: 'split', estimate: true } : null,
      metrics: rows.map((r) => ({ key: r.key, label: r.label.trim(), n: r.n, unit: 'ms', median: r3(r.median), p90: r3(r.p90), min: r3(r.min), max: r3(r.max), mean: r3(r.mean), targetMs: r.targetMs, pass: r.pass })),
    })
  } catch (err) {
    failure = err
  } finally {
    if (child && child.exitCode === null && child.signalCode === null) child.kill('SIGKILL')
    if (tb) {
      try {
        await tb.down()
        const left = [...testbedLeftovers(tb.prefix), ...alive([...seenDaemons]).map((p) => `pid ${p}`)]
        console.log(`testbed ${tb.prefix} down: ${left.length ? 'LEFT ' + left.join(', ') : 'nothing left'}`)
        if (left.length && !failure) failure = new Error(`testbed left: ${left.join(', ')}`)
      } catch (err) {
        if (!failure) failure = err
      }
    }
    if (tmp) fs.rmSync(tmp, { recursive: true, force: true })
  }
  if (failure) {
    result.ok = false
    result.error = failure.message
    console.log(`\nBENCH FAILED: ${failure.message}`)
    process.exitCode = 1
  }
  console.log(`total ${((Date.now() - T0) / 1000).toFixed(1)} s`)
  const json = JSON.stringify(result)
  if (opt.json) {
    fs.writeFileSync(opt.json, json + '\n')
    console.log(`JSON summary written to ${opt.json}`)
  } else {
    console.log(json)
  }
}

main().catch((err) => {
  console.log(`BENCH FAILED: ${err.stack || err.message}`)
  process.exitCode = 1
})

'use strict'
// The bench's long-lived measuring process. Run ONLY inside a testbed's cli namespace
// (tb.spawnCli from testbed/bench.js), never in the host's: it brings real tunnels up.
//
//   BW_BENCH='{...plan...}' TMPDIR=<private dir> node testbed/bench/child.js
//
// One process does every run, so process start-up and module load are not part of any
// connect figure. Each result is one JSON line on stdout ({event: ...}); stderr is free text.
//
// Phases: warm-up (not counted) -> runs (split, full alternating) -> emergencyCleanupSync
// no-op calls -> the SDK's JavaScript path, emulated (see sdkConnect) -> done.
// After every run it checks, untimed, that nothing is left (interface, rules, nft table,
// key files, resolv.conf, wireguard-go); a leftover stops the bench with event 'leftover'.
const fs = require('node:fs')
const path = require('node:path')
const { execFileSync } = require('node:child_process')
const { getUntilOk, lookup } = require('../fixtures/net.js')

const ROOT = path.join(__dirname, '..', '..')
const plan = JSON.parse(process.env.BW_BENCH || '{}')
const say = (event, data = {}) => process.stdout.write(JSON.stringify({ event, ...data }) + '\n')
const now = () => process.hrtime.bigint()
const ms = (a, b = now()) => Number(b - a) / 1e6
const sleep = (n) => new Promise((r) => setTimeout(r, n))

let t = now()
const wg = require(ROOT)
const requireMs = ms(t)
const ORIGINAL_RESOLV = fs.readFileSync('/etc/resolv.conf', 'utf8')
const MY_NETNS = fs.statSync('/proc/self/ns/net').ino

// ------------------------------------------------------------------------ leftover checks

function sh(cmd, args) {
  try {
    return execFileSync(cmd, args, { encoding: 'utf8', timeout: 10000, stdio: ['ignore', 'pipe', 'pipe'] })
  } catch (e) {
    return String(e.stdout || '')
  }
}

/** Live wireguard-go processes in this network namespace. */
function wireguardGo() {
  const out = []
  for (const d of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue
    try {
      if (!fs.readFileSync(`/proc/${d}/comm`, 'utf8').startsWith('wireguard-go')) continue
      if (fs.statSync(`/proc/${d}/ns/net`).ino !== MY_NETNS) continue
      const stat = fs.readFileSync(`/proc/${d}/stat`, 'utf8')
      if (stat.slice(stat.lastIndexOf(')') + 2)[0] === 'Z') continue
      out.push(Number(d))
    } catch {}
  }
  return out
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
  if (fs.readFileSync('/etc/resolv.conf', 'utf8') !== ORIGINAL_RESOLV) left.push('resolv.conf changed')
  const daemons = wireguardGo()
  if (daemons.length) left.push(`wireguard-go ${daemons.join(', ')}`)
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
  r.steps = info.steps
  r.dnsMethod = info.dnsMethod || null
  t0 = now()
  const rep = await wg.disconnect(info.name)
  r.disconnectMs = ms(t0)
  if (!rep || !rep.gone || !rep.configRemoved) throw new Error(`${mode} run ${i}: disconnect did not finish: ${JSON.stringify(rep)}`)
  r.teardown = rep.steps.filter((s) => s.ran).map((s) => `${s.step} ${s.elapsedMs.toFixed(1)}`).join(', ')
  r.settleMs = await settle(`${mode} run ${i}`, info.name, [wg.configDir()])
  return r
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

// ------------------------------------------------------------------------ main

async function main() {
  say('ready', { pid: process.pid, requireMs, configDir: wg.configDir() })
  const modes = [['split', plan.split], ['full', plan.full]]

  for (let w = 0; w < plan.warmup; w++) {
    for (const [mode, cfg] of modes) say('warmup', await addonRun(mode, cfg, -1 - w))
  }
  for (let i = 0; i < plan.runs; i++) {
    for (const [mode, cfg] of modes) say('run', await addonRun(mode, cfg, i))
  }

  // emergencyCleanupSync() with nothing to clean
  for (let k = 0; k < 50; k++) wg.emergencyCleanupSync()
  const samples = new Array(plan.emergencyCalls)
  for (let k = 0; k < plan.emergencyCalls; k++) {
    const t0 = now()
    wg.emergencyCleanupSync()
    samples[k] = ms(t0)
  }
  say('emergency', { samples })
  await settle('emergencyCleanupSync', plan.split.name, [wg.configDir()])

  if (plan.sdk && plan.sdk.runs > 0) {
    for (let i = 0; i < plan.sdk.runs; i++) say('sdk', await sdkRun(plan.split, i))
    fs.rmSync(plan.sdk.confDir, { recursive: true, force: true })
  }
  say('done')
}

main().catch((e) => {
  say('error', { code: e.code, message: e.message, stack: e.stack })
  process.exitCode = 2
})

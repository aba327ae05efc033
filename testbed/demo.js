#!/usr/bin/env node
'use strict'
// npm run demo: the seed's failure and its fix, live, in a throwaway network-namespace testbed.
//
//   1. agent A connects a FULL tunnel `wgsent0` (0.0.0.0/0, ::/0, default DNS), fetches
//      http://198.18.0.10/ and resolves test.sentinel.internal through the tunnel;
//   2. agent A is SIGKILLed: no exit hook can run, wgsent0 stays up and routing; plain wg-quick
//      now fails exactly as in the seed (`wg-quick: 'wgsent0' already exists`);
//   3. agent B connects again with the same name: the addon converges (replacedStale), fetches,
//      disconnects; nothing is left (interface, rules, nft table, key file, resolv.conf, daemon).
//
// SAFETY: the addon never runs in this process. Every tunnel is brought up by a child process
// inside the testbed's cli namespace (tb.spawnCli); this script only reads state there. The
// testbed is torn down in `finally` (and by testbed/index.js on exit or a signal).
// Exit status 0 = every step behaved as expected; otherwise 1 with the reason.
const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')
const testbed = require('./index.js')
const { startFixture, leftovers, testbedLeftovers, resolvConfPath, alive, wireguardGoIn, cliProcs, onSignalOnce } =
  require('./fixtures/checks.js')

const AGENT = path.join(__dirname, 'fixtures', 'agent.js')
const NAME = 'wgsent0'

// ------------------------------------------------------------------------------------ logging
const T0 = process.hrtime.bigint()
let last = T0
const C = process.stdout.isTTY ? { ok: '\x1b[32m', bad: '\x1b[31m', dim: '\x1b[2m', off: '\x1b[0m' } : { ok: '', bad: '', dim: '', off: '' }
const ms = (a, b) => Number(b - a) / 1e6
const num = (v, w = 7) => `${v.toFixed(0)} ms`.padStart(w + 3)

/** One step line: total elapsed, time since the previous step, what, result. */
function step(what, result = '') {
  const now = process.hrtime.bigint()
  console.log(`${num(ms(T0, now))} ${num(ms(last, now))}  ${what.padEnd(46)} ${result}`)
  last = now
}
/** A detail line under a step (no times). */
function detail(text) {
  for (const l of String(text).split('\n')) console.log(`${' '.repeat(22)}${C.dim}│ ${l}${C.off}`)
}
function check(cond, what) {
  if (!cond) throw new Error(what)
}
function header() {
  console.log(`${'elapsed'.padStart(10)} ${'step'.padStart(10)}  ${'what'.padEnd(46)} result`)
  console.log(`${'-'.repeat(10)} ${'-'.repeat(10)}  ${'-'.repeat(46)} ${'-'.repeat(40)}`)
}
const stepsLine = (progress) => progress.map((p) => `${p.step} ${p.ms.toFixed(0)}`).join(' → ')

// ------------------------------------------------------------------------------------ main
async function main() {
  let tb
  let tmp
  const agents = []
  const daemonPids = new Set()
  let failure = null
  // Interrupted: remove the private TMPDIR; testbed/index.js then tears the testbed down
  // (ending the agents inside it) and re-raises the signal.
  onSignalOnce((sig) => {
    if (tmp) fs.rmSync(tmp, { recursive: true, force: true })
    console.log(`\n${C.bad}DEMO INTERRUPTED${C.off} (${sig}): removed ${tmp || 'no TMPDIR'}, tearing the testbed down`)
  })
  try {
    header()
    // A fixed name is required here (the SDK's wgsent0), and wireguard-go's control socket dir
    // /run/wireguard is shared by every namespace: refuse rather than collide with a live one.
    if (fs.existsSync(`/run/wireguard/${NAME}.sock`)) {
      throw new Error(`/run/wireguard/${NAME}.sock exists: another ${NAME} (another test or testbed?) ` +
        'is using this name on this machine; run the demo when it is gone')
    }
    tb = await testbed.up({ nclients: 1, clientIfnames: [NAME] })
    step('testbed up', `${tb.cliNs} ⇄ ${tb.nodeNs} (node ${tb.endpoint})`)
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'bw-demo-'))
    const originalResolv = fs.readFileSync(resolvConfPath(tb), 'utf8')
    step('private TMPDIR for the agents', tmp)
    detail(`cli ns resolv.conf (original): ${originalResolv.trim().split('\n').pop()}`)

    const url = `http://${tb.httpTunnelHost}/`
    const config = tb.tunnelConfig(0, { allowedIps: ['0.0.0.0/0', '::/0'], name: NAME })
    delete config.dns // default DNS of a full tunnel
    const plan = (then) => ({ config, fetch: [url], resolve: tb.dnsName, then })

    // --- 1. agent A: full tunnel, fetch, resolve, then wait -------------------------------
    const a = startFixture(tb, AGENT, { env: { BW_DEMO_AGENT: JSON.stringify(plan('wait')) }, tmp })
    agents.push(a)
    const la = await a.next('loaded')
    step('agent A started in cli ns', `pid ${la.pid}, require() ${la.requireMs.toFixed(1)} ms`)
    const ca = await a.next('connected')
    const ia = ca.info
    step(`A: connect(${NAME}, full tunnel)`, `resolved in ${ca.callMs.toFixed(0)} ms (backend ${ia.backend})`)
    detail(`allowedIps ${ia.allowedIps.join(', ')}  dns ${ia.dns.join(', ')} via ${ia.dnsMethod}  mtu ${ia.mtu}  replacedStale ${ia.replacedStale}`)
    detail(`steps (ms since call): ${stepsLine(ca.progress)}`)
    check(ia.name === NAME && ia.fullTunnel === true, `A: expected a full tunnel ${NAME}, got ${JSON.stringify(ia)}`)
    const fa = await a.next('fetch')
    step(`A: GET ${url}`, fa.ok ? `200 in ${fa.ms.toFixed(0)} ms` : `FAILED ${fa.error || fa.status}`)
    detail(fa.body ? fa.body.trim() : JSON.stringify(fa))
    check(fa.ok && fa.json && fa.json.served_by === tb.httpTunnelHost && fa.json.client === '10.8.0.2',
      `A: unexpected answer from ${url}: ${JSON.stringify(fa)}`)
    const ra = await a.next('resolve')
    step(`A: resolve ${tb.dnsName}`, ra.ok ? `${ra.address} in ${ra.ms.toFixed(0)} ms` : `FAILED ${ra.error}`)
    const rc = await a.next('resolv-conf')
    detail(`the agent's /etc/resolv.conf: ${rc.text.split('\n').filter((l) => /^nameserver/.test(l)).join('; ')}`)
    check(ra.ok && ra.address === tb.dnsAnswer, `A: ${tb.dnsName} should resolve to ${tb.dnsAnswer} through the tunnel DNS: ${JSON.stringify(ra)}`)
    await a.next('waiting')

    // --- 2. SIGKILL: nothing of the agent runs, the tunnel stays ---------------------------
    a.child.kill('SIGKILL')
    const xa = await a.exited
    step('SIGKILL agent A', `exit status ${xa.status} (${xa.signal})`)
    check(xa.signal === 'SIGKILL', `A: expected death by SIGKILL, got ${JSON.stringify(xa)}`)
    const link = await tb.execCli('ip', ['-br', 'link', 'show', 'dev', NAME])
    step(`${NAME} after the kill`, link.code === 0 ? 'STILL THERE (stale, still routing)' : 'gone')
    check(link.code === 0, `${NAME} should have survived SIGKILL (wireguard-go); it did not`)
    detail(link.stdout.trim())
    const rules = (await tb.execCli('ip', ['-4', 'rule', 'show'])).stdout.split('\n').filter((l) => /fwmark|suppress/.test(l))
    if (rules.length) detail(`ip rule: ${rules.map((l) => l.trim()).join(' | ')}`)
    const staleResolv = fs.readFileSync(resolvConfPath(tb), 'utf8')
    detail(`resolv.conf: ${staleResolv === originalResolv ? 'original' : staleResolv.split('\n').filter((l) => /^nameserver/.test(l)).join('; ')}`)
    const keyDir = path.join(tmp, 'sentinel-wg')
    detail(`key dir: ${fs.existsSync(keyDir) ? fs.readdirSync(keyDir).join(', ') || 'empty' : 'absent'}`)
    for (const p of await cliProcs(tb)) {
      daemonPids.add(p.pid)
      detail(`process left in cli ns: ${p.pid} ${p.cmd}`)
    }

    // The seed's path with plain wg-quick (harmless: `down <name>` finds no config, `up`
    // refuses before doing anything because the interface exists).
    if (!fs.existsSync(`/etc/wireguard/${NAME}.conf`)) {
      const down = await tb.execCli('wg-quick', ['down', NAME])
      step(`seed: wg-quick down ${NAME}`, `exit ${down.code}`)
      detail((down.stderr || down.stdout).trim())
      const seedDir = path.join(tmp, 'seed')
      fs.mkdirSync(seedDir, { mode: 0o700 })
      const seedConf = path.join(seedDir, `${NAME}.conf`)
      fs.writeFileSync(seedConf, `[Interface]\nAddress = ${config.addresses[0]}\n`, { mode: 0o600 })
      const up = await tb.execCli('wg-quick', ['up', seedConf])
      fs.rmSync(seedDir, { recursive: true, force: true })
      step(`seed: wg-quick up <tmp>/${NAME}.conf`, `exit ${up.code}`)
      detail((up.stderr || up.stdout).trim())
      check(up.code !== 0 && /already exists/.test(up.stderr), `plain wg-quick up should fail with 'already exists': ${JSON.stringify(up)}`)
    }

    // --- 3. agent B: same name again; the addon converges ---------------------------------
    const b = startFixture(tb, AGENT, { env: { BW_DEMO_AGENT: JSON.stringify(plan('disconnect')) }, tmp })
    agents.push(b)
    const lb = await b.next('loaded')
    step('agent B started in cli ns', `pid ${lb.pid}, require() ${lb.requireMs.toFixed(1)} ms`)
    const cb = await b.next('connected')
    const ib = cb.info
    step(`B: connect(${NAME}, full tunnel) again`, `resolved in ${cb.callMs.toFixed(0)} ms, replacedStale ${ib.replacedStale}`)
    const conv = cb.progress.find((p) => p.step === 'converge')
    if (conv) detail(`converge: ${conv.detail}`)
    detail(`steps (ms since call): ${stepsLine(cb.progress)}`)
    check(ib.replacedStale === true, `B: expected info.replacedStale === true, got ${ib.replacedStale}`)
    const fb = await b.next('fetch')
    step(`B: GET ${url}`, fb.ok ? `200 in ${fb.ms.toFixed(0)} ms` : `FAILED ${fb.error || fb.status}`)
    detail(fb.body ? fb.body.trim() : JSON.stringify(fb))
    check(fb.ok && fb.json && fb.json.served_by === tb.httpTunnelHost && fb.json.client === '10.8.0.2',
      `B: unexpected answer from ${url}: ${JSON.stringify(fb)}`)
    const rb = await b.next('resolve')
    step(`B: resolve ${tb.dnsName}`, rb.ok ? `${rb.address} in ${rb.ms.toFixed(0)} ms` : `FAILED ${rb.error}`)
    check(rb.ok && rb.address === tb.dnsAnswer, `B: ${tb.dnsName} should resolve to ${tb.dnsAnswer}: ${JSON.stringify(rb)}`)
    const db = await b.next('disconnected')
    const rep = db.report
    step(`B: disconnect(${NAME})`, `resolved in ${db.callMs.toFixed(0)} ms, gone ${rep && rep.gone}, config removed ${rep && rep.configRemoved}`)
    if (rep) detail(`teardown: ${rep.steps.map((s) => `${s.step}${s.ran ? (s.ok ? ' ok' : ' failed') : ' skipped'} ${s.elapsedMs.toFixed(1)} ms`).join(' → ')}`)
    detail(`disconnect() again: ${JSON.stringify(db.again)}`)
    check(rep && rep.gone === true && db.again === null, `B: disconnect should remove ${NAME} and be idempotent: ${JSON.stringify(db)}`)
    const xb = await b.exited
    step('agent B exited', `exit status ${xb.status}`)
    check(xb.status === 0, `B: expected exit 0, got ${JSON.stringify(xb)}; stderr ${b.stderr()}`)

    // --- nothing left --------------------------------------------------------------------
    const checks = await leftovers(tb, NAME, tmp, originalResolv)
    const bad = checks.filter((c) => !c.ok)
    step('nothing left?', bad.length ? `${C.bad}NO: ${bad.map((c) => c.what).join(', ')}${C.off}` : `${C.ok}yes${C.off}`)
    for (const c of checks) detail(`${c.ok ? 'ok ' : 'LEFT'} ${c.what.padEnd(20)} ${c.detail}`)
    const deadDaemons = alive([...daemonPids])
    if (daemonPids.size) detail(`stale wireguard-go of agent A (${[...daemonPids].join(', ')}): ${deadDaemons.length ? 'STILL RUNNING' : 'exited'}`)
    check(bad.length === 0 && deadDaemons.length === 0, `left behind: ${bad.map((c) => `${c.what}: ${c.detail}`).join('; ')}`)
  } catch (err) {
    failure = err
  } finally {
    for (const ag of agents) if (ag.child.exitCode === null && ag.child.signalCode === null) ag.child.kill('SIGKILL')
    if (tb) {
      const ours = wireguardGoIn(tb.prefix).ours.map((p) => p.pid)
      try {
        await tb.down()
        const left = [...testbedLeftovers(tb.prefix), ...alive(ours).map((p) => `wireguard-go pid ${p}`)]
        step('testbed down', left.length ? `${C.bad}LEFT: ${left.join(', ')}${C.off}` : 'namespaces, daemons and state removed')
        if (left.length && !failure) failure = new Error(`testbed left: ${left.join(', ')}`)
      } catch (err) {
        step('testbed down', `${C.bad}FAILED${C.off}`)
        if (!failure) failure = err
      }
    }
    if (tmp) fs.rmSync(tmp, { recursive: true, force: true })
  }
  if (failure) {
    console.log(`\n${C.bad}DEMO FAILED${C.off}: ${failure.message}`)
    process.exitCode = 1
  } else {
    console.log(`\n${C.ok}DEMO OK${C.off}: a killed agent's stale ${NAME} was replaced on reconnect, and disconnect left nothing (${ms(T0, process.hrtime.bigint()).toFixed(0)} ms in all).`)
  }
}

main()

#!/usr/bin/env node
'use strict'
// npm run demo: a tunnel never outlives its owner, live, in a throwaway network-namespace testbed.
//
//   1. the watchdog: agent A connects a FULL tunnel `wgsent0` (0.0.0.0/0, ::/0, default DNS),
//      fetches http://198.18.0.10/ and resolves test.sentinel.internal through the tunnel;
//      A is SIGKILLed (no exit hook can run) and A's watchdog removes the tunnel, the DNS
//      change and the key file on its own: a poller in the namespace prints how long it took;
//   2. the seed's failure, still handled: agent A2 runs with BLUE_WG_NO_WATCHDOG=1 (as if the
//      watchdog had died with it, e.g. a cgroup-wide kill) and is SIGKILLed: wgsent0 stays up
//      and routing, and plain wg-quick fails as in the seed (`wg-quick: 'wgsent0' already
//      exists`); agent B connects with the same name: the addon converges (replacedStale),
//      fetches, disconnects; nothing is left (interface, rules, nft table, key file,
//      resolv.conf, daemons).
//
// SAFETY: the addon never runs in this process. Every tunnel is brought up by a child process
// inside the testbed's cli namespace (tb.spawnCli); this script only reads state there. The
// testbed is torn down in `finally` (and by testbed/index.js on exit or a signal).
// Exit status 0 = every step behaved as expected; otherwise 1 with the reason.
const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')
const testbed = require('./index.js')
const { startFixture, leftovers, testbedLeftovers, resolvConfPath, stateDir, alive, wireguardGoIn, cliProcs, procInfo, waitGone, onSignalOnce } =
  require('./fixtures/checks.js')

const AGENT = path.join(__dirname, 'fixtures', 'agent.js')
const CLEAN = path.join(__dirname, 'fixtures', 'clean.js')
const NAME = 'wgsent0'
const CLEAN_TARGET_MS = 1000 // issue 4: gone within 1 s of the owner's death
const POLL_MS = 5 // how often the poller looks
const POLL_BOUND_MS = 5000 // and for how long at most
const STALE_LOOK_MS = 1000 // part 2: how long we watch the unguarded leftover stay

// ------------------------------------------------------------------------------------ logging
const T0 = process.hrtime.bigint()
let last = T0
const C = process.stdout.isTTY ? { ok: '\x1b[32m', bad: '\x1b[31m', dim: '\x1b[2m', b: '\x1b[1m', off: '\x1b[0m' } : { ok: '', bad: '', dim: '', b: '', off: '' }
const ms = (a, b) => Number(b - a) / 1e6
const num = (v, w = 7) => `${v.toFixed(0)} ms`.padStart(w + 3)
const sleep = (n) => new Promise((r) => setTimeout(r, n))

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
/** A part title. */
function part(title) {
  console.log(`\n${C.b}${title}${C.off}`)
}
function check(cond, what) {
  if (!cond) throw new Error(what)
}
function header() {
  console.log(`${'elapsed'.padStart(10)} ${'step'.padStart(10)}  ${'what'.padEnd(46)} result`)
  console.log(`${'-'.repeat(10)} ${'-'.repeat(10)}  ${'-'.repeat(46)} ${'-'.repeat(40)}`)
}
const stepsLine = (progress) => progress.map((p) => `${p.step} ${p.ms.toFixed(0)}`).join(' → ')
const nameservers = (text) => text.split('\n').filter((l) => /^nameserver/.test(l)).join('; ')
const f0 = (v) => (v === null || v === undefined ? '-' : `${v.toFixed(0)} ms`)

// ------------------------------------------------------------------------------------ main
async function main() {
  let tb
  let tmp
  const agents = []
  const daemonPids = new Set()
  let failure = null
  let cleanMs = null
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
    tb = await testbed.up({ nclients: 2, clientIfnames: [NAME] })
    step('testbed up', `${tb.cliNs} ⇄ ${tb.nodeNs} (node ${tb.endpoint})`)
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'bw-demo-'))
    const keyDir = path.join(tmp, 'sentinel-wg')
    const originalResolv = fs.readFileSync(resolvConfPath(tb), 'utf8')
    step('private TMPDIR for the agents', tmp)
    detail(`cli ns resolv.conf (original): ${originalResolv.trim().split('\n').pop()}`)

    const url = `http://${tb.httpTunnelHost}/`
    const config = tb.tunnelConfig(0, { allowedIps: ['0.0.0.0/0', '::/0'], name: NAME })
    delete config.dns // default DNS of a full tunnel
    const plan = (then, more = {}) => ({ config, fetch: [url], resolve: tb.dnsName, then, ...more })
    // The watchdog is on unless BLUE_WG_NO_WATCHDOG is "1": say so explicitly for A and B,
    // whatever the environment the demo was started from.
    const agentEnv = (p, noWatchdog = false) => ({ BW_DEMO_AGENT: JSON.stringify(p), BLUE_WG_NO_WATCHDOG: noWatchdog ? '1' : '0' })
    const fetchOk = (f, client = '10.8.0.2') => f.ok && f.json && f.json.served_by === tb.httpTunnelHost && f.json.client === client
    // The key file, the ownership record, the lock and the DNS state live in the network
    // namespace's state dir, not in TMPDIR (keyDir, <TMPDIR>/sentinel-wg, must stay empty).
    const stateList = () => {
      const d = stateDir(tb)
      return fs.existsSync(d) ? `${d}: ${fs.readdirSync(d).sort().join(', ') || 'empty'}` : `${d}: absent`
    }

    // ====================================================================================
    part(`1. the watchdog: agent A is SIGKILLed, its ${NAME} goes away on its own`)
    const a = startFixture(tb, AGENT, { env: agentEnv(plan('wait')), tmp })
    agents.push(a)
    const la = await a.next('loaded')
    step('agent A started in cli ns', `pid ${la.pid}, require() ${la.requireMs.toFixed(1)} ms`)
    const ca = await a.next('connected')
    const ia = ca.info
    step(`A: connect(${NAME}, full tunnel)`, `resolved in ${ca.callMs.toFixed(0)} ms (backend ${ia.backend})`)
    detail(`allowedIps ${ia.allowedIps.join(', ')}  dns ${ia.dns.join(', ')} via ${ia.dnsMethod}  mtu ${ia.mtu}  replacedStale ${ia.replacedStale}`)
    detail(`steps (ms since call): ${stepsLine(ca.progress)}`)
    check(ia.name === NAME && ia.fullTunnel === true, `A: expected a full tunnel ${NAME}, got ${JSON.stringify(ia)}`)
    check(Number.isInteger(ia.watchdogPid), `A: expected info.watchdogPid (watchdog on), got ${ia.watchdogPid}`)
    const wd = procInfo(ia.watchdogPid)
    check(wd && /blue-wg-watchdog/.test(wd.cmd), `A: watchdog pid ${ia.watchdogPid} is not a running blue-wg-watchdog: ${JSON.stringify(wd)}`)
    detail(`watchdog pid ${wd.pid}: ${wd.cmd}  (VmRSS ${(wd.vmRssKb / 1024).toFixed(1)} MB, blocked reading the owner's pipe)`)
    const fa = await a.next('fetch')
    step(`A: GET ${url}`, fa.ok ? `200 in ${fa.ms.toFixed(0)} ms` : `FAILED ${fa.error || fa.status}`)
    detail(fa.body ? fa.body.trim() : JSON.stringify(fa))
    check(fetchOk(fa), `A: unexpected answer from ${url}: ${JSON.stringify(fa)}`)
    const ra = await a.next('resolve')
    step(`A: resolve ${tb.dnsName}`, ra.ok ? `${ra.address} in ${ra.ms.toFixed(0)} ms` : `FAILED ${ra.error}`)
    const rc = await a.next('resolv-conf')
    detail(`the agent's /etc/resolv.conf: ${nameservers(rc.text)}`)
    detail(`state dir: ${stateList()}`)
    check(ra.ok && ra.address === tb.dnsAnswer, `A: ${tb.dnsName} should resolve to ${tb.dnsAnswer} through the tunnel DNS: ${JSON.stringify(ra)}`)
    await a.next('waiting')
    const aDaemons = (await cliProcs(tb)).filter((p) => /wireguard-go/.test(p.cmd)).map((p) => p.pid)

    // The poller: a small process in the cli ns (it never loads the addon: no other process
    // of the app runs while the watchdog works), told the kill time; it looks every POLL_MS.
    const w = startFixture(tb, CLEAN, {
      env: { BW_CLEAN: JSON.stringify({ name: NAME, keyDir, originalResolv, intervalMs: POLL_MS, boundMs: POLL_BOUND_MS }) },
      tmp,
      stdin: 'pipe',
    })
    agents.push(w)
    const wr = await w.next('ready')
    const bf = wr.before
    step('poller started in cli ns', `pid ${wr.pid}; sees: ${[!bf.iface && 'interface', !bf.keys && 'key files', !bf.state && 'record/DNS state', !bf.resolv && 'tunnel DNS',
      bf.rules === false && 'policy rules'].filter(Boolean).join(', ') || 'nothing?!'}`)
    check(!wr.before.clean, `the poller should see the tunnel before the kill: ${JSON.stringify(wr.before)}`)

    const tKill = process.hrtime.bigint()
    a.child.kill('SIGKILL')
    w.child.stdin.write(`${tKill}\n`)
    const xa = await a.exited
    step('SIGKILL agent A', `exit status ${xa.status} (${xa.signal}); no exit hook can run`)
    check(xa.signal === 'SIGKILL', `A: expected death by SIGKILL, got ${JSON.stringify(xa)}`)
    const cl = await w.waitFor((e) => e.event === 'clean' || e.event === 'timeout', "'clean'", POLL_BOUND_MS + 5000)
    cleanMs = cl.ms
    step('watchdog removed tunnel, DNS change, key file, record',
      cl.event === 'clean'
        ? `${C.ok}clean ${cl.ms.toFixed(0)} ms after SIGKILL${C.off} (target < ${CLEAN_TARGET_MS} ms)`
        : `${C.bad}NOT clean ${cl.ms.toFixed(0)} ms after SIGKILL${C.off}: ${cl.left.join(', ')}`)
    detail(`first seen clean, ms after SIGKILL: resolv.conf ${f0(cl.first.resolv)}, interface ${f0(cl.first.iface)}, ` +
      `key dir ${f0(cl.first.keys)}, state dir ${f0(cl.first.state)}, then rules checked: none left`)
    detail(`${cl.polls} looks every ${POLL_MS} ms (bound ${POLL_BOUND_MS} ms); still dirty at ${f0(cl.lastDirtyMs)}; ` +
      'interface: /sys/class/net, rules: ip -4/-6 rule, key dir, state dir, /etc/resolv.conf')
    check(cl.event === 'clean' && cl.ms < CLEAN_TARGET_MS, `A's tunnel should be gone within ${CLEAN_TARGET_MS} ms of SIGKILL: ${JSON.stringify(cl)}`)
    const wdLeft = await waitGone([wd.pid], 3000)
    const aLeft = await waitGone(aDaemons, 3000)
    step('watchdog and wireguard-go of A', `${wdLeft.length ? `${C.bad}watchdog ${wd.pid} STILL RUNNING${C.off}` : `watchdog ${wd.pid} exited`}, ` +
      `${aLeft.length ? `${C.bad}wireguard-go ${aLeft.join(', ')} STILL RUNNING${C.off}` : `wireguard-go ${aDaemons.join(', ') || '-'} exited`}`)
    check(wdLeft.length === 0 && aLeft.length === 0, `A: processes left: ${[...wdLeft, ...aLeft].join(', ')}`)
    await w.exited
    const checksA = await leftovers(tb, NAME, tmp, originalResolv)
    const badA = checksA.filter((c) => !c.ok)
    step('nothing of A left?', badA.length ? `${C.bad}NO: ${badA.map((c) => c.what).join(', ')}${C.off}` : `${C.ok}yes${C.off} (interface, rules, nft, key dir, state dir, resolv.conf, processes, socket)`)
    check(badA.length === 0, `left behind by A: ${badA.map((c) => `${c.what}: ${c.detail}`).join('; ')}`)

    // ====================================================================================
    part(`2. the seed's world (the wg-quick backend, wireguard-go, BLUE_WG_NO_WATCHDOG=1): its failure, and the reconnect that handles it`)
    // The wg-quick backend's interface (wireguard-go's) outlives its process, as the seed's
    // did; the default embedded one dies with it. Its own client key: a node refuses an
    // initiation from one key whose timestamp is not later than the last (gotatun's run 27 s
    // ahead of wireguard-go's, FAILURES T34).
    const a2Plan = plan('wait', { resolve: undefined, config: tb.tunnelConfig(1, { allowedIps: ['0.0.0.0/0', '::/0'], name: NAME }) })
    const a2 = startFixture(tb, AGENT, { env: { ...agentEnv(a2Plan, true), BLUE_WG_BACKEND: 'wg-quick' }, tmp })
    agents.push(a2)
    const la2 = await a2.next('loaded')
    step('agent A2 started, BLUE_WG_NO_WATCHDOG=1', `pid ${la2.pid}, require() ${la2.requireMs.toFixed(1)} ms`)
    detail('as if the watchdog had died with it, e.g. a cgroup-wide kill')
    const ca2 = await a2.next('connected')
    const ia2 = ca2.info
    step(`A2: connect(${NAME}, full tunnel)`, `resolved in ${ca2.callMs.toFixed(0)} ms, watchdogPid ${ia2.watchdogPid ?? 'none'}`)
    detail(`steps (ms since call): ${stepsLine(ca2.progress)}`)
    check(ia2.name === NAME && ia2.fullTunnel === true && ia2.watchdogPid == null,
      `A2: expected a full tunnel ${NAME} without a watchdog, got ${JSON.stringify(ia2)}`)
    const fa2 = await a2.next('fetch')
    step(`A2: GET ${url}`, fa2.ok ? `200 in ${fa2.ms.toFixed(0)} ms` : `FAILED ${fa2.error || fa2.status}`)
    check(fetchOk(fa2, '10.8.0.3'), `A2: unexpected answer from ${url}: ${JSON.stringify(fa2)}`)
    await a2.next('waiting')

    a2.child.kill('SIGKILL')
    const xa2 = await a2.exited
    step('SIGKILL agent A2', `exit status ${xa2.status} (${xa2.signal})`)
    check(xa2.signal === 'SIGKILL', `A2: expected death by SIGKILL, got ${JSON.stringify(xa2)}`)
    await sleep(STALE_LOOK_MS)
    const link = await tb.execCli('ip', ['-br', 'link', 'show', 'dev', NAME])
    step(`${NAME} ${STALE_LOOK_MS} ms after the kill`, link.code === 0 ? 'STILL THERE (stale, still routing; nobody removes it)' : 'gone')
    check(link.code === 0, `${NAME} should have survived SIGKILL without a watchdog (wireguard-go); it did not`)
    detail(link.stdout.trim())
    const rules = (await tb.execCli('ip', ['-4', 'rule', 'show'])).stdout.split('\n').filter((l) => /fwmark|suppress/.test(l))
    if (rules.length) detail(`ip rule: ${rules.map((l) => l.trim()).join(' | ')}`)
    const staleResolv = fs.readFileSync(resolvConfPath(tb), 'utf8')
    detail(`resolv.conf: ${staleResolv === originalResolv ? 'original' : `${nameservers(staleResolv)} (the dead agent's tunnel DNS)`}`)
    detail(`state dir: ${stateList()}`)
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

    // --- agent B: same name again; the addon converges -----------------------------------
    const b = startFixture(tb, AGENT, { env: agentEnv(plan('disconnect')), tmp })
    agents.push(b)
    const lb = await b.next('loaded')
    step('agent B started in cli ns', `pid ${lb.pid}, require() ${lb.requireMs.toFixed(1)} ms`)
    const cb = await b.next('connected')
    const ib = cb.info
    step(`B: connect(${NAME}, full tunnel) again`, `resolved in ${cb.callMs.toFixed(0)} ms, replacedStale ${ib.replacedStale}`)
    const conv = cb.progress.find((p) => p.step === 'converge')
    if (conv) detail(`converge: ${conv.detail}`)
    detail(`steps (ms since call): ${stepsLine(cb.progress)}`)
    detail(`watchdog pid ${ib.watchdogPid ?? 'none'}`)
    check(ib.replacedStale === true, `B: expected info.replacedStale === true, got ${ib.replacedStale}`)
    const fb = await b.next('fetch')
    step(`B: GET ${url}`, fb.ok ? `200 in ${fb.ms.toFixed(0)} ms` : `FAILED ${fb.error || fb.status}`)
    detail(fb.body ? fb.body.trim() : JSON.stringify(fb))
    check(fetchOk(fb), `B: unexpected answer from ${url}: ${JSON.stringify(fb)}`)
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
    if (Number.isInteger(ib.watchdogPid)) daemonPids.add(ib.watchdogPid)

    // --- nothing left --------------------------------------------------------------------
    const checks = await leftovers(tb, NAME, tmp, originalResolv)
    const bad = checks.filter((c) => !c.ok)
    step('nothing left?', bad.length ? `${C.bad}NO: ${bad.map((c) => c.what).join(', ')}${C.off}` : `${C.ok}yes${C.off}`)
    for (const c of checks) detail(`${c.ok ? 'ok ' : 'LEFT'} ${c.what.padEnd(20)} ${c.detail}`)
    const liveDaemons = alive([...daemonPids])
    if (daemonPids.size) detail(`A2's wireguard-go and B's watchdog (${[...daemonPids].join(', ')}): ${liveDaemons.length ? 'STILL RUNNING' : 'exited'}`)
    check(bad.length === 0 && liveDaemons.length === 0, `left behind: ${bad.map((c) => `${c.what}: ${c.detail}`).join('; ')} ${liveDaemons.join(', ')}`)
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
    console.log(`\n${C.ok}DEMO OK${C.off}: the watchdog removed a SIGKILLed agent's ${NAME} ${cleanMs.toFixed(0)} ms after the kill; ` +
      `without it, the stale ${NAME} was replaced on reconnect, and disconnect left nothing (${ms(T0, process.hrtime.bigint()).toFixed(0)} ms in all).`)
  }
}

main()

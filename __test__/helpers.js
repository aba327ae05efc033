'use strict'
// Shared by the suites: run the agent fixture in a testbed and check that nothing is left.
const assert = require('node:assert/strict')
const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')
const { startFixture, cliProcs, resolvConfPath, SIGNUM } = require('../testbed/fixtures/checks.js')

const AGENT = path.join(__dirname, 'fixtures', 'agent.js')

/** A private TMPDIR for one test, so its config dir is its own (and TMPDIR is honoured). */
function tmpdir(t) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bwtest-'))
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }))
  return dir
}

/**
 * Start the agent in the testbed's cli namespace (through testbed/fixtures/checks.js);
 * `wrap` runs it through a command that execs it in place (e.g. setpriv). Returns { child, events, next(event), exited, stderr() } where next() resolves with the first
 * event of that name (rejects on timeout, an 'error' event, or if the agent ends first) and
 * exited resolves { code, signal, status, stderr } (status as a shell reports it: 128 + signal
 * number when killed).
 */
function startAgent(tb, plan, { tmp, env = {}, script = AGENT, wrap } = {}) {
  const a = startFixture(tb, script, { env: { BW_AGENT: JSON.stringify(plan), ...env }, tmp, wrap })
  const exited = a.exited.then((x) => ({ ...x, stderr: a.stderr() }))
  return { child: a.child, events: a.events, next: a.next, exited, stderr: a.stderr }
}

/** Run the agent to its end; returns { events, exit }. */
async function runAgent(tb, plan, opts) {
  const a = startAgent(tb, plan, opts)
  const exit = await a.exited
  return { events: a.events, exit, event: (n) => a.events.find((e) => e.event === n) }
}

async function linkExists(tb, name) {
  const r = await tb.execCli('ip', ['-o', 'link', 'show', 'dev', name])
  return r.code === 0
}

/** What a user would check after a tunnel is gone: interface, rules, nft table, key file,
 *  resolv.conf, wireguard-go. */
async function assertClean(tb, name, tmp, originalResolv) {
  assert.equal(await linkExists(tb, name), false, `interface ${name} still exists`)
  for (const fam of ['-4', '-6']) {
    const r = await tb.execCli('ip', [fam, 'rule', 'show'])
    assert.doesNotMatch(r.stdout, /fwmark|suppress_prefixlength/, `policy rules left (${fam}):\n${r.stdout}`)
  }
  const nft = await tb.execCli('nft', ['list', 'tables'])
  assert.doesNotMatch(nft.stdout, new RegExp(`wg-quick-${name}\\b`), 'nft table left')
  const dir = path.join(tmp, 'sentinel-wg')
  const left = fs.existsSync(dir) ? fs.readdirSync(dir) : []
  assert.deepEqual(left, [], `files left in ${dir}`)
  assert.deepEqual(stateFiles(tb, name), [], `state files left for ${name} in ${stateDir(tb)}`)
  if (originalResolv !== undefined) {
    assert.equal(fs.readFileSync(resolvConfPath(tb), 'utf8'), originalResolv, 'resolv.conf not restored')
  }
  const live = await cliProcs(tb)
  assert.deepEqual(live, [], `processes left in ${tb.cliNs}: ${live.map((p) => p.cmd).join(' | ')}`)
}


// ------------------------------------------------------------------ owner / watchdog helpers
// Everything below observes the cli namespace from this (the host's) process without loading
// the addon: /proc, the config dir and resolv.conf are read directly, and only the checks that
// need the namespace's kernel view (links, rules, nft) run `ip`/`nft` there via execCli.

const sleep = (ms) => new Promise((r) => setTimeout(r, ms))

/** Inode of the cli namespace (what /proc/<pid>/ns/net of a process inside it stats to). */
function nsInode(tb) {
  return fs.statSync(`/run/netns/${tb.cliNs}`).ino
}

/** State letter of /proc/<pid>/stat, or null when the pid does not exist. */
function procState(pid) {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8')
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3)
  } catch {
    return null
  }
}

/** True when `pid` no longer runs (no such pid, or a zombie / dead entry). */
function procGone(pid) {
  const s = procState(pid)
  return s === null || s === 'Z' || s === 'X'
}

/** Field 22 of /proc/<pid>/stat: the start time in clock ticks after boot. */
function procStartTime(pid) {
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8')
  return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19])
}

/** A `/proc/<pid>/status` field as a string (e.g. 'VmRSS' -> '1234 kB'), or null. */
function procStatus(pid, field) {
  try {
    const line = fs.readFileSync(`/proc/${pid}/status`, 'utf8').split('\n').find((l) => l.startsWith(`${field}:`))
    return line ? line.slice(field.length + 1).trim() : null
  } catch {
    return null
  }
}

/** Live (not zombie) processes inside the cli namespace: [{pid, comm, cmdline}], found by
 *  scanning /proc from the host (no process is started for it). */
function nsProcesses(tb, ino = nsInode(tb)) {
  const out = []
  for (const p of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(p)) continue
    let st
    try {
      st = fs.statSync(`/proc/${p}/ns/net`)
    } catch {
      continue // gone, or a zombie (its namespaces are already released)
    }
    if (st.ino !== ino || procGone(p)) continue
    let stat
    let cmdline
    try {
      stat = fs.readFileSync(`/proc/${p}/stat`, 'utf8')
      cmdline = fs.readFileSync(`/proc/${p}/cmdline`, 'utf8').split('\0').join(' ').trim()
    } catch {
      continue
    }
    out.push({ pid: Number(p), comm: stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')')), cmdline })
  }
  return out
}

/** ifindex of `name` in the cli namespace, or null when it does not exist. */
async function ifindex(tb, name) {
  const r = await tb.execCli('ip', ['-o', 'link', 'show', 'dev', name])
  if (r.code !== 0) return null
  return Number(r.stdout.split(':')[0])
}

/**
 * One look at the cli namespace: what is left of the tunnels `names`? Returns a list of
 * problems (empty = clean). The cheap checks (files, resolv.conf, processes: read from the
 * host) go first; the kernel checks (links, rules, nft, via execCli) only run when those pass.
 *   files: 'all' (the config dir must be empty, and the state dir hold nothing but lock files)
 *          or 'named' (no `<name>.*` file in either)
 *   keepPids: processes allowed to live in the namespace (e.g. another agent's)
 */
async function leftovers(tb, { names, tmp, original, files = 'all', keepPids = [], ino = nsInode(tb) }) {
  const problems = []
  const dir = path.join(tmp, 'sentinel-wg')
  let entries = []
  try {
    entries = fs.readdirSync(dir)
  } catch {}
  if (files === 'named') entries = entries.filter((f) => names.some((n) => f.startsWith(`${n}.`)))
  if (entries.length) problems.push(`files in ${dir}: ${entries.join(' ')}`)
  const state = files === 'all' ? allStateFiles(tb) : names.flatMap((n) => stateFiles(tb, n))
  if (state.length) problems.push(`state files: ${state.join(' ')}`)
  if (original !== undefined && fs.readFileSync(resolvConfPath(tb), 'utf8') !== original) {
    problems.push('resolv.conf is not the original')
  }
  const procs = nsProcesses(tb, ino).filter((p) => !keepPids.includes(p.pid))
  if (procs.length) problems.push(`processes: ${procs.map((p) => `${p.pid} ${p.cmdline}`).join(' | ')}`)
  if (problems.length) return problems
  for (const n of names) if (await linkExists(tb, n)) problems.push(`interface ${n}`)
  for (const fam of ['-4', '-6']) {
    const r = await tb.execCli('ip', [fam, 'rule', 'show'])
    if (/fwmark|suppress_prefixlength/.test(r.stdout)) problems.push(`policy rules (${fam}): ${r.stdout.trim()}`)
  }
  const nft = (await tb.execCli('nft', ['list', 'tables'])).stdout
  for (const n of names) if (new RegExp(`wg-quick-${n}\\b`).test(nft)) problems.push(`nft table wg-quick-${n}`)
  return problems
}

/**
 * Poll `leftovers` every `everyMs` until clean or `boundMs` after `t0` (a performance.now()
 * timestamp, e.g. the moment of a SIGKILL). Starts no process besides the observation
 * commands of `leftovers`. Resolves { clean, ms (t0 -> start of the first clean look),
 * problems (of the last look), seen (comm -> pids of every process met in the namespace
 * while polling, keepPids excluded) }.
 */
async function waitClean(tb, { t0 = performance.now(), boundMs = 3000, everyMs = 5, ...o }) {
  const ino = nsInode(tb)
  const seen = {}
  for (;;) {
    const at = performance.now()
    for (const p of nsProcesses(tb, ino)) {
      if ((o.keepPids || []).includes(p.pid)) continue
      seen[p.comm] = [...new Set([...(seen[p.comm] || []), p.pid])]
    }
    const problems = await leftovers(tb, { ...o, ino })
    if (!problems.length) return { clean: true, ms: at - t0, problems, seen }
    if (performance.now() - t0 > boundMs) return { clean: false, ms: performance.now() - t0, problems, seen }
    await sleep(everyMs)
  }
}

/** blue-wireguard's state directory for the cli namespace (records, locks, DNS state):
 *  `/run/blue-wireguard/net-<inode>` (src/state.rs); testbed.sh down removes it. */
function stateDir(tb) {
  return path.join('/run/blue-wireguard', `net-${nsInode(tb)}`)
}

/** Files of tunnel `name` in the state dir other than its lock file (which is kept),
 *  including a temp file of its (`.<name>.dns.tmp`) that a write cut short could leave. */
function stateFiles(tb, name) {
  try {
    return fs.readdirSync(stateDir(tb)).filter((f) => (f.startsWith(`${name}.`) || f.startsWith(`.${name}.`)) && f !== `${name}.lock`)
  } catch {
    return []
  }
}

/** Every file in the state dir (root's, or `dir`) but the lock files and `netns.cookie` (kept
 *  for the namespace's life): what a namespace with no tunnel of ours (and no DNS change of
 *  ours) must not hold, e.g. a key file or `resolv.orig`. */
function allStateFiles(tb, dir = stateDir(tb)) {
  try {
    return fs.readdirSync(dir).filter((f) => !f.endsWith('.lock') && f !== 'netns.cookie')
  } catch {
    return []
  }
}

/** The `.owner` record text exactly as owner.rs `render` writes it. */
function renderRecord(r) {
  return [
    `name=${r.name}`,
    `pid=${r.pid}`,
    `start_time=${r.startTime}`,
    `netns=${r.netns}`,
    ...(r.netnsCookie !== undefined ? [`netns_cookie=${r.netnsCookie}`] : []),
    `conf_path=${r.confPath}`,
    `backend=${r.backend ?? 'wg-quick'}`,
    `full_tunnel=${!!r.fullTunnel}`,
    `dns=${(r.dns || []).join(',')}`,
    `watchdog_pid=${r.watchdogPid ?? ''}`,
    `created_unix_ms=${r.createdUnixMs ?? Date.now()}`,
    '',
  ].join('\n')
}

/** Parse a `.owner` record into { key: value } strings. */
function parseRecord(text) {
  return Object.fromEntries(text.split('\n').filter(Boolean).map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]))
}

/** Kill (SIGKILL) an agent from startAgent if it still runs, and wait for its end. */
async function killAgent(a) {
  if (a.child.exitCode === null && a.child.signalCode === null) a.child.kill('SIGKILL')
  await a.exited
}

// ------------------------------------------------------------------------------ backends

/** The backend a test gets without asking: the run's BLUE_WG_BACKEND, else what 'auto' picks
 *  on this host (kernel where the module is, else embedded). */
const DEFAULT_BACKEND = expectedBackend()

/** The backends a general promise is checked for: the run's default first, then the other. */
const BACKENDS = [DEFAULT_BACKEND, DEFAULT_BACKEND === 'embedded' ? 'wg-quick' : 'embedded']

/**
 * The first testbed client (key) a test run for `backend` uses: 0 for the run's default
 * backend (the keys the suite's other tests use too), `spare` for the other one. A node
 * accepts a handshake only with a timestamp later than the last one it saw from that key,
 * and gotatun's timestamps run 27 s ahead of wireguard-go's (TAI64N base 2^62 + 37 vs
 * + 10): right after an embedded tunnel, a wireguard-go one with the same key cannot
 * complete a handshake for 27 s. So the two backends never share a key within a testbed.
 */
function clientBase(backend, spare) {
  return backend === DEFAULT_BACKEND ? 0 : spare
}

/** Why this machine's kernel has no WireGuard module it could load, or null when it has one:
 *  the checks of src/backend/kernel.rs (loaded, or wireguard.ko* where distributions put it,
 *  or built in). Read from files: the addon is not loaded here. */
function kernelModuleMissing() {
  if (fs.existsSync('/sys/module/wireguard')) return null
  const dir = `/lib/modules/${os.release()}`
  if (['', '.xz', '.zst', '.gz'].some((x) => fs.existsSync(`${dir}/kernel/drivers/net/wireguard/wireguard.ko${x}`))) return null
  try {
    if (/\/wireguard\.ko$/m.test(fs.readFileSync(`${dir}/modules.builtin`, 'utf8'))) return null
  } catch {}
  return `the kernel (${os.release()}) has no WireGuard module here; npm run test:kernel runs these tests in a VM`
}

/** The backend a connect of this run takes: BLUE_WG_BACKEND, or what `auto` picks on this
 *  host (kernel where the module is, else embedded). */
function expectedBackend() {
  const b = process.env.BLUE_WG_BACKEND
  if (b && b !== 'auto') return b
  return kernelModuleMissing() ? 'embedded' : 'kernel'
}

module.exports = {
  DEFAULT_BACKEND, BACKENDS, clientBase, kernelModuleMissing, expectedBackend,
  tmpdir, startAgent, runAgent, linkExists, assertClean, resolvConfPath, SIGNUM,
  sleep, nsInode, procState, procGone, procStartTime, procStatus, nsProcesses, ifindex, leftovers, waitClean,
  renderRecord, parseRecord, killAgent, stateDir, stateFiles, allStateFiles,
}

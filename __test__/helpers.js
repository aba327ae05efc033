'use strict'
// Shared by the suites: run the agent fixture in a testbed and check that nothing is left.
const assert = require('node:assert/strict')
const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')
const readline = require('node:readline')

const AGENT = path.join(__dirname, 'fixtures', 'agent.js')
const SIGNUM = { SIGHUP: 1, SIGINT: 2, SIGKILL: 9, SIGTERM: 15 }

/** A private TMPDIR for one test, so its config dir is its own (and TMPDIR is honoured). */
function tmpdir(t) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bwtest-'))
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }))
  return dir
}

/**
 * Start the agent in the testbed's cli namespace. Returns { child, events, next(event),
 * exited } where next() resolves with the first event of that name (rejects on timeout or
 * if the agent ends first) and exited resolves { code, signal, status } (status as a shell
 * reports it: 128 + signal number when killed).
 */
function startAgent(tb, plan, { tmp, env = {} } = {}) {
  const child = tb.spawnCli(process.execPath, [AGENT], {
    env: { BW_AGENT: JSON.stringify(plan), TMPDIR: tmp, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  const events = []
  const waiters = []
  let stderr = ''
  child.stderr.on('data', (d) => (stderr += d))
  readline.createInterface({ input: child.stdout }).on('line', (line) => {
    let ev
    try {
      ev = JSON.parse(line)
    } catch {
      return
    }
    events.push(ev)
    for (const w of [...waiters]) if (w.name === ev.event) w.resolve(ev)
  })
  const exited = new Promise((resolve) =>
    child.on('exit', (code, signal) =>
      resolve({ code, signal, status: code ?? 128 + (SIGNUM[signal] || 0), stderr }),
    ),
  )
  const next = (name, timeoutMs = 15000) => {
    const seen = events.find((e) => e.event === name)
    if (seen) return Promise.resolve(seen)
    return new Promise((resolve, reject) => {
      const w = { name, resolve }
      waiters.push(w)
      const t = setTimeout(
        () => reject(new Error(`agent: no '${name}' within ${timeoutMs} ms; events ${JSON.stringify(events)}; stderr ${stderr}`)),
        timeoutMs,
      )
      exited.then((x) => {
        setTimeout(() => {
          clearTimeout(t)
          reject(new Error(`agent ended (${JSON.stringify(x)}) before '${name}'; events ${JSON.stringify(events)}`))
        }, 50)
      })
      w.resolve = (ev) => {
        clearTimeout(t)
        resolve(ev)
      }
    })
  }
  return { child, events, next, exited, stderr: () => stderr }
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

function resolvConfPath(tb) {
  return `/etc/netns/${tb.cliNs}/resolv.conf`
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
  if (originalResolv !== undefined) {
    assert.equal(fs.readFileSync(resolvConfPath(tb), 'utf8'), originalResolv, 'resolv.conf not restored')
  }
  const pids = (await tb.execCli('ip', ['netns', 'pids', tb.cliNs])).stdout.split(/\s+/).filter(Boolean)
  const live = pids.filter((p) => {
    try {
      return !/\) Z /.test(fs.readFileSync(`/proc/${p}/stat`, 'utf8'))
    } catch {
      return false
    }
  })
  // `ip netns pids` itself runs outside the namespace; anything listed is a leftover.
  assert.deepEqual(live, [], `processes left in ${tb.cliNs}: ${live.map((p) => fs.readFileSync(`/proc/${p}/cmdline`, 'utf8')).join(' | ')}`)
}

module.exports = { tmpdir, startAgent, runAgent, linkExists, assertClean, resolvConfPath, SIGNUM }

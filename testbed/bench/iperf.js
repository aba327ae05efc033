'use strict'
// Host side of the bench's throughput section: the iperf3 server in the testbed's NODE
// namespace, listening only on the node's tunnel address, so every byte of a test crosses the
// tunnel. The clients run in the cli namespace (bench/child.js).
//
// The server is bounded twice: `timeout` ends it after boundS seconds even if this process is
// SIGKILLed, and stopServer ends it by pid (SIGTERM, which timeout passes on to iperf3; SIGKILL
// after a grace period), then looks for any iperf3 left in the node namespace and kills that
// by pid. testbed.sh down, which ends every process of both namespaces, is the last net.
const fs = require('node:fs')
const { alive } = require('../fixtures/checks.js')

const READY_BOUND_MS = 5000
const STOP_GRACE_MS = 3000

/** `ip:port` as /proc/net/tcp writes a local address (IPv4, little-endian hex). */
function procNetAddr(ip, port) {
  const hex = (n, w) => n.toString(16).toUpperCase().padStart(w, '0')
  return ip.split('.').map((o) => hex(Number(o), 2)).reverse().join('') + ':' + hex(port, 4)
}

/** Is `ip:port` a listening TCP socket in the network namespace of `pid`? */
function listening(pid, ip, port) {
  const want = procNetAddr(ip, port)
  try {
    return fs.readFileSync(`/proc/${pid}/net/tcp`, 'utf8').split('\n').slice(1)
      .some((l) => {
        const f = l.trim().split(/\s+/)
        return f[1] === want && f[3] === '0A' // TCP_LISTEN
      })
  } catch {
    return false
  }
}

/** Live iperf3 processes whose network namespace is `nsIno` (zombies count as gone). */
function iperf3In(nsIno) {
  const out = []
  for (const d of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue
    try {
      if (fs.readFileSync(`/proc/${d}/comm`, 'utf8').trim() !== 'iperf3') continue
      if (fs.statSync(`/proc/${d}/ns/net`).ino !== nsIno) continue
      out.push(Number(d))
    } catch {}
  }
  return alive(out)
}

/**
 * Start `iperf3 -s` in tb's node namespace on `ip`:`port`, ended by `timeout` after boundS at
 * the latest. Resolves once its socket listens: { pid, ip, port, nsIno, exited, stderr() }.
 */
async function startServer(tb, { ip, port, boundS }) {
  const nsIno = fs.statSync(`/run/netns/${tb.nodeNs}`).ino
  const child = tb.spawnNode('timeout', ['-k', '2', String(boundS), 'iperf3', '-s', '-B', ip, '-p', String(port)], {
    stdio: ['ignore', 'ignore', 'pipe'],
  })
  let stderr = ''
  child.stderr.setEncoding('utf8').on('data', (d) => (stderr += d))
  const exited = new Promise((resolve) => child.on('exit', (code, signal) => resolve({ code, signal })))
  const srv = { child, pid: child.pid, ip, port, nsIno, exited, stderr: () => stderr }
  const t0 = Date.now()
  while (!listening(child.pid, ip, port)) {
    if (child.exitCode !== null || child.signalCode !== null || Date.now() - t0 > READY_BOUND_MS) {
      await stopServer(srv)
      throw new Error(`iperf3 server on ${ip}:${port} in ${tb.nodeNs} did not listen within ${READY_BOUND_MS} ms: ${stderr.trim() || 'no stderr'}`)
    }
    await new Promise((r) => setTimeout(r, 10))
  }
  return srv
}

/**
 * End the server (idempotent): SIGTERM to its pid, SIGKILL after STOP_GRACE_MS, then any
 * iperf3 still in the node namespace by pid. Resolves the pids that were still alive after
 * that (normally none).
 */
async function stopServer(srv) {
  if (srv.child.exitCode === null && srv.child.signalCode === null) {
    srv.child.kill('SIGTERM')
    const gone = await Promise.race([srv.exited.then(() => true), new Promise((r) => setTimeout(() => r(false), STOP_GRACE_MS).unref())])
    if (!gone) {
      srv.child.kill('SIGKILL')
      await srv.exited
    }
  }
  for (const pid of iperf3In(srv.nsIno)) {
    try {
      process.kill(pid, 'SIGKILL')
    } catch {}
  }
  const t0 = Date.now()
  let left
  while ((left = iperf3In(srv.nsIno)).length && Date.now() - t0 < STOP_GRACE_MS) await new Promise((r) => setTimeout(r, 20))
  return left
}

module.exports = { startServer, stopServer, iperf3In }

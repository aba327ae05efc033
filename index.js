'use strict'
// The package entry: the loader that napi-rs generates (binding.js, committed) plus the exit
// hooks that remove this process's tunnels however it ends (lib/hooks.js). The exports are
// the binding's, typed by index.d.ts (generated from the Rust doc comments); `connect` and
// `connectConfigFile` only wrap `options.onProgress` so that an exception it throws is
// reported (a process warning with code WG_PROGRESS_CALLBACK_THREW) instead of vanishing.
//
// On a platform without a prebuilt binary, requiring the package throws an Error with
// code 'WG_NOT_AVAILABLE' that names the platform; `blue-wireguard/compat` catches it and
// reports WG_AVAILABLE === false instead, so the SDK can fall back to V2Ray nodes.
const { loadBinding } = require('./lib/load.js')

const binding = loadBinding()
require('./lib/hooks.js').install(binding)
module.exports = require('./binding.js')
const native = { connect: module.exports.connect, connectConfigFile: module.exports.connectConfigFile }

/** Options with an onProgress that reports, rather than loses, what it throws. */
function guardProgress(options) {
  if (!options || typeof options !== 'object' || typeof options.onProgress !== 'function') {
    return options
  }
  const user = options.onProgress
  return {
    ...options,
    onProgress(step, detail) {
      try {
        user(step, detail)
      } catch (e) {
        const why = e instanceof Error ? e.message : String(e)
        process.emitWarning(`blue-wireguard: onProgress threw at step '${step}': ${why}`, {
          code: 'WG_PROGRESS_CALLBACK_THREW',
        })
      }
    },
  }
}

// Health of a live tunnel, polled from status() (which reads the device). WireGuard's own
// clocks: a session older than REJECT_AFTER (180 s) carries nothing; and a live node answers
// any data packet within KEEPALIVE_TIMEOUT + REKEY_TIMEOUT (10 s + 5 s: with data of its own,
// a passive keepalive, or a handshake), so data sent and nothing received for that long means
// the node stopped answering. A lone keepalive (32 bytes) is not data: nothing answers it.
const KEEPALIVE_BYTES = 32
const NO_REPLY_MS = 15_000

/** The health of one status() reading, given what was seen before (`seen`, updated). A
 *  growth of tx up to `quietBytes` between two readings is keepalives, not data. */
function judge(st, seen, now, noReplyMs, quietBytes) {
  if (!st.exists) return { state: 'gone', reason: 'the interface is gone' }
  if (seen.index !== undefined && st.index !== seen.index) {
    return { state: 'gone', reason: 'the interface was replaced by another of the same name' }
  }
  seen.index = st.index
  if (seen.rx !== st.rxBytes) {
    seen.rx = st.rxBytes
    seen.silentSince = null
  } else if (seen.tx !== undefined && st.txBytes - seen.tx > quietBytes && seen.silentSince === null) {
    seen.silentSince = now
  }
  seen.tx = st.txBytes
  if (!st.up) return { state: 'unhealthy', reason: 'the interface is down' }
  if (!st.healthy) {
    const why = st.lastHandshakeAgoMs == null ? 'no handshake yet' : `last handshake ${Math.round(st.lastHandshakeAgoMs / 1000)} s ago`
    return { state: 'unhealthy', reason: why }
  }
  if (seen.silentSince !== null && now - seen.silentSince >= noReplyMs) {
    return { state: 'unhealthy', reason: `data sent and nothing received for ${Math.round((now - seen.silentSince) / 1000)} s` }
  }
  return { state: 'healthy', reason: null }
}

/**
 * Watch a live tunnel's health: `listener({ event, reason, ...status })` is called when it
 * stops being healthy (`event: 'unhealthy'`: no handshake within WireGuard's reject-after
 * time, the node not answering data for `noReplyMs`, the interface down) or is gone
 * (`'gone'`), and when it recovers (`'healthy'`); a tunnel that is not healthy when the watch
 * starts is reported at once. After `gone` the watch ends (a new tunnel of that name needs a
 * new watch). Polls `status(name)` every `intervalMs` (default 1000) on a timer that does not
 * keep the event loop alive. Returns the unsubscribe function. A listener that throws (or
 * returns a Promise that rejects) is reported as a process warning (code
 * WG_WATCH_LISTENER_THREW). A bad name throws INVALID_OPTIONS at once.
 */
function watch(name, listener, { intervalMs = 1000, noReplyMs = NO_REPLY_MS } = {}) {
  const bad = (field, want) => Object.assign(new TypeError(`invalid ${field}: must be ${want}`), { code: 'INVALID_OPTIONS', retryable: false })
  if (typeof name !== 'string' || !name) throw bad('name', 'a tunnel name')
  if (typeof listener !== 'function') throw bad('listener', 'a function')
  if (!Number.isInteger(intervalMs) || intervalMs < 50) throw bad('options.intervalMs', 'a whole number of ms >= 50')
  if (!Number.isInteger(noReplyMs) || noReplyMs < 1000) throw bad('options.noReplyMs', 'a whole number of ms >= 1000')
  module.exports.status(name) // a bad name throws its INVALID_OPTIONS here, not never
  const seen = { rx: undefined, tx: undefined, silentSince: null, index: undefined }
  // Keepalives (32 bytes each, at most one a second) that may fall between two readings.
  const quietBytes = KEEPALIVE_BYTES * Math.max(1, Math.ceil(intervalMs / 1000))
  let last = 'healthy' // what the caller believes after a successful connect
  const warn = (e) => {
    const why = e instanceof Error ? e.message : String(e)
    process.emitWarning(`blue-wireguard: a watch listener of ${name} threw: ${why}`, { code: 'WG_WATCH_LISTENER_THREW' })
  }
  let timer = null
  let first = null
  const stop = () => {
    if (timer) clearInterval(timer)
    if (first) clearImmediate(first)
    timer = first = null
  }
  const poll = () => {
    let st
    try {
      st = module.exports.status(name)
    } catch {
      return // a transient read failure: the next reading decides
    }
    const { state, reason } = judge(st, seen, performance.now(), noReplyMs, quietBytes)
    if (state === 'gone') stop()
    if (state === last) return
    last = state
    try {
      const r = listener({ event: state, reason, ...st })
      if (r && typeof r.then === 'function') r.then(undefined, warn)
    } catch (e) {
      warn(e)
    }
  }
  timer = setInterval(poll, intervalMs)
  timer.unref()
  first = setImmediate(() => {
    first = null
    poll()
  })
  first.unref()
  return stop
}

const openProxies = new Set() // held until close(): a caller may keep only the URLs

/**
 * Rootless mode (see index.d.ts): the native proxy, with its URLs. The credentials are
 * random per proxy; they are in the URLs because every client needs them. The proxy is held
 * here until close(), so keeping only the URLs does not let the garbage collector stop it;
 * it does not keep the event loop alive.
 */
async function openProxy(config, options) {
  const p = await module.exports.openProxyNative(config, options)
  openProxies.add(p)
  const auth = `${p.user}:${p.password}`
  return {
    httpProxy: `http://${auth}@127.0.0.1:${p.port}`,
    socksProxy: `socks5://${auth}@127.0.0.1:${p.port}`,
    port: p.port,
    handshakeMs: p.handshakeMs,
    openMs: p.openMs,
    stats: () => p.stats(),
    close: () => {
      openProxies.delete(p)
      return p.close()
    },
  }
}

// Assigned property by property (not a spread), so Node's ESM import of this CommonJS file
// still sees every named export.
module.exports.connect = (config, options) => native.connect(config, guardProgress(options))
module.exports.connectConfigFile = (confPath, options) =>
  native.connectConfigFile(confPath, guardProgress(options))
module.exports.watch = watch
module.exports.openProxy = openProxy

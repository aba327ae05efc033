'use strict'
// blue-wireguard/compat: the exports of the Sentinel SDK's wireguard.js, on top of the
// addon, so the SDK can swap its module for ours with one line:
//   export * from 'blue-wireguard/compat'
// The README's 'Using it from the Sentinel SDK' says what each export keeps and what changed.
const path = require('node:path')

let wg = null
let loadError = null
try {
  wg = require('../index.js')
} catch (e) {
  loadError = e
}

const availability = wg ? wg.availability() : null

/** May this process manage tunnels (effective uid 0 on Unix). */
const IS_ADMIN = typeof process.geteuid === 'function' ? process.geteuid() === 0 : false
/** Windows `wireguard.exe` path; always null here (Linux only). */
const WG_EXE = null
/** Path of `wg-quick`, or null; found by searching PATH in-process, no subprocess. */
const WG_QUICK = availability ? availability.wgQuick ?? null : null
/** Can a tunnel really be brought up on this host: the binary loaded and a backend that can
 *  run (kernel: the WireGuard module and CAP_NET_ADMIN; embedded: /dev/net/tun and
 *  CAP_NET_ADMIN; or wg-quick with the kernel module or a usable userspace implementation). */
const WG_AVAILABLE = Boolean(availability && availability.available)

/** The tunnel installed through this module: { name, confPath, since }. */
let active = null

function unavailable() {
  if (loadError) return loadError
  const e = new Error(`WireGuard is not available: ${availability.reason}`)
  e.code = 'WG_NOT_AVAILABLE'
  return e
}

/**
 * Bring a tunnel up from a config file the SDK wrote. Removes a leftover tunnel of the same
 * name first, refuses any key outside those the SDK writes (PostUp & co.) before anything
 * runs, applies DNS without resolvconf, and resolves with the tunnel name (the file's base
 * name without `.conf`). Calling it again on the same name (verify-before-capture) changes
 * the live tunnel in place (same interface, open connections kept). `options` (ours, not the
 * SDK's): `{ killSwitch, allowLan, exclude, handshakeTimeoutMs, backend }`, see the README.
 */
async function installWgTunnel(confPath, options) {
  if (!wg || !WG_AVAILABLE) throw unavailable()
  const info = await wg.connectConfigFile(String(confPath), options)
  active = { name: info.name, confPath: String(confPath), since: Date.now() }
  return info.name
}

/**
 * Take down the named tunnel, or the active one. Never rejects: a failed teardown is a
 * warning. The config file is zero-filled and deleted only once the interface is gone.
 */
async function uninstallWgTunnel(name) {
  const target = name || (active && active.name)
  if (!target || !wg) return
  let report
  try {
    report = await wg.disconnect(target)
  } catch (e) {
    console.warn(`blue-wireguard: teardown of ${target} failed: ${e.message}`)
    return
  }
  if (report && !report.gone) {
    console.warn(`blue-wireguard: ${target} is still present after teardown; its config is kept`)
    return
  }
  if (active && active.name === target) {
    // Zero-filled and deleted by the addon, and only when trusted: a file (or a directory
    // above it) another user could have swapped is never written.
    try {
      wg.shredConfigFile(active.confPath)
    } catch {
      // never reject from here
    }
    active = null
  }
}

/** Legacy: `wgInstance.writeConfig(path)` writes `<tmpdir>/sentinel-wg/wgsent0.conf`, which
 *  is then installed. The directory is created 0700 (or checked) first. */
async function connectWireGuard(wgInstance) {
  if (!wg || !WG_AVAILABLE) throw unavailable()
  const confPath = path.join(wg.prepareConfigDir(), 'wgsent0.conf')
  await wgInstance.writeConfig(confPath)
  return installWgTunnel(confPath)
}

/** `uninstallWgTunnel` of the active tunnel. */
async function disconnectWireGuard() {
  await uninstallWgTunnel()
}

/** Synchronous, never throws, safe in exit handlers: removes this process's tunnels and what
 *  dead processes left (never a live agent's tunnel); clears the active state. */
function emergencyCleanupSync() {
  try {
    if (wg) wg.emergencyCleanupSync()
  } catch {
    // never throw from an exit path
  }
  active = null
}

/** `{ active: false }` or `{ active: true, name, uptimeMs }`, from the kernel. */
function watchdogCheck() {
  if (!active || !wg) return { active: false }
  let st
  try {
    st = wg.status(active.name)
  } catch {
    return { active: false }
  }
  if (!st.exists) return { active: false }
  return { active: true, name: active.name, uptimeMs: Date.now() - active.since }
}

/** The addon's three-step teardown (sync, never throws); a report even when the addon could
 *  not load. */
function teardownLinuxInterface(name, confPath) {
  if (!wg) {
    return { name: String(name), existed: false, gone: false, steps: [], configRemoved: false }
  }
  return wg.teardownLinuxInterface(name, confPath)
}

module.exports = {
  installWgTunnel,
  uninstallWgTunnel,
  connectWireGuard,
  disconnectWireGuard,
  emergencyCleanupSync,
  watchdogCheck,
  teardownLinuxInterface,
  IS_ADMIN,
  WG_EXE,
  WG_QUICK,
  WG_AVAILABLE,
}

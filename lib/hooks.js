'use strict'
// Exit hooks: once per process, on the main thread only, registered when the addon loads.
//
// Node runs no native cleanup on process.exit(), on an uncaught exception or on a signal;
// only a JS 'exit' listener runs in the first two. So:
// - 'exit' runs the synchronous Rust cleanup (process.exit, a drained loop, uncaught exception);
// - SIGINT, SIGTERM, SIGHUP clean up and, when ours is the only listener, re-raise the signal
//   so the process dies as it would have (exit status 130 / 143 / 129). When the app has a
//   listener of its own, the app owns shutdown and 'exit' is the backstop;
// - a napi env cleanup hook (Rust, src/js.rs) is the backstop for worker teardown.
// BLUE_WG_NO_EXIT_HOOKS=1 turns these off for apps that manage shutdown themselves.
const { isMainThread } = require('node:worker_threads')

const INSTALLED = Symbol.for('blue-wireguard.exit-hooks')
const SIGNALS = ['SIGINT', 'SIGTERM', 'SIGHUP']

function install(binding) {
  if (!isMainThread || process.env.BLUE_WG_NO_EXIT_HOOKS === '1' || process[INSTALLED]) {
    return false
  }
  Object.defineProperty(process, INSTALLED, { value: true })
  const cleanup = () => {
    try {
      binding.cleanupOwnTunnelsSync()
    } catch {
      // never throw from an exit path
    }
  }
  process.on('exit', cleanup)
  for (const signal of SIGNALS) {
    const onSignal = () => {
      if (process.listenerCount(signal) > 1) return // the app owns shutdown
      cleanup()
      process.removeListener(signal, onSignal)
      process.kill(process.pid, signal)
    }
    process.on(signal, onSignal)
  }
  return true
}

module.exports = { install }

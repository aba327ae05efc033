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

// Assigned property by property (not a spread), so Node's ESM import of this CommonJS file
// still sees every named export.
module.exports.connect = (config, options) => native.connect(config, guardProgress(options))
module.exports.connectConfigFile = (confPath, options) =>
  native.connectConfigFile(confPath, guardProgress(options))

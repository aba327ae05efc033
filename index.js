'use strict'
// The package entry: the loader that napi-rs generates (binding.js, committed) plus the exit
// hooks that remove this process's tunnels however it ends (lib/hooks.js). The exports are
// exactly the binding's, typed by index.d.ts (generated from the Rust doc comments).
//
// On a platform without a prebuilt binary, requiring the package throws an Error with
// code 'WG_NOT_AVAILABLE' that names the platform; `blue-wireguard/compat` catches it and
// reports WG_AVAILABLE === false instead, so the SDK can fall back to V2Ray nodes.
const { loadBinding } = require('./lib/load.js')

const binding = loadBinding()
require('./lib/hooks.js').install(binding)
module.exports = require('./binding.js')

'use strict'
// The package entry: the loader that napi-rs generates (binding.js, committed) plus the exit
// hooks that remove this process's tunnels however it ends (lib/hooks.js). The exports are
// exactly the binding's, typed by index.d.ts (generated from the Rust doc comments).
require('./lib/hooks.js').install(require('./binding.js'))
module.exports = require('./binding.js')

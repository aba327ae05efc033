'use strict'
// Load the native binding, turning "no binary for this platform" into a coded error.

/** The platform packages `npm run build:all` makes (scripts/build-targets.js). */
const PREBUILT = ['linux-x64-gnu', 'linux-arm64-gnu', 'linux-x64-musl', 'linux-arm64-musl']

function platformName() {
  let abi = ''
  if (process.platform === 'linux') {
    const report = typeof process.report?.getReport === 'function' ? process.report.getReport() : null
    abi = report && report.header && report.header.glibcVersionRuntime ? '-gnu' : '-musl'
  }
  return `${process.platform}-${process.arch}${abi}`
}

function loadBinding() {
  try {
    return require('../binding.js')
  } catch (cause) {
    const err = new Error(
      `blue-wireguard has no native binary for ${platformName()} (prebuilt: ${PREBUILT.join(', ')}, ` +
        'each in its package blue-wireguard-<platform>, an optional dependency npm installs where it fits); ' +
        'WireGuard tunnels are not available on this platform',
      { cause },
    )
    err.code = 'WG_NOT_AVAILABLE'
    err.platform = platformName()
    throw err
  }
}

module.exports = { loadBinding, platformName, PREBUILT }

// ESM entry of blue-wireguard/compat (the SDK is ESM): the same module as lib/compat.js.
import compat from './lib/compat.js'

export const {
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
} = compat

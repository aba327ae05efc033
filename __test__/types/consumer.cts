// A TypeScript CommonJS consumer of 'blue-wireguard' and 'blue-wireguard/compat' (the
// "require" condition: lib/compat.js typed by compat.d.ts). Only type-checked, never run.
import wg = require('blue-wireguard')
import compat = require('blue-wireguard/compat')
import type { TunnelConfig, TunnelInfo, TunnelStatus, TeardownReport, ConnectOptions, Availability, CleanupReport } from 'blue-wireguard'
import type { WatchdogState, WgConfigWriter } from 'blue-wireguard/compat'

/** Never called: the module only has to type-check. */
export async function useFromCommonJs(config: TunnelConfig): Promise<string> {
  const av: Availability = wg.availability()
  const st: TunnelStatus = wg.status()
  const dir: string = wg.configDir()
  const options: ConnectOptions = { onProgress: (step, detail) => void [step, detail] }
  const info: TunnelInfo = await wg.connect(config, options)
  const report: TeardownReport | null = await wg.disconnect(info.name)
  const report2: TeardownReport = wg.teardownLinuxInterface('wgsent0')
  const cleaned: CleanupReport = wg.emergencyCleanupSync()

  const flags: [boolean, string | null, string | null, boolean] = [
    compat.IS_ADMIN,
    compat.WG_EXE,
    compat.WG_QUICK,
    compat.WG_AVAILABLE,
  ]
  const name: string = await compat.installWgTunnel('/tmp/sentinel-wg/wgsent0.conf')
  const state: WatchdogState = compat.watchdogCheck()
  await compat.uninstallWgTunnel(name)
  const writer: WgConfigWriter = { writeConfig: (path) => path }
  const name2: string = await compat.connectWireGuard(writer)
  await compat.disconnectWireGuard()
  compat.emergencyCleanupSync()
  const report3: TeardownReport = compat.teardownLinuxInterface(name2, null)
  return JSON.stringify([av, st, dir, report, report2, cleaned.removed, cleaned.warnings, flags, state, report3])
}

// A TypeScript (ESM) consumer of every export of 'blue-wireguard' and 'blue-wireguard/compat'.
// Only type-checked (`tsc --noEmit`, by __test__/package.test.js against the installed
// tarball); never run: nothing here is called at load, so no tunnel can come up.
import * as wg from 'blue-wireguard'
import wgDefault, {
  __napiBindingTarget,
  availability,
  cleanupOwnTunnelsSync,
  configDir,
  connect,
  connectConfigFile,
  disconnect,
  emergencyCleanupSync,
  prepareConfigDir,
  status,
  teardownLinuxInterface,
} from 'blue-wireguard'
import type {
  Availability,
  CleanupReport,
  ConnectOptions,
  PeerConfig,
  StepTime,
  TeardownReport,
  TeardownStep,
  TunnelConfig,
  TunnelInfo,
  TunnelStatus,
} from 'blue-wireguard'
import * as compat from 'blue-wireguard/compat'
import {
  IS_ADMIN,
  WG_AVAILABLE,
  WG_EXE,
  WG_QUICK,
  connectWireGuard,
  disconnectWireGuard,
  emergencyCleanupSync as compatEmergencyCleanupSync,
  installWgTunnel,
  teardownLinuxInterface as compatTeardownLinuxInterface,
  uninstallWgTunnel,
  watchdogCheck,
} from 'blue-wireguard/compat'
import type {
  TeardownReport as CompatTeardownReport,
  WatchdogState,
  WgConfigWriter,
} from 'blue-wireguard/compat'

type Equal<A, B> = (<T>() => T extends A ? 1 : 2) extends <T>() => T extends B ? 1 : 2 ? true : false
function assertType<T extends true>(): T | void {}

// The core: the named, namespace and default imports are the same functions.
assertType<Equal<typeof wg.connect, typeof connect>>()
assertType<Equal<typeof wgDefault.status, typeof status>>()
const target: 'native' | 'wasm32-wasi' | 'wasm32-wasip1' = __napiBindingTarget

const peer: PeerConfig = {
  publicKey: 'AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=',
  endpoint: '192.0.2.1:51820',
  allowedIps: ['0.0.0.0/0', '::/0'],
  persistentKeepalive: 15,
  presharedKey: 'AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=',
}
const config: TunnelConfig = {
  privateKey: 'AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=',
  addresses: ['10.8.0.2/24'],
  peer,
  mtu: 1280,
  dns: ['10.8.0.1'],
  name: 'wgsent0',
}
const withBuffer: TunnelConfig = { ...config, privateKey: Buffer.alloc(32) }
const options: ConnectOptions = {
  onProgress: (step: string, detail: string) => void `${step} ${detail}`,
}

function describeStatus(s: TunnelStatus): string {
  const uptime: number | undefined = s.uptimeMs
  const full: boolean | undefined = s.fullTunnel
  const backend: string | undefined = s.backend
  return `${s.name} exists=${s.exists} up=${s.up} mtu=${s.mtu} index=${s.index} managed=${s.managed} ${uptime} ${full} ${backend}`
}

function describeReport(r: TeardownReport): string {
  const steps: TeardownStep[] = r.steps
  const lines = steps.map((s) => `${s.step} ran=${s.ran} ok=${s.ok} ${s.detail} ${s.elapsedMs}ms`)
  const configPath: string | undefined = r.configPath
  return `${r.name} existed=${r.existed} gone=${r.gone} configRemoved=${r.configRemoved} ${configPath} ${lines.join()}`
}

function describeInfo(info: TunnelInfo): string {
  const steps: StepTime[] = info.steps
  const dnsMethod: string | undefined = info.dnsMethod
  const watchdogPid: number | undefined = info.watchdogPid
  const fields: [string, string, string, boolean, string[], string[], string, number, string[], boolean, boolean, number] = [
    info.name,
    info.configPath ?? '',
    info.backend,
    info.fullTunnel,
    info.addresses,
    info.allowedIps,
    info.endpoint,
    info.mtu,
    info.dns,
    info.ipv6,
    info.replacedStale,
    info.connectMs,
  ]
  return `${fields.join()} ${dnsMethod} ${watchdogPid} ${steps.map((s) => `${s.step}:${s.ms}`).join()}`
}

/** Never called: the module only has to type-check. */
export async function useTheCore(): Promise<string[]> {
  const av: Availability = availability()
  const reason: string | undefined = av.reason
  const wgQuick: string | undefined = av.wgQuick
  const out: string[] = [`${av.available} ${av.isAdmin} ${reason} ${wgQuick} ${target}`]
  const dir: string = configDir()
  const prepared: string = prepareConfigDir()
  out.push(dir, prepared, describeStatus(status()), describeStatus(status('wgsent0')), describeStatus(status(null)))

  const info: TunnelInfo = await connect(config, options)
  out.push(describeInfo(info), describeInfo(await connect(withBuffer)))
  out.push(describeInfo(await connectConfigFile('/tmp/sentinel-wg/wgsent0.conf', options)))
  out.push(describeInfo(await connectConfigFile('/tmp/sentinel-wg/wgsent0.conf')))

  const report: TeardownReport | null = await disconnect(info.name)
  if (report) out.push(describeReport(report))
  await disconnect()
  await disconnect(null)
  out.push(describeReport(teardownLinuxInterface('wgsent0', '/tmp/sentinel-wg/wgsent0.conf')))
  out.push(describeReport(teardownLinuxInterface('wgsent0')))
  const cleaned: CleanupReport = emergencyCleanupSync()
  out.push(...cleaned.removed.map(describeReport), ...cleaned.warnings)
  const nothing2: void = cleanupOwnTunnelsSync()
  void nothing2
  return out
}

// blue-wireguard/compat: the SDK's wireguard.js.
const isAdmin: boolean = IS_ADMIN
const wgExe: string | null = WG_EXE
const wgQuickPath: string | null = WG_QUICK
const available: boolean = WG_AVAILABLE
assertType<Equal<typeof compat.installWgTunnel, typeof installWgTunnel>>()
assertType<Equal<CompatTeardownReport, TeardownReport>>()

function describeWatchdog(state: WatchdogState): string {
  if (state.active) {
    const name: string = state.name
    const uptimeMs: number = state.uptimeMs
    return `${name} up ${uptimeMs} ms`
  }
  const inactive: false = state.active
  return `inactive ${inactive}`
}

/** Never called: the module only has to type-check. */
export async function useTheCompat(): Promise<string[]> {
  const out: string[] = [`${isAdmin} ${wgExe} ${wgQuickPath} ${available}`]
  if (!WG_AVAILABLE) return out
  const name: string = await installWgTunnel('/tmp/sentinel-wg/wgsent0.conf')
  out.push(name, describeWatchdog(watchdogCheck()))
  const none1: void = await uninstallWgTunnel(name)
  const none2: void = await uninstallWgTunnel()
  void none1
  void none2

  const writer: WgConfigWriter = { writeConfig: async (path: string) => path.length }
  const syncWriter: WgConfigWriter = { writeConfig: (path: string) => void path }
  out.push(await connectWireGuard(writer), await connectWireGuard(syncWriter))
  const none3: void = await disconnectWireGuard()
  void none3
  const none4: void = compatEmergencyCleanupSync()
  void none4
  out.push(describeReport(compatTeardownLinuxInterface('wgsent0', '/tmp/sentinel-wg/wgsent0.conf')))
  out.push(describeReport(compatTeardownLinuxInterface('wgsent0', null)))
  out.push(describeReport(compatTeardownLinuxInterface('wgsent0')))
  return out
}

/** Never called: misuse is a type error. */
export function misuse(): void {
  // @ts-expect-error installWgTunnel takes a path
  void installWgTunnel()
  // @ts-expect-error a TunnelConfig needs a peer
  const bad: TunnelConfig = { privateKey: 'x', addresses: [] }
  // @ts-expect-error WG_EXE is not a number
  const badExe: number = WG_EXE
  // @ts-expect-error an inactive WatchdogState has no name
  const noName: string = watchdogCheck().name
  void [bad, badExe, noName]
}

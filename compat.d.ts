// Types of blue-wireguard/compat: the exports of the Sentinel SDK's wireguard.js.
import type { TeardownReport, ConnectOptions } from './index.js'

export type { TeardownReport, ConnectOptions }

/** Writes a wg-quick config file for the legacy `connectWireGuard` path. */
export interface WgConfigWriter {
  writeConfig(path: string): unknown | Promise<unknown>
}

export type WatchdogState = { active: false } | { active: true; name: string; uptimeMs: number }

/** Bring a tunnel up from a config file the SDK wrote; resolves with the tunnel name. A
 *  second call on a live name changes the tunnel in place. `options` (not the SDK's):
 *  `killSwitch`, `allowLan`, `exclude`, `handshakeTimeoutMs`, `backend`. */
export declare function installWgTunnel(confPath: string, options?: ConnectOptions): Promise<string>
/** Take down the named or the active tunnel; never rejects. */
export declare function uninstallWgTunnel(name?: string): Promise<void>
/** Legacy: let `wgInstance` write `<tmpdir>/sentinel-wg/wgsent0.conf`, then install it. */
export declare function connectWireGuard(wgInstance: WgConfigWriter): Promise<string>
/** `uninstallWgTunnel()` of the active tunnel. */
export declare function disconnectWireGuard(): Promise<void>
/** Synchronous, never throws; removes this process's tunnels and what dead ones left. */
export declare function emergencyCleanupSync(): void
/** `{ active: false }` or `{ active: true, name, uptimeMs }`. */
export declare function watchdogCheck(): WatchdogState
/** The three-step teardown; synchronous, never throws. */
export declare function teardownLinuxInterface(name: string, confPath?: string | null): TeardownReport
/** May this process manage tunnels (uid 0). */
export declare const IS_ADMIN: boolean
/** Windows `wireguard.exe` path; null on Linux. */
export declare const WG_EXE: string | null
/** Path of `wg-quick`, or null. */
export declare const WG_QUICK: string | null
/** Can a tunnel be brought up on this host. */
export declare const WG_AVAILABLE: boolean

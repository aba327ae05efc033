'use strict'
// Packaging, napi-rs style: `npm pack` of the root gives the JS, the types and ai-path/ (no
// binary); the binary and its watchdog come in the platform package (npm/<platform>/, here
// linux-x64-gnu staged from this machine's build by scripts/build-targets.js), which the
// published root lists as an optionalDependency (`--prepublish`, npm's prepublishOnly). Both
// tarballs install, with no Rust toolchain and offline, into a fresh ESM app and a fresh
// CommonJS app; both load 'blue-wireguard' and 'blue-wireguard/compat' and call the
// read-only functions. Without the platform package the root throws a coded error while the
// compat module still loads (WG_AVAILABLE false). A TypeScript consumer of every export
// type-checks against the installed tarball.
//
// The apps run in a throwaway network namespace (`unshare --net`) with a private TMPDIR, and
// call only read-only functions: nothing here brings a tunnel up or touches the host's network.
const { test, before, after } = require('node:test')
const assert = require('node:assert/strict')
const { spawnSync } = require('node:child_process')
const crypto = require('node:crypto')
const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')

const REPO = path.join(__dirname, '..')
const PKG = require('../package.json')
const BINARY = 'blue-wireguard.linux-x64-gnu.node'
const PLATFORM = 'linux-x64-gnu'
const PLATFORM_PKG = `blue-wireguard-${PLATFORM}`
const { writeDir, writeRootOptionalDeps } = require('../scripts/build-targets.js')
const IS_ROOT = typeof process.getuid === 'function' && process.getuid() === 0
const TSC = path.join(REPO, 'node_modules', 'typescript', 'bin', 'tsc')

const COMPAT_EXPORTS = {
  IS_ADMIN: 'boolean',
  WG_AVAILABLE: 'boolean',
  WG_EXE: 'null',
  WG_QUICK: 'string|null',
  connectWireGuard: 'function',
  disconnectWireGuard: 'function',
  emergencyCleanupSync: 'function',
  installWgTunnel: 'function',
  teardownLinuxInterface: 'function',
  uninstallWgTunnel: 'function',
  watchdogCheck: 'function',
}
const CORE_FUNCTIONS = [
  'availability',
  'cleanupOwnTunnelsSync',
  'configDir',
  'connect',
  'connectConfigFile',
  'disconnect',
  'emergencyCleanupSync',
  'prepareConfigDir',
  'status',
  'teardownLinuxInterface',
]

/** The environment of every child: no npm lifecycle variables (npm_config_local_prefix
 *  would point a nested `npm install` at this repo) and no binding override. */
function cleanEnv(extra = {}) {
  const env = {}
  for (const [k, v] of Object.entries(process.env)) {
    if (/^npm_/i.test(k) || k === 'NAPI_RS_NATIVE_LIBRARY_PATH' || k === 'INIT_CWD') continue
    env[k] = v
  }
  return { ...env, ...extra }
}

/** Is an executable named `name` in one of `dirs`. */
function hasExe(dirs, name) {
  return dirs.some((d) => {
    try {
      fs.accessSync(path.join(d, name), fs.constants.X_OK)
      return true
    } catch {
      return false
    }
  })
}

/** PATH without the Rust toolchain (every entry holding cargo or rustc is dropped). */
function pathWithoutRust() {
  const dirs = (process.env.PATH || '').split(path.delimiter).filter(Boolean)
  return dirs.filter((d) => !hasExe([d], 'cargo') && !hasExe([d], 'rustc'))
}

/** npm's CLI script, run with this node so the PATH given to npm needs no node or npm. */
function npmCli() {
  for (const d of (process.env.PATH || '').split(path.delimiter)) {
    const p = path.join(d, 'npm')
    if (fs.existsSync(p)) return fs.realpathSync(p)
  }
  throw new Error('npm is not on PATH')
}

function run(cmd, args, { cwd, env, timeout = 30000, allowFail = false } = {}) {
  const r = spawnSync(cmd, args, {
    cwd,
    env: env || cleanEnv(),
    encoding: 'utf8',
    timeout,
    stdio: ['ignore', 'pipe', 'pipe'],
    maxBuffer: 16 * 1024 * 1024,
  })
  if (r.error) throw new Error(`${cmd} ${args.join(' ')}: ${r.error.message}`)
  if (!allowFail && r.status !== 0) {
    throw new Error(
      `${cmd} ${args.join(' ')} (cwd ${cwd}) exited ${r.status ?? r.signal}\n` +
        `stdout: ${r.stdout}\nstderr: ${r.stderr}`,
    )
  }
  return r
}

function npm(args, opts) {
  return run(process.execPath, [npmCli(), ...args], opts)
}

/** Run a script of an app in a throwaway network namespace; its last stdout line is JSON. */
function runApp(appDir, script, extraEnv = {}) {
  const r = run('unshare', ['--net', process.execPath, script], {
    cwd: appDir,
    env: cleanEnv({ TMPDIR: appDir, BLUE_WG_NO_WATCHDOG: '1', ...extraEnv }),
    timeout: 20000,
  })
  const lines = r.stdout.trim().split('\n')
  try {
    return JSON.parse(lines[lines.length - 1])
  } catch {
    throw new Error(`${script} printed no JSON\nstdout: ${r.stdout}\nstderr: ${r.stderr}`)
  }
}

function sha256(file) {
  return crypto.createHash('sha256').update(fs.readFileSync(file)).digest('hex')
}

let ROOT // every temp dir of this suite lives under it
let TARBALL // `npm pack` of the repository
let PUBLISHED // the same with the optionalDependencies `npm publish` adds (prepublishOnly)
let PLATFORM_TARBALL // the linux-x64-gnu package
let NPM_PATH // PATH given to `npm install`: no cargo, no rustc

before(() => {
  ROOT = fs.mkdtempSync(path.join(os.tmpdir(), 'bwpkg-'))
  NPM_PATH = [path.dirname(process.execPath), ...pathWithoutRust()]
    .filter((d, i, a) => a.indexOf(d) === i && !hasExe([d], 'cargo'))
    .join(path.delimiter)
})

after(() => {
  if (ROOT) fs.rmSync(ROOT, { recursive: true, force: true })
})

/** Create an empty app (ESM with type 'module', else CommonJS) and install the tarball into
 *  it with the Rust toolchain off PATH and without the registry. */
function freshApp(name, type, { binary = true } = {}) {
  assert.ok(PUBLISHED && PLATFORM_TARBALL, 'the tarballs were packed')
  const dir = path.join(ROOT, name)
  fs.mkdirSync(dir)
  const pkg = { name, version: '1.0.0', private: true, description: 'blue-wireguard package test app' }
  if (type) pkg.type = type
  fs.writeFileSync(path.join(dir, 'package.json'), JSON.stringify(pkg, null, 2))
  const env = cleanEnv({ PATH: NPM_PATH, npm_config_update_notifier: 'false' })
  assert.ok(!hasExe(NPM_PATH.split(path.delimiter), 'cargo'), 'cargo is not on the install PATH')
  const tarballs = binary ? [PUBLISHED, PLATFORM_TARBALL] : [PUBLISHED]
  npm(['install', ...tarballs, '--no-audit', '--no-fund', '--offline', '--loglevel=error'], {
    cwd: dir,
    env,
    timeout: 45000,
  })
  const installed = path.join(dir, 'node_modules', 'blue-wireguard')
  assert.ok(fs.existsSync(path.join(installed, 'package.json')), `installed into ${dir}`)
  return { dir, installed }
}

/** The checks common to both apps: the installed package is the prebuilt one. */
function assertInstalledPrebuilt(installed) {
  const platformDir = path.join(installed, '..', PLATFORM_PKG)
  const node = path.join(platformDir, BINARY)
  assert.ok(fs.existsSync(node), `${BINARY} is in the installed ${PLATFORM_PKG}`)
  assert.ok(!fs.existsSync(path.join(installed, BINARY)), 'no binary in the root package')
  assert.equal(sha256(node), sha256(path.join(REPO, BINARY)), 'the .node is the prebuilt one, not rebuilt')
  const wd = fs.statSync(path.join(platformDir, 'blue-wg-watchdog'))
  assert.ok(wd.mode & 0o111, 'blue-wg-watchdog is executable once installed')
  // Nothing was built: no build output and no install step that could build.
  assert.ok(!fs.existsSync(path.join(installed, 'target')), 'no target/ in the installed package')
  assert.ok(!fs.existsSync(path.join(installed, 'Cargo.toml')), 'no Cargo.toml in the installed package')
  assert.ok(!fs.existsSync(path.join(installed, 'binding.gyp')), 'no binding.gyp in the installed package')
  const scripts = require(path.join(installed, 'package.json')).scripts || {}
  for (const s of ['preinstall', 'install', 'postinstall', 'prepare']) {
    assert.equal(scripts[s], undefined, `the package has no ${s} script`)
  }
}

/** What the ESM and CommonJS apps print, checked the same way. */
function assertAppReport(out, appDir) {
  for (const f of CORE_FUNCTIONS) assert.equal(out.core[f], 'function', `blue-wireguard exports ${f}()`)
  assert.equal(out.status.name, 'wgsent0')
  assert.equal(out.status.exists, false, 'no wgsent0 in the empty namespace')
  assert.equal(out.status.up, false)
  assert.equal(out.status.managed, false)
  assert.deepEqual(out.statusNamed, out.status)
  assert.equal(out.configDir, path.join(appDir, 'sentinel-wg'), 'configDir() honours TMPDIR')
  assert.equal(out.configDirExists, false, 'configDir() creates nothing')
  assert.equal(typeof out.availability.available, 'boolean')

  assert.deepEqual(Object.keys(out.compat).sort(), Object.keys(COMPAT_EXPORTS).sort(), 'compat exports')
  for (const [name, kind] of Object.entries(COMPAT_EXPORTS)) {
    assert.ok(kind.split('|').includes(out.compat[name]), `${name} is ${kind}, got ${out.compat[name]}`)
  }
  assert.equal(out.values.IS_ADMIN, true, 'IS_ADMIN: the app runs as root')
  assert.equal(out.values.WG_EXE, null)
  assert.equal(out.values.WG_AVAILABLE, out.availability.available)
  assert.equal(out.values.WG_QUICK, out.availability.wgQuick ?? null)
  if (out.values.WG_QUICK !== null) assert.ok(path.isAbsolute(out.values.WG_QUICK), 'WG_QUICK is absolute')
  assert.deepEqual(out.watchdog, { active: false })
  assert.equal(out.sameCompat, true, 'the ESM and CommonJS compat entries share one module')
  assert.equal(out.resolved.core, path.join(appDir, 'node_modules', 'blue-wireguard', 'index.js'))
  assert.equal(out.resolved.compatRequire, path.join(appDir, 'node_modules', 'blue-wireguard', 'lib', 'compat.js'))
  assert.equal(out.resolved.compatImport, path.join(appDir, 'node_modules', 'blue-wireguard', 'compat.mjs'))
}

// Shared by both app scripts: describe what was loaded, calling only read-only functions.
const REPORT_FN = `
function kinds(o) {
  const out = {}
  for (const k of Object.keys(o).sort()) if (k !== 'default') out[k] = o[k] === null ? 'null' : typeof o[k]
  return out
}
function report(wg, compat, cjsCompat, resolved) {
  const fs = require('node:fs')
  const dir = wg.configDir()
  return JSON.stringify({
    core: kinds(wg),
    status: wg.status(),
    statusNamed: wg.status('wgsent0'),
    configDir: dir,
    configDirExists: fs.existsSync(dir),
    availability: wg.availability(),
    compat: kinds(compat),
    values: { IS_ADMIN: compat.IS_ADMIN, WG_EXE: compat.WG_EXE, WG_QUICK: compat.WG_QUICK, WG_AVAILABLE: compat.WG_AVAILABLE },
    watchdog: compat.watchdogCheck(),
    sameCompat: compat.installWgTunnel === cjsCompat.installWgTunnel && compat.watchdogCheck === cjsCompat.watchdogCheck,
    resolved,
  })
}
`

const ESM_APP = `import * as wg from 'blue-wireguard'
import wgDefault from 'blue-wireguard'
import * as compat from 'blue-wireguard/compat'
import { createRequire } from 'node:module'
import { fileURLToPath } from 'node:url'
const require = createRequire(import.meta.url)
${REPORT_FN}
if (wgDefault.status !== wg.status) throw new Error('default and named exports differ')
console.log(report(wg, compat, require('blue-wireguard/compat'), {
  core: require.resolve('blue-wireguard'),
  compatRequire: require.resolve('blue-wireguard/compat'),
  compatImport: fileURLToPath(import.meta.resolve('blue-wireguard/compat')),
}))
`

const CJS_APP = `'use strict'
const wg = require('blue-wireguard')
const compat = require('blue-wireguard/compat')
${REPORT_FN}
import('blue-wireguard/compat').then((esmCompat) => {
  // the app reports the require() view, and checks the import() view is the same module
  for (const k of Object.keys(compat)) if (esmCompat[k] !== compat[k]) throw new Error('import() differs at ' + k)
  console.log(report(wg, compat, esmCompat, {
    core: require.resolve('blue-wireguard'),
    compatRequire: require.resolve('blue-wireguard/compat'),
    // what import() loaded (compat.mjs) is checked above to be this same module
    compatImport: require('node:path').join(require.resolve('blue-wireguard/package.json'), '..', 'compat.mjs'),
  }))
})
`

test('npm pack ships the JS, the types and ai-path/; the platform package the binary and the watchdog', () => {
  assert.ok(fs.existsSync(path.join(REPO, BINARY)), `${BINARY} is built (npm run build)`)
  const dest = path.join(ROOT, 'pack')
  fs.mkdirSync(dest)
  const r = npm(['pack', '--pack-destination', dest, '--json', '--loglevel=error'], { cwd: REPO, timeout: 45000 })
  const [meta] = JSON.parse(r.stdout)
  assert.equal(meta.name, 'blue-wireguard')
  assert.equal(meta.version, PKG.version)
  TARBALL = path.join(dest, meta.filename)
  assert.ok(fs.existsSync(TARBALL), 'the tarball exists')

  // What is really in the tarball, with modes.
  const listing = run('tar', ['-tvzf', TARBALL]).stdout.trim().split('\n')
  const entries = new Map()
  for (const line of listing) {
    const cols = line.trim().split(/\s+/)
    const file = cols[cols.length - 1]
    assert.ok(file.startsWith('package/'), `${file} is under package/`)
    entries.set(file.slice('package/'.length), cols[0])
  }
  const files = [...entries.keys()]
  for (const f of ['package.json', 'index.js', 'index.d.ts', 'binding.js', 'compat.mjs', 'compat.d.ts', 'compat.d.mts', 'lib/load.js', 'lib/compat.js', 'lib/hooks.js', 'ai-path/README.md', 'ai-path/FAILURES.md']) {
    assert.ok(entries.has(f), `the tarball holds ${f} (it holds ${files.join(', ')})`)
  }
  for (const f of fs.readdirSync(path.join(REPO, 'lib')).filter((f) => f.endsWith('.js'))) {
    assert.ok(entries.has(`lib/${f}`), `the tarball holds lib/${f}`)
  }
  assert.deepEqual(files.filter((f) => f.endsWith('.node') || f === 'blue-wg-watchdog'), [], 'no binary in the root tarball')
  assert.equal(PKG.os, undefined, 'the root installs on every OS (no "os")')
  assert.equal(PKG.cpu, undefined, 'the root installs on every CPU (no "cpu")')
  for (const dir of ['src/', 'target/', '__test__/', 'testbed/', 'scripts/', 'node_modules/', 'npm/']) {
    assert.deepEqual(files.filter((f) => f.startsWith(dir)), [], `no ${dir} in the tarball`)
  }
  for (const f of ['Cargo.toml', 'Cargo.lock', 'build.rs', 'package-lock.json']) {
    assert.ok(!entries.has(f), `no ${f} in the tarball`)
  }
  // The exports map points only at files that are shipped.
  const targets = []
  const walk = (v) => (typeof v === 'string' ? targets.push(v) : Object.values(v).forEach(walk))
  walk(PKG.exports)
  assert.ok(targets.length >= 6, 'the exports map has its targets')
  for (const t of [...targets, `./${PKG.main}`, `./${PKG.types}`]) {
    assert.ok(entries.has(t.replace(/^\.\//, '')), `exports/main/types target ${t} is in the tarball`)
  }

  // As published: prepublishOnly adds the platform packages as optionalDependencies.
  const unpacked = path.join(ROOT, 'published')
  fs.mkdirSync(unpacked)
  run('tar', ['-xzf', TARBALL, '-C', unpacked])
  writeRootOptionalDeps(path.join(unpacked, 'package', 'package.json'))
  const pub = require(path.join(unpacked, 'package', 'package.json'))
  assert.equal(pub.optionalDependencies[PLATFORM_PKG], PKG.version)
  assert.equal(Object.keys(pub.optionalDependencies).length, 4, 'four platform packages')
  const pubDest = path.join(ROOT, 'pack-published')
  fs.mkdirSync(pubDest)
  const rp = npm(['pack', path.join(unpacked, 'package'), '--pack-destination', pubDest, '--json', '--loglevel=error'], { cwd: ROOT, timeout: 45000 })
  PUBLISHED = path.join(pubDest, JSON.parse(rp.stdout)[0].filename)

  // The platform package, staged as build:all would make it, from this machine's build.
  const platDir = path.join(ROOT, 'platform')
  writeDir(PLATFORM, platDir)
  fs.copyFileSync(path.join(REPO, BINARY), path.join(platDir, BINARY))
  fs.copyFileSync(path.join(REPO, 'blue-wg-watchdog'), path.join(platDir, 'blue-wg-watchdog'))
  fs.chmodSync(path.join(platDir, 'blue-wg-watchdog'), 0o755)
  const platMeta = require(path.join(platDir, 'package.json'))
  assert.deepEqual([platMeta.os, platMeta.cpu, platMeta.libc], [['linux'], ['x64'], ['glibc']])
  assert.equal(platMeta.main, BINARY)
  const pp = npm(['pack', platDir, '--pack-destination', dest, '--json', '--loglevel=error'], { cwd: ROOT, timeout: 45000 })
  PLATFORM_TARBALL = path.join(dest, JSON.parse(pp.stdout)[0].filename)
  const platEntries = new Map(
    run('tar', ['-tvzf', PLATFORM_TARBALL]).stdout.trim().split('\n').map((l) => {
      const cols = l.trim().split(/\s+/)
      return [cols[cols.length - 1].replace(/^package\//, ''), cols[0]]
    }),
  )
  assert.deepEqual([...platEntries.keys()].sort(), ['README.md', BINARY, 'blue-wg-watchdog', 'package.json'].sort())
  assert.match(platEntries.get('blue-wg-watchdog'), /^-rwx/, 'blue-wg-watchdog is executable in the tarball')
})

test('a fresh ESM app installs the tarball without Rust and uses both entries', { skip: !IS_ROOT && 'needs root for unshare --net' }, (t) => {
  const { dir, installed } = freshApp('esm-app', 'module')
  assertInstalledPrebuilt(installed)
  const lock = JSON.parse(fs.readFileSync(path.join(dir, 'package-lock.json'), 'utf8'))
  assert.deepEqual(Object.keys(lock.packages).filter(Boolean), ['node_modules/blue-wireguard', `node_modules/${PLATFORM_PKG}`], 'no dependency pulled in')
  fs.writeFileSync(path.join(dir, 'app.mjs'), ESM_APP)
  const out = runApp(dir, 'app.mjs')
  t.diagnostic(`ESM app: status ${JSON.stringify(out.status)}; compat ${JSON.stringify(out.values)}`)
  assertAppReport(out, dir)
})

test('a fresh CommonJS app installs the tarball without Rust and uses both entries', { skip: !IS_ROOT && 'needs root for unshare --net' }, (t) => {
  const { dir, installed } = freshApp('cjs-app', null)
  assertInstalledPrebuilt(installed)
  fs.writeFileSync(path.join(dir, 'app.js'), CJS_APP)
  const out = runApp(dir, 'app.js')
  t.diagnostic(`CommonJS app: status ${JSON.stringify(out.status)}; compat ${JSON.stringify(out.values)}`)
  assertAppReport(out, dir)
})

const NOBIN_APP = `import { createRequire } from 'node:module'
const require = createRequire(import.meta.url)
const coded = (e) => e && { name: e.name, code: e.code, message: e.message, platform: e.platform, isError: e instanceof Error, hasCause: e.cause !== undefined }
const out = {}
try { require('blue-wireguard'); out.require = 'loaded' } catch (e) { out.require = coded(e) }
try { await import('blue-wireguard'); out.import = 'loaded' } catch (e) { out.import = coded(e) }
const compat = await import('blue-wireguard/compat')
const cjsCompat = require('blue-wireguard/compat')
out.kinds = {}
for (const k of Object.keys(compat).sort()) out.kinds[k] = compat[k] === null ? 'null' : typeof compat[k]
out.values = { WG_AVAILABLE: compat.WG_AVAILABLE, WG_EXE: compat.WG_EXE, WG_QUICK: compat.WG_QUICK, IS_ADMIN: compat.IS_ADMIN }
out.cjsAvailable = cjsCompat.WG_AVAILABLE
const settle = (p) => p.then((v) => ({ resolved: v === undefined ? null : v }), (e) => ({ rejected: coded(e) }))
out.install = await settle(compat.installWgTunnel('/nonexistent-blue-wireguard/wgsent0.conf'))
let wrote = false
out.connectWireGuard = await settle(compat.connectWireGuard({ writeConfig() { wrote = true } }))
out.wrote = wrote
try { out.emergency = { returned: compat.emergencyCleanupSync() ?? null } } catch (e) { out.emergency = { threw: coded(e) } }
out.watchdog = compat.watchdogCheck()
out.uninstall = await settle(compat.uninstallWgTunnel())
out.disconnect = await settle(compat.disconnectWireGuard())
out.teardown = compat.teardownLinuxInterface('wgsent0')
console.log(JSON.stringify(out))
`

test('without the platform binary: a coded error naming the platform, and compat still loads', { skip: !IS_ROOT && 'needs root for unshare --net' }, (t) => {
  const { dir, installed } = freshApp('nobin-app', 'module', { binary: false })
  assert.ok(!fs.existsSync(path.join(installed, '..', PLATFORM_PKG)), 'no platform package installed')
  fs.writeFileSync(path.join(dir, 'app.mjs'), NOBIN_APP)
  const out = runApp(dir, 'app.mjs')
  t.diagnostic(`require: ${out.require.code}: ${out.require.message}`)

  for (const how of ['require', 'import']) {
    const e = out[how]
    assert.notEqual(e, 'loaded', `${how}('blue-wireguard') throws`)
    assert.equal(e.isError, true, `${how}: an Error`)
    assert.equal(e.code, 'WG_NOT_AVAILABLE', `${how}: code WG_NOT_AVAILABLE`)
    assert.match(e.message, new RegExp(PLATFORM), `${how}: the message names the platform`)
    assert.equal(e.hasCause, true, `${how}: the loader's error is the cause`)
  }
  assert.equal(out.require.platform, PLATFORM)

  assert.deepEqual(Object.keys(out.kinds).sort(), Object.keys(COMPAT_EXPORTS).sort())
  for (const [name, kind] of Object.entries(COMPAT_EXPORTS)) {
    assert.ok(kind.split('|').includes(out.kinds[name]), `${name} is ${kind}, got ${out.kinds[name]}`)
  }
  assert.equal(out.values.WG_AVAILABLE, false)
  assert.equal(out.cjsAvailable, false)
  assert.equal(out.values.WG_EXE, null)
  assert.equal(out.install.rejected?.code, 'WG_NOT_AVAILABLE', `installWgTunnel rejects: ${JSON.stringify(out.install)}`)
  assert.match(out.install.rejected.message, new RegExp(PLATFORM))
  assert.equal(out.connectWireGuard.rejected?.code, 'WG_NOT_AVAILABLE')
  assert.equal(out.wrote, false, 'connectWireGuard wrote no config')
  assert.deepEqual(out.emergency, { returned: null }, 'emergencyCleanupSync does not throw')
  assert.deepEqual(out.watchdog, { active: false })
  assert.deepEqual(out.uninstall, { resolved: null }, 'uninstallWgTunnel resolves')
  assert.deepEqual(out.disconnect, { resolved: null }, 'disconnectWireGuard resolves')
  assert.equal(out.teardown.name, 'wgsent0')
  assert.equal(out.teardown.existed, false)
})

// npm installs a tarball given by path even when its own "os" does not match (tried: npm 11),
// so the absence of "os"/"cpu" is asserted on package.json above; this checks that on other
// platforms the root installs offline, alone: no platform package is needed or pulled in.
test('the published root installs alone on win32, darwin, freebsd, linux/riscv64 (npm --os/--cpu)', () => {
  assert.ok(PUBLISHED, 'the tarball was packed')
  for (const [osName, cpu] of [['win32', 'x64'], ['darwin', 'arm64'], ['freebsd', 'x64'], ['linux', 'riscv64']]) {
    const dir = path.join(ROOT, `any-${osName}-${cpu}`)
    fs.mkdirSync(dir)
    fs.writeFileSync(path.join(dir, 'package.json'), JSON.stringify({ name: 'any', version: '1.0.0', private: true }))
    npm(['install', PUBLISHED, `--os=${osName}`, `--cpu=${cpu}`, '--no-audit', '--no-fund', '--offline', '--loglevel=error'], {
      cwd: dir,
      env: cleanEnv({ PATH: NPM_PATH, npm_config_update_notifier: 'false' }),
      timeout: 45000,
    })
    const installed = fs.readdirSync(path.join(dir, 'node_modules')).filter((n) => !n.startsWith('.'))
    assert.deepEqual(installed, ['blue-wireguard'], `${osName}/${cpu}: the root alone is installed`)
  }
})

test('a TypeScript consumer of every export type-checks against the installed tarball', () => {
  assert.ok(fs.existsSync(TSC), 'typescript is installed (devDependency)')
  // Its own app, so this test does not depend on the runtime ones.
  const { dir } = freshApp('ts-app', 'module')
  for (const f of ['consumer.mts', 'consumer.cts', 'tsconfig.json']) {
    fs.copyFileSync(path.join(__dirname, 'types', f), path.join(dir, f))
  }
  const r = run(
    process.execPath,
    [TSC, '-p', 'tsconfig.json', '--typeRoots', path.join(REPO, 'node_modules', '@types'), '--listFiles', '--pretty', 'false'],
    { cwd: dir, timeout: 50000, allowFail: true },
  )
  assert.equal(r.status, 0, `tsc --noEmit failed:\n${r.stdout}\n${r.stderr}`)
  const listed = r.stdout.split('\n').map((l) => path.resolve(dir, l.trim()))
  const pkgDir = path.join(dir, 'node_modules', 'blue-wireguard')
  for (const f of ['index.d.ts', 'compat.d.mts', 'compat.d.ts']) {
    assert.ok(listed.includes(path.join(pkgDir, f)), `tsc checked the installed ${f}`)
  }
  assert.ok(!listed.some((l) => l.startsWith(REPO + path.sep) && !l.includes(`${path.sep}node_modules${path.sep}`)), 'no declaration came from the repo itself')
})

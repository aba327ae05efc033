'use strict'
// `npm run build:all`: the prebuilt Linux packages, napi-rs style. For each target, a
// release build with zig (cargo-zigbuild, driven by `napi build -x`) into
// npm/<platform>/: the `.node`, the `blue-wg-watchdog` beside it (src/watchdog.rs finds the
// watchdog beside the loaded `.node`), and a package.json with `os`/`cpu`/`libc`.
// `--prepublish` (npm's prepublishOnly) writes them into the root package.json as
// `optionalDependencies`, as `napi prepublish` does: only at publish time, because npm ci
// of this repository needs every dependency in package.json to exist on the registry.
//
// Why zig: a plain `napi build --target *-musl` exits 0 and links glibc; zig links the
// target's own libc, and pins the gnu builds to glibc 2.28 (`x86_64-unknown-linux-gnu.2.28`).
//
//   node scripts/build-targets.js                     all four targets
//   node scripts/build-targets.js linux-arm64-musl    some of them
//   node scripts/build-targets.js --dirs-only         only (re)write npm/*/package.json
//   node scripts/build-targets.js --prepublish        that, plus the root's optionalDependencies
//
// Needs: the Rust targets (`rustup target add ...`), zig (`pip install ziglang`: found as
// `zig` on PATH or `python3 -m ziglang`), cargo-zigbuild (napi installs it on first use);
// scripts/setup-targets.sh installs all three. Builds run under `nice -n 19`.
const { spawnSync } = require('node:child_process')
const fs = require('node:fs')
const path = require('node:path')

const REPO = path.join(__dirname, '..')
const ROOT_PKG_PATH = path.join(REPO, 'package.json')
const NAPI = path.join(REPO, 'node_modules', '@napi-rs', 'cli', 'dist', 'cli.js')
const GLIBC_FLOOR = '2.28'

/** platform -> { triple (what cargo builds), zigTarget (what zig is asked for), cpu, libc } */
const TARGETS = {
  'linux-x64-gnu': { triple: 'x86_64-unknown-linux-gnu', zig: `x86_64-unknown-linux-gnu.${GLIBC_FLOOR}`, cpu: 'x64', libc: 'glibc' },
  'linux-arm64-gnu': { triple: 'aarch64-unknown-linux-gnu', zig: `aarch64-unknown-linux-gnu.${GLIBC_FLOOR}`, cpu: 'arm64', libc: 'glibc' },
  'linux-x64-musl': { triple: 'x86_64-unknown-linux-musl', zig: 'x86_64-unknown-linux-musl', cpu: 'x64', libc: 'musl' },
  'linux-arm64-musl': { triple: 'aarch64-unknown-linux-musl', zig: 'aarch64-unknown-linux-musl', cpu: 'arm64', libc: 'musl' },
}

const rootPkg = () => JSON.parse(fs.readFileSync(ROOT_PKG_PATH, 'utf8'))
const binaryName = (pkg) => pkg.napi.binaryName
const nodeFile = (pkg, platform) => `${binaryName(pkg)}.${platform}.node`
const packageName = (pkg, platform) => `${pkg.name}-${platform}`

/** npm/<platform>/package.json and README.md (or in `dir`), from the root package.json. */
function writeDir(platform, dir = path.join(REPO, 'npm', platform)) {
  const pkg = rootPkg()
  const t = TARGETS[platform]
  fs.mkdirSync(dir, { recursive: true })
  const sub = {
    name: packageName(pkg, platform),
    version: pkg.version,
    description: `${pkg.name}'s prebuilt addon and watchdog for ${platform}`,
    main: nodeFile(pkg, platform),
    files: [nodeFile(pkg, platform), 'blue-wg-watchdog'],
    license: pkg.license,
    engines: pkg.engines,
    os: ['linux'],
    cpu: [t.cpu],
    libc: [t.libc],
  }
  if (pkg.repository) sub.repository = pkg.repository
  fs.writeFileSync(path.join(dir, 'package.json'), JSON.stringify(sub, null, 2) + '\n')
  fs.writeFileSync(
    path.join(dir, 'README.md'),
    `# ${sub.name}\n\nThe \`${platform}\` binary of [\`${pkg.name}\`](../../README.md) ` +
      `(the addon and \`blue-wg-watchdog\`). Install \`${pkg.name}\`, not this package.\n`,
  )
  return dir
}

/** The root's optionalDependencies: every platform package, at the root's version. */
function writeRootOptionalDeps(pkgPath = ROOT_PKG_PATH) {
  const pkg = JSON.parse(fs.readFileSync(pkgPath, 'utf8'))
  const want = {}
  for (const p of Object.keys(TARGETS)) want[packageName(pkg, p)] = pkg.version
  if (JSON.stringify(pkg.optionalDependencies) === JSON.stringify(want)) return
  pkg.optionalDependencies = want
  fs.writeFileSync(pkgPath, JSON.stringify(pkg, null, 2) + '\n')
}

function run(cmd, args, opts = {}) {
  console.error(`build-targets: ${[cmd, ...args].join(' ')}`)
  const r = spawnSync(cmd, args, { cwd: REPO, stdio: ['ignore', 'inherit', 'inherit'], timeout: 3600_000, ...opts })
  if (r.error) throw r.error
  if (r.status !== 0) throw new Error(`${cmd} exited ${r.status ?? r.signal}`)
}

/** zig for cargo-zigbuild: `zig` on PATH, else the PyPI wheel's `python3 -m ziglang`. */
function zigEnv() {
  const onPath = spawnSync('zig', ['version'], { stdio: ['ignore', 'pipe', 'ignore'], timeout: 30_000 })
  if (onPath.status === 0) return {}
  const py = spawnSync('python3', ['-m', 'ziglang', 'version'], { stdio: ['ignore', 'pipe', 'ignore'], timeout: 30_000 })
  if (py.status === 0) return {} // cargo-zigbuild finds `python3 -m ziglang` itself
  // Where scripts/setup-targets.sh puts it (pip --target).
  const PYTHONPATH = [path.join(REPO, 'target', 'test-targets', 'py'), process.env.PYTHONPATH].filter(Boolean).join(':')
  const own = spawnSync('python3', ['-m', 'ziglang', 'version'], { stdio: ['ignore', 'pipe', 'ignore'], timeout: 30_000, env: { ...process.env, PYTHONPATH } })
  if (own.status === 0) return { PYTHONPATH }
  throw new Error('zig not found: pip install ziglang (or put zig on PATH); see scripts/setup-targets.sh')
}

function build(platform, env) {
  const pkg = rootPkg()
  const t = TARGETS[platform]
  const dir = writeDir(platform)
  const started = Date.now()
  // The cross build writes only into npm/<platform>/: no binding.js (--no-js); napi always
  // writes the type definitions, so they go to a scratch file that is removed.
  const dts = `.${platform}.d.ts`
  run('nice', ['-n', '19', process.execPath, NAPI, 'build', '--platform', '--release', '-x', '--target', t.zig,
    '--no-js', '--output-dir', dir, '--dts', dts], { env })
  fs.rmSync(path.join(dir, dts), { force: true })
  // napi's cargo build builds every target of the crate, the watchdog binary included, with
  // the same flags: copy it beside the .node.
  const wd = path.join(REPO, 'target', t.triple, 'release', 'blue-wg-watchdog')
  if (!fs.existsSync(wd)) throw new Error(`${wd} was not built`)
  fs.copyFileSync(wd, path.join(dir, 'blue-wg-watchdog'))
  fs.chmodSync(path.join(dir, 'blue-wg-watchdog'), 0o755)
  const node = path.join(dir, nodeFile(pkg, platform))
  if (!fs.existsSync(node)) throw new Error(`${node} was not built`)
  const kb = (f) => Math.round(fs.statSync(f).size / 1024)
  console.error(
    `build-targets: ${platform} in ${((Date.now() - started) / 1000).toFixed(0)} s: ` +
      `${path.basename(node)} ${kb(node)} kB, blue-wg-watchdog ${kb(path.join(dir, 'blue-wg-watchdog'))} kB`,
  )
}

function main(argv) {
  const prepublish = argv.includes('--prepublish')
  const dirsOnly = prepublish || argv.includes('--dirs-only')
  const asked = argv.filter((a) => !a.startsWith('--'))
  for (const p of asked) if (!TARGETS[p]) throw new Error(`unknown platform ${p} (known: ${Object.keys(TARGETS).join(', ')})`)
  const platforms = asked.length ? asked : Object.keys(TARGETS)
  if (prepublish) writeRootOptionalDeps()
  if (dirsOnly) {
    for (const p of Object.keys(TARGETS)) writeDir(p)
    return
  }
  const env = { ...process.env, ...zigEnv() }
  for (const p of platforms) build(p, env)
}

if (require.main === module) {
  try {
    main(process.argv.slice(2))
  } catch (e) {
    console.error(`build-targets: ${e.message}`)
    process.exit(1)
  }
}

module.exports = { TARGETS, GLIBC_FLOOR, writeDir, writeRootOptionalDeps, nodeFile, packageName }

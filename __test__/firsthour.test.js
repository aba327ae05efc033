'use strict'
// The first hour of a new user, checked without running anything that touches a network:
// the README's code blocks are valid JavaScript as written (`node --check`, never run), the
// README lists every TunnelInfo field, the onProgress documentation names every step the Rust
// code reports, a strict TypeScript consumer without @types/node type-checks, ai-path/ ships
// and what it names exists, and the platform lists agree with each other.
const { test } = require('node:test')
const assert = require('node:assert/strict')
const { spawnSync } = require('node:child_process')
const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')

const REPO = path.join(__dirname, '..')
const README = fs.readFileSync(path.join(REPO, 'README.md'), 'utf8')
const DTS = fs.readFileSync(path.join(REPO, 'index.d.ts'), 'utf8')
const PKG = require('../package.json')

function tmp() {
  return fs.mkdtempSync(path.join(os.tmpdir(), 'bw-firsthour-'))
}

function check(file) {
  return spawnSync(process.execPath, ['--check', file], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: 20000 })
}

test("the READMEs' JavaScript blocks (README.md, ai-path/) parse as written, as CommonJS and as ESM", () => {
  const aiPath = fs.readFileSync(path.join(REPO, 'ai-path', 'README.md'), 'utf8')
  const blocks = [...(README + aiPath).matchAll(/```js\n([\s\S]*?)```/g)].map((m) => m[1])
  assert.ok(blocks.length >= 4, `found ${blocks.length} js blocks`)
  const dir = tmp()
  try {
    blocks.forEach((code, i) => {
      const esmOnly = /^\s*(import|export)\s/m.test(code)
      for (const ext of esmOnly ? ['mjs'] : ['cjs', 'mjs']) {
        const f = path.join(dir, `block${i}.${ext}`)
        fs.writeFileSync(f, code)
        const r = check(f)
        assert.equal(r.status, 0, `README js block ${i} as .${ext}:\n${code}\n${r.stderr}`)
      }
    })
  } finally {
    fs.rmSync(dir, { recursive: true, force: true })
  }
})

test('the README lists every TunnelInfo field', () => {
  const body = /export interface TunnelInfo \{([\s\S]*?)\n\}/.exec(DTS)
  assert.ok(body, 'index.d.ts declares TunnelInfo')
  const fields = [...body[1].matchAll(/^ {2}([a-zA-Z]+)\??:/gm)].map((m) => m[1])
  assert.ok(fields.length >= 10, `TunnelInfo fields: ${fields}`)
  const section = README.split('## `TunnelInfo`, field by field')[1]?.split('\n## ')[0]
  assert.ok(section, 'the README has the TunnelInfo section')
  for (const f of fields) assert.match(section, new RegExp('^\\| `' + f + '` \\|', 'm'), `README lists TunnelInfo.${f}`)
})

test('the onProgress documentation names every step the code reports', () => {
  const steps = new Set()
  const walk = (d) => {
    for (const e of fs.readdirSync(d, { withFileTypes: true })) {
      const p = path.join(d, e.name)
      if (e.isDirectory()) walk(p)
      else if (p.endsWith('.rs')) {
        const src = fs.readFileSync(p, 'utf8')
        for (const m of src.matchAll(/(?:\bmark|\(ctx\.progress\))\(\s*"([a-z-]+)"/g)) steps.add(m[1])
      }
    }
  }
  walk(path.join(REPO, 'src'))
  assert.ok(steps.has('validate') && steps.has('ready') && steps.size >= 12, `steps found: ${[...steps]}`)
  const doc = /\/\*\*((?:(?!\*\/)[\s\S])*?)\*\/\s*onProgress\?:/.exec(DTS)
  assert.ok(doc, 'index.d.ts documents onProgress')
  for (const s of steps) assert.match(doc[1], new RegExp('`' + s + '`'), `onProgress's documentation names step '${s}'`)
})

test('index.d.ts type-checks in a strict consumer without @types/node', () => {
  const tsc = path.join(REPO, 'node_modules', 'typescript', 'bin', 'tsc')
  assert.ok(fs.existsSync(tsc), 'typescript is installed (devDependency)')
  const dir = tmp()
  try {
    fs.mkdirSync(path.join(dir, 'node_modules'))
    fs.symlinkSync(REPO, path.join(dir, 'node_modules', 'blue-wireguard'))
    fs.writeFileSync(
      path.join(dir, 'consumer.mts'),
      `import * as wg from 'blue-wireguard'
import * as compat from 'blue-wireguard/compat'
import type { TunnelConfig, TunnelInfo, ConnectOptions } from 'blue-wireguard'
const config: TunnelConfig = {
  privateKey: 'yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=',
  addresses: ['10.8.0.2/24'],
  peer: { publicKey: 'xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=', endpoint: '192.0.2.1:51820' },
}
const options: ConnectOptions = { onProgress: (step: string, detail: string) => void [step, detail] }
export async function use(): Promise<number> {
  const info: TunnelInfo = await wg.connect(config, options)
  const ok: boolean = wg.availability().available && compat.WG_AVAILABLE
  return ok ? info.connectMs : -1
}
`,
    )
    fs.writeFileSync(
      path.join(dir, 'tsconfig.json'),
      JSON.stringify({
        compilerOptions: { module: 'node16', moduleResolution: 'node16', target: 'es2022', strict: true, noEmit: true, skipLibCheck: false, types: [] },
        files: ['consumer.mts'],
      }),
    )
    const r = spawnSync(process.execPath, [tsc, '-p', 'tsconfig.json', '--strict', '--noEmit', '--pretty', 'false'], {
      cwd: dir,
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'pipe'],
      timeout: 60000,
    })
    assert.equal(r.status, 0, `tsc --strict --noEmit (types: []):\n${r.stdout}\n${r.stderr}`)
  } finally {
    fs.rmSync(dir, { recursive: true, force: true })
  }
})

test('ai-path/ ships in the package and every file it names exists there', () => {
  assert.ok(PKG.files.includes('ai-path/'), 'package.json files has ai-path/')
  for (const f of fs.readdirSync(path.join(REPO, 'ai-path')).filter((f) => f.endsWith('.md'))) {
    const text = fs.readFileSync(path.join(REPO, 'ai-path', f), 'utf8')
    for (const m of text.matchAll(/\]\(([^)#\s]+)(?:#[^)]*)?\)/g)) {
      if (/^[a-z]+:/.test(m[1])) continue
      assert.ok(fs.existsSync(path.join(REPO, 'ai-path', m[1])), `ai-path/${f} links to ${m[1]}, which is not in ai-path/`)
    }
    for (const m of text.matchAll(/\b([A-Z][A-Z0-9_-]+\.md)\b/g)) {
      assert.ok(fs.existsSync(path.join(REPO, 'ai-path', m[1])), `ai-path/${f} names ${m[1]}, which is not in ai-path/`)
    }
  }
  for (const f of ['README.md', 'testbed/README.md', 'testbed/testbed.sh', 'testbed/index.js']) {
    const text = fs.readFileSync(path.join(REPO, f), 'utf8')
    assert.doesNotMatch(text, /DESIGN\.md/, `${f} names DESIGN.md, which is not in this repository`)
  }
})

test('the platform lists agree: build targets, napi targets, the loader, the root installs anywhere', () => {
  const { TARGETS } = require('../scripts/build-targets.js')
  const { PREBUILT } = require('../lib/load.js')
  assert.deepEqual(PREBUILT, Object.keys(TARGETS))
  assert.deepEqual([...PKG.napi.targets].sort(), Object.values(TARGETS).map((t) => t.triple).sort())
  assert.equal(PKG.os, undefined)
  assert.equal(PKG.cpu, undefined)
  for (const p of Object.keys(TARGETS)) {
    const sub = require(path.join(REPO, 'npm', p, 'package.json'))
    assert.equal(sub.name, `${PKG.name}-${p}`)
    assert.equal(sub.version, PKG.version, `npm/${p} is at the root's version (node scripts/build-targets.js --dirs-only)`)
    assert.deepEqual(sub.files.sort(), [sub.main, 'blue-wg-watchdog'].sort())
  }
})

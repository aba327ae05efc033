'use strict'
// README "Try it safely": `npm run try -- my-agent.js` runs the README's example script as
// written inside a fresh testbed's client namespace (it connects, fetches a page through the
// tunnel, disconnects), and an ESM script importing the package from outside the checkout.
const { test } = require('node:test')
const assert = require('node:assert/strict')
const { spawnSync } = require('node:child_process')
const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')

const REPO = path.join(__dirname, '..')
const IS_ROOT = typeof process.getuid === 'function' && process.getuid() === 0

function tryScript(file) {
  return spawnSync(process.execPath, [path.join(REPO, 'testbed', 'try.js'), file], {
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'pipe'],
    timeout: 60000,
  })
}

test("the README's Try it safely example runs in the testbed, from outside the checkout", { skip: !IS_ROOT && 'needs root (namespaces)' }, () => {
  const readme = fs.readFileSync(path.join(REPO, 'README.md'), 'utf8')
  const code = /```js\n([\s\S]*?)```/.exec(readme.split('## Try it safely')[1])[1]
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bw-try-test-'))
  try {
    fs.writeFileSync(path.join(dir, 'my-agent.js'), code)
    const r = tryScript(path.join(dir, 'my-agent.js'))
    assert.equal(r.status, 0, `try exited ${r.status ?? r.signal}\n${r.stdout}\n${r.stderr}`)
    assert.match(r.stdout, /^step ready /m)
    assert.match(r.stdout, /^up: \S+ \(\w[\w-]*\) in \d+(\.\d{1,2})? ms$/m, 'connectMs is rounded to 0.01 ms')
    assert.match(r.stdout, /^through the tunnel: 200 /m)
    assert.match(r.stdout, /^down: true$/m)

    fs.writeFileSync(
      path.join(dir, 'esm.mjs'),
      "import * as wg from 'blue-wireguard'\nimport { WG_AVAILABLE } from 'blue-wireguard/compat'\n" +
        "console.log(JSON.stringify({ connect: typeof wg.connect, WG_AVAILABLE, endpoint: JSON.parse(process.env.BW_TUNNEL_CONFIG).peer.endpoint }))\n",
    )
    const e = tryScript(path.join(dir, 'esm.mjs'))
    assert.equal(e.status, 0, `${e.stdout}\n${e.stderr}`)
    const out = JSON.parse(e.stdout.trim().split('\n').pop())
    assert.equal(out.connect, 'function')
    assert.equal(typeof out.WG_AVAILABLE, 'boolean')
    assert.match(out.endpoint, /:\d+$/)
  } finally {
    fs.rmSync(dir, { recursive: true, force: true })
  }
})

'use strict'
// The README's first command: the demo must keep working (it broke silently once, when the
// default backend changed under its second part).
const { test } = require('node:test')
const assert = require('node:assert/strict')
const path = require('node:path')
const { spawnSync } = require('node:child_process')

test('npm run demo: a real tunnel against the simulated node ends with DEMO OK and exit 0', () => {
  const r = spawnSync(process.execPath, [path.join(__dirname, '..', 'testbed', 'demo.js')], {
    encoding: 'utf8',
    timeout: 120_000,
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, NO_COLOR: '1' },
  })
  assert.equal(r.status, 0, `${r.stdout.slice(-3000)}\n${r.stderr.slice(-2000)}`)
  assert.match(r.stdout, /DEMO OK/)
})

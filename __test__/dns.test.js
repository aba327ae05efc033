'use strict'
// The two DNS methods this machine lacks, through stand-ins that record how they are called:
// `resolvconf` (when installed) and systemd-resolved's `resolvectl` (when it manages DNS).
// Both act on the host's resolver state, so the addon uses them only in PID 1's network
// namespace; here (a testbed namespace) BLUE_WG_DNS_METHOD forces them.
// The resolv.conf rewrite, the method used here, is covered by tunnel.test.js and exit.test.js.
const { test, before, after } = require('node:test')
const assert = require('node:assert/strict')
const fs = require('node:fs')
const path = require('node:path')
const testbed = require('../testbed')
const { tmpdir, runAgent, assertClean, resolvConfPath } = require('./helpers')

const FULL = ['0.0.0.0/0', '::/0']
let tb
let original

before(async () => {
  tb = await testbed.up()
  original = fs.readFileSync(resolvConfPath(tb), 'utf8')
})
after(() => tb && tb.down())

/** A directory with a logging stand-in for `tool`, to put first in the agent's PATH. */
function standIn(t, tool) {
  const dir = tmpdir(t)
  const log = path.join(dir, 'calls.log')
  const script = `#!/bin/sh\n{ printf '%s' "$*"; if [ "$1" = "-a" ]; then printf ' <<'; tr '\\n' ';' ; fi; echo; } >> ${log}\n`
  fs.writeFileSync(path.join(dir, tool), script, { mode: 0o755 })
  return { PATH: `${dir}:${process.env.PATH}`, log: () => (fs.existsSync(log) ? fs.readFileSync(log, 'utf8') : '') }
}

test('with resolvconf installed, DNS goes through `resolvconf -a` and comes back with `-d`', async (t) => {
  const tmp = tmpdir(t)
  const name = `${tb.prefix}c`
  const rc = standIn(t, 'resolvconf')
  const r = await runAgent(
    tb,
    { config: tb.tunnelConfig(0, { allowedIps: FULL, name }), then: 'disconnect' },
    { tmp, env: { PATH: rc.PATH, BLUE_WG_DNS_METHOD: 'resolvconf' } },
  )
  assert.equal(r.event('connected')?.info.dnsMethod, 'resolvconf', JSON.stringify(r.events))
  assert.equal(rc.log(), `-a ${name} -m 0 -x <<nameserver 10.8.0.1;nameserver 1.1.1.1;\n-d ${name} -f\n`)
  assert.equal(r.event('disconnected').report.gone, true)
  await assertClean(tb, name, tmp, original)
})

test('where systemd-resolved manages DNS, it is set per link with resolvectl and resolv.conf is left alone', async (t) => {
  const tmp = tmpdir(t)
  const name = `${tb.prefix}c`
  const stub = '# managed by systemd-resolved (stand-in)\nnameserver 127.0.0.53\noptions edns0\n'
  fs.writeFileSync(resolvConfPath(tb), stub)
  t.after(() => fs.writeFileSync(resolvConfPath(tb), original))
  const rv = standIn(t, 'resolvectl')
  const r = await runAgent(
    tb,
    { config: tb.tunnelConfig(0, { allowedIps: FULL, name }), then: 'disconnect' },
    { tmp, env: { PATH: rv.PATH, BLUE_WG_DNS_METHOD: 'systemd-resolved' } },
  )
  assert.equal(r.event('connected')?.info.dnsMethod, 'systemd-resolved', JSON.stringify(r.events))
  assert.equal(rv.log(), `dns ${name} 10.8.0.1 1.1.1.1\ndomain ${name} ~.\ndefault-route ${name} true\n`)
  // The link's DNS goes with the link; the stub resolv.conf was never rewritten.
  assert.equal(fs.readFileSync(resolvConfPath(tb), 'utf8'), stub)
  await assertClean(tb, name, tmp, stub)
})

'use strict';
// node:test self-test of testbed/index.js (run by selftest.sh; needs root):
//   node --test testbed/selftest-node.js
// Not named *.test.js on purpose: it tests the testbed, not the addon.

const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { spawn, spawnSync } = require('node:child_process');
const testbed = require('./index.js');

const PROBE = path.join(__dirname, 'probe.py');
const INDEX = path.join(__dirname, 'index.js');

function nsList() {
  return spawnSync('ip', ['netns', 'list'], { encoding: 'utf8', timeout: 10_000 }).stdout;
}

/** Everything a testbed prefix could leave behind; [] when clean. */
function leftovers(prefix) {
  const left = [];
  if (nsList().includes(`${prefix}-`)) left.push('netns');
  if (spawnSync('ip', ['-o', 'link'], { encoding: 'utf8', timeout: 10_000 }).stdout.includes(prefix)) left.push('link');
  for (const ns of ['node', 'cli']) if (fs.existsSync(`/etc/netns/${prefix}-${ns}`)) left.push(`/etc/netns/${prefix}-${ns}`);
  if (fs.existsSync(`/run/blue-wg-testbed/${prefix}`)) left.push('state dir');
  if (fs.existsSync('/run/wireguard')) {
    for (const f of fs.readdirSync('/run/wireguard')) if (f.startsWith(prefix)) left.push(`/run/wireguard/${f}`);
  }
  return left;
}

/** true if pid runs (a zombie awaiting its reaper counts as gone) */
function running(pid) {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2)[0] !== 'Z';
  } catch {
    return false;
  }
}

test('tunnel, HTTP, DNS and spawned children through index.js', async () => {
  const tb = await testbed.up({ nclients: 2 });
  const { prefix } = tb;
  const confDir = fs.mkdtempSync(path.join(os.tmpdir(), 'bw-selftest-'));
  try {
    assert.match(prefix, /^bw[0-9a-f]{6}$/);
    assert.equal(tb.clients.length, 2);
    assert.equal(tb.clients[1].address, '10.8.0.3/24');
    assert.equal(tb.endpoint, '192.0.2.1:51820');

    // exec in both namespaces, with input and env
    const echo = await tb.execNode('sh', ['-c', 'cat; echo "$FOO"'], { input: 'in:', env: { FOO: 'bar' } });
    assert.deepEqual([echo.code, echo.stdout], [0, 'in:bar\n']);
    const fail = await tb.execCli('sh', ['-c', 'exit 3']);
    assert.equal(fail.code, 3);
    const slow = await tb.execCli('sleep', ['30'], { timeoutMs: 200 });
    assert.equal(slow.timedOut, true);
    assert.equal(slow.signal, 'SIGTERM');

    // client 1 through a wg-quick tunnel (config written like the addon would)
    const c = tb.tunnelConfig(1);
    const conf = path.join(confDir, `${prefix}c.conf`);
    fs.writeFileSync(conf, [
      '[Interface]', `PrivateKey = ${c.privateKey}`, `Address = ${c.addresses[0]}`, `MTU = ${c.mtu}`,
      '[Peer]', `PublicKey = ${c.peer.publicKey}`, `Endpoint = ${c.peer.endpoint}`,
      `AllowedIPs = ${c.peer.allowedIps.join(', ')}`, '',
    ].join('\n'), { mode: 0o600 });
    const wgUp = await tb.execCli('wg-quick', ['up', conf]);
    assert.equal(wgUp.code, 0, wgUp.stderr);

    const http = await tb.execCli('python3', [PROBE, 'http', `http://${tb.httpTunnelHost}/node`]);
    assert.equal(http.code, 0, http.stderr);
    assert.deepEqual(JSON.parse(http.stdout), { served_by: tb.httpTunnelHost, client: '10.8.0.3', path: '/node' });

    const dns = await tb.execCli('python3', [PROBE, 'dns', tb.dnsServer, tb.dnsName]);
    assert.equal(dns.code, 0, dns.stderr);
    assert.deepEqual(JSON.parse(dns.stdout).answers, [tb.dnsAnswer]);

    // a long-running child in the cli ns, the tunnel left up: down must end both
    const child = tb.spawnCli('sleep', ['600'], { stdio: 'ignore' });
    const exited = new Promise((resolve) => child.on('exit', (code, sig) => resolve(sig)));
    const cliPids = () => spawnSync('ip', ['netns', 'pids', tb.cliNs], { encoding: 'utf8', timeout: 10_000 })
      .stdout.split('\n').filter(Boolean).map(Number);
    let pids = cliPids();
    for (let i = 0; i < 100 && !pids.includes(child.pid); i++) {  // until `ip netns exec` has entered
      await new Promise((r) => setTimeout(r, 20));
      pids = cliPids();
    }
    assert.ok(pids.includes(child.pid), 'spawnCli child runs in the cli ns');
    assert.ok(pids.length >= 2, 'wireguard-go of wg-quick runs in the cli ns');

    // blue-wireguard's state dir of the cli ns (records, locks, DNS state; src/state.rs), as the
    // addon would leave it: down removes it with the namespace.
    const bwState = `/run/blue-wireguard/net-${fs.statSync(`/run/netns/${tb.cliNs}`).ino}`;
    if (!fs.existsSync('/run/blue-wireguard')) fs.mkdirSync('/run/blue-wireguard', { mode: 0o700 });
    fs.mkdirSync(bwState, { mode: 0o700 });
    fs.writeFileSync(path.join(bwState, `${prefix}c.lock`), '', { mode: 0o600 });

    await Promise.all([tb.down(), tb.down()]);   // concurrent calls share one run
    await tb.down();                              // and later ones are no-ops
    assert.equal(await exited, 'SIGTERM');
    assert.deepEqual(leftovers(prefix), []);
    assert.equal(fs.existsSync(bwState), false, `${bwState} is left`);
    for (const pid of [...pids, ...tb.pids]) assert.equal(running(pid), false, `pid ${pid}`);
  } finally {
    await tb.down();
    fs.rmSync(confDir, { recursive: true, force: true });
  }
});

/** Run a child node process that brings a testbed up, prints its prefix, then `then`s. */
function childWithTestbed(behaviour) {
  const code = `
    const tb = require(${JSON.stringify(INDEX)});
    tb.up({ nclients: 1 }).then((t) => {
      process.stdout.write(t.prefix + '\\n');
      ${behaviour}
    }, (e) => { console.error(e); process.exit(2); });`;
  const child = spawn(process.execPath, ['-e', code], { stdio: ['ignore', 'pipe', 'inherit'] });
  const prefix = new Promise((resolve) => {
    let out = '';
    child.stdout.on('data', (d) => {
      out += d;
      if (out.includes('\n')) resolve(out.trim());
    });
  });
  const exit = new Promise((resolve) => child.on('exit', (code, signal) => resolve({ code, signal })));
  return { child, prefix, exit };
}

test('an uncaught exception still tears the testbed down', async () => {
  const c = childWithTestbed(`setTimeout(() => { throw new Error('boom'); }, 10);`);
  const prefix = await c.prefix;
  const { code } = await c.exit;
  assert.equal(code, 1);
  assert.deepEqual(leftovers(prefix), []);
});

test('SIGTERM tears the testbed down and the process still dies of SIGTERM', async () => {
  const c = childWithTestbed(`setInterval(() => {}, 1000);`);
  const prefix = await c.prefix;
  assert.ok(nsList().includes(`${prefix}-cli`));
  c.child.kill('SIGTERM');
  const { signal } = await c.exit;
  assert.equal(signal, 'SIGTERM');
  assert.deepEqual(leftovers(prefix), []);
});

test('SIGKILL leaves a stale testbed that down-all-stale removes', async () => {
  const c = childWithTestbed(`setInterval(() => {}, 1000);`);
  const prefix = await c.prefix;
  c.child.kill('SIGKILL');
  await c.exit;
  assert.ok(nsList().includes(`${prefix}-cli`), 'SIGKILL runs no handler');
  const r = spawnSync(testbed.SCRIPT, ['down-all-stale'], { encoding: 'utf8', timeout: 60_000 });
  assert.equal(r.status, 0, r.stderr);
  assert.deepEqual(leftovers(prefix), []);
});

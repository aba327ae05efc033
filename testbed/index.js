'use strict';
// Helper for node:test suites: a throwaway network-namespace testbed (see testbed.sh).
//
//   const testbed = require('../testbed');
//   const tb = await testbed.up({ nclients: 2 });
//   const r = await tb.execCli('wg', ['show']);          // runs inside tb.cliNs
//   await tb.down();                                     // idempotent
//
// Every testbed still up when the process ends ('exit', or SIGINT/SIGTERM/SIGHUP) is torn
// down synchronously, so a crashing or interrupted test leaves nothing behind. Testbeds of
// processes that died without running any handler (SIGKILL) are removed by the next up()
// (testbed.sh down-all-stale: only those whose creator process is dead).
//
// Must run as root. The code under test (the addon) belongs inside the cli namespace:
// run it with execCli/spawnCli, never in this (the host's) namespace.

const { spawn, spawnSync } = require('node:child_process');
const crypto = require('node:crypto');
const path = require('node:path');

const SCRIPT = path.join(__dirname, 'testbed.sh');
const UP_TIMEOUT_MS = 60_000;
const DOWN_TIMEOUT_MS = 60_000;
const EXEC_TIMEOUT_MS = 30_000;
const KILL_GRACE_MS = 2_000;

/** prefix -> { prefix, env } of every testbed not yet fully down */
const live = new Map();
let hooksInstalled = false;
let staleReaped = false;

// ---------------------------------------------------------------------------- process runner

/**
 * Run `file args` and collect its output.
 * Resolves {code, signal, stdout, stderr, timedOut}; never rejects (spawn errors -> code 127).
 * On timeout: SIGTERM, then SIGKILL after KILL_GRACE_MS.
 * Resolves shortly after the process exits even if a daemonized grandchild still holds the
 * stdout/stderr pipes open (it would otherwise hang until that daemon dies).
 */
function run(file, args, { env, timeoutMs = EXEC_TIMEOUT_MS, input } = {}) {
  return new Promise((resolve) => {
    let stdout = '';
    let stderr = '';
    let timedOut = false;
    let settled = false;
    let exitInfo = null;
    let child;
    const timers = [];
    const finish = (code, signal) => {
      if (settled) return;
      settled = true;
      timers.forEach(clearTimeout);
      resolve({ code, signal, stdout, stderr, timedOut });
    };
    try {
      child = spawn(file, args, {
        env: { ...process.env, ...env },
        stdio: ['pipe', 'pipe', 'pipe'],
      });
    } catch (err) {
      stderr = String(err && err.message);
      finish(127, null);
      return;
    }
    child.stdout.setEncoding('utf8').on('data', (d) => { stdout += d; });
    child.stderr.setEncoding('utf8').on('data', (d) => { stderr += d; });
    child.on('error', (err) => {
      stderr += `${err.message}\n`;
      finish(127, null);
    });
    child.on('exit', (code, signal) => {
      exitInfo = { code, signal };
      // normally 'close' follows at once; don't wait for pipes held by grandchildren
      const t = setTimeout(() => {
        child.stdout.destroy();
        child.stderr.destroy();
        finish(code, signal);
      }, 250);
      timers.push(t);
    });
    child.on('close', (code, signal) => {
      finish(exitInfo ? exitInfo.code : code, exitInfo ? exitInfo.signal : signal);
    });
    child.stdin.on('error', () => {}); // EPIPE if the child does not read its input
    child.stdin.end(input === undefined ? undefined : input);
    if (timeoutMs > 0) {
      timers.push(setTimeout(() => {
        timedOut = true;
        child.kill('SIGTERM');
        timers.push(setTimeout(() => child.kill('SIGKILL'), KILL_GRACE_MS));
      }, timeoutMs));
    }
  });
}

function nsArgs(ns, cmd, args) {
  return ['netns', 'exec', ns, cmd, ...(args || [])];
}

function spawnIn(ns, cmd, args = [], opts = {}) {
  return spawn('ip', nsArgs(ns, cmd, args), { ...opts, env: { ...process.env, ...opts.env } });
}

// ---------------------------------------------------------------------------- teardown on exit

function scriptEnv(tb) {
  return {
    TESTBED_OWNER_PID: String(process.pid),
    TESTBED_CLIENT_IFNAMES: tb.clientIfnames.join(' '),
  };
}

/** Tear down every testbed still up, synchronously (usable in 'exit' and signal handlers). */
function downAllSync() {
  for (const tb of [...live.values()]) {
    spawnSync(SCRIPT, ['down', tb.prefix], {
      stdio: ['ignore', 'ignore', 'inherit'],
      env: { ...process.env, ...scriptEnv(tb), TESTBED_QUIET: '1' },
      timeout: DOWN_TIMEOUT_MS,
    });
    live.delete(tb.prefix);
  }
}

function onSignal(sig) {
  downAllSync();
  // Restore the default action: if nobody else listens, die of the signal as we would have.
  process.removeListener(sig, signalHandlers[sig]);
  if (process.listenerCount(sig) === 0) process.kill(process.pid, sig);
}
const signalHandlers = {
  SIGINT: () => onSignal('SIGINT'),
  SIGTERM: () => onSignal('SIGTERM'),
  SIGHUP: () => onSignal('SIGHUP'),
};

function installHooks() {
  if (hooksInstalled) return;
  hooksInstalled = true;
  process.on('exit', downAllSync);
  for (const [sig, fn] of Object.entries(signalHandlers)) process.on(sig, fn);
}

// ---------------------------------------------------------------------------- up

/**
 * Bring a testbed up.
 * @param {object} [o]
 * @param {number} [o.nclients=2]        client key pairs (10.8.0.2, 10.8.0.3, ...)
 * @param {string} [o.prefix]            default 'bw' + 6 random hex chars
 * @param {string[]} [o.clientIfnames]   interface names the test will create in the cli ns
 *                                       (e.g. ['wgsent0']): their stale wireguard-go sockets
 *                                       in /var/run/wireguard are removed by down()
 * @param {boolean} [o.reapStale=true]   first call only: remove testbeds of dead processes
 */
async function up({ nclients = 2, prefix, clientIfnames = [], reapStale = true } = {}) {
  installHooks();
  if (reapStale && !staleReaped) {
    staleReaped = true;
    await run(SCRIPT, ['down-all-stale'], { timeoutMs: DOWN_TIMEOUT_MS, env: { TESTBED_QUIET: '1' } });
  }
  prefix = prefix || `bw${crypto.randomBytes(3).toString('hex')}`;
  const entry = { prefix, clientIfnames: [...clientIfnames] };
  live.set(prefix, entry); // registered first: a crash during up still tears it down

  const r = await run(SCRIPT, ['up', prefix, String(nclients)], {
    env: scriptEnv(entry),
    timeoutMs: UP_TIMEOUT_MS,
  });
  let info;
  try {
    if (r.code !== 0) throw new Error(`exit ${r.code}${r.signal ? ` (${r.signal})` : ''}`);
    const line = r.stdout.trim().split('\n').pop();
    info = JSON.parse(line);
  } catch (err) {
    await run(SCRIPT, ['down', prefix], { env: scriptEnv(entry), timeoutMs: DOWN_TIMEOUT_MS });
    live.delete(prefix);
    const e = new Error(`testbed up ${prefix} failed: ${err.message}\n${r.stderr}`);
    e.stderr = r.stderr;
    throw e;
  }

  let downPromise = null;
  const tb = {
    ...info,
    stateDir: `/run/blue-wg-testbed/${prefix}`,

    /** Run a command inside the cli ns: Promise<{code, signal, stdout, stderr, timedOut}>. */
    execCli: (cmd, args, opts) => run('ip', nsArgs(info.cliNs, cmd, args), opts),
    /** Spawn a command inside the cli ns; returns the ChildProcess (its pid is `ip`, which
     *  execs the command in place, so killing it kills the command). */
    spawnCli: (cmd, args, opts) => spawnIn(info.cliNs, cmd, args, opts),
    execNode: (cmd, args, opts) => run('ip', nsArgs(info.nodeNs, cmd, args), opts),
    spawnNode: (cmd, args, opts) => spawnIn(info.nodeNs, cmd, args, opts),

    /**
     * A TunnelConfig (index.d.ts) for client i, routing `allowedIps` (default: the tunnel
     * subnet and the "internet" host) through the node.
     */
    tunnelConfig(i = 0, { allowedIps = ['10.8.0.0/24', `${info.httpTunnelHost}/32`], ...rest } = {}) {
      const c = info.clients[i];
      if (!c) throw new Error(`testbed has no client ${i}`);
      return {
        privateKey: c.privateKey,
        addresses: [c.address],
        peer: { publicKey: info.serverPublicKey, endpoint: info.endpoint, allowedIps },
        mtu: 1280,
        ...rest,
      };
    },

    /** Tear down (idempotent; concurrent calls share one run). Rejects only if testbed.sh
     *  down itself failed, which it is designed never to do. */
    down() {
      if (!downPromise) {
        downPromise = run(SCRIPT, ['down', prefix], {
          env: scriptEnv(entry),
          timeoutMs: DOWN_TIMEOUT_MS,
        }).then((res) => {
          live.delete(prefix);
          if (res.code !== 0) {
            throw new Error(`testbed down ${prefix} failed (exit ${res.code}):\n${res.stderr}`);
          }
        });
      }
      return downPromise;
    },
  };
  return tb;
}

module.exports = { up, downAllSync, SCRIPT };

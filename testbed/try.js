#!/usr/bin/env node
'use strict'
// npm run try -- my-agent.js [args...]: run your own script against a real node, safely.
//
// A throwaway testbed comes up (testbed.sh: two network namespaces, a WireGuard node with
// HTTP and DNS), your script runs with this Node inside the testbed's client namespace (so
// whatever it brings up, routes or rewrites stays there), the testbed goes away when it
// exits (or on Ctrl-C). Your script finds:
//   process.env.BW_TUNNEL_CONFIG  JSON of a TunnelConfig for the node (full tunnel), for
//                                 `wg.connect(JSON.parse(process.env.BW_TUNNEL_CONFIG))`
//   process.env.BW_TESTBED        JSON: httpUrl (a page served through the tunnel),
//                                 dnsServer, dnsName, dnsAnswer, endpoint
//   require('blue-wireguard') and import('blue-wireguard'): this checkout, from anywhere
// Needs root (namespaces) and scripts/setup.sh. Exit status: your script's.
const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')
const { pathToFileURL } = require('node:url')
const testbed = require('./index.js')

async function main(argv) {
  if (!argv.length) {
    console.error('usage: npm run try -- <script.js|.mjs> [args...]   (see README, "Try it safely")')
    return 2
  }
  const script = path.resolve(argv[0])
  console.error('try: bringing a testbed up (~1 s)')
  // wgsent0, the default name: `down` also removes a stale wireguard-go socket of it (wg-quick backend)
  const tb = await testbed.up({ nclients: 1, clientIfnames: ['wgsent0'] })
  // require('blue-wireguard') from anywhere: a node_modules that holds only this checkout
  const modules = fs.mkdtempSync(path.join(os.tmpdir(), 'bw-try-'))
  fs.mkdirSync(path.join(modules, 'node_modules'))
  fs.symlinkSync(path.join(__dirname, '..'), path.join(modules, 'node_modules', 'blue-wireguard'))
  try {
    const config = tb.tunnelConfig(0, { allowedIps: ['0.0.0.0/0', '::/0'], dns: [tb.dnsServer] })
    const env = {
      BW_TUNNEL_CONFIG: JSON.stringify(config),
      BW_TESTBED: JSON.stringify({
        httpUrl: `http://${tb.httpTunnelHost}/`,
        dnsServer: tb.dnsServer,
        dnsName: tb.dnsName,
        dnsAnswer: tb.dnsAnswer,
        endpoint: tb.endpoint,
      }),
      NODE_PATH: path.join(modules, 'node_modules'),
    }
    console.error(`try: running ${path.basename(script)} in namespace ${tb.cliNs} (endpoint ${tb.endpoint})`)
    const hook = pathToFileURL(path.join(__dirname, 'try', 'register.mjs')).href
    const child = tb.spawnCli(process.execPath, ['--import', hook, script, ...argv.slice(1)], {
      env,
      stdio: ['ignore', 'inherit', 'inherit'],
    })
    const code = await new Promise((resolve) => child.on('exit', (c, sig) => resolve(c ?? (sig ? 128 : 1))))
    console.error(`try: ${path.basename(script)} exited ${code}; taking the testbed down`)
    return code
  } finally {
    await tb.down()
    fs.rmSync(modules, { recursive: true, force: true })
  }
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (e) => {
    console.error(`try: ${e.stack || e.message}`)
    process.exit(1)
  },
)

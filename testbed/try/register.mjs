// Loaded by testbed/try.js with `node --import`: `import 'blue-wireguard'` resolves to this
// checkout from a script anywhere (NODE_PATH does the same for require(), not for import).
import { register } from 'node:module'

register('./resolve.mjs', import.meta.url)

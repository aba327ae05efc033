'use strict'
// `npm run lint`: ESLint's recommended rules over every JS file of the repository (CommonJS
// and ESM), with Node's globals. binding.js is napi's generated loader (it disables ESLint
// itself); the build outputs are not ours to lint.
const js = require('@eslint/js')
const globals = require('globals')

module.exports = [
  { ignores: ['node_modules/', 'target/', 'npm/', 'binding.js'] },
  js.configs.recommended,
  {
    files: ['**/*.js', '**/*.cjs'],
    languageOptions: { sourceType: 'commonjs', ecmaVersion: 2024, globals: { ...globals.node } },
  },
  {
    files: ['**/*.mjs'],
    languageOptions: { sourceType: 'module', ecmaVersion: 2024, globals: { ...globals.node } },
  },
  {
    rules: {
      // `catch {}` and `_`-prefixed names are deliberate
      'no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_', caughtErrors: 'none' }],
      'no-empty': ['error', { allowEmptyCatch: true }],
    },
  },
]

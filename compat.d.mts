// Types of blue-wireguard/compat for ESM importers: the same declarations as compat.d.ts.
export * from './compat.js'

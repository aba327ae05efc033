// Resolve hook for testbed/try.js: 'blue-wireguard' and 'blue-wireguard/...' resolve as
// from inside this checkout (the package's self-reference through its "exports").
const SELF = new URL('../../package.json', import.meta.url).href

export async function resolve(specifier, context, next) {
  if (specifier === 'blue-wireguard' || specifier.startsWith('blue-wireguard/')) {
    return next(specifier, { ...context, parentURL: SELF })
  }
  return next(specifier, context)
}

#!/usr/bin/env node
// The Hocuspocus reference server (@hocuspocus/server, in memory: no extensions, no persistence) for
// the benchmarks' side-by-side runs. Every path upgrades; documents are named in the messages.
//
// Usage: node hocuspocus_server.mjs [--host H] [--port P] [--exit-on-stdin-close]
// Prints exactly one stdout line, `listening <port>`, once bound; logs go to stderr.

import { Server } from '@hocuspocus/server'

console.log = (...args) => console.error(...args)

const argv = process.argv.slice(2)
const opt = (name, fallback) => {
  const i = argv.indexOf(name)
  return i >= 0 ? argv[i + 1] : fallback
}
const host = opt('--host', '127.0.0.1')
const port = Number.parseInt(opt('--port', '0'), 10)

const server = new Server({ port, address: host, quiet: true, stopOnSignals: true })
await server.listen()
const bound = server.httpServer.address().port
if (argv.includes('--exit-on-stdin-close')) {
  const stop = async () => { await server.destroy(); process.exit(0) }
  process.stdin.on('end', stop)
  process.stdin.on('close', stop)
  process.stdin.resume()
}
console.error(`hocuspocus reference server on ${host}:${bound}`)
process.stdout.write(`listening ${bound}\n`)

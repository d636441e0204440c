#!/usr/bin/env node
// The y-websocket reference server (@y/websocket-server's setupWSConnection), in memory only, for
// comparison runs and for checking the client harness against a known-good server.
//
// Usage: node ref_server.mjs [--host H] [--port P] [--exit-on-stdin-close]   (or positional: [port] [host])
// Env: HOST (default 127.0.0.1), PORT (default 0 = pick a free port).
// Prints exactly one stdout line, `listening <port>`, once the socket is bound; logs go to stderr.
// Like the package's own bin, the room name is the URL path (query string ignored); every path upgrades.

import http from 'node:http'
import { createRequire } from 'node:module'
import { fileURLToPath } from 'node:url'

// No persistence: this must be decided before utils.js is evaluated.
delete process.env.YPERSISTENCE

const { setupWSConnection } = await import('@y/websocket-server/utils')
// Use the same `ws` the package's bin would (its own optional ws@6 if present), not our top-level copy.
const requireFromServer = createRequire(fileURLToPath(import.meta.resolve('@y/websocket-server/utils')))
const ws = requireFromServer('ws')
const wsVersion = requireFromServer('ws/package.json').version

const parseArgs = (argv) => {
  const out = { host: process.env.HOST || '127.0.0.1', port: process.env.PORT || '0', exitOnStdinClose: false }
  const positional = []
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]
    if (a === '--host') out.host = argv[++i]
    else if (a === '--port') out.port = argv[++i]
    else if (a === '--exit-on-stdin-close') out.exitOnStdinClose = true
    else positional.push(a)
  }
  if (positional[0] !== undefined) out.port = positional[0]
  if (positional[1] !== undefined) out.host = positional[1]
  const port = Number.parseInt(out.port, 10)
  if (!Number.isInteger(port) || port < 0 || port > 65535) throw new Error(`invalid port ${out.port}`)
  return { ...out, port }
}

const args = parseArgs(process.argv.slice(2))
const wss = new ws.Server({ noServer: true })
const server = http.createServer((_request, response) => {
  response.writeHead(200, { 'Content-Type': 'text/plain' })
  response.end('okay')
})

wss.on('connection', setupWSConnection)
server.on('upgrade', (request, socket, head) => {
  wss.handleUpgrade(request, socket, head, (conn) => {
    wss.emit('connection', conn, request)
  })
})

const shutdown = () => {
  for (const client of wss.clients) client.terminate()
  server.close()
  process.exit(0)
}
process.on('SIGTERM', shutdown)
process.on('SIGINT', shutdown)
if (args.exitOnStdinClose) {
  process.stdin.on('end', shutdown)
  process.stdin.on('close', shutdown)
  process.stdin.resume()
}

server.listen(args.port, args.host, () => {
  const { port } = /** @type {import('node:net').AddressInfo} */ (server.address())
  console.error(`y-websocket reference server (ws ${wsVersion}) on ${args.host}:${port}`)
  process.stdout.write(`listening ${port}\n`)
})

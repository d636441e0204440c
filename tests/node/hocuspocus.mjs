#!/usr/bin/env node
// Drives the real, unmodified @hocuspocus/provider (4.x, and 3.x through the `hocuspocus-provider-3`
// alias) for the Python tests: shared sockets (HocuspocusProviderWebsocket), each carrying any number of
// documents (HocuspocusProvider attached to it). Same JSON-lines protocol as client.mjs (see jsonlines.mjs);
// providers are named by `client`, sockets by `socket`.

import * as Y from 'yjs'
import WebSocket from 'ws'
import * as v4 from '@hocuspocus/provider'
import * as v3 from 'hocuspocus-provider-3'
import { CommandError, serveLines, waitUntil } from './jsonlines.mjs'

console.log = (...args) => console.error(...args)
console.info = (...args) => console.error(...args)
console.debug = (...args) => console.error(...args)

const DEFAULT_TIMEOUT_MS = 10000
const LIBS = { 3: v3, 4: v4 }

/** @type {Map<string, {name: string, ws: any, closes: {code: number, reason: string}[], waiters: Set<() => void>}>} */
const sockets = new Map()
/** @type {Map<string, any>} */
const clients = new Map()

const write = (obj) => process.stdout.write(JSON.stringify(obj) + '\n')
const timeoutOf = (args) => (typeof args.timeoutMs === 'number' ? args.timeoutMs : DEFAULT_TIMEOUT_MS)
const wake = (owner) => { for (const w of Array.from(owner.waiters)) w() }

const getSocket = (args) => {
  const s = sockets.get(args.socket)
  if (s === undefined) throw new CommandError(`unknown socket ${JSON.stringify(args.socket)}`)
  return s
}
const getClient = (args) => {
  const c = clients.get(args.client)
  if (c === undefined) throw new CommandError(`unknown client ${JSON.stringify(args.client)}`)
  return c
}

const statusOf = (c) => ({
  synced: c.provider.isSynced ?? c.provider.synced,
  authenticated: c.provider.isAuthenticated,
  scope: c.scope,
  denied: c.denied,
  unsyncedChanges: c.provider.unsyncedChanges,
  closes: c.closes,
  stateless: c.stateless.length,
  resets: c.unsyncedEvents.filter((n) => n === 1).length // startSync / forceSync set the count to 1
})

const awarenessStates = (c) => {
  const out = {}
  for (const [id, state] of c.provider.awareness.getStates()) out[String(id)] = state
  return out
}

const waitFor = (owner, check, args, describe) => waitUntil(owner, check, timeoutOf(args), describe)

const commands = {
  ping: () => ({ pid: process.pid, node: process.versions.node, versions: { 3: '3.4.4', 4: '4.8.0' } }),

  socket: (args) => {
    const lib = LIBS[args.version ?? 4]
    if (lib === undefined) throw new CommandError(`no provider version ${args.version}`)
    const s = { name: args.socket, closes: [], waiters: new Set(), opens: 0 }
    s.ws = new lib.HocuspocusProviderWebsocket({
      url: args.url,
      WebSocketPolyfill: WebSocket,
      // Reconnect quickly in tests (a server restart, a kill -9).
      delay: 100, minDelay: 100, maxDelay: 500, factor: 1.5
    })
    s.ws.on('open', () => { s.opens++; wake(s) })
    s.ws.on('close', ({ event }) => {
      s.closes.push({ code: event?.code ?? 0, reason: String(event?.reason ?? '') })
      write({ event: 'socket-close', socket: s.name, ...s.closes.at(-1) })
      wake(s)
    })
    s.version = args.version ?? 4
    sockets.set(s.name, s)
    return {}
  },

  socketStatus: (args) => {
    const s = getSocket(args)
    return { status: s.ws.status, closes: s.closes, opens: s.opens }
  },
  waitSocketOpens: async (args) => {
    const s = getSocket(args)
    await waitFor(s, () => (s.opens >= args.opens ? true : undefined), args, () => ({ opens: s.opens, closes: s.closes }))
    return { opens: s.opens }
  },

  // Open a document on a socket. wait: "synced" (default), "denied", or false.
  open: async (args) => {
    const s = getSocket(args)
    const lib = LIBS[s.version]
    if (clients.has(args.client)) throw new CommandError(`client ${args.client} exists`)
    const doc = new Y.Doc()
    const c = { name: args.client, doc, scope: null, denied: null, closes: [], stateless: [], unsyncedEvents: [], waiters: new Set() }
    const provider = new lib.HocuspocusProvider({
      websocketProvider: s.ws,
      name: args.name,
      document: doc,
      token: args.token ?? null,
      sessionAwareness: !!args.sessionAwareness,
      forceSyncInterval: typeof args.forceSyncInterval === 'number' ? args.forceSyncInterval : false
    })
    c.provider = provider
    clients.set(c.name, c)
    if (args.awareness !== undefined) provider.awareness.setLocalState(args.awareness)
    provider.on('authenticated', ({ scope }) => { c.scope = scope; wake(c) })
    provider.on('authenticationFailed', ({ reason }) => { c.denied = reason; write({ event: 'denied', client: c.name, reason }); wake(c) })
    provider.on('synced', () => wake(c))
    provider.on('unsyncedChanges', ({ number }) => { c.unsyncedEvents.push(number); wake(c) })
    provider.on('stateless', ({ payload }) => { c.stateless.push(payload); wake(c) })
    provider.on('close', ({ event }) => { c.closes.push({ code: event?.code ?? 0, reason: String(event?.reason ?? '') }); wake(c) })
    provider.awareness.on('change', () => wake(c))
    doc.on('update', () => wake(c))
    provider.attach()
    const want = args.wait ?? 'synced'
    if (want === 'synced') {
      await waitFor(c, () => (statusOf(c).synced ? true : (c.denied !== null ? false : undefined)), args, () => ({ status: statusOf(c) }))
      if (c.denied !== null) throw new CommandError(`permission denied: ${c.denied}`, { status: statusOf(c) })
    } else if (want === 'denied') {
      await waitFor(c, () => (c.denied !== null ? true : undefined), args, () => ({ status: statusOf(c) }))
    }
    return { clientId: doc.clientID, status: statusOf(c) }
  },

  status: (args) => statusOf(getClient(args)),
  waitStatus: async (args) => {
    const c = getClient(args)
    const want = args.status ?? {}
    return await waitFor(c, () => {
      const st = statusOf(c)
      return Object.entries(want).every(([k, v]) => JSON.stringify(st[k]) === JSON.stringify(v)) ? st : undefined
    }, args, () => ({ status: statusOf(c) }))
  },
  waitClosed: async (args) => {
    const c = getClient(args)
    await waitFor(c, () => (c.closes.length > 0 ? true : undefined), args, () => ({ status: statusOf(c) }))
    return statusOf(c)
  },

  insert: (args) => { getClient(args).doc.getText(args.key ?? 'content').insert(args.index, args.text); return {} },
  text: (args) => ({ text: getClient(args).doc.getText(args.key ?? 'content').toString() }),
  waitText: async (args) => {
    const c = getClient(args)
    const t = c.doc.getText(args.key ?? 'content')
    await waitFor(c, () => (t.toString() === args.text ? true : undefined), args, () => ({ text: t.toString() }))
    return { text: t.toString() }
  },

  setAwareness: (args) => { getClient(args).provider.awareness.setLocalState(args.state ?? null); return {} },
  awareness: (args) => ({ states: awarenessStates(getClient(args)) }),
  waitAwareness: async (args) => {
    const c = getClient(args)
    const match = args.match ?? {}
    const found = () => Array.from(c.provider.awareness.getStates().values()).some((st) =>
      st && Object.entries(match).every(([k, v]) => JSON.stringify(st[k]) === JSON.stringify(v)))
    await waitFor(c, () => (found() !== !!args.absent ? true : undefined), args, () => ({ states: awarenessStates(c) }))
    return { states: awarenessStates(c) }
  },

  sendStateless: (args) => { getClient(args).provider.sendStateless(args.payload); return {} },
  stateless: (args) => ({ received: getClient(args).stateless }),
  waitStateless: async (args) => {
    const c = getClient(args)
    await waitFor(c, () => (c.stateless.includes(args.payload) ? true : undefined), args, () => ({ received: c.stateless }))
    return { received: c.stateless }
  },

  destroy: (args) => {
    const c = getClient(args)
    clients.delete(c.name)
    c.provider.destroy()
    return {}
  },
  closeSocket: (args) => {
    const s = getSocket(args)
    s.ws.destroy()
    sockets.delete(s.name)
    return {}
  },

  exit: () => { setImmediate(() => shutdown(0)); return {} }
}

const shutdown = serveLines(commands, {
  write,
  closeAll: () => {
    for (const c of clients.values()) c.provider.destroy()
    for (const s of sockets.values()) s.ws.destroy()
  }
})

#!/usr/bin/env node
// Drives the real, unmodified y-websocket client (WebsocketProvider) for the Python tests.
//
// Protocol: one JSON object per line on stdin, each with an `id` and a `cmd`; exactly one reply line
// per command on stdout: {"id":..., "ok":true, ...} or {"id":..., "ok":false, "error":"..."}.
// Unsolicited {"event":...} lines report provider events (status, sync, connection-close, closed, ...).
// stdout carries nothing else: all logging goes to stderr (console.log/info are redirected too).
// The process exits on the `exit` command or when stdin closes.

import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import * as awarenessProtocol from 'y-protocols/awareness'
import WebSocket from 'ws'
import { CommandError, serveLines, waitUntil } from './jsonlines.mjs'

// Libraries occasionally log with console.log; stdout is reserved for the protocol.
console.log = (...args) => console.error(...args)
console.info = (...args) => console.error(...args)
console.debug = (...args) => console.error(...args)

const DEFAULT_TIMEOUT_MS = 10000

/**
 * @typedef {object} Client
 * @property {string} name
 * @property {Y.Doc} doc
 * @property {WebsocketProvider} provider
 * @property {{code: number, reason: string, wasClean: boolean} | null} lastClose last close reported by the socket
 * @property {number} closeCount number of non-local connection closes seen
 * @property {{code: number, reason: string} | null} terminalClose set when the provider gave up reconnecting
 * @property {Set<() => void>} waiters wake-up callbacks run on any doc/awareness/provider change
 * @property {boolean} wakePending a deferred wake is scheduled
 */

/** @type {Map<string, Client>} */
const clients = new Map()

const write = (obj) => {
  process.stdout.write(JSON.stringify(obj, jsonReplacer) + '\n')
}

/** Make Yjs values JSON-safe: binary as base64, bigint as string. */
function jsonReplacer (_key, value) {
  if (value instanceof Uint8Array) return { $base64: Buffer.from(value).toString('base64') }
  if (typeof value === 'bigint') return value.toString()
  return value
}

const emitEvent = (event, client, data = {}) => write({ event, client, ...data })

/** @param {any} args @return {Client} */
const getClient = (args) => {
  const name = args.client
  if (typeof name !== 'string') throw new CommandError('missing "client" (string)')
  const c = clients.get(name)
  if (c === undefined) throw new CommandError(`unknown client ${JSON.stringify(name)}`)
  return c
}

// Deferred: provider events fire mid-update (e.g. `connection-close` before wsconnected is cleared), so
// waiters must look at the state only after the provider finished its bookkeeping.
const wake = (c) => {
  if (c.wakePending) return
  c.wakePending = true
  setImmediate(() => {
    c.wakePending = false
    for (const w of Array.from(c.waiters)) w()
  })
}

const timeoutOf = (args) => (typeof args.timeoutMs === 'number' ? args.timeoutMs : DEFAULT_TIMEOUT_MS)

const statusOf = (c) => ({
  wsconnected: c.provider.wsconnected,
  wsconnecting: c.provider.wsconnecting,
  synced: c.provider.synced,
  shouldConnect: c.provider.shouldConnect,
  lastClose: c.lastClose,
  closeCount: c.closeCount,
  terminalClose: c.terminalClose,
  unsuccessfulReconnects: c.provider.wsUnsuccessfulReconnects
})

const awarenessStates = (c) => {
  /** @type {Record<string, any>} */
  const out = {}
  for (const [clientID, state] of c.provider.awareness.getStates()) out[String(clientID)] = state
  return out
}

/**
 * Wait until the provider is synced. With failOnClose the wait ends at the first server close instead of
 * riding out the provider's reconnect loop; a terminal close (4400-4499 in y-websocket >= 3.1) always ends it.
 */
const waitSynced = (c, args, closesBefore) => waitUntil(
  c,
  () => (c.provider.synced ? true : undefined),
  timeoutOf(args),
  () => ({ status: statusOf(c) }),
  () => {
    if (c.terminalClose !== null) {
      return `connection closed permanently (code ${c.terminalClose.code}: ${c.terminalClose.reason})`
    }
    if (args.failOnClose && c.closeCount > closesBefore && c.lastClose !== null) {
      return `connection closed before sync (code ${c.lastClose.code}: ${c.lastClose.reason})`
    }
    return null
  }
)

/** JSON with object keys sorted: Y.Map.toJSON() key order depends on the order updates arrived. */
const canonicalJson = (value) => JSON.stringify(value, (key, v) => {
  v = jsonReplacer(key, v)
  if (v !== null && typeof v === 'object' && !Array.isArray(v)) {
    return Object.fromEntries(Object.keys(v).sort().map((k) => [k, v[k]]))
  }
  return v
})
const jsonEqual = (a, b) => canonicalJson(a) === canonicalJson(b)

/** Does `state` contain every key of `match` with a JSON-equal value? */
const stateMatches = (state, match) => state !== null && typeof state === 'object' &&
  Object.entries(match).every(([k, v]) => jsonEqual(state[k], v))

const destroyClient = (c) => {
  clients.delete(c.name)
  c.waiters.clear()
  c.provider.destroy()
  c.doc.destroy()
}

/** @type {Record<string, (args: any) => Promise<object | void> | object | void>} */
const commands = {
  ping: () => ({ pid: process.pid, node: process.versions.node }),

  connect: async (args) => {
    const name = args.client
    if (typeof name !== 'string') throw new CommandError('missing "client" (string)')
    if (clients.has(name)) throw new CommandError(`client ${JSON.stringify(name)} already exists`)
    if (typeof args.url !== 'string' || typeof args.room !== 'string') {
      throw new CommandError('connect needs "url" and "room" strings')
    }
    const doc = new Y.Doc()
    const awareness = new awarenessProtocol.Awareness(doc)
    // Set before the socket opens so the first awareness frame already carries the state.
    if (args.awareness !== undefined) awareness.setLocalState(args.awareness)
    const opts = {
      params: args.params || {},
      WebSocketPolyfill: WebSocket,
      awareness,
      connect: false,
      disableBc: true
    }
    if (typeof args.maxBackoffTime === 'number') opts.maxBackoffTime = args.maxBackoffTime
    if (typeof args.resyncInterval === 'number') opts.resyncInterval = args.resyncInterval
    if (Array.isArray(args.protocols)) opts.protocols = args.protocols
    const provider = new WebsocketProvider(args.url, args.room, doc, opts)
    /** @type {Client} */
    const c = {
      name, doc, provider, lastClose: null, closeCount: 0, terminalClose: null, waiters: new Set(), wakePending: false
    }
    clients.set(name, c)
    provider.on('status', ({ status }) => { emitEvent('status', name, { status }); wake(c) })
    provider.on('sync', (synced) => { emitEvent('sync', name, { synced }); wake(c) })
    provider.on('connection-close', (event) => {
      if (event == null) {
        emitEvent('connection-close', name, { local: true })
      } else {
        c.lastClose = { code: event.code, reason: String(event.reason ?? ''), wasClean: !!event.wasClean }
        c.closeCount++
        emitEvent('connection-close', name, { local: false, ...c.lastClose })
      }
      wake(c)
    })
    // y-websocket >= 3.1: the provider stopped reconnecting (close code 4400-4499 by default).
    provider.on('closed', (event) => {
      c.terminalClose = { code: event.code, reason: String(event.reason ?? '') }
      emitEvent('closed', name, c.terminalClose)
      wake(c)
    })
    provider.on('connection-error', (event) => {
      emitEvent('connection-error', name, { message: String(event?.message ?? event?.error ?? 'error') })
      wake(c)
    })
    doc.on('update', () => wake(c))
    awareness.on('change', () => wake(c))
    provider.connect()
    if (args.wait === false) return { clientId: doc.clientID }
    try {
      await waitSynced(c, args, 0)
    } catch (err) {
      // The error reply carries `status` (incl. lastClose); destroyOnFailure=false keeps the client around.
      if (args.destroyOnFailure !== false) destroyClient(c)
      throw err
    }
    return { clientId: doc.clientID }
  },

  waitSynced: async (args) => {
    const c = getClient(args)
    await waitSynced(c, args, c.closeCount)
    return {}
  },

  insert: (args) => {
    const c = getClient(args)
    c.doc.getText(args.key ?? 'content').insert(args.index, args.text)
    return {}
  },
  delete: (args) => {
    const c = getClient(args)
    c.doc.getText(args.key ?? 'content').delete(args.index, args.length)
    return {}
  },
  text: (args) => ({ text: getClient(args).doc.getText(args.key ?? 'content').toString() }),

  mapSet: (args) => {
    getClient(args).doc.getMap(args.map).set(args.key, args.value)
    return {}
  },
  mapDelete: (args) => {
    getClient(args).doc.getMap(args.map).delete(args.key)
    return {}
  },
  map: (args) => ({ value: getClient(args).doc.getMap(args.map).toJSON() }),
  arrayPush: (args) => {
    getClient(args).doc.getArray(args.array).push(args.values)
    return {}
  },
  array: (args) => ({ value: getClient(args).doc.getArray(args.array).toJSON() }),

  setAwareness: (args) => {
    getClient(args).provider.awareness.setLocalState(args.state ?? null)
    return {}
  },
  setAwarenessField: (args) => {
    getClient(args).provider.awareness.setLocalStateField(args.field, args.value)
    return {}
  },
  awareness: (args) => {
    const c = getClient(args)
    return { states: awarenessStates(c), clientId: c.doc.clientID }
  },
  clientId: (args) => ({ clientId: getClient(args).doc.clientID }),

  disconnect: (args) => {
    getClient(args).provider.disconnect()
    return {}
  },
  reconnect: async (args) => {
    const c = getClient(args)
    const closesBefore = c.closeCount
    c.terminalClose = null
    c.provider.connect()
    if (args.wait !== false) await waitSynced(c, args, closesBefore)
    return {}
  },
  // Abrupt TCP teardown (no awareness goodbye, no close frame), e.g. to test the server's cleanup.
  // reconnect=false (default) stops the provider from coming back.
  drop: (args) => {
    const c = getClient(args)
    const ws = c.provider.ws
    if (!args.reconnect) c.provider.shouldConnect = false
    if (ws !== null) ws.terminate()
    return { hadSocket: ws !== null }
  },
  destroy: (args) => {
    destroyClient(getClient(args))
    return {}
  },
  status: (args) => statusOf(getClient(args)),

  waitText: async (args) => {
    const c = getClient(args)
    const ytext = c.doc.getText(args.key ?? 'content')
    await waitUntil(c, () => (ytext.toString() === args.text ? true : undefined), timeoutOf(args),
      () => ({ text: ytext.toString() }))
    return { text: ytext.toString() }
  },
  waitMap: async (args) => {
    const c = getClient(args)
    const ymap = c.doc.getMap(args.map)
    await waitUntil(c, () => (jsonEqual(ymap.toJSON(), args.value) ? true : undefined), timeoutOf(args),
      () => ({ value: ymap.toJSON() }))
    return { value: ymap.toJSON() }
  },
  waitAwarenessCount: async (args) => {
    const c = getClient(args)
    const aw = c.provider.awareness
    await waitUntil(c, () => (aw.getStates().size === args.count ? true : undefined), timeoutOf(args),
      () => ({ states: awarenessStates(c) }))
    return { states: awarenessStates(c) }
  },
  // Wait until some awareness state (optionally only the one of `clientId`) contains all fields of
  // `match`; with absent=true wait until none does.
  waitAwareness: async (args) => {
    const c = getClient(args)
    const match = args.match ?? {}
    const matching = () => Array.from(c.provider.awareness.getStates()).filter(([id, st]) =>
      (args.clientId === undefined || id === args.clientId) && stateMatches(st, match))
    await waitUntil(c, () => ((matching().length > 0) !== !!args.absent ? true : undefined),
      timeoutOf(args), () => ({ states: awarenessStates(c) }))
    return { states: awarenessStates(c) }
  },
  waitStatus: async (args) => {
    const c = getClient(args)
    const want = args.status ?? {}
    const st = await waitUntil(c, () => {
      const s = statusOf(c)
      return Object.entries(want).every(([k, v]) => jsonEqual(s[k], v)) ? s : undefined
    }, timeoutOf(args), () => ({ status: statusOf(c) }))
    return st
  },
  // Wait for a server/network close beyond the `after`-th one (default 0: any close so far counts).
  waitClose: async (args) => {
    const c = getClient(args)
    const after = typeof args.after === 'number' ? args.after : 0
    await waitUntil(c, () => (c.closeCount > after ? true : undefined), timeoutOf(args),
      () => ({ status: statusOf(c) }))
    return statusOf(c)
  },

  stateVector: (args) => ({ stateVector: Buffer.from(Y.encodeStateVector(getClient(args).doc)).toString('base64') }),
  encodeState: (args) => {
    const c = getClient(args)
    const sv = typeof args.stateVector === 'string' ? new Uint8Array(Buffer.from(args.stateVector, 'base64')) : undefined
    return { update: Buffer.from(Y.encodeStateAsUpdate(c.doc, sv)).toString('base64') }
  },
  applyUpdate: (args) => {
    const c = getClient(args)
    Y.applyUpdate(c.doc, new Uint8Array(Buffer.from(args.update, 'base64')), 'harness')
    return {}
  },

  exit: () => {
    // Deferred so replies to commands read before `exit` are written first.
    setImmediate(() => shutdown(0))
    return {}
  }
}

const shutdown = serveLines(commands, {
  write,
  closeAll: () => { for (const c of Array.from(clients.values())) destroyClient(c) }
})

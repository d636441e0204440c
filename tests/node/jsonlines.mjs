// The JSON-lines command loop shared by the harness scripts (client.mjs, richtext.mjs).
//
// One request object per stdin line, {id, cmd, ...}; exactly one reply line per request on stdout:
// {...result, id, ok: true} or {...details, id, ok: false, error}. The process exits when stdin closes,
// on SIGTERM, or when a command calls the returned shutdown().

import readline from 'node:readline'

/** A command's failure with details for the reply (e.g. the last state seen before a timeout). */
export class CommandError extends Error {
  constructor (message, extra = {}) {
    super(message)
    this.extra = extra
  }
}

/**
 * Serve `commands` ({name: async (msg) => result}) on stdin/stdout.
 * @param {Record<string, (msg: any) => any>} commands
 * @param {{write: (obj: any) => void, closeAll: () => void}} io closeAll releases what the commands opened
 * @return {(code: number) => void} shutdown: close everything, flush stdout, exit
 */
export function serveLines (commands, { write, closeAll }) {
  let shuttingDown = false
  const shutdown = (code) => {
    if (shuttingDown) return
    shuttingDown = true
    try {
      closeAll()
    } catch (err) {
      console.error('close failed', err)
    }
    // Let the last reply (and pending close frames) flush before exiting.
    setTimeout(() => process.stdout.write('', () => process.exit(code)), 50)
  }
  const handleLine = async (line) => {
    if (line.trim() === '') return
    let msg
    try {
      msg = JSON.parse(line)
    } catch (err) {
      write({ id: null, ok: false, error: `invalid JSON: ${err.message}` })
      return
    }
    const id = msg.id ?? null
    const handler = Object.hasOwn(commands, msg.cmd) ? commands[msg.cmd] : undefined
    if (handler === undefined) {
      write({ id, ok: false, error: `unknown command ${JSON.stringify(msg.cmd)}` })
      return
    }
    try {
      const result = (await handler(msg)) ?? {}
      write({ ...result, id, ok: true })
    } catch (err) {
      const extra = err instanceof CommandError ? err.extra : {}
      if (!(err instanceof CommandError)) console.error(`command ${msg.cmd} failed:`, err)
      write({ ...extra, id, ok: false, error: String(err?.message ?? err) })
    }
  }
  const rl = readline.createInterface({ input: process.stdin, crlfDelay: Infinity })
  rl.on('line', (line) => { handleLine(line) })
  rl.on('close', () => shutdown(0))
  process.on('SIGTERM', () => shutdown(0))
  process.on('uncaughtException', (err) => console.error('uncaught exception:', err))
  process.on('unhandledRejection', (err) => console.error('unhandled rejection:', err))
  return shutdown
}

export const POLL_MS = 20

/**
 * Resolve once check() returns a non-undefined value, re-checking whenever `owner.waiters` are woken
 * and every POLL_MS; reject with a CommandError on timeout or as soon as abort() returns a message.
 * @template T
 * @param {{waiters: Set<() => void>}} owner
 * @param {() => T | undefined} check
 * @param {number} timeoutMs
 * @param {(timedOut: boolean) => object} describe extra fields for the error reply
 * @param {() => string | null} [abort]
 * @param {string} [label] prefixed to the timeout message
 * @return {Promise<T>}
 */
export const waitUntil = (owner, check, timeoutMs, describe, abort = () => null, label = '') => new Promise((resolve, reject) => {
  let done = false
  const finish = (fn) => {
    if (done) return
    done = true
    clearTimeout(timer)
    clearInterval(poll)
    owner.waiters.delete(probe)
    fn()
  }
  const probe = () => {
    if (done) return
    let v
    try {
      v = check()
    } catch (err) {
      finish(() => reject(err))
      return
    }
    if (v !== undefined) {
      finish(() => resolve(v))
      return
    }
    const msg = abort()
    if (msg !== null) finish(() => reject(new CommandError(msg, describe(false))))
  }
  const timer = setTimeout(() => {
    finish(() => reject(new CommandError(`${label ? label + ': ' : ''}timeout after ${timeoutMs}ms`, describe(true))))
  }, timeoutMs)
  const poll = setInterval(probe, POLL_MS)
  owner.waiters.add(probe)
  probe()
})

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

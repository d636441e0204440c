#!/usr/bin/env node
// Rich-text interop harness: the REAL ProseMirror / Tiptap / y-prosemirror libraries writing to and
// reading from a Y.XmlFragment over a real y-websocket WebsocketProvider, for the Python tests.
//
// Protocol (same framing as client.mjs): one JSON object per line on stdin, each with an `id` and a
// `cmd`; exactly one reply line per command on stdout: {"id":..., "ok":true, ...} or
// {"id":..., "ok":false, "error":"...", ...details}. No unsolicited lines. Logging goes to stderr only.
// The process exits on `exit` or when stdin closes.
//
// Schemas ("schema" argument):
//   "prosemirror"  prosemirror-markdown's CommonMark schema; Markdown in/out with its defaultMarkdownParser /
//                  defaultMarkdownSerializer; written to Yjs with y-prosemirror.
//   "tiptap"       getSchema([StarterKit, Image, TaskList, TaskItem.configure({nested: true}), TableKit]) from
//                  @tiptap/core (defaults otherwise: Image is a block node); written to Yjs with @tiptap/y-tiptap
//                  (the y-prosemirror fork Tiptap 3's Collaboration extension uses; `binding: "y-prosemirror"`
//                  selects the original). Markdown in: markdown-it (commonmark + GFM tables, strikethrough, and
//                  a task-list rule) through prosemirror-markdown's MarkdownParser with Tiptap's node names.
//                  Markdown out: prosemirror-markdown's default serializer functions mapped to Tiptap's names,
//                  plus strike (~~), task lists (- [ ] / - [x]), GFM pipe tables and block images; tight lists.
//
// Commands (timeoutMs bounds every wait; default 10000):
//   ping                                   -> {pid, node, versions}
//   convert  {schema, markdown | doc, field?, binding?}
//            Offline: build the node, write it into a fresh local Y.Doc's XmlFragment exactly as `write` does.
//                                          -> {json, markdown, fragment}
//   write    {url, room, schema, markdown | doc, field?="default", binding?, client?, keep?=false,
//             verify?=true, params?, timeoutMs?}
//            Connect, wait for sync, write the node with updateYFragment (the function ySyncPlugin uses),
//            round-trip a sync step 1 (the server has processed everything sent before it), and with verify
//            check from a second fresh connection that the server holds our update. keep=true keeps the
//            connection as session `client` (required then) for read/waitFor/relPos/edit/close.
//                                          -> {json, markdown, fragment, clientId}
//   connect  {client, url, room, params?, timeoutMs?}
//            Open a kept session without writing (e.g. an editor that only watches).  -> {clientId}
//   edit     {client, schema, markdown | doc, field?, binding?, timeoutMs?}
//            Like write, on a kept session (a local editor change through the binding).
//                                          -> {json, markdown, fragment}
//   read     {schema, field?, ids?, client? | url+room}
//            From a kept session, or a temporary connection (synced, then closed). The conversion runs on a
//            scratch copy of the doc, so y-prosemirror's "delete what the schema rejects" never touches the
//            shared document; `dropped: true` (+ `fragmentBefore`) says it had to drop something.
//                                          -> {json, markdown, fragment, dropped}
//   waitFor  {schema, field?, markdown? | json?, ids?, client? | url+room, timeoutMs?}
//            Wait until the JS serialisation (or the ProseMirror JSON) equals the expected value.
//                                          -> like read; on timeout the error carries the last {markdown, json}
//   relPos   {client, field?, path: [child indexes from the fragment to an XmlText/XmlElement], index, assoc?}
//                                          -> {relPos: base64 of Y.encodeRelativePosition}
//   resolve  {client, field?, relPos}      -> {found, path, index} (path null when the type is gone)
//   close    {client}                      -> {}     destroy a kept session
//   exit                                   -> {}     destroy everything and exit
//
// Fragment description ("fragment"): the fragment's children, each
//   XmlElement -> {"nodeName": str, "attrs": {sorted, values as stored (numbers stay numbers)}, "children": [...]}
//   XmlText    -> {"delta": [{"insert": str, "attributes"?: {markName: markAttrs}}]}
// and with ids=true each also gets "id": [client, clock] of its Yjs item.
//
// This file is also imported by make_golden.mjs (the command loop only runs when executed directly).

import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import * as syncProtocol from 'y-protocols/sync'
import * as encoding from 'lib0/encoding'
import WebSocket from 'ws'
import { CommandError, serveLines, waitUntil as waitFor } from './jsonlines.mjs'
import { createRequire } from 'node:module'
import { pathToFileURL } from 'node:url'
import { Node as PMNode } from 'prosemirror-model'
import MarkdownIt from 'markdown-it'
import {
  MarkdownParser, MarkdownSerializer, MarkdownSerializerState,
  defaultMarkdownParser, defaultMarkdownSerializer, schema as pmMarkdownSchema
} from 'prosemirror-markdown'
import * as yProsemirror from 'y-prosemirror'
import * as yTiptap from '@tiptap/y-tiptap'
import { getSchema } from '@tiptap/core'
import StarterKit from '@tiptap/starter-kit'
import Image from '@tiptap/extension-image'
import { TaskList, TaskItem } from '@tiptap/extension-list'
import { TableKit } from '@tiptap/extension-table'

const IS_MAIN = process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href

if (IS_MAIN) {
  // Libraries occasionally log with console.log; stdout is reserved for the protocol.
  console.log = (...args) => console.error(...args)
  console.info = (...args) => console.error(...args)
  console.debug = (...args) => console.error(...args)
}

const DEFAULT_TIMEOUT_MS = 10000
const DEFAULT_FIELD = 'default'

export { CommandError }

// -- versions -------------------------------------------------------------------------------------

const require = createRequire(import.meta.url)
const PACKAGES = [
  'yjs', 'y-websocket', 'y-protocols', 'y-prosemirror', '@tiptap/y-tiptap', 'prosemirror-model',
  'prosemirror-markdown', 'markdown-it', '@tiptap/core', '@tiptap/starter-kit', '@tiptap/extension-image',
  '@tiptap/extension-list', '@tiptap/extension-table'
]
/** Installed versions of the libraries that shape the output. */
export const versions = () => {
  const out = {}
  for (const name of PACKAGES) {
    try {
      out[name] = require(`${name}/package.json`).version
    } catch {
      // Some packages do not export package.json; read it from node_modules directly.
      try {
        out[name] = JSON.parse(require('node:fs').readFileSync(
          new URL(`./node_modules/${name}/package.json`, import.meta.url), 'utf8')).version
      } catch {
        out[name] = null
      }
    }
  }
  return out
}

// -- the Tiptap schema ----------------------------------------------------------------------------

export const tiptapExtensions = [StarterKit, Image, TaskList, TaskItem.configure({ nested: true }), TableKit]
export const tiptapSchema = getSchema(tiptapExtensions)

// -- Markdown -> Tiptap: markdown-it + prosemirror-markdown's MarkdownParser -----------------------

const TASK_MARKER = /^\[([ xX])\](?:[ \t]+|$)/

/**
 * markdown-it core rule (after `block`, before `inline`): a bullet list whose every item starts with a
 * GFM task marker (`[ ]`, `[x]`, `[X]` + whitespace) becomes task_list / task_item tokens (meta.checked) and
 * the markers are cut from the items' first paragraph. Mixed lists stay bullet lists (Tiptap's taskList can
 * only hold taskItems), their markers stay text. Ordered lists never become task lists.
 */
function gfmTaskLists (state) {
  const toks = state.tokens
  for (let i = 0; i < toks.length; i++) {
    if (toks[i].type !== 'bullet_list_open') continue
    const level = toks[i].level
    const items = []
    let close = -1
    for (let j = i + 1; j < toks.length; j++) {
      const t = toks[j]
      if (t.level === level && t.type === 'bullet_list_close') { close = j; break }
      if (t.level === level + 1 && t.type === 'list_item_open') items.push(j)
    }
    if (close < 0 || items.length === 0) continue
    const markers = items.map((j) => {
      const p = toks[j + 1]
      const inline = toks[j + 2]
      if (p?.type !== 'paragraph_open' || inline?.type !== 'inline') return null
      const m = TASK_MARKER.exec(inline.content)
      return m === null ? null : { inline, length: m[0].length, checked: m[1] !== ' ' }
    })
    if (markers.some((m) => m === null)) continue
    toks[i].type = 'task_list_open'
    toks[close].type = 'task_list_close'
    items.forEach((j, k) => {
      toks[j].type = 'task_item_open'
      toks[j].meta = { checked: markers[k].checked }
      markers[k].inline.content = markers[k].inline.content.slice(markers[k].length)
      for (let e = j + 1; e < close; e++) {
        if (toks[e].level === level + 1 && toks[e].type === 'list_item_close') {
          toks[e].type = 'task_item_close'
          break
        }
      }
    })
  }
}

export const tiptapTokenizer = MarkdownIt('commonmark', { html: false }).enable(['table', 'strikethrough'])
tiptapTokenizer.core.ruler.after('block', 'gfm_task_lists', gfmTaskLists)

const cellAlign = (tok) => {
  const m = /text-align:\s*(left|right|center)/.exec(tok.attrGet('style') || '')
  return m ? m[1] : null
}

const inlineText = (tokens) => (tokens || []).map((t) => (t.children ? inlineText(t.children) : t.content)).join('')

export const tiptapMarkdownParser = new MarkdownParser(tiptapSchema, tiptapTokenizer, {
  blockquote: { block: 'blockquote' },
  paragraph: { block: 'paragraph' },
  list_item: { block: 'listItem' },
  bullet_list: { block: 'bulletList' },
  // markdown-it has no start attr for 1; unlike prosemirror-markdown's `+start || 1`, a list can start at 0.
  ordered_list: { block: 'orderedList', getAttrs: (tok) => ({ start: tok.attrGet('start') === null ? 1 : +tok.attrGet('start') }) },
  task_list: { block: 'taskList' },
  task_item: { block: 'taskItem', getAttrs: (tok) => ({ checked: !!tok.meta?.checked }) },
  heading: { block: 'heading', getAttrs: (tok) => ({ level: +tok.tag.slice(1) }) },
  code_block: { block: 'codeBlock', noCloseToken: true },
  // Tiptap's codeBlock keeps the fence's whole info string in `language` (prosemirror: `params`); none: null.
  fence: { block: 'codeBlock', getAttrs: (tok) => ({ language: tok.info.trim() || null }), noCloseToken: true },
  hr: { node: 'horizontalRule' },
  hardbreak: { node: 'hardBreak' },
  table: { block: 'table' },
  thead: { ignore: true },
  tbody: { ignore: true },
  tr: { block: 'tableRow' },
  em: { mark: 'italic' },
  strong: { mark: 'bold' },
  s: { mark: 'strike' },
  link: { mark: 'link', getAttrs: (tok) => ({ href: tok.attrGet('href'), title: tok.attrGet('title') || null }) },
  code_inline: { mark: 'code', noCloseToken: true }
})
{
  const h = tiptapMarkdownParser.tokenHandlers
  const { tableHeader, tableCell, paragraph, image } = tiptapSchema.nodes
  // GFM cells hold inline content; Tiptap's cells hold blocks (block+): wrap it in a paragraph.
  for (const [tok, type] of [['th', tableHeader], ['td', tableCell]]) {
    h[`${tok}_open`] = (state, t) => {
      state.openNode(type, { align: cellAlign(t) })
      state.openNode(paragraph, null)
    }
    h[`${tok}_close`] = (state) => {
      closeInline(state)
      state.closeNode()
    }
  }
  // Tiptap's Image is a block node: an image ends the current paragraph (or heading), is added beside it,
  // and the rest of the inline content continues in a new one of the same type. Whitespace at the cut is
  // dropped and so are paragraphs left empty by it.
  h.image = (state, tok) => {
    const info = state.stack.pop()
    trimEdge(info.content, 'end')
    if (info.content.length > 0) state.addNode(info.type, info.attrs, info.content)
    state.addNode(image, {
      src: tok.attrGet('src'),
      alt: inlineText(tok.children) || null,
      title: tok.attrGet('title') || null
    })
    state.stack.push({ type: info.type, attrs: info.attrs, content: [], marks: info.marks, afterImage: true })
  }
  // Tiptap's code mark excludes every other mark. MarkdownParser's openMark would drop the enclosing marks
  // for good (bold ends at the code span); like ProseMirror's DOMParser, suspend them for the code text only.
  const code = tiptapSchema.marks.code
  h.code_inline = (state, tok) => {
    const top = state.top()
    const outer = top.marks
    top.marks = code.create().addToSet(outer)
    state.addText(tok.content)
    top.marks = outer
  }
  h.paragraph_close = closeInline
  h.heading_close = closeInline
}

function trimEdge (nodes, edge) {
  const i = edge === 'end' ? nodes.length - 1 : 0
  const n = nodes[i]
  if (n === undefined || !n.isText) return
  const text = edge === 'end' ? n.text.replace(/\s+$/, '') : n.text.replace(/^\s+/, '')
  if (text === '') nodes.splice(i, 1)
  else nodes[i] = n.withText(text)
}

function closeInline (state) {
  const top = state.top()
  if (top.afterImage) {
    trimEdge(top.content, 'start')
    if (top.content.length === 0) {
      state.stack.pop()
      return null
    }
  }
  return state.closeNode()
}

// -- Tiptap -> Markdown: prosemirror-markdown's defaults under Tiptap's names ----------------------

const dn = defaultMarkdownSerializer.nodes
const dm = defaultMarkdownSerializer.marks

/** `node` seen through different attrs (the default functions read prosemirror-markdown's attr names). */
const withAttrs = (node, attrs) => Object.create(node, { attrs: { value: { ...node.attrs, ...attrs } } })

const escapeCellPipes = (s) => s.replace(/\\.|\|/g, (m) => (m === '|' ? '\\|' : m))

/** Inline Markdown of one table cell: its blocks rendered inline, joined by spaces, pipes escaped. */
function renderCell (state, cell) {
  const parts = []
  cell.forEach((block) => {
    const sub = new MarkdownSerializerState(state.nodes, state.marks, state.options)
    if (block.inlineContent) sub.renderInline(block)
    else sub.renderContent(block)
    parts.push(sub.out.replace(/\\\n/g, ' ').replace(/\s*\n\s*/g, ' ').trim())
  })
  return escapeCellPipes(parts.filter((p) => p !== '').join(' '))
}

const ALIGN_RULE = { left: ':---', right: '---:', center: ':---:' }

const tiptapNodes = {
  doc: (state, node) => state.renderContent(node),
  blockquote: dn.blockquote,
  codeBlock: (state, node) => dn.code_block(state, withAttrs(node, { params: node.attrs.language ?? '' })),
  heading: dn.heading,
  horizontalRule: dn.horizontal_rule,
  bulletList: dn.bullet_list,
  orderedList: (state, node) => dn.ordered_list(state, withAttrs(node, { order: node.attrs.start ?? 1 })),
  listItem: dn.list_item,
  taskList: (state, node) => state.renderList(node, '  ', (i) => `- [${node.child(i).attrs.checked ? 'x' : ' '}] `),
  taskItem: dn.list_item,
  paragraph: dn.paragraph,
  image: (state, node) => {
    dn.image(state, node)
    state.closeBlock(node)
  },
  hardBreak: dn.hard_break,
  text: dn.text,
  table: (state, node) => {
    const rows = []
    node.forEach((row) => {
      const cells = []
      row.forEach((cell) => cells.push({ text: renderCell(state, cell), align: cell.attrs.align }))
      rows.push(cells)
    })
    const width = Math.max(1, ...rows.map((r) => r.length))
    const aligns = Array.from({ length: width }, (_, i) => rows.find((r) => r[i]?.align)?.[i].align ?? null)
    const line = (cells) => `| ${Array.from({ length: width }, (_, i) => cells[i]?.text ?? '').join(' | ')} |`
    const lines = [line(rows[0] ?? []), `| ${aligns.map((a) => ALIGN_RULE[a] ?? '---').join(' | ')} |`,
      ...rows.slice(1).map(line)]
    lines.forEach((l, i) => {
      state.write(l)
      if (i < lines.length - 1) state.out += '\n'
    })
    state.closeBlock(node)
  }
}

const tiptapMarks = {
  italic: dm.em,
  bold: dm.strong,
  strike: { open: '~~', close: '~~', mixable: true, expelEnclosingWhitespace: true },
  link: dm.link,
  code: dm.code,
  underline: { open: '', close: '', mixable: true } // no Markdown for it: the text stays, the mark is lost
}

export const tiptapMarkdownSerializer = new MarkdownSerializer(tiptapNodes, tiptapMarks, {
  hardBreakNodeName: 'hardBreak',
  strict: true
})

// -- schema registry -----------------------------------------------------------------------------

export const SCHEMAS = {
  prosemirror: {
    schema: pmMarkdownSchema,
    parse: (md) => defaultMarkdownParser.parse(md),
    serialize: (doc) => defaultMarkdownSerializer.serialize(doc),
    binding: 'y-prosemirror'
  },
  tiptap: {
    schema: tiptapSchema,
    parse: (md) => tiptapMarkdownParser.parse(md),
    serialize: (doc) => tiptapMarkdownSerializer.serialize(doc, { tightLists: true }),
    binding: 'y-tiptap'
  }
}

const BINDINGS = { 'y-prosemirror': yProsemirror, 'y-tiptap': yTiptap }

export const schemaOf = (name) => {
  const s = SCHEMAS[name]
  if (s === undefined) throw new CommandError(`unknown schema ${JSON.stringify(name)} (expected one of ${Object.keys(SCHEMAS)})`)
  return s
}

const bindingOf = (args, s) => {
  const name = args.binding ?? s.binding
  const b = BINDINGS[name]
  if (b === undefined) throw new CommandError(`unknown binding ${JSON.stringify(name)} (expected one of ${Object.keys(BINDINGS)})`)
  return b
}

/** The ProseMirror node a command describes: `doc` (ProseMirror JSON) or `markdown`, checked against the schema. */
export const buildNode = (s, args) => {
  let node
  if (args.doc !== undefined && args.doc !== null) {
    try {
      node = PMNode.fromJSON(s.schema, args.doc)
    } catch (err) {
      throw new CommandError(`doc does not fit the schema: ${err.message}`)
    }
  } else if (typeof args.markdown === 'string') {
    node = s.parse(args.markdown)
  } else {
    throw new CommandError('need "markdown" (string) or "doc" (ProseMirror JSON)')
  }
  try {
    node.check()
  } catch (err) {
    throw new CommandError(`node does not fit the schema: ${err.message}`, { json: node.toJSON() })
  }
  return node
}

export const serialize = (s, node) => {
  try {
    return s.serialize(node)
  } catch (err) {
    throw new CommandError(`serialisation failed: ${err.message}`, { json: node.toJSON() })
  }
}

// -- Yjs fragment description --------------------------------------------------------------------

const sortKeys = (obj) => Object.fromEntries(Object.keys(obj).sort().map((k) => [k, canonical(obj[k])]))
const canonical = (v) => (Array.isArray(v) ? v.map(canonical) : v !== null && typeof v === 'object' ? sortKeys(v) : v)
const itemId = (type) => (type._item ? [type._item.id.client, type._item.id.clock] : null)

export const describeType = (type, ids = false) => {
  let out
  if (type instanceof Y.XmlText) {
    out = {
      delta: type.toDelta().map((op) => (op.attributes && Object.keys(op.attributes).length > 0
        ? { insert: canonical(op.insert), attributes: sortKeys(op.attributes) }
        : { insert: canonical(op.insert) }))
    }
  } else if (type instanceof Y.XmlElement) {
    out = {
      nodeName: type.nodeName,
      attrs: sortKeys(type.getAttributes()),
      children: type.toArray().map((c) => describeType(c, ids))
    }
  } else if (type instanceof Y.XmlHook) {
    out = { hook: type.hookName, value: canonical(type.toJSON()) }
  } else {
    out = { unknown: String(type?.constructor?.name) }
  }
  if (ids) out.id = itemId(type)
  return out
}

export const describeFragment = (fragment, ids = false) => fragment.toArray().map((c) => describeType(c, ids))

const canonicalJson = (v) => JSON.stringify(canonical(v))

/** Write `node` into `fragment` the way the binding's ySyncPlugin does (updateYFragment with fresh metadata). */
export const writeNode = (binding, ydoc, fragment, node) => {
  binding.updateYFragment(ydoc, fragment, node, { mapping: new Map(), isOMark: new Map() })
}

/**
 * Convert a fragment with the binding, on a scratch copy: y-prosemirror deletes Yjs types the schema
 * rejects, which must not leak into a shared document. Reports whether anything was dropped.
 */
export const readFragment = (s, binding, ydoc, field, ids = false) => {
  const fragmentBefore = describeFragment(ydoc.getXmlFragment(field), ids)
  const scratch = new Y.Doc()
  scratch.gc = false
  Y.applyUpdate(scratch, Y.encodeStateAsUpdate(ydoc))
  const sfrag = scratch.getXmlFragment(field)
  const before = canonicalJson(describeFragment(sfrag, ids))
  let node
  try {
    node = binding.yXmlFragmentToProseMirrorRootNode(sfrag, s.schema)
  } catch (err) {
    scratch.destroy()
    throw new CommandError(`y-prosemirror could not convert the fragment: ${err.message}`, { fragment: fragmentBefore })
  }
  const dropped = canonicalJson(describeFragment(sfrag, ids)) !== before
  scratch.destroy()
  const result = { json: node.toJSON(), fragment: fragmentBefore, dropped }
  if (dropped) {
    result.fragmentBefore = fragmentBefore
  }
  try {
    node.check()
    result.markdown = s.serialize(node)
  } catch (err) {
    result.markdown = null
    result.serializeError = err.message
  }
  return result
}

// -- connections -------------------------------------------------------------------------------------

/**
 * @typedef {object} Session
 * @property {string} name
 * @property {Y.Doc} doc
 * @property {WebsocketProvider} provider
 * @property {{code: number, reason: string} | null} lastClose
 * @property {{code: number, reason: string} | null} terminalClose
 * @property {string | null} lastError
 * @property {Set<() => void>} waiters
 */

/** @type {Map<string, Session>} */
const sessions = new Map()

const timeoutOf = (args) => (typeof args.timeoutMs === 'number' ? args.timeoutMs : DEFAULT_TIMEOUT_MS)

const wake = (s) => setImmediate(() => { for (const w of Array.from(s.waiters)) w() })

/** waitUntil with this harness's reply details, stopping early when the provider gave up reconnecting. */
const waitUntil = (s, check, timeoutMs, what, describe = () => ({})) => waitFor(
  s, check, timeoutMs,
  (timedOut) => timedOut
    ? { ...describe(), lastClose: s.lastClose, lastError: s.lastError, wsconnected: s.provider.wsconnected, synced: s.provider.synced }
    : describe(),
  () => s.terminalClose === null
    ? null
    : `${what}: connection closed permanently (code ${s.terminalClose.code}: ${s.terminalClose.reason})`,
  what
)

const openSession = async (name, args) => {
  if (typeof args.url !== 'string' || typeof args.room !== 'string') {
    throw new CommandError('need "url" and "room" strings (or "client" naming a kept session)')
  }
  const doc = new Y.Doc()
  const provider = new WebsocketProvider(args.url, args.room, doc, {
    params: args.params || {},
    WebSocketPolyfill: WebSocket,
    connect: false,
    disableBc: true
  })
  /** @type {Session} */
  const s = { name, doc, provider, lastClose: null, terminalClose: null, lastError: null, waiters: new Set() }
  provider.on('sync', () => wake(s))
  provider.on('status', () => wake(s))
  provider.on('connection-close', (event) => {
    if (event != null) s.lastClose = { code: event.code, reason: String(event.reason ?? '') }
    wake(s)
  })
  provider.on('connection-error', (event) => {
    s.lastError = String(event?.message ?? event?.error?.message ?? event?.error ?? event?.type ?? 'error')
    wake(s)
  })
  provider.on('closed', (event) => {
    s.terminalClose = { code: event.code, reason: String(event.reason ?? '') }
    wake(s)
  })
  doc.on('update', () => wake(s))
  provider.connect()
  try {
    await waitUntil(s, () => (provider.synced ? true : undefined), timeoutOf(args), `sync with ${args.url}/${args.room}`)
  } catch (err) {
    closeSession(s)
    throw err
  }
  return s
}

const closeSession = (s) => {
  if (sessions.get(s.name) === s) sessions.delete(s.name)
  s.waiters.clear()
  s.provider.destroy()
  s.doc.destroy()
}

const getSession = (args) => {
  if (typeof args.client !== 'string') throw new CommandError('missing "client" (string)')
  const s = sessions.get(args.client)
  if (s === undefined) throw new CommandError(`unknown client ${JSON.stringify(args.client)}`)
  return s
}

/** Run fn on the kept session `client`, or on a temporary connection to url/room. */
const withSession = async (args, fn) => {
  if (typeof args.client === 'string' && sessions.has(args.client)) return fn(sessions.get(args.client))
  if (typeof args.client === 'string' && typeof args.url !== 'string') getSession(args) // throws "unknown client"
  const s = await openSession(`tmp-${Math.random().toString(36).slice(2)}`, args)
  try {
    return await fn(s)
  } finally {
    closeSession(s)
  }
}

/**
 * Send a sync step 1 and wait for the step 2 answer. The server handles a connection's messages in
 * order, so once it answers, it has applied every update this client sent before.
 */
const roundTrip = async (s, args) => {
  const p = s.provider
  if (!p.wsconnected || p.ws === null) throw new CommandError('not connected', { lastClose: s.lastClose })
  p.synced = false
  const enc = encoding.createEncoder()
  encoding.writeVarUint(enc, 0) // messageSync
  syncProtocol.writeSyncStep1(enc, p.doc)
  p.ws.send(encoding.toUint8Array(enc))
  await waitUntil(s, () => (p.synced ? true : undefined), timeoutOf(args), 'sync round trip after the write')
}

/** From a second, fresh connection: does the server's state include everything of ours up to `clock`? */
const verifyStored = async (args, clientId, clock) => {
  const v = await openSession(`verify-${Math.random().toString(36).slice(2)}`, args)
  try {
    const have = Y.decodeStateVector(Y.encodeStateVector(v.doc)).get(clientId) ?? 0
    if (have < clock) {
      throw new CommandError(`the server does not hold the write: a fresh connection sees clock ${have} < ${clock} for client ${clientId}`)
    }
  } finally {
    closeSession(v)
  }
}

const writeAndSettle = async (s, args) => {
  const sch = schemaOf(args.schema)
  const binding = bindingOf(args, sch)
  const node = buildNode(sch, args)
  const field = args.field ?? DEFAULT_FIELD
  const fragment = s.doc.getXmlFragment(field)
  writeNode(binding, s.doc, fragment, node)
  await roundTrip(s, args)
  if (args.verify !== false && typeof args.url === 'string') {
    await verifyStored(args, s.doc.clientID, Y.decodeStateVector(Y.encodeStateVector(s.doc)).get(s.doc.clientID) ?? 0)
  }
  return {
    json: node.toJSON(),
    markdown: serialize(sch, node),
    fragment: describeFragment(fragment, !!args.ids),
    clientId: s.doc.clientID
  }
}

// -- relative positions ------------------------------------------------------------------------------

const typeAtPath = (fragment, path) => {
  let t = fragment
  for (const i of path) {
    if (!(t instanceof Y.XmlFragment || t instanceof Y.XmlElement)) throw new CommandError(`path ${JSON.stringify(path)} goes through a leaf`)
    const c = t.get(i)
    if (c === undefined) throw new CommandError(`path ${JSON.stringify(path)}: no child ${i}`)
    t = c
  }
  return t
}

const pathOf = (fragment, type) => {
  const path = []
  let t = type
  while (t !== fragment) {
    const item = t._item
    if (item === null || item.deleted) return null
    const parent = item.parent
    const idx = parent.toArray().indexOf(t)
    if (idx < 0) return null
    path.unshift(idx)
    t = parent
  }
  return path
}

// -- commands ----------------------------------------------------------------------------------------

export const commands = {
  ping: () => ({ pid: process.pid, node: process.versions.node, versions: versions() }),

  convert: (args) => {
    const sch = schemaOf(args.schema)
    const binding = bindingOf(args, sch)
    const node = buildNode(sch, args)
    const ydoc = new Y.Doc()
    const fragment = ydoc.getXmlFragment(args.field ?? DEFAULT_FIELD)
    writeNode(binding, ydoc, fragment, node)
    const out = { json: node.toJSON(), markdown: serialize(sch, node), fragment: describeFragment(fragment, !!args.ids) }
    ydoc.destroy()
    return out
  },

  write: async (args) => {
    const keep = !!args.keep
    if (keep) {
      if (typeof args.client !== 'string') throw new CommandError('keep=true needs "client" (string)')
      if (sessions.has(args.client)) throw new CommandError(`client ${JSON.stringify(args.client)} already exists`)
    }
    const s = await openSession(keep ? args.client : `tmp-${Math.random().toString(36).slice(2)}`, args)
    if (keep) sessions.set(args.client, s)
    let ok = false
    try {
      const out = await writeAndSettle(s, args)
      ok = true
      return out
    } finally {
      if (!keep || !ok) closeSession(s) // a failed write does not leave a half-set-up session behind
    }
  },

  connect: async (args) => {
    if (typeof args.client !== 'string') throw new CommandError('missing "client" (string)')
    if (sessions.has(args.client)) throw new CommandError(`client ${JSON.stringify(args.client)} already exists`)
    const s = await openSession(args.client, args)
    sessions.set(args.client, s)
    return { clientId: s.doc.clientID }
  },

  edit: async (args) => writeAndSettle(getSession(args), { ...args, verify: false }),

  read: (args) => withSession(args, (s) => {
    const sch = schemaOf(args.schema)
    return readFragment(sch, bindingOf(args, sch), s.doc, args.field ?? DEFAULT_FIELD, !!args.ids)
  }),

  waitFor: (args) => withSession(args, async (s) => {
    const sch = schemaOf(args.schema)
    const binding = bindingOf(args, sch)
    const field = args.field ?? DEFAULT_FIELD
    if (typeof args.markdown !== 'string' && args.json === undefined) throw new CommandError('waitFor needs "markdown" or "json"')
    const want = args.json !== undefined ? canonicalJson(args.json) : null
    let last = null
    const matches = () => {
      last = readFragment(sch, binding, s.doc, field, !!args.ids)
      const ok = want !== null ? canonicalJson(last.json) === want : last.markdown === args.markdown
      return ok ? last : undefined
    }
    return waitUntil(s, matches, timeoutOf(args), 'waitFor', () => (last === null
      ? {}
      : { markdown: last.markdown, json: last.json, fragment: last.fragment, dropped: last.dropped }))
  }),

  relPos: (args) => {
    const s = getSession(args)
    const fragment = s.doc.getXmlFragment(args.field ?? DEFAULT_FIELD)
    const type = typeAtPath(fragment, args.path ?? [])
    const rel = Y.createRelativePositionFromTypeIndex(type, args.index ?? 0, args.assoc ?? 0)
    return { relPos: Buffer.from(Y.encodeRelativePosition(rel)).toString('base64') }
  },

  resolve: (args) => {
    const s = getSession(args)
    const fragment = s.doc.getXmlFragment(args.field ?? DEFAULT_FIELD)
    const rel = Y.decodeRelativePosition(new Uint8Array(Buffer.from(args.relPos, 'base64')))
    const abs = Y.createAbsolutePositionFromRelativePosition(rel, s.doc)
    if (abs === null) return { found: false, path: null, index: null }
    return { found: true, path: pathOf(fragment, abs.type), index: abs.index }
  },

  close: (args) => {
    closeSession(getSession(args))
    return {}
  },

  exit: () => {
    setImmediate(() => shutdown(0))
    return {}
  }
}

// -- main loop -------------------------------------------------------------------------------------------

const write = (obj) => process.stdout.write(JSON.stringify(obj) + '\n')

let shutdown = () => {}
if (IS_MAIN) {
  shutdown = serveLines(commands, {
    write,
    closeAll: () => { for (const s of Array.from(sessions.values())) closeSession(s) }
  })
}

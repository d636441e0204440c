// The page at `/`: sign in with a token, browse workspaces and documents, edit one with Tiptap over this
// server's WebSocket (collaboration carets, presence, versions, comments).
import { Editor } from '@tiptap/core'
import StarterKit from '@tiptap/starter-kit'
import Collaboration from '@tiptap/extension-collaboration'
import CollaborationCaret from '@tiptap/extension-collaboration-caret'
import Image from '@tiptap/extension-image'
import { TaskList, TaskItem } from '@tiptap/extension-list'
import { TableKit } from '@tiptap/extension-table'
import { DOMSerializer, Fragment } from '@tiptap/pm/model'
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import { api, ApiError, el, signedIn, takeTokenFromUrl, token, forgetToken, setToken, colourOf } from './common.js'

const WRITE = new Set(['owner', 'admin', 'editor'])
const COMMENT = new Set(['owner', 'admin', 'editor', 'commenter'])
const TYPES = ['markdown', 'presentation', 'mindmap', 'mixed']

const main = document.getElementById('main')
let me = null
let view = null // the open document's teardown
let generation = 0 // a newer navigation supersedes a document still opening

takeTokenFromUrl()
document.getElementById('signout').addEventListener('click', () => { forgetToken(); me = null; route() })
window.addEventListener('hashchange', route)
route()

async function route () {
  const mine = ++generation
  if (view) {
    try { view() } catch (err) { console.warn('closing the document:', err) }
    view = null
  }
  main.replaceChildren()
  try {
    if (!me) me = await api('GET', '/api/me')
    document.getElementById('who').textContent = me.name
    document.getElementById('signout').hidden = !signedIn()
    const match = location.hash.match(/^#\/d\/([0-9a-f-]{36})$/)
    if (match) {
      const opened = await openDocument(match[1])
      if (mine === generation) view = opened
      else opened() // navigated away while it opened: close it at once
    } else await home()
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) return signIn(err.message)
    main.append(el('p', { class: 'error' }, String(err.message || err)))
  }
}

function signIn (reason) {
  me = null
  document.getElementById('who').textContent = ''
  const input = el('input', { type: 'password', placeholder: 'paste a token', size: 60, id: 'token' })
  const form = el('form', {},
    el('h1', {}, 'Sign in'),
    el('p', { class: 'muted' }, token() ? `That token was refused: ${reason}.` :
      'This server needs a token (`collab-server token --email …`, or the link `make run` prints).'),
    input, ' ', el('button', { class: 'primary', type: 'submit' }, 'Sign in'))
  form.addEventListener('submit', (e) => { e.preventDefault(); setToken(input.value.trim()); route() })
  main.replaceChildren(form)
}

async function home () {
  const { workspaces } = await api('GET', '/api/workspaces')
  main.append(el('h1', {}, 'Your documents'))
  if (!workspaces.length) main.append(el('p', { class: 'muted' }, 'You are in no workspace yet.'))
  for (const ws of workspaces) main.append(await workspaceBox(ws))
}

async function workspaceBox (ws) {
  const box = el('section', { class: 'workspace' }, el('h2', {}, ws.name, ' ', el('span', { class: 'tag' }, ws.role)))
  const list = el('ul', { class: 'doclist' })
  const canWrite = WRITE.has(ws.role)
  const refresh = async () => {
    const { documents } = await api('GET', `/api/workspaces/${ws.id}/documents?limit=100`)
    list.replaceChildren(...documents.map((d) => el('li', { 'data-id': d.id },
      el('a', { href: `#/d/${d.id}` }, d.title), el('span', { class: 'tag' }, d.type),
      canWrite ? el('button', { onclick: () => rename(d), title: 'rename' }, 'Rename') : '',
      canWrite ? el('button', { onclick: () => remove(d), title: 'delete' }, 'Delete') : '')))
    if (!documents.length) list.append(el('li', { class: 'muted' }, 'No documents.'))
  }
  const rename = async (d) => {
    const title = prompt('New title', d.title)
    if (title && title.trim()) { await guard(() => api('PATCH', `/api/documents/${d.id}`, { title: title.trim() })); refresh() }
  }
  const remove = async (d) => {
    if (confirm(`Delete “${d.title}”?`)) { await guard(() => api('DELETE', `/api/documents/${d.id}`)); refresh() }
  }
  box.append(list)
  if (canWrite) {
    const title = el('input', { placeholder: 'New document title', name: 'title', required: true })
    const type = el('select', { name: 'type' }, ...TYPES.map((t) => el('option', { value: t }, t)))
    const form = el('form', { class: 'create' }, title, ' ', type, ' ', el('button', { class: 'primary', type: 'submit' }, 'Create'))
    form.addEventListener('submit', async (e) => {
      e.preventDefault()
      const made = await guard(() => api('POST', `/api/workspaces/${ws.id}/documents`, { title: title.value.trim(), type: type.value }))
      if (made) location.hash = `#/d/${made.id}`
    })
    box.append(form)
  }
  await refresh()
  return box
}

async function guard (action) {
  try { return await action() } catch (err) { alert(err.message || String(err)); return null }
}

function wsBase () {
  return `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/ws`
}

async function openDocument (id) {
  const meta = await api('GET', `/api/documents/${id}`)
  const canEdit = WRITE.has(meta.role)
  const canComment = COMMENT.has(meta.role)
  const ydoc = new Y.Doc()
  // No BroadcastChannel: tabs of one browser must not sync around the server (and its refusals).
  const provider = new WebsocketProvider(wsBase(), id, ydoc, { params: token() ? { token: token() } : {}, disableBc: true })
  const user = { name: me.name, color: colourOf(me.user_id || me.name) }
  provider.awareness.setLocalStateField('user', user)

  const status = el('span', { class: 'status connecting', id: 'status' }, 'connecting…')
  const bar = el('div', { class: 'docbar' }, el('a', { href: '#/' }, '← documents'), el('h1', { id: 'title' }, meta.title),
    el('span', { class: 'tag' }, meta.type), canEdit ? '' : el('span', { class: 'badge', id: 'readonly' }, `read-only · ${meta.role}`), status)
  const editorBox = el('div', { class: 'editor', id: 'editor' })
  const extra = el('div', { id: 'extra' })
  const side = el('aside', {})
  const root = el('div', {}, bar, el('div', { class: 'docview' }, el('div', {}, editorBox, extra), side))
  main.append(root)

  let editor = null
  const cleanups = []
  if (meta.type === 'mindmap') {
    cleanups.push(mindmapOutline(ydoc, editorBox))
  } else {
    editor = new Editor({
      element: editorBox,
      editable: canEdit,
      // Every node the server's content model writes (tables, images, task lists: the schema of
      // tests/node/richtext.mjs). y-prosemirror deletes from the shared document any element the editor's
      // schema cannot build, so a narrower schema here would erase other editors' tables.
      extensions: [
        StarterKit.configure({ undoRedo: false }),
        Image, TaskList, TaskItem.configure({ nested: true }), TableKit,
        Collaboration.configure({ document: ydoc, field: 'default' }),
        CollaborationCaret.configure({ provider, user }),
      ],
    })
    if (meta.type === 'presentation') {
      const render = () => slides(editor, extra)
      editor.on('update', render)
      provider.on('sync', render)
    }
    const source = ydoc.getText('content')
    const showSource = () => {
      const fragmentEmpty = ydoc.getXmlFragment('default').length === 0
      extra.querySelector('.source')?.remove()
      if (fragmentEmpty && source.length) {
        extra.prepend(el('div', { class: 'source' }, el('p', { class: 'muted' }, 'Written by a source editor (read-only here):'),
          el('pre', {}, source.toString())))
      }
    }
    source.observe(showSource)
    provider.on('sync', showSource)
  }

  // The indicator: connecting / synced / offline, with the edits made since the server last had everything.
  let unsaved = 0
  const paint = () => {
    const online = provider.wsconnected && provider.synced
    const state = online ? 'synced' : provider.wsconnected || provider.wsconnecting ? 'connecting' : 'offline'
    status.className = `status ${state}`
    status.dataset.state = state
    status.textContent = online ? 'synced' : state === 'connecting' ? (unsaved ? `reconnecting · ${unsaved} unsaved edits` : 'connecting…')
      : unsaved ? `offline · ${unsaved} unsaved edits` : 'offline'
  }
  provider.on('status', paint)
  provider.on('sync', (synced) => { if (synced) unsaved = 0; paint() })
  provider.on('connection-close', paint)
  ydoc.on('update', (_update, origin) => {
    if (origin !== provider && !(provider.wsconnected && provider.synced)) { unsaved++; paint() }
  })
  const ticker = setInterval(paint, 1000)

  let poll = null
  const close = () => {
    clearInterval(ticker); clearInterval(poll)
    cleanups.forEach((f) => f())
    provider.destroy() // first: its last awareness change must reach a live editor
    editor?.destroy()
    ydoc.destroy()
    root.remove()
  }
  try {
    side.append(presencePanel(provider), await versionsPanel(id, canEdit), await commentsPanel(id, canComment, () => editor))
  } catch (err) {
    close() // no socket left behind by a page that failed to open
    throw err
  }
  // Versions and comments others add: read again every few seconds (an event each section listens to).
  poll = setInterval(() => { for (const section of side.children) section.dispatchEvent(new Event('refresh')) }, 3000)
  return close
}

function presencePanel (provider) {
  const list = el('ul', { id: 'presence' })
  const render = () => {
    const people = [...provider.awareness.getStates().entries()].filter(([, s]) => s.user)
    list.replaceChildren(...people.map(([clientId, s]) => el('li', {},
      el('span', { class: 'dot', style: `background:${/^#[0-9a-fA-F]{6}$/.test(s.user.color) ? s.user.color : '#888'}` }),
      String(s.user.name || 'anonymous'),
      clientId === provider.awareness.clientID ? el('span', { class: 'muted' }, ' (you)') : '')))
  }
  provider.awareness.on('change', render)
  render()
  return el('section', {}, el('h3', {}, 'Here now'), list)
}

async function versionsPanel (id, canEdit) {
  const list = el('ul', { id: 'versions' })
  const section = el('section', {}, el('h3', {}, 'Versions'))
  const refresh = async () => {
    const { versions } = await api('GET', `/api/documents/${id}/versions?limit=20`)
    list.replaceChildren(...versions.map((v) => el('li', { 'data-version': v.version_number },
      `v${v.version_number} · ${new Date(v.created_at).toLocaleString()} `,
      el('span', { class: 'muted' }, v.change_description || ''),
      canEdit ? el('button', { onclick: () => restore(v.version_number) }, 'Restore') : '')))
    if (!versions.length) list.append(el('li', { class: 'muted' }, 'No versions yet.'))
  }
  const restore = async (n) => {
    if (confirm(`Restore version ${n}? Everyone's editor changes to it (a new edit, so it can be undone by restoring again).`)) {
      await guard(() => api('POST', `/api/documents/${id}/versions/${n}/restore`)); refresh()
    }
  }
  if (canEdit) {
    section.append(el('button', { id: 'save-version', onclick: async () => {
      const description = prompt('What is this version?', '')
      if (description === null) return
      await guard(() => api('POST', `/api/documents/${id}/versions`, description ? { change_description: description } : {}))
      refresh()
    } }, 'Save a version'))
  }
  section.append(list)
  section.addEventListener('refresh', refresh)
  await refresh()
  return section
}

async function commentsPanel (id, canComment, editorOf) {
  const list = el('div', { id: 'comments' })
  const section = el('section', {}, el('h3', {}, 'Comments'))
  const refresh = async () => {
    const { threads } = await api('GET', `/api/documents/${id}/comments`)
    list.replaceChildren(...threads.map((t) => el('div', { class: `thread${t.resolved ? ' resolved' : ''}`, 'data-id': t.id },
      t.anchor_text ? el('div', { class: 'muted' }, `“${t.anchor_text}”`) : '',
      el('div', {}, t.content ?? '(deleted)'),
      ...t.replies.map((r) => el('div', { class: 'reply' }, '↳ ', r.content)),
      canComment ? el('div', {},
        el('button', { onclick: () => reply(t) }, 'Reply'), ' ',
        el('button', { onclick: () => toggle(t) }, t.resolved ? 'Reopen' : 'Resolve')) : '')))
    if (!threads.length) list.append(el('p', { class: 'muted' }, 'No comments.'))
  }
  const reply = async (t) => {
    const content = prompt('Reply')
    if (content && content.trim()) { await guard(() => api('POST', `/api/documents/${id}/comments/${t.id}/replies`, { content })); refresh() }
  }
  const toggle = async (t) => {
    await guard(() => api('POST', `/api/documents/${id}/comments/${t.id}/${t.resolved ? 'reopen' : 'resolve'}`)); refresh()
  }
  if (canComment) {
    const text = el('textarea', { rows: 2, placeholder: 'Comment on the selection or the document', id: 'comment-text' })
    const add = el('button', { class: 'primary', id: 'comment-add' }, 'Comment')
    add.addEventListener('click', async () => {
      if (!text.value.trim()) return
      const body = { content: text.value.trim() }
      const editor = editorOf()
      if (editor && !editor.state.selection.empty) {
        const { from, to } = editor.state.selection
        body.position = { from, to }
        body.anchor_text = editor.state.doc.textBetween(from, to, ' ').slice(0, 10000)
      }
      if (await guard(() => api('POST', `/api/documents/${id}/comments`, body))) { text.value = ''; refresh() }
    })
    section.append(text, add)
  }
  section.append(list)
  section.addEventListener('refresh', refresh)
  await refresh()
  return section
}

// A presentation: the slides between horizontal rules, rendered read-only under the editor. Built as DOM
// nodes by ProseMirror's serializer from the document's nodes: no HTML string is parsed (an attribute such
// as an image's alt text could otherwise smuggle markup in).
function slides (editor, box) {
  const serializer = DOMSerializer.fromSchema(editor.schema)
  const parts = [[]]
  editor.state.doc.forEach((node) => { node.type.name === 'horizontalRule' ? parts.push([]) : parts.at(-1).push(node) })
  box.replaceChildren(el('h3', {}, `Slides (${parts.length})`), ...parts.map((nodes, i) => {
    const slide = el('div', { class: 'slide', 'data-slide': i + 1 })
    slide.append(serializer.serializeFragment(Fragment.fromArray(nodes)))
    return slide
  }))
}

// A mind map: the node labels as an outline, nested by edges (source → target) or parent ids.
function mindmapOutline (ydoc, box) {
  const nodes = ydoc.getArray('nodes')
  const edges = ydoc.getArray('edges')
  const label = (n) => n.label ?? n.text ?? n.title ?? n.data?.label ?? n.id ?? '?'
  const render = () => {
    const all = nodes.toJSON().filter((n) => n && typeof n === 'object')
    const byId = new Map(all.map((n) => [String(n.id), n]))
    const parent = new Map()
    for (const e of edges.toJSON()) if (e && byId.has(String(e.target))) parent.set(String(e.target), String(e.source))
    for (const n of all) if (n.parent ?? n.parentId) parent.set(String(n.id), String(n.parent ?? n.parentId))
    const children = new Map()
    for (const n of all) {
      const p = parent.get(String(n.id))
      const key = p && byId.has(p) ? p : null
      if (!children.has(key)) children.set(key, [])
      children.get(key).push(n)
    }
    const seen = new Set()
    const tree = (key) => el('ul', {}, ...(children.get(key) || []).filter((n) => !seen.has(n.id) && seen.add(n.id))
      .map((n) => el('li', {}, label(n), children.has(String(n.id)) ? tree(String(n.id)) : '')))
    box.replaceChildren(el('div', { class: 'outline', id: 'outline' }, el('p', { class: 'muted' }, 'Mind map (read-only outline)'),
      all.length ? tree(null) : el('p', { class: 'muted' }, 'No nodes yet.')))
  }
  nodes.observeDeep(render)
  edges.observeDeep(render)
  render()
  return () => { nodes.unobserveDeep(render); edges.unobserveDeep(render) }
}

#!/usr/bin/env node
// Generate the rich-text golden data with the REAL JS libraries (see richtext.mjs for the schemas).
//
//   node tests/node/make_golden.mjs           write tests/richtext_golden/{prosemirror,tiptap}.json
//   node tests/node/make_golden.mjs --check   exit 1 if those files differ from what the libraries produce now
//
// Input: tests/richtext_golden/corpus.json ({cases: [{name, markdown, schemas?}]}). For every case and schema
// the Markdown is parsed into a ProseMirror node, written into a fresh Y.XmlFragment with updateYFragment
// (what ySyncPlugin does) by both y-prosemirror and @tiptap/y-tiptap (they must agree), read back with
// yXmlFragmentToProseMirrorRootNode, and serialised back to Markdown.

import fs from 'node:fs'
import * as Y from 'yjs'
import * as yProsemirror from 'y-prosemirror'
import * as yTiptap from '@tiptap/y-tiptap'
import { SCHEMAS, versions, describeFragment, writeNode, tiptapExtensions } from './richtext.mjs'

const GOLDEN_DIR = new URL('../richtext_golden/', import.meta.url)
const FIELD = 'default'
const check = process.argv.includes('--check')

const canonical = (v) => (Array.isArray(v)
  ? v.map(canonical)
  : v !== null && typeof v === 'object'
    ? Object.fromEntries(Object.keys(v).sort().map((k) => [k, canonical(v[k])]))
    : v)
const same = (a, b) => JSON.stringify(canonical(a)) === JSON.stringify(canonical(b))

const fragmentWith = (binding, node) => {
  const ydoc = new Y.Doc()
  const fragment = ydoc.getXmlFragment(FIELD)
  writeNode(binding, ydoc, fragment, node)
  return { ydoc, fragment, description: describeFragment(fragment) }
}

/** Attribute defaults, content expressions and mark rules of a schema, for the Python side. */
const describeSchema = (schema) => ({
  topNode: schema.topNodeType.name,
  nodes: Object.fromEntries(Object.entries(schema.nodes).map(([name, t]) => [name, {
    attrs: Object.fromEntries(Object.entries(t.attrs).map(([k, a]) => [k, a.hasDefault ? a.default : { required: true }])),
    content: t.spec.content ?? '',
    group: t.spec.group ?? null,
    inline: t.isInline,
    atom: t.isAtom,
    marks: t.spec.marks ?? null,
    code: !!t.spec.code
  }])),
  marks: Object.fromEntries(Object.entries(schema.marks).map(([name, t]) => [name, {
    attrs: Object.fromEntries(Object.entries(t.attrs).map(([k, a]) => [k, a.hasDefault ? a.default : { required: true }])),
    excludes: t.spec.excludes ?? null,
    inclusive: t.spec.inclusive ?? null,
    rank: t.rank
  }]))
})

const NOTES = {
  prosemirror: [
    "Schema: prosemirror-markdown's CommonMark schema (snake_case names). Parser: defaultMarkdownParser (markdown-it 'commonmark', html off: no tables, strikethrough or task lists). Serialiser: defaultMarkdownSerializer (loose/tight from the lists' `tight` attr).",
    'Binding: y-prosemirror updateYFragment into an empty Y.XmlFragment; @tiptap/y-tiptap writes the same structure (checked per case).'
  ],
  tiptap: [
    `Schema: getSchema([StarterKit, Image, TaskList, TaskItem.configure({nested: true}), TableKit]) from @tiptap/core; extensions: ${tiptapExtensions.map((e) => e.name).join(', ')}.`,
    "Parser: markdown-it 'commonmark' + GFM tables and strikethrough + a GFM task-list rule (a bullet list whose every item starts with [ ]/[x]/[X] becomes taskList/taskItem), through prosemirror-markdown's MarkdownParser with Tiptap's names. codeBlock.language = the whole fence info string or null; images are block nodes (an image inside a paragraph splits it).",
    "Serialiser: prosemirror-markdown's default node/mark functions under Tiptap's names, tightLists: true, '~~' for strike, '- [ ] '/'- [x] ' for task items, GFM pipe tables (first row = header, ':---'/'---:'/':---:' from the first cell with an align per column, cell blocks joined by a space, hard breaks in cells become spaces, '|' escaped), underline dropped.",
    'Binding: @tiptap/y-tiptap (what Tiptap 3 Collaboration uses) updateYFragment; y-prosemirror writes the same structure (checked per case).'
  ]
}

const corpus = JSON.parse(fs.readFileSync(new URL('corpus.json', GOLDEN_DIR), 'utf8'))
let failed = false

for (const [schemaName, s] of Object.entries(SCHEMAS)) {
  const cases = []
  for (const c of corpus.cases) {
    // `json`: the parsed document; `fragment`: what the binding wrote; `serialized`: the JS serialisation of
    // `json`; `readBack` (only when different): the document a client reads from `fragment`.
    if (c.schemas && !c.schemas.includes(schemaName)) continue
    const node = s.parse(c.markdown)
    node.check()
    const viaPm = fragmentWith(yProsemirror, node)
    const viaTt = fragmentWith(yTiptap, node)
    if (!same(viaPm.description, viaTt.description)) {
      console.error(`${schemaName}/${c.name}: y-prosemirror and y-tiptap wrote different fragments`)
      failed = true
    }
    const binding = s.binding === 'y-tiptap' ? yTiptap : yProsemirror
    // y-prosemirror keeps no marks on inline non-text nodes (e.g. a hard break inside bold), so the read-back
    // document can differ from the written one; such cases carry `readBack`.
    const back = binding.yXmlFragmentToProseMirrorRootNode(viaPm.fragment, s.schema).toJSON()
    const serialized = s.serialize(node)
    const reparsed = s.parse(serialized)
    viaPm.ydoc.destroy()
    viaTt.ydoc.destroy()
    cases.push({
      name: c.name,
      markdown: c.markdown,
      json: node.toJSON(),
      fragment: viaPm.description,
      serialized,
      ...(same(back, node.toJSON()) ? {} : { readBack: back }),
      // parse(serialized) is the same document / serialising that again gives the same text
      roundtrip: same(reparsed.toJSON(), node.toJSON()),
      stable: s.serialize(reparsed) === serialized
    })
  }
  const golden = {
    schema: schemaName,
    field: FIELD,
    generator: 'tests/node/make_golden.mjs (from tests/richtext_golden/corpus.json)',
    versions: versions(),
    notes: NOTES[schemaName],
    schemaSpec: describeSchema(s.schema),
    cases
  }
  const file = new URL(`${schemaName}.json`, GOLDEN_DIR)
  const text = JSON.stringify(golden, null, 1) + '\n'
  if (check) {
    const old = fs.existsSync(file) ? fs.readFileSync(file, 'utf8') : ''
    if (old !== text) {
      console.error(`${file.pathname} is out of date: run node tests/node/make_golden.mjs`)
      failed = true
    }
  } else {
    fs.writeFileSync(file, text)
    console.error(`wrote ${file.pathname}: ${cases.length} cases, ${cases.filter((x) => !x.roundtrip).length} not round-tripping, ${cases.filter((x) => !x.stable).length} unstable`)
  }
}
process.exit(failed ? 1 : 0)

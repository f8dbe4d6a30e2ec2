// The server crate's module graph, from its source: which top-level module (`crate::x`) uses
// which. An edge a -> b means some file of module a names `crate::b` (in a `use`, a path, or a
// `use crate::{b, ...}` group). Used by modules.test.mjs (no cycles) and runnable on its own to
// print the graph: `node tests/node/modules.mjs [--dot]`.
import { readFileSync, readdirSync, statSync } from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

const here = path.dirname(fileURLToPath(import.meta.url))
export const serverSrc = path.resolve(here, '../../server/src')

export function rustFiles (dir) {
  return readdirSync(dir).flatMap((name) => {
    const p = path.join(dir, name)
    if (statSync(p).isDirectory()) return rustFiles(p)
    return name.endsWith('.rs') ? [p] : []
  })
}

// The top-level module a file belongs to: `room.rs` and `room/outbox.rs` are both `room`.
function moduleOf (file) {
  const rel = path.relative(serverSrc, file).split(path.sep)
  return rel[0].replace(/\.rs$/, '')
}

// Drops comments and the bodies of `#[cfg(test)]` modules (tests may use anything).
function productionCode (text) {
  text = text.replace(/\/\/[^\n]*/g, '')
  const marker = text.search(/#\[cfg\(test\)\]\s*mod\s+\w+\s*\{/)
  return marker >= 0 ? text.slice(0, marker) : text
}

// Top-level names a source text refers to through `crate::`.
function referenced (text) {
  const names = new Set()
  for (const m of text.matchAll(/crate::(\w+)/g)) names.add(m[1])
  for (const m of text.matchAll(/crate::\{([^;]*?)\}\s*;/gs)) {
    // `use crate::{a, b::c, d::{e, f}}`: the first segment of each top-level item.
    let depth = 0
    let item = ''
    for (const ch of m[1] + ',') {
      if (ch === '{') depth++
      if (ch === '}') depth--
      if (ch === ',' && depth === 0) {
        const first = item.trim().split('::')[0]
        if (first) names.add(first)
        item = ''
      } else item += ch
    }
  }
  return names
}

// The crate root (`lib.rs`) is a node too, named `crate`: a module that uses one of its items
// (`crate::App`) depends on it, and it depends on the modules it re-exports from (`pub use x::`)
// or calls into. `main.rs` is the binary, above everything.
export function moduleGraph () {
  const files = rustFiles(serverSrc).filter((f) => !/^main\.rs$/.test(path.relative(serverSrc, f)))
  const modules = new Set(files.map(moduleOf).map((m) => (m === 'lib' ? 'crate' : m)))
  const graph = new Map([...modules].map((m) => [m, new Set()]))
  for (const file of files) {
    // Files that are only tests (`*_tests.rs`) are test code too.
    if (/_tests\.rs$/.test(file)) continue
    const isRoot = path.relative(serverSrc, file) === 'lib.rs'
    const from = isRoot ? 'crate' : moduleOf(file)
    const code = productionCode(readFileSync(file, 'utf8'))
    const names = referenced(code)
    if (isRoot) {
      // Paths in the root name modules without `crate::` (`pub use node::serve`, `http::router`).
      for (const m of code.matchAll(/(?<![:\w])(\w+)::/g)) names.add(m[1])
    }
    for (const to of names) {
      if (to === from) continue
      if (modules.has(to) && to !== 'crate') graph.get(from).add(to)
      else if (!isRoot && /^[A-Za-z_]\w*$/.test(to) && !modules.has(to)) graph.get(from).add('crate') // an item of lib.rs
    }
  }
  return graph
}

// Every cycle's modules, as strongly connected components of more than one module.
export function cycles (graph) {
  let index = 0
  const stack = []
  const info = new Map()
  const out = []
  function visit (v) {
    info.set(v, { index, low: index, onStack: true })
    index++
    stack.push(v)
    for (const w of graph.get(v)) {
      if (!info.has(w)) {
        visit(w)
        info.get(v).low = Math.min(info.get(v).low, info.get(w).low)
      } else if (info.get(w).onStack) {
        info.get(v).low = Math.min(info.get(v).low, info.get(w).index)
      }
    }
    if (info.get(v).low === info.get(v).index) {
      const component = []
      let w
      do {
        w = stack.pop()
        info.get(w).onStack = false
        component.push(w)
      } while (w !== v)
      if (component.length > 1) out.push(component.sort())
    }
  }
  for (const v of [...graph.keys()].sort()) if (!info.has(v)) visit(v)
  return out
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const graph = moduleGraph()
  if (process.argv.includes('--dot')) {
    console.log('digraph concord_server {')
    for (const [from, tos] of [...graph].sort()) for (const to of [...tos].sort()) console.log(`  "${from}" -> "${to}";`)
    console.log('}')
  } else {
    for (const [from, tos] of [...graph].sort()) console.log(`${from} -> ${[...tos].sort().join(', ')}`)
    const found = cycles(graph)
    console.log(found.length ? `cycles: ${found.map((c) => c.join(' <-> ')).join('; ')}` : 'no cycles')
  }
}

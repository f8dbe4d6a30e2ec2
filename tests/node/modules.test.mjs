// The server crate stays easy to find one's way in: no module uses one that uses it back
// (directly or through others), no source file holds more than 500 lines of code before its
// tests, and every file opens with a `//!` paragraph saying why it exists. `node modules.mjs`
// prints the graph.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { readFileSync } from 'node:fs'
import path from 'node:path'
import { moduleGraph, cycles, rustFiles, serverSrc } from './modules.mjs'

test('the server modules form no circle', () => {
  const graph = moduleGraph()
  assert.ok(graph.size >= 15, `found ${graph.size} modules`)
  assert.ok(graph.get('registry').has('room'), 'the parser sees `use crate::room::...`')
  assert.deepEqual(cycles(graph), [])
})

test('the cycle finder finds a circle', () => {
  const graph = new Map([['a', new Set(['b'])], ['b', new Set(['c'])], ['c', new Set(['a'])], ['d', new Set(['a'])]])
  assert.deepEqual(cycles(graph), [['a', 'b', 'c']])
})

test('no server source file holds more than 500 lines of non-test code', () => {
  const over = []
  for (const file of rustFiles(serverSrc)) {
    const lines = readFileSync(file, 'utf8').split('\n')
    const testsAt = lines.findIndex((l) => /^#\[cfg\(test\)\]/.test(l))
    const code = testsAt >= 0 ? testsAt : lines.length
    const isTests = /(^|\/)(tests|[a-z_]+_tests)\.rs$/.test(file)
    if (!isTests && code > 500) over.push(`${path.relative(serverSrc, file)}: ${code}`)
  }
  assert.deepEqual(over, [])
})

test('every server source file opens with a //! paragraph', () => {
  const bare = rustFiles(serverSrc)
    .filter((f) => !readFileSync(f, 'utf8').startsWith('//!'))
    .map((f) => path.relative(serverSrc, f))
  assert.deepEqual(bare, [])
})

// The documentation stands alone: every relative link in README.md and docs/ (and the other
// Markdown files of the repository) leads to a file that exists and, with a `#fragment`, to a
// heading of that file; no tracked file points outside the repository (a clone has nothing
// next to it); and README.md stays a first-ten-minutes page, with docs/README.md indexing every
// page of docs/.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import { existsSync, readFileSync, statSync } from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..')
const tracked = execFileSync('git', ['ls-files', '-z'], { cwd: root, encoding: 'utf8' })
  .split('\0')
  .filter((f) => f && existsSync(path.join(root, f)))
const markdown = tracked.filter((f) => f.endsWith('.md') && !f.includes('node_modules/'))

// GitHub's heading anchors: lower case, punctuation other than `-` and `_` dropped, spaces to
// `-`; a repeated heading gets `-1`, `-2`...
function anchors (file) {
  const seen = new Map()
  const out = new Set()
  let fenced = false
  for (const line of readFileSync(path.join(root, file), 'utf8').split('\n')) {
    if (line.startsWith('```')) fenced = !fenced
    const m = !fenced && line.match(/^#{1,6} (.*)$/)
    if (!m) continue
    const base = m[1].trim().toLowerCase().replace(/[^\p{L}\p{N} _-]/gu, '').replace(/ /g, '-')
    const n = seen.get(base) ?? 0
    seen.set(base, n + 1)
    out.add(n === 0 ? base : `${base}-${n}`)
  }
  return out
}

// Markdown links and images outside code: `[text](target)`.
function links (file) {
  const text = readFileSync(path.join(root, file), 'utf8')
    .replace(/```[\s\S]*?```/g, '')
    .replace(/`[^`\n]*`/g, '')
  return [...text.matchAll(/\]\(([^)\s]+)\)/g)].map((m) => m[1])
}

test('the docs have pages, and README.md links to them', () => {
  assert.ok(markdown.includes('README.md'))
  assert.ok(markdown.filter((f) => f.startsWith('docs/')).length >= 8, markdown.join(' '))
  assert.ok(links('README.md').includes('docs/README.md'))
})

test('every relative link in the Markdown files leads somewhere that exists', () => {
  const broken = []
  for (const file of markdown) {
    for (const link of links(file)) {
      if (/^[a-z]+:/i.test(link)) continue // http:, https:, mailto:
      const [target, fragment] = link.split('#')
      const dest = target ? path.normalize(path.join(path.dirname(file), target)) : file
      if (dest.startsWith('..') || !existsSync(path.join(root, dest))) {
        broken.push(`${file}: ${link} (no such file in the repository)`)
        continue
      }
      if (fragment && dest.endsWith('.md') && !anchors(dest).has(fragment)) {
        broken.push(`${file}: ${link} (no heading #${fragment} in ${dest})`)
      }
    }
  }
  assert.deepEqual(broken, [])
})

test('no tracked file refers to a path outside the repository', () => {
  // Built from pieces so that this file does not match itself.
  const outside = [['..', 'shared'].join('/'), ['', 'work', ''].join('/')]
  const found = []
  for (const file of tracked) {
    if (statSync(path.join(root, file)).size > 2_000_000 || /\.(gz|png|ico|pem)$/.test(file)) continue
    const text = readFileSync(path.join(root, file), 'utf8')
    for (const needle of outside) {
      const at = text.indexOf(needle)
      if (at >= 0) found.push(`${file}: ...${text.slice(Math.max(0, at - 30), at + 40)}...`)
    }
  }
  assert.deepEqual(found, [])
})

test('README.md stays a first-ten-minutes page, and docs/README.md indexes every page', () => {
  const lines = readFileSync(path.join(root, 'README.md'), 'utf8').split('\n').length
  assert.ok(lines <= 160, `README.md has ${lines} lines; move reference material to docs/`)
  const index = links('docs/README.md')
  for (const page of markdown.filter((f) => /^docs\/[^/]+\.md$/.test(f) && f !== 'docs/README.md')) {
    assert.ok(index.includes(path.basename(page)), `docs/README.md does not link ${page}`)
  }
})

// Checks a `loadtest --doc-size` run's report: the documents were pre-filled with the size asked
// for, every server's RSS was sampled at the four points (before the pre-fill, pre-filled, with
// the editors connected, at the end), RSS per live document and per connection are numbers, the
// HTML report shows them, and every replica converged. Not the figures themselves: they depend on
// the server's build and the machine.
// Usage: node tests/doc-size-fields.mjs target/loadtest/smoke-docsize BYTES
import { readFileSync } from 'node:fs'
import path from 'node:path'

const dir = process.argv[2]
const size = Number(process.argv[3])
const report = JSON.parse(readFileSync(path.join(dir, 'report.json'), 'utf8'))
const html = readFileSync(path.join(dir, 'report.html'), 'utf8')
const fail = (why) => {
  console.error(`--doc-size report in ${dir}: ${why}`)
  process.exit(1)
}
const m = report.memory
if (!m) fail('no memory section')
if (m.doc_size_bytes !== size) fail(`doc_size_bytes is ${m.doc_size_bytes}, not ${size}`)
// An item per word: the update is several times the text.
if (!(m.doc_update_bytes > 2 * size)) fail(`doc_update_bytes is ${m.doc_update_bytes}`)
if (m.connections !== report.editors) fail(`connections ${m.connections} != editors ${report.editors}`)
if (m.regions.length === 0) fail('no server sampled')
for (const r of m.regions) {
  for (const f of ['before_prefill_kib', 'after_prefill_kib', 'connected_kib', 'end_kib']) {
    if (!(Number.isInteger(r[f]) && r[f] > 0)) fail(`${r.name}.${f} is ${r[f]}`)
  }
}
for (const f of ['rss_per_live_doc_kib', 'rss_per_connection_kib']) {
  if (!Number.isFinite(m[f])) fail(`${f} is ${m[f]} (${m.note})`)
}
if (!html.includes('<table id=memory>') || !html.includes('RSS per live document')) {
  fail('report.html has no memory table')
}
if (report.convergence_ms === null || report.docs_identical !== report.docs || !report.regions_compared) {
  fail(`not converged: ${report.docs_identical}/${report.docs} identical, regions compared: ${report.regions_compared}`)
}
console.log(`--doc-size ${size}: RSS per live document ${m.rss_per_live_doc_kib.toFixed(0)} KiB, ` +
  `per connection ${m.rss_per_connection_kib.toFixed(0)} KiB; converged in ${report.convergence_ms.toFixed(0)} ms`)

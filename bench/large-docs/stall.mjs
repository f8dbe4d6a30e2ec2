// How long compaction holds up a large document's room. Starts Concord on a free port, writes
// one 500 KB document (tests/node/large-doc.mjs), then one editor with a synced copy types words
// at random places at --rate updates/s while another client measures how long each edit takes to
// come back. Compaction thresholds are lowered (--compact-after-updates 500,
// --compact-after-bytes 64 KB) so that the run compacts several times. It prints the delivery
// p50/p99/max, the number of compactions, and `longest_compaction_ms` from /api/status: the
// longest a room spent making its snapshot (encoding it, or merging what an encoded document
// accepted since its last merge) instead of serving.
//
// Usage: node stall.mjs --bin PATH [--mode encoded|live] [--updates N] [--rate R]
import { spawn } from 'node:child_process'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { parseArgs } from 'node:util'
import WebSocket from 'ws'
import * as Y from 'yjs'
import * as decoding from 'lib0/decoding'
import { typedDocument } from '../../tests/node/large-doc.mjs'
import { updateMessage } from '../../tests/node/raw-sync.mjs'

const { values: opts } = parseArgs({
  options: {
    bin: { type: 'string' },
    mode: { type: 'string', default: 'encoded' },
    updates: { type: 'string', default: '3000' },
    rate: { type: 'string', default: '50' },
    size: { type: 'string', default: '500000' }
  }
})
if (!opts.bin) throw new Error('--bin PATH: the concord binary')

const dir = mkdtempSync(path.join(tmpdir(), 'concord-stall-'))
const server = spawn(opts.bin, [
  '--listen', '127.0.0.1:0', '--data-dir', dir, '--doc-mode', opts.mode,
  '--compact-after-updates', '500', '--compact-after-bytes', '65536'
], { stdio: ['ignore', 'pipe', 'inherit'], env: { ...process.env, RUST_LOG: process.env.STALL_LOG || 'info,concord_server::room::compaction=debug' } })
let log = ''
const base = await new Promise((resolve, reject) => {
  server.stdout.on('data', (d) => {
    log += d
    const m = /listening addr=(\S+)/.exec(log)
    if (m) resolve(m[1])
  })
  server.on('exit', (code) => reject(new Error(`concord exited with ${code}`)))
})

const open = (onMessage) => new Promise((resolve, reject) => {
  const ws = new WebSocket(`ws://${base}/ws/stall`)
  ws.binaryType = 'arraybuffer'
  ws.on('open', () => resolve(ws))
  ws.on('error', reject)
  if (onMessage) ws.on('message', (d) => onMessage(new Uint8Array(d)))
})

try {
  const state = typedDocument(Y, { root: 'text', size: Number(opts.size) })
  const doc = new Y.Doc()
  Y.applyUpdate(doc, state)
  const text = doc.getText('text')
  const writer = await open()
  writer.send(updateMessage(state))

  // Each edit's ids, and when it was sent; the reader takes them off as they come back.
  const sent = new Map()
  const latencies = []
  const reader = await open((bytes) => {
    const dec = decoding.createDecoder(bytes)
    if (decoding.readVarUint(dec) !== 0 || decoding.readVarUint(dec) !== 2) return
    for (const s of Y.decodeUpdate(decoding.readVarUint8Array(dec)).structs) {
      const key = `${s.id.client}:${s.id.clock}`
      if (sent.has(key)) {
        latencies.push(performance.now() - sent.get(key))
        sent.delete(key)
      }
    }
  })
  doc.on('update', (update) => {
    for (const s of Y.decodeUpdate(update).structs) sent.set(`${s.id.client}:${s.id.clock}`, performance.now())
    writer.send(updateMessage(update))
  })

  const words = ['the ', 'plan ', 'for ', 'next ', 'week ', 'is ', 'to ', 'ship ']
  const updates = Number(opts.updates)
  const every = 1000 / Number(opts.rate)
  const start = performance.now()
  for (let i = 0; i < updates; i++) {
    text.insert(Math.floor(Math.random() * text.length), words[i % words.length])
    const due = start + (i + 1) * every
    const wait = due - performance.now()
    if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait))
  }
  const deadline = performance.now() + 10_000
  while (sent.size > 0 && performance.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 50))

  latencies.sort((a, b) => a - b)
  const at = (q) => latencies[Math.min(latencies.length - 1, Math.floor(latencies.length * q))].toFixed(1)
  const status = await (await fetch(`http://${base}/api/status`)).json()
  const took = [...log.matchAll(/compacted.*?took=(\S+)/g)].map((m) => m[1])
  const compactions = took.length
  console.log(`mode ${opts.mode}: ${latencies.length} of ${updates} edits back (${sent.size} missing), ` +
    `p50 ${at(0.5)} ms, p99 ${at(0.99)} ms, max ${at(1)} ms; ${compactions} compactions (${took.join(', ')}), ` +
    `longest_compaction_ms ${status.longest_compaction_ms}`)
  if (process.env.STALL_LOG) console.log(log.split('\n').filter((l) => /compact|merge job/.test(l)).join('\n'))
  writer.close()
  reader.close()
  if (sent.size > 0) process.exitCode = 1
} finally {
  server.kill('SIGINT')
  await new Promise((resolve) => server.on('exit', resolve))
  rmSync(dir, { recursive: true, force: true })
}

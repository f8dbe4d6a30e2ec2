// Compares what large documents cost a Yjs server: Concord, the y-websocket reference server
// (@y/websocket-server, documents in memory) or y-sweet, each started here on a free port. On
// 500 KB documents (words typed at random places, tests/node/large-doc.mjs) it measures the
// server's RSS added by 1 and by 5 live documents, by each of 100 idle connections on one of
// them, what is left after those leave, and a join storm of 100 fresh clients (time until every
// one has the full state, server CPU seconds). The reference server destroys a document when its
// last client leaves, so every document keeps ONE idle connection (the one that wrote it) for the
// whole run, on every server alike. Clients are raw sockets speaking the sync protocol
// (tests/node/raw-sync.mjs): this process holds hashes of what they received, not Docs, so the
// storm's time is the server's, not the decoding of 100 copies here. Every Step2 is checked to
// hold the whole document (decoded once per distinct payload).
//
// Usage: node run.mjs --server concord|reference|y-sweet [--bin PATH] [--out FILE]
//        [--size BYTES] [--docs N] [--connections N]
import { spawn } from 'node:child_process'
import { createHash } from 'node:crypto'
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import WebSocket from 'ws'
import * as Y from 'yjs'
import { typedDocument } from '../../tests/node/large-doc.mjs'
import { rawSync, updateMessage } from '../../tests/node/raw-sync.mjs'
import { rss, cpuSeconds, settledRss, mb } from '../../tests/node/server-probe.mjs'

const here = path.dirname(fileURLToPath(import.meta.url))
const root = path.resolve(here, '../..')
const { values: opts } = parseArgs({
  options: {
    server: { type: 'string' },
    bin: { type: 'string' },
    out: { type: 'string' },
    size: { type: 'string', default: '500000' },
    docs: { type: 'string', default: '5' },
    connections: { type: 'string', default: '100' }
  }
})
const SERVERS = ['concord', 'reference', 'y-sweet']
if (!SERVERS.includes(opts.server)) {
  console.error(`usage: node run.mjs --server ${SERVERS.join('|')} [--bin PATH] [--out FILE]`)
  process.exit(2)
}
const SIZE = Number(opts.size)
const DOCS = Number(opts.docs)
const CONNECTIONS = Number(opts.connections)
const ROOT = 'text'
const out = opts.out ?? path.join(root, 'target/bench', `large-docs-${opts.server}.json`)

/** Spawns `cmd` and resolves once a line of its output gives `listening addr=HOST:PORT`. */
function launch (cmd, args, env, urlFor) {
  const child = spawn(cmd, args, { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] })
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${cmd} did not start in 60 s`)), 60000)
    child.on('exit', (code) => reject(new Error(`${cmd} exited with ${code}`)))
    let buf = ''
    const scan = (chunk) => {
      buf += chunk
      const m = buf.match(/listening addr=(\S+)/) ?? buf.match(/Listening on (?:ws:\/\/)?([\d.]+:\d+)/i)
      if (m) {
        clearTimeout(timer)
        child.stdout.off('data', scan)
        child.stderr.off('data', scan)
        child.stdout.resume()
        child.stderr.resume()
        resolve({
          pid: child.pid,
          addr: m[1],
          url: (doc) => urlFor(m[1], doc),
          async stop () {
            if (child.exitCode !== null) return
            const exited = new Promise((resolve) => child.once('exit', resolve))
            child.kill('SIGTERM')
            await exited
          }
        })
      }
    }
    child.stdout.on('data', scan)
    child.stderr.on('data', scan)
  })
}

/** Starts the chosen server; resolves with its pid, a room URL maker and `stop`. */
async function startServer () {
  const dir = mkdtempSync(path.join(tmpdir(), 'large-docs-'))
  let server
  if (opts.server === 'concord') {
    const bin = path.resolve(opts.bin ?? path.join(root, 'target/release/concord'))
    server = await launch(bin, ['serve', '--listen', '127.0.0.1:0', '--data-dir', dir],
      { RUST_LOG: 'info', NO_COLOR: '1' }, (addr, doc) => `ws://${addr}/ws/${doc}`)
    server.status = async () => (await fetch(`http://${server.addr}/api/status`)).json()
  } else if (opts.server === 'reference') {
    server = await launch(process.execPath, [path.join(here, 'reference-server.mjs')], {},
      (addr, doc) => `ws://${addr}/${doc}`)
  } else {
    // y-sweet serves a document once it was created (POST /doc/new), at /d/DOC/ws/DOC.
    server = await launch(opts.bin ?? 'y-sweet', ['serve', dir, '--host', '127.0.0.1', '--port', '0'],
      { NO_COLOR: '1' }, (addr, doc) => `ws://${addr}/d/${doc}/ws/${doc}`)
    server.create = async (doc) => {
      const res = await fetch(`http://${server.addr}/doc/new`, {
        method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ docId: doc })
      })
      if (!res.ok) throw new Error(`y-sweet: creating ${doc}: HTTP ${res.status}`)
    }
  }
  const stop = server.stop
  server.stop = async () => { await stop(); rmSync(dir, { recursive: true, force: true }) }
  return server
}

const sha = (bytes) => createHash('sha256').update(bytes).digest('hex')

/** What a correct Step2 of each document decodes to, and payloads already checked. */
const texts = new Map()
const checked = new Set()

/** Throws unless a raw client's Step2 holds exactly document `doc` (decoded once per payload). */
function checkFullState (doc, { sha256, length, bytes }) {
  if (checked.has(`${doc}:${sha256}`)) return
  if (!bytes) throw new Error(`${doc}: a Step2 of ${length} bytes was not kept for checking`)
  const ydoc = new Y.Doc()
  Y.applyUpdate(ydoc, bytes)
  const got = sha(ydoc.getText(ROOT).toString())
  ydoc.destroy()
  if (got !== texts.get(doc)) throw new Error(`${doc}: a Step2 of ${length} bytes is not the document`)
  checked.add(`${doc}:${sha256}`)
}
const keepUnchecked = (doc) => (sha256) => !checked.has(`${doc}:${sha256}`)

/**
 * Writes a generated document through one raw client, which stays connected (idle) to keep it
 * live, and waits until a fresh client receives all of it. Returns the writer.
 */
async function writeDoc (server, doc, seed) {
  const update = typedDocument(Y, { root: ROOT, size: SIZE, seed })
  const ydoc = new Y.Doc()
  Y.applyUpdate(ydoc, update)
  texts.set(doc, sha(ydoc.getText(ROOT).toString()))
  ydoc.destroy()
  await server.create?.(doc)
  const writer = rawSync(WebSocket, server.url(doc))
  await writer.step2
  writer.ws.send(updateMessage(update))
  const deadline = Date.now() + 60000
  for (;;) {
    const probe = rawSync(WebSocket, server.url(doc), { keepBytes: true })
    const got = await probe.step2
    await probe.close()
    try {
      checkFullState(doc, got)
      return writer
    } catch (e) {
      if (Date.now() > deadline) throw e
    }
    await new Promise((resolve) => setTimeout(resolve, 200))
  }
}

/** Opens `n` raw clients on `doc` at once; resolves with them once each has the full state. */
async function join (server, doc, n, { paused }) {
  const clients = Array.from({ length: n }, () =>
    rawSync(WebSocket, server.url(doc), { paused, keepBytes: keepUnchecked(doc) }))
  if (paused) {
    // Read nothing until all are connected, as clients on a slower network than loopback would.
    await Promise.all(clients.map((c) => new Promise((resolve, reject) => {
      c.ws.once('open', resolve)
      c.ws.once('error', reject)
    })))
    for (const c of clients) c.resume()
  }
  for (const s of await Promise.all(clients.map((c) => c.step2))) checkFullState(doc, s)
  return clients
}

const server = await startServer()
const results = { server: opts.server, size: SIZE, date: new Date().toISOString() }
const anchors = []
try {
  const base = (await settledRss(server.pid)).rss
  results.rss_start = base
  console.error(`${opts.server}: pid ${server.pid}, RSS ${mb(base)} at start`)
  for (let i = 1; i <= DOCS; i++) {
    anchors.push(await writeDoc(server, `large-${i}`, i))
    if (i === 1 || i === DOCS) {
      const now = (await settledRss(server.pid)).rss
      results[`live_docs_${i}`] = now - base
      console.error(`${i} live document(s): +${mb(now - base)}`)
    }
  }

  const before = (await settledRss(server.pid)).rss
  const idle = await join(server, 'large-1', CONNECTIONS, { paused: true })
  const withIdle = (await settledRss(server.pid)).rss
  results.idle_connections = CONNECTIONS
  results.idle_per_connection = (withIdle - before) / CONNECTIONS
  console.error(`${CONNECTIONS} idle connections: +${mb(withIdle - before)}`)
  await Promise.all(idle.map((c) => c.close()))
  const left = (await settledRss(server.pid)).rss
  results.after_leaving = left - before
  console.error(`after they left: ${mb(left - before)} over before they came`)

  const encodedBefore = (await server.status?.())?.full_states_encoded
  const cpuBefore = cpuSeconds(server.pid)
  const start = performance.now()
  const storm = await join(server, 'large-1', CONNECTIONS, { paused: false })
  results.storm_ms = performance.now() - start
  results.storm_cpu_s = cpuSeconds(server.pid) - cpuBefore
  const encodedAfter = (await server.status?.())?.full_states_encoded
  if (encodedBefore !== undefined && encodedAfter !== undefined) results.storm_full_states_encoded = encodedAfter - encodedBefore
  await Promise.all(storm.map((c) => c.close()))
  console.error(`storm of ${CONNECTIONS}: all synced in ${results.storm_ms.toFixed(0)} ms, server CPU ${results.storm_cpu_s.toFixed(2)} s`)
} finally {
  await Promise.all(anchors.map((a) => a.close()))
  await server.stop()
}

mkdirSync(path.dirname(out), { recursive: true })
writeFileSync(out, JSON.stringify(results, null, 2) + '\n')
const kb = (bytes) => `${(bytes / 1024).toFixed(1)} KB`
console.log(`| ${opts.server} | ${SIZE / 1000} KB documents |`)
console.log('| --- | --- |')
console.log(`| RSS added by 1 live document | ${mb(results.live_docs_1)} |`)
console.log(`| RSS added by ${DOCS} live documents | ${mb(results[`live_docs_${DOCS}`])} |`)
console.log(`| RSS per idle connection (${CONNECTIONS} on one document) | ${kb(results.idle_per_connection)} |`)
console.log(`| RSS after they left, over before they came | ${mb(results.after_leaving)} |`)
console.log(`| join storm of ${CONNECTIONS}: time until all synced | ${results.storm_ms.toFixed(0)} ms |`)
console.log(`| join storm of ${CONNECTIONS}: server CPU | ${results.storm_cpu_s.toFixed(2)} s |`)
if (results.storm_full_states_encoded !== undefined) {
  console.log(`| join storm of ${CONNECTIONS}: full states encoded | ${results.storm_full_states_encoded} |`)
}
console.log(`\n(written to ${path.relative(process.cwd(), out)})`)

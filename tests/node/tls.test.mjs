// Unmodified Yjs clients (y-websocket's WebsocketProvider over `ws`) reaching Concord over
// wss://, trusting a test CA the way Node apps do: NODE_EXTRA_CA_CERTS. Node reads that variable
// once, at startup, so each client runs in a child process. The CA and the server certificate
// are made with openssl for this run.
import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { execFileSync, spawn } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import https from 'node:https'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { startServer } from './concord.mjs'

const here = path.dirname(fileURLToPath(import.meta.url))

// The child: provider A connects, syncs and writes; provider B connects and waits for A's text.
// It prints one JSON line: what happened, or the connection errors if it could not connect.
const CLIENT = `
import WebSocket from 'ws'
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
const { CONCORD_URL: url, CONCORD_ROOM: room, CONCORD_TEXT: text } = process.env
const done = (result) => { console.log(JSON.stringify(result)); process.exit(0) }
setTimeout(() => done({ synced: false, errors: ['timed out'] }), 20000)
const connect = () => {
  const doc = new Y.Doc()
  const provider = new WebsocketProvider(url, room, doc, { WebSocketPolyfill: WebSocket, disableBc: true })
  provider.on('connection-error', (e) => done({ synced: false, errors: [String(e?.message ?? e?.error?.message ?? e)] }))
  return { doc, provider }
}
const a = connect()
a.provider.on('sync', (synced) => {
  if (!synced) return
  a.doc.getText('t').insert(0, text)
  const b = connect()
  const seen = () => b.doc.getText('t').toString() === text && done({ synced: true, text: b.doc.getText('t').toString() })
  b.doc.getText('t').observe(seen)
  b.provider.on('sync', seen)
})
`

/** Runs the child client with `env`; resolves with what it printed. */
function runClient (env) {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--input-type=module', '-e', CLIENT], {
      cwd: here,
      env,
      stdio: ['ignore', 'pipe', 'inherit']
    })
    let out = ''
    child.stdout.on('data', (chunk) => { out += chunk })
    child.on('error', reject)
    child.on('exit', (code) => {
      try { resolve(JSON.parse(out.trim().split('\n').pop())) } catch { reject(new Error(`client exited with ${code}: ${out}`)) }
    })
  })
}

/** GET over https trusting only `ca`. */
function httpsGet (url, ca) {
  return new Promise((resolve, reject) => {
    https.get(url, { ca }, (res) => {
      let body = ''
      res.on('data', (chunk) => { body += chunk })
      res.on('end', () => resolve({ status: res.statusCode, body }))
    }).on('error', reject)
  })
}

let dir
let server

before(async () => {
  dir = mkdtempSync(path.join(tmpdir(), 'concord-tls-'))
  const ssl = (...args) => execFileSync('openssl', args, { cwd: dir, stdio: ['ignore', 'ignore', 'pipe'] })
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes']
  ssl('req', '-x509', ...ec, '-keyout', 'ca.key', '-out', 'ca.pem', '-days', '1', '-subj', '/CN=concord node test CA',
    '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign')
  ssl('req', ...ec, '-keyout', 'server.key', '-out', 'server.csr', '-subj', '/CN=localhost')
  writeFileSync(path.join(dir, 'server.ext'),
    'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n')
  ssl('x509', '-req', '-in', 'server.csr', '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial',
    '-out', 'server.pem', '-days', '1', '-extfile', 'server.ext')
  server = await startServer(['--tls-cert', path.join(dir, 'server.pem'), '--tls-key', path.join(dir, 'server.key')])
})

after(async () => {
  await server?.stop()
  if (dir) rmSync(dir, { recursive: true, force: true })
})

function wssUrl () {
  return `wss://localhost:${server.addr.split(':').pop()}/ws`
}

test('a y-websocket client syncs over wss:// with the CA in NODE_EXTRA_CA_CERTS', async () => {
  const text = 'hello over wss'
  const result = await runClient({
    ...process.env,
    NODE_EXTRA_CA_CERTS: path.join(dir, 'ca.pem'),
    CONCORD_URL: wssUrl(),
    CONCORD_ROOM: 'node/tls',
    CONCORD_TEXT: text
  })
  assert.deepEqual(result, { synced: true, text })
  // The server stored it; its HTTPS read API says so to a client trusting the same CA.
  const port = server.addr.split(':').pop()
  const res = await httpsGet(`https://localhost:${port}/api/docs/node/tls/text/t`, readFileSync(path.join(dir, 'ca.pem')))
  assert.equal(res.status, 200)
  assert.equal(res.body, text)
})

test('without the CA, the same client refuses the server', async () => {
  const env = { ...process.env, CONCORD_URL: wssUrl(), CONCORD_ROOM: 'node/tls-refused', CONCORD_TEXT: 'never' }
  delete env.NODE_EXTRA_CA_CERTS
  const result = await runClient(env)
  assert.equal(result.synced, false)
  assert.match(result.errors.join(' '), /certificate/i)
})

// Starts the real `concord` binary for the Node and browser tests, and small helpers around
// y-websocket providers. The binary is $CONCORD_BIN or target/release/concord (the README's test
// command builds it first).
import { spawn } from 'node:child_process'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import WebSocket from 'ws'
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..')
export const concordBin = process.env.CONCORD_BIN
  ? path.resolve(root, process.env.CONCORD_BIN)
  : path.join(root, 'target/release/concord')

/** Starts a server on a free port; resolves once it reports its address. */
export async function startServer (args = [], { dataDir } = {}) {
  const dir = dataDir ?? mkdtempSync(path.join(tmpdir(), 'concord-node-'))
  const child = spawn(concordBin, ['serve', '--listen', '127.0.0.1:0', '--data-dir', dir, ...args], {
    env: { ...process.env, RUST_LOG: process.env.CONCORD_TEST_LOG ?? 'info', NO_COLOR: '1' },
    stdio: ['ignore', 'pipe', 'inherit']
  })
  const log = []
  const addr = await new Promise((resolve, reject) => {
    let buf = ''
    const timer = setTimeout(() => reject(new Error('server did not start in 60 s')), 60000)
    child.on('exit', (code) => reject(new Error(`server exited with ${code}`)))
    child.stdout.on('data', (chunk) => {
      buf += chunk
      let nl
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl)
        buf = buf.slice(nl + 1)
        log.push(line)
        if (process.env.CONCORD_TEST_VERBOSE) console.error('[concord]', line)
        const m = line.match(/listening addr=(\S+)/)
        if (m) { clearTimeout(timer); resolve(m[1]) }
      }
    })
  })
  return {
    addr,
    dir,
    log,
    pid: child.pid,
    wsUrl: `ws://${addr}/ws`,
    httpUrl: `http://${addr}`,
    async stop () {
      if (child.exitCode === null) {
        const exited = new Promise((resolve) => child.once('exit', resolve))
        child.kill('SIGTERM')
        await exited
      }
      if (!dataDir) rmSync(dir, { recursive: true, force: true })
    }
  }
}

/**
 * Starts `concord demo`: three regions (eu, us, ap) meshed through links adding `latency` one
 * way. Resolves with each region's URLs once all are listening.
 */
export async function startRegions (latency = '50ms') {
  const dir = mkdtempSync(path.join(tmpdir(), 'concord-regions-'))
  const child = spawn(concordBin, ['demo', '--listen', '127.0.0.1:0', '--latency', latency, '--data-dir', dir], {
    env: { ...process.env, RUST_LOG: process.env.CONCORD_TEST_LOG ?? 'warn', NO_COLOR: '1' },
    stdio: ['ignore', 'pipe', 'inherit']
  })
  const regions = await new Promise((resolve, reject) => {
    const found = []
    let buf = ''
    const timer = setTimeout(() => reject(new Error('regions did not start in 60 s')), 60000)
    child.on('exit', (code) => reject(new Error(`concord demo exited with ${code}`)))
    child.stdout.on('data', (chunk) => {
      buf += chunk
      for (const m of buf.matchAll(/region (\w+): http:\/\/([\d.:]+)\//g)) {
        if (!found.some((r) => r.name === m[1])) found.push({ name: m[1], addr: m[2], wsUrl: `ws://${m[2]}/ws`, httpUrl: `http://${m[2]}` })
      }
      if (found.length === 3) { clearTimeout(timer); resolve(found) }
    })
  })
  return {
    regions,
    async stop () {
      if (child.exitCode === null) {
        const exited = new Promise((resolve) => child.once('exit', resolve))
        child.kill('SIGINT')
        await exited
      }
      rmSync(dir, { recursive: true, force: true })
    }
  }
}

/**
 * A y-websocket provider as applications create one, on a fresh Y.Doc. Each stands for a separate
 * app instance, so the cross-tab BroadcastChannel is off: in one Node process it would link the
 * providers of a room directly, around the server under test (and race with it).
 */
export function connect (serverUrl, room, opts = {}) {
  const doc = new Y.Doc()
  const provider = new WebsocketProvider(serverUrl, room, doc, { WebSocketPolyfill: WebSocket, disableBc: true, ...opts })
  return { doc, provider }
}

/** Resolves when `provider` is synced. */
export function synced (provider, ms = 20000) {
  if (provider.synced) return Promise.resolve()
  return withTimeout(new Promise((resolve) => {
    const on = (s) => { if (s) { provider.off('sync', on); resolve() } }
    provider.on('sync', on)
  }), ms, 'provider did not sync')
}

/** Polls `cond` until it holds. */
export async function until (cond, ms = 20000, what = 'condition') {
  const deadline = Date.now() + ms
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
}

function withTimeout (p, ms, what) {
  let t
  return Promise.race([p, new Promise((_resolve, reject) => { t = setTimeout(() => reject(new Error(what)), ms) })])
    .finally(() => clearTimeout(t))
}

export { Y }

// A Yjs client reduced to what a server sees of a fresh one, without a Y.Doc: it opens a
// WebSocket to a room, sends SyncStep1 with an empty state vector, answers the server's SyncStep1
// with an empty SyncStep2, and keeps the server's SyncStep2 (the document's full state) only as a
// SHA-256 and a length (plus, on request, the bytes). A test process can hold a hundred of these
// on a large document where it could not hold a hundred Docs. It can also stop reading after its
// Step1 until told to go on: a client on a real network takes a while to receive 2 MB, so the
// server has to hold what the socket did not take yet, which on loopback it rarely does. The
// messages are y-protocols' sync messages (lib0 varuint framing), written out here; the WebSocket
// class is passed in (the `ws` package), so the harness in bench/large-docs, with its own
// node_modules, uses this too.
import { createHash } from 'node:crypto'

const MESSAGE_SYNC = 0
const STEP1 = 0
const STEP2 = 1
const UPDATE = 2
/** [sync, step1, state vector of 1 byte: 0 entries]: a fresh client's first message. */
const FRESH_STEP1 = Uint8Array.of(MESSAGE_SYNC, STEP1, 1, 0)
/** [sync, step2, update of 2 bytes: 0 structs, empty delete set]: "I have nothing for you". */
const EMPTY_STEP2 = Uint8Array.of(MESSAGE_SYNC, STEP2, 2, 0, 0)

/** A sync Update message carrying `update` (a Yjs v1 update): how a client sends an edit. */
export function updateMessage (update) {
  const len = []
  for (let n = update.length; ; n = Math.floor(n / 128)) {
    if (n < 128) { len.push(n); break }
    len.push((n % 128) | 0x80)
  }
  const msg = new Uint8Array(2 + len.length + update.length)
  msg.set([MESSAGE_SYNC, UPDATE, ...len])
  msg.set(update, 2 + len.length)
  return msg
}

/** Reads a lib0 varuint at `pos`; returns [value, next position]. */
function readVarUint (bytes, pos) {
  let value = 0
  let mult = 1
  for (;;) {
    if (pos >= bytes.length) throw new Error('truncated varuint')
    const b = bytes[pos++]
    value += (b & 0x7f) * mult
    if (b < 0x80) return [value, pos]
    mult *= 128
    if (mult > 2 ** 53) throw new Error('varuint too large')
  }
}

/**
 * Connects a raw sync client to `url` (ws://host/ws/room). `keepBytes` (a boolean, or a function
 * of the payload's SHA-256 hex) keeps the Step2 payload itself, for decoding; otherwise only its
 * hash and length are kept. `paused` stops reading once Step1
 * is sent, until `client.resume()`. `step2` resolves with `{ sha256, length, bytes? }` when the
 * full state has arrived.
 */
export function rawSync (WebSocket, url, { keepBytes = false, paused = false } = {}) {
  const ws = new WebSocket(url)
  const client = { ws, updates: 0, closed: false }
  let resumed = !paused
  client.resume = () => {
    resumed = true
    if (ws.readyState === WebSocket.OPEN) ws.resume()
  }
  client.step2 = new Promise((resolve, reject) => {
    ws.on('open', () => {
      ws.send(FRESH_STEP1)
      if (!resumed) ws.pause()
    })
    ws.on('error', reject)
    ws.on('close', (code) => { client.closed = true; reject(new Error(`closed with ${code} before Step2`)) })
    ws.on('message', (data) => {
      const bytes = data instanceof Buffer ? data : Buffer.concat([].concat(data))
      let [type, pos] = readVarUint(bytes, 0)
      if (type !== MESSAGE_SYNC) return // awareness and the rest: not what this client measures
      let sub
      ;[sub, pos] = readVarUint(bytes, pos)
      if (sub === STEP1) {
        ws.send(EMPTY_STEP2)
      } else if (sub === STEP2) {
        let len
        ;[len, pos] = readVarUint(bytes, pos)
        const payload = bytes.subarray(pos, pos + len)
        if (payload.length !== len) return reject(new Error(`Step2 truncated: ${payload.length} of ${len} bytes`))
        const sha256 = createHash('sha256').update(payload).digest('hex')
        const keep = typeof keepBytes === 'function' ? keepBytes(sha256) : keepBytes
        resolve({ sha256, length: len, bytes: keep ? Uint8Array.from(payload) : undefined })
      } else if (sub === UPDATE) {
        client.updates++
      }
    })
  })
  client.step2.catch(() => {}) // observed by whoever awaits it; no unhandled rejection after a close
  client.close = () => new Promise((resolve) => {
    if (client.closed || ws.readyState === WebSocket.CLOSED) return resolve()
    ws.once('close', resolve)
    ws.close()
  })
  return client
}

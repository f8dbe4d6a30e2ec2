// A message far beyond --max-message-size, refused while the client is still sending it: the
// client must see close code 1009 (the documented one), not 1006 (a reset), both with the `ws`
// library directly and through y-websocket's WebsocketProvider.
import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import WebSocket from 'ws'
import { startServer, connect, synced } from './concord.mjs'

let server
before(async () => { server = await startServer(['--max-message-size', '65536']) })
after(async () => { await server.stop() })

/** Resolves with the close code `ws` reports; 1006 means the connection was cut without one. */
function closeCode (ws) {
  return new Promise((resolve) => ws.once('close', (code) => resolve(code)))
}

for (const mb of [8, 80]) {
  test(`a ${mb} MB message with a 64 KiB limit is closed with 1009 (ws)`, async () => {
    const ws = new WebSocket(`${server.wsUrl}/oversize/ws-${mb}`)
    ws.on('error', () => {}) // a reset would also surface here; the close code is the assertion
    const closed = closeCode(ws)
    await new Promise((resolve, reject) => { ws.once('open', resolve); ws.once('error', reject) })
    ws.send(Buffer.alloc(mb << 20, 7))
    assert.equal(await closed, 1009)
  })
}

test('an edit far beyond the limit closes a WebsocketProvider with 1009', async () => {
  const { doc, provider } = connect(server.wsUrl, 'oversize/provider', { connect: true })
  try {
    await synced(provider)
    const closed = new Promise((resolve) => provider.once('connection-close', (event) => resolve(event?.code)))
    provider.shouldConnect = false // keep the first close, no reconnection loop
    doc.getText('t').insert(0, 'x'.repeat(20 << 20))
    assert.equal(await closed, 1009)
  } finally {
    provider.destroy()
    doc.destroy()
  }
})

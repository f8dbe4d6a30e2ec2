// Unmodified Yjs clients (yjs + y-websocket's WebsocketProvider over `ws`) against Concord.
import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { startServer, connect, synced, until, Y } from './concord.mjs'

let server
const open = []
function client (room, opts) {
  const c = connect(server.wsUrl, room, opts)
  open.push(c)
  return c
}

before(async () => { server = await startServer() })
after(async () => {
  for (const c of open) { c.provider.destroy(); c.doc.destroy() }
  await server.stop()
})

test('two providers converge on Y.Text and Y.Map', async () => {
  const a = client('node/converge')
  const b = client('node/converge')
  await Promise.all([synced(a.provider), synced(b.provider)])
  for (let i = 0; i < 30; i++) {
    a.doc.getText('t').insert(a.doc.getText('t').length, `a${i} `)
    b.doc.getText('t').insert(0, `b${i} `)
  }
  a.doc.getMap('m').set('colour', 'red')
  b.doc.getMap('m').set('size', 'L')
  await until(() => a.doc.getText('t').toString() === b.doc.getText('t').toString() &&
    a.doc.getText('t').length === 2 * 30 * 4 - 20 && a.doc.getMap('m').size === 2 && b.doc.getMap('m').size === 2,
  20000, 'convergence')
  const text = a.doc.getText('t').toString()
  for (let i = 0; i < 30; i++) {
    assert.ok(text.includes(`a${i} `) && text.includes(`b${i} `))
  }
  assert.equal(b.doc.getMap('m').get('colour'), 'red')
  assert.equal(a.doc.getMap('m').get('size'), 'L')
  assert.deepEqual(Y.encodeStateVector(a.doc), Y.encodeStateVector(b.doc))
})

test('offline edits merge on reconnect', async () => {
  const a = client('node/offline')
  const b = client('node/offline')
  await Promise.all([synced(a.provider), synced(b.provider)])
  a.doc.getText('t').insert(0, 'shared ')
  await until(() => b.doc.getText('t').toString() === 'shared ')

  a.provider.disconnect()
  a.doc.getText('t').insert(a.doc.getText('t').length, 'offline-a ')
  b.doc.getText('t').insert(b.doc.getText('t').length, 'online-b ')
  await new Promise((resolve) => setTimeout(resolve, 300))
  assert.ok(!b.doc.getText('t').toString().includes('offline-a'), 'a was offline')

  a.provider.connect()
  await until(() => {
    const ta = a.doc.getText('t').toString()
    return ta === b.doc.getText('t').toString() && ta.includes('offline-a') && ta.includes('online-b')
  }, 20000, 'offline edits to merge')
  // A newcomer gets the merged result from the server.
  const c = client('node/offline')
  await synced(c.provider)
  assert.equal(c.doc.getText('t').toString(), a.doc.getText('t').toString())
})

test('awareness is shared and removed when a client leaves', async () => {
  const a = client('node/awareness')
  const b = client('node/awareness')
  await Promise.all([synced(a.provider), synced(b.provider)])
  a.provider.awareness.setLocalStateField('user', { name: 'Ann', color: '#c00' })
  const aId = a.doc.clientID
  await until(() => b.provider.awareness.getStates().get(aId)?.user?.name === 'Ann', 20000, 'presence')
  a.provider.destroy()
  await until(() => !b.provider.awareness.getStates().has(aId), 20000, 'presence removal')
})

test('a 2 MB insert syncs to live and late clients', async () => {
  const a = client('node/big')
  const b = client('node/big')
  await Promise.all([synced(a.provider), synced(b.provider)])
  const big = 'x'.repeat(2 * 1024 * 1024)
  a.doc.getText('t').insert(0, big)
  await until(() => b.doc.getText('t').length === big.length, 30000, '2 MB to reach b')
  const c = client('node/big')
  await synced(c.provider, 30000)
  assert.equal(c.doc.getText('t').length, big.length)
})

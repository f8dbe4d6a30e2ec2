// Real Yjs clients across regions: three regions (`concord demo`) meshed through links that add
// 50 ms one way. A client edits offline and comes back through a different region; presence
// crosses regions.
import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { WebsocketProvider } from 'y-websocket'
import WebSocket from 'ws'
import { startRegions, connect, synced, until, Y } from './concord.mjs'

let cluster
let regions = []
const open = []

before(async () => {
  cluster = await startRegions('50ms')
  regions = cluster.regions
  for (const r of regions) {
    await waitFor(async () => {
      const s = await (await fetch(`${r.httpUrl}/api/status`)).json()
      return s.peers.filter((p) => p.connected).length === 2
    }, 'mesh links')
  }
})

after(async () => {
  for (const c of open) { c.provider.destroy(); c.doc.destroy() }
  await cluster?.stop()
})

async function waitFor (fn, what, ms = 20000) {
  const deadline = Date.now() + ms
  while (!(await fn())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
}

async function textAt (region, room) {
  const res = await fetch(`${region.httpUrl}/api/docs/${room}/text/t`)
  return res.status === 200 ? res.text() : null
}

test('offline edits merge when the client reconnects to another region', async () => {
  const room = 'node/roaming'
  const roamer = connect(regions[0].wsUrl, room)
  const local = connect(regions[2].wsUrl, room)
  open.push(roamer, local)
  await Promise.all([synced(roamer.provider), synced(local.provider)])
  roamer.doc.getText('t').insert(0, 'start. ')
  await until(() => local.doc.getText('t').toString() === 'start. ', 20000, 'start to cross regions')

  // Offline: keep editing while another region's user edits too.
  roamer.provider.disconnect()
  roamer.doc.getText('t').insert(roamer.doc.getText('t').length, 'written offline. ')
  local.doc.getText('t').insert(0, 'meanwhile in ap. ')
  await waitFor(async () => (await textAt(regions[0], room))?.includes('meanwhile in ap.'), 'ap edit to reach eu')

  // Back online, through the US region this time, with the same document.
  roamer.provider.destroy()
  const back = { doc: roamer.doc, provider: new WebsocketProvider(regions[1].wsUrl, room, roamer.doc, { WebSocketPolyfill: WebSocket, disableBc: true }) }
  open.push(back)
  await synced(back.provider)

  const expected = () => roamer.doc.getText('t').toString()
  await until(() => expected().includes('meanwhile in ap.') && local.doc.getText('t').toString() === expected(), 20000, 'clients to converge')
  for (const r of regions) {
    await waitFor(async () => (await textAt(r, room)) === expected(), `region ${r.addr} to converge`)
  }
  const text = expected()
  assert.ok(text.includes('start. ') && text.includes('written offline. ') && text.includes('meanwhile in ap. '), text)
  assert.deepEqual(Y.encodeStateVector(roamer.doc), Y.encodeStateVector(local.doc))
})

test('presence crosses regions, also to a region that opens the document later', async () => {
  const room = 'node/presence-across'
  const ann = connect(regions[0].wsUrl, room)
  open.push(ann)
  ann.provider.awareness.setLocalStateField('user', { name: 'Ann' })
  await synced(ann.provider)
  // Bob's region has not had this document open while Ann announced herself: it learns her
  // presence when it opens the document, not only at her next change.
  const bob = connect(regions[1].wsUrl, room)
  open.push(bob)
  await synced(bob.provider)
  const annId = ann.doc.clientID
  await until(() => bob.provider.awareness.getStates().get(annId)?.user?.name === 'Ann', 5000, 'Ann at Bob')
  bob.provider.awareness.setLocalStateField('user', { name: 'Bob' })
  await until(() => ann.provider.awareness.getStates().get(bob.doc.clientID)?.user?.name === 'Bob', 5000, 'Bob at Ann')
  // Ann leaves: her presence is removed in the other region too.
  ann.provider.destroy()
  await until(() => !bob.provider.awareness.getStates().has(annId), 10000, 'Ann removed at Bob')
})

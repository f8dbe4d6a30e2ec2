// The region map's model (web-demo/src/region-map-model.js) on made-up statuses: which links are
// up, down or carrying a detour, and what the map says about each in words. The browser test in
// demo.test.mjs draws it from a live demo; this covers the cases a live demo cannot be put in on
// demand (a region that does not answer, detours reported by the status fields of issue 16,
// servers that predate them).
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { regionMap } from '../../web-demo/src/region-map-model.js'

const region = (name) => ({ name, url: `http://${name}.test`, node: name })
const peer = (id, connected, more = {}) => ({ node_id: id, region: id, connected, lag_ms: connected ? 0 : null, ...more })
const states = (map) => Object.fromEntries(map.links.map((l) => [l.key, l.state]))

test('a healthy mesh: every region and every link up, each link once', () => {
  const map = regionMap([
    { r: region('us'), s: { node_id: 'us', peers: [peer('eu', true, { lag_ms: 12 }), peer('ap', true)] } },
    { r: region('eu'), s: { node_id: 'eu', peers: [peer('us', true, { lag_ms: 40 }), peer('ap', true)] } },
    { r: region('ap'), s: { node_id: 'ap', peers: [peer('eu', true), peer('us', true)] } }
  ], 'http://us.test')
  assert.deepEqual(map.nodes.map((n) => [n.name, n.answering, n.here]), [['ap', true, false], ['eu', true, false], ['us', true, true]])
  assert.deepEqual(states(map), { 'eu|us': 'up', 'ap|us': 'up', 'ap|eu': 'up' })
  // The lag shown is the larger of the two directions.
  const euUs = map.links.find((l) => l.key === 'eu|us')
  assert.equal(euUs.text, 'eu – us: up, 40 ms')
  assert.equal(euUs.label, '40 ms')
})

test('a cut link is down; the others carry the cut-off origin as a detour', () => {
  const map = regionMap([
    { r: region('eu'), s: { node_id: 'eu', peers: [peer('us', false), peer('ap', true, { lag_ms: 40, carries: ['ap', 'us'], relays: ['eu'] })] } },
    { r: region('us'), s: { node_id: 'us', peers: [peer('eu', false), peer('ap', true, { carries: ['ap', 'eu'], relays: ['us'] })] } },
    { r: region('ap'), s: { node_id: 'ap', peers: [peer('eu', true, { carries: ['eu'], relays: ['ap', 'us'] }), peer('us', true, { carries: ['us'], relays: ['ap', 'eu'] })] } }
  ])
  assert.deepEqual(states(map), { 'eu|us': 'down', 'ap|eu': 'detour', 'ap|us': 'detour' })
  const apEu = map.links.find((l) => l.key === 'ap|eu')
  assert.equal(apEu.text, "ap – eu: up, 40 ms, carries us's updates (detour)")
  assert.equal(apEu.label, '40 ms · carries us')
  assert.equal(map.links.find((l) => l.key === 'eu|us').text, 'eu – us: down')
})

test('one end still saying connected is not enough for a link to be up', () => {
  const map = regionMap([
    { r: region('eu'), s: { node_id: 'eu', peers: [peer('us', true)] } },
    { r: region('us'), s: { node_id: 'us', peers: [peer('eu', false)] } }
  ])
  assert.deepEqual(states(map), { 'eu|us': 'down' })
})

test('a region that does not answer: greyed, and its links down whatever its peers last saw', () => {
  const map = regionMap([
    { r: region('eu'), s: { node_id: 'eu', peers: [peer('us', true), peer('ap', true)] } },
    { r: region('us'), error: 'status 502' },
    { r: region('ap'), s: { node_id: 'ap', peers: [peer('eu', true), peer('us', true)] } }
  ])
  assert.deepEqual(map.nodes.map((n) => [n.name, n.answering]), [['ap', true], ['eu', true], ['us', false]])
  assert.deepEqual(states(map), { 'eu|us': 'down', 'ap|eu': 'up', 'ap|us': 'down' })
})

test('detours name origins the map does not poll by the region their statuses give', () => {
  const map = regionMap([
    {
      r: region('eu'),
      s: {
        node_id: 'eu',
        replication: { origins: [{ origin: 'node-7', region: 'sa' }] },
        peers: [peer('us', true, { carries: ['us', 'node-7'], relays: [] })]
      }
    },
    { r: region('us'), s: { node_id: 'us', peers: [peer('eu', true)] } }
  ])
  assert.equal(map.links[0].text, "eu – us: up, 0 ms, carries sa's updates (detour)")
})

test('servers without the routing fields never show a detour, and unknown peers draw no link', () => {
  const map = regionMap([
    { r: region('eu'), s: { node_id: 'eu', peers: [peer('us', true), { node_id: null, url: 'http://x', connected: false }] } },
    { r: region('us'), s: { node_id: 'us', peers: [peer('eu', true)] } }
  ])
  assert.deepEqual(states(map), { 'eu|us': 'up' })
})

// The operator files in ops/ against a live server: every metric the Grafana dashboard and the
// alerting rules query must be in a real scrape of `/metrics`, with samples, labelled with the
// node's region. Two regions linked with access control on, after a client has written, a request
// has been refused and a connection has closed, so every family has a sample to show.
// (`promtool check rules` and `promtool test rules` check the rules themselves; see run-all.sh.)
import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import { readFileSync } from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { startServer, connect, synced, concordBin } from './concord.mjs'

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..')
const SECRET = 'ops-test-auth-secret'
const PEER_SECRET = 'ops-test-peer-secret'
// A document name that must never appear in a label (label cardinality stays bounded).
const DOC = 'ops-dashboard-document-name'
let eu, us
const open = []

function token (...args) {
  return execFileSync(concordBin, ['token', '--expires', '1h', ...args], {
    env: { ...process.env, CONCORD_AUTH_SECRET: SECRET }
  }).toString().trim()
}

before(async () => {
  const auth = ['--auth-secret', SECRET, '--peer-secret', PEER_SECRET]
  eu = await startServer([...auth, '--region', 'eu'])
  us = await startServer([...auth, '--region', 'us', '--peers', eu.httpUrl])
})

after(async () => {
  for (const c of open) { c.provider.destroy(); c.doc.destroy() }
  await us?.stop()
  await eu?.stop()
})

async function scrape (server) {
  const res = await fetch(`${server.httpUrl}/metrics`, { headers: { authorization: `Bearer ${token('--admin')}` } })
  assert.equal(res.status, 200, 'an admin token may scrape /metrics')
  return res.text()
}

/** Sample lines of an exposition, as { name, labels, value }. */
function samples (text) {
  const out = []
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue
    const m = line.match(/^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)/)
    assert.ok(m, `an exposition line parses: ${line}`)
    const labels = {}
    for (const l of (m[3] ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) labels[l[1]] = l[2]
    out.push({ name: m[1], labels, value: Number(m[4]) })
  }
  return out
}

/** The metric names a PromQL expression reads (ours and the process collector's). */
function metricNames (expr) {
  return [...expr.matchAll(/\b((?:concord|process)_[a-z0-9_]+)\b/g)].map((m) => m[1])
}

function dashboardExprs () {
  const dash = JSON.parse(readFileSync(path.join(root, 'ops/grafana-dashboard.json'), 'utf8'))
  const exprs = []
  const walk = (panels) => {
    for (const p of panels ?? []) {
      for (const t of p.targets ?? []) exprs.push(t.expr)
      walk(p.panels)
    }
  }
  walk(dash.panels)
  for (const v of dash.templating?.list ?? []) {
    if (typeof v.query === 'object' && v.query?.query) exprs.push(v.query.query)
  }
  return exprs
}

function alertExprs () {
  const text = readFileSync(path.join(root, 'ops/alerts.yml'), 'utf8')
  return [...text.matchAll(/^\s+expr: (.+)$/gm)].map((m) => m[1])
}

test('every metric the dashboard and the alerts query is in a live scrape, labelled with its region', async () => {
  // Both regions linked (peer metrics exist once a link does).
  const linked = async (s) => (await (await fetch(`${s.httpUrl}/api/status`, { headers: { authorization: `Bearer ${token('--admin')}` } })).json()).peers.some((p) => p.connected)
  for (const s of [eu, us]) {
    const deadline = Date.now() + 20000
    while (!(await linked(s))) {
      assert.ok(Date.now() < deadline, 'the regions link')
      await new Promise((resolve) => setTimeout(resolve, 50))
    }
  }
  // A client writes through eu; the update reaches us.
  const c = connect(eu.wsUrl, DOC, { params: { token: token('--doc', `${DOC}=write`) } })
  open.push(c)
  await synced(c.provider)
  c.doc.getText('t').insert(0, 'metrics, please')
  const deadline = Date.now() + 20000
  for (;;) {
    const res = await fetch(`${us.httpUrl}/api/docs/${DOC}/text/t`, { headers: { authorization: `Bearer ${token('--doc', `${DOC}=read`)}` } })
    if (res.status === 200 && (await res.text()) === 'metrics, please') break
    assert.ok(Date.now() < deadline, 'the update reaches the other region')
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
  // A refused request, and a connection that closes.
  assert.equal((await fetch(`${eu.httpUrl}/api/docs/${DOC}/text/t`)).status, 401)
  c.provider.destroy()

  const required = new Set([...dashboardExprs(), ...alertExprs()].flatMap(metricNames))
  assert.ok(required.size >= 25, `the dashboard and alerts query our metrics (found ${required.size})`)
  for (const [server, region] of [[eu, 'eu'], [us, 'us']]) {
    const text = await scrape(server)
    const all = samples(text)
    const byName = new Map()
    for (const s of all) byName.set(s.name, [...(byName.get(s.name) ?? []), s])
    const missing = [...required].filter((n) => !byName.has(n))
    assert.deepEqual(missing, [], `${region}: every queried metric has a sample`)
    for (const s of all.filter((s) => s.name.startsWith('concord_'))) {
      assert.equal(s.labels.region, region, `${s.name} carries region="${region}"`)
    }
    assert.ok(!text.includes(DOC), `${region}: no document name in any label`)
    assert.ok(!text.includes(SECRET) && !text.includes(PEER_SECRET), `${region}: no secret in the metrics`)
    const up = byName.get('concord_peer_up')
    assert.ok(up.some((s) => s.value === 1 && s.labels.peer_region === (region === 'eu' ? 'us' : 'eu')), `${region}: the link to the other region is up`)
  }
})

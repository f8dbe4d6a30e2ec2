// Access control with the unmodified Yjs client: y-websocket's `params: { token }`, a read-only
// provider (permission-denied, and it keeps receiving), and how a refused client retries.
import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import { startServer, connect, synced, until, concordBin } from './concord.mjs'

const SECRET = 'node-test-secret'
let server
const open = []
function client (room, opts) {
  const c = connect(server.wsUrl, room, opts)
  open.push(c)
  return c
}

/** A token minted by `concord token`, as a script would. */
function token (...docs) {
  const args = ['token', '--expires', '1h']
  for (const d of docs) args.push('--doc', d)
  return execFileSync(concordBin, args, { env: { ...process.env, CONCORD_AUTH_SECRET: SECRET } }).toString().trim()
}

before(async () => { server = await startServer(['--auth-secret', SECRET]) })
after(async () => {
  for (const c of open) { c.provider.destroy(); c.doc.destroy() }
  await server.stop()
})

test('params: { token } lets two providers edit together', async () => {
  const t = token('team/*=write')
  const a = client('team/plan', { params: { token: t } })
  const b = client('team/plan', { params: { token: t } })
  await Promise.all([synced(a.provider), synced(b.provider)])
  a.doc.getText('t').insert(0, 'hello from a')
  await until(() => b.doc.getText('t').toString() === 'hello from a', 20000, 'b sees a')
})

test('a read-only provider is told once, and keeps receiving updates', async () => {
  const writer = client('team/board', { params: { token: token('team/*=write') } })
  const reader = client('team/board', { params: { token: token('team/board=read') } })
  await Promise.all([synced(writer.provider), synced(reader.provider)])
  const warnings = []
  const warn = console.warn
  console.warn = (...args) => { warnings.push(args.join(' ')) }
  try {
    reader.doc.getText('t').insert(0, 'READER')
    await until(() => warnings.some((w) => w.includes('Permission denied')), 20000, 'the permission-denied message')
    reader.doc.getText('t').insert(0, 'AGAIN')
    writer.doc.getText('t').insert(0, 'from the writer;')
    await until(() => reader.doc.getText('t').toString().includes('from the writer;'), 20000, 'the reader receives')
  } finally {
    console.warn = warn
  }
  const denied = warnings.filter((w) => w.includes('Permission denied'))
  assert.equal(denied.length, 1, 'told once per connection')
  assert.match(denied[0], /read-only access/)
  // Nothing of the reader's reached the writer or the server.
  const res = await fetch(`${server.httpUrl}/api/docs/team/board/text/t`, { headers: { authorization: `Bearer ${token('team/*=read')}` } })
  assert.equal(await res.text(), 'from the writer;')
  assert.equal(writer.doc.getText('t').toString(), 'from the writer;')
})

test('a refused provider (401) backs off instead of hammering', async () => {
  const before = server.log.filter((l) => l.includes('access refused')).length
  const c = client('team/nope', { params: { token: 'not-a-token' } })
  const started = Date.now()
  await new Promise((resolve) => setTimeout(resolve, 8000))
  c.provider.destroy()
  const attempts = server.log.filter((l) => l.includes('access refused')).length - before
  const seconds = (Date.now() - started) / 1000
  console.log(`refused provider: ${attempts} upgrade attempts in ${seconds.toFixed(1)} s (${(attempts / seconds).toFixed(2)}/s)`)
  // y-websocket waits 100 ms, doubling to 2.5 s, between attempts: about 7 in 8 s. Hammering
  // (no backoff) would be hundreds.
  assert.ok(attempts >= 3, `it retried (${attempts})`)
  assert.ok(attempts <= 10, `${attempts} attempts in ${seconds} s`)
  assert.equal(c.provider.wsconnected, false)
})

test("the docs' Node snippet mints a token Concord accepts", async () => {
  // As in docs/access-control.md, "Tokens", with the `jsonwebtoken` package.
  const { default: jwt } = await import('jsonwebtoken')
  process.env.CONCORD_AUTH_SECRET = SECRET
  const token = jwt.sign(
    { sub: 'ann', docs: { 'team/*': 'write', 'wiki/*': 'read' } },
    process.env.CONCORD_AUTH_SECRET, { algorithm: 'HS256', expiresIn: '1h' })
  const c = client('team/readme', { params: { token } })
  await synced(c.provider)
  const refused = await fetch(`${server.httpUrl}/api/docs/other/x/update?token=${token}`)
  assert.equal(refused.status, 403)
})

// The Node snippets of README.md and docs/*.md, run as written against a live server, so they
// cannot rot: every fenced block tagged `js node` is saved as a module next to this file (so its
// imports resolve from these node_modules), with the docs' address replaced by the test
// server's, and run with Node. A snippet that makes a provider must get it synced.
import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { readFileSync, readdirSync, writeFileSync, rmSync } from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'
import { startServer } from './concord.mjs'

const here = path.dirname(fileURLToPath(import.meta.url))
const root = path.join(here, '../..')
const pages = ['README.md', ...readdirSync(path.join(root, 'docs')).filter((f) => f.endsWith('.md')).map((f) => `docs/${f}`)]
const snippets = pages.flatMap((page) =>
  [...readFileSync(path.join(root, page), 'utf8').matchAll(/```js node\n([\s\S]*?)```/g)].map((m) => ({ page, code: m[1] })))

// Runs after the snippet, in the same module: waits for its provider (if it made one) to sync.
const epilogue = `
if (typeof provider !== 'undefined') {
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('the provider did not sync within 20 s')), 20000)
    const done = (synced) => { if (synced) { clearTimeout(timer); resolve() } }
    if (provider.synced) done(true)
    provider.on('sync', done)
  })
  // Let its first edit leave: wait until the socket has handed everything to the kernel, then
  // close it and wait for the close to complete, so exiting loses nothing.
  const deadline = Date.now() + 10000
  while (provider.ws && provider.ws.bufferedAmount > 0 && Date.now() < deadline) {
    await new Promise((resolve) => setTimeout(resolve, 10))
  }
  const ws = provider.ws
  const closed = ws ? new Promise((resolve) => ws.addEventListener('close', resolve)) : null
  provider.destroy()
  if (closed) await Promise.race([closed, new Promise((resolve) => setTimeout(resolve, 10000))])
}
if (typeof token !== 'undefined') console.log('TOKEN ' + token)
process.exit(0)
`

// An open server for the client snippets (as a newcomer runs it), and one checking tokens for
// the snippet that mints one.
let server
let guarded
before(async () => {
  server = await startServer()
  guarded = await startServer(['--auth-secret', 'readme-secret'])
})
after(async () => { await Promise.all([server.stop(), guarded.stop()]) })

test('the README and the docs have Node snippets to run', () => {
  assert.ok(snippets.some((s) => s.page === 'README.md'), 'none in README.md')
  assert.ok(snippets.length >= 2, `found ${snippets.length}`)
})

for (const [i, { page, code }] of snippets.entries()) {
  test(`Node snippet ${i + 1} (${page}) runs as written`, async () => {
    const file = path.join(here, `.readme-snippet-${i + 1}.mjs`)
    const source = code.replaceAll('ws://127.0.0.1:8080/ws', server.wsUrl)
    writeFileSync(file, source + epilogue)
    try {
      const { stdout } = await promisify(execFile)(process.execPath, [file], {
        cwd: here,
        env: { ...process.env, CONCORD_AUTH_SECRET: 'readme-secret' },
        timeout: 30000
      })
      if (source.includes('jwt.sign')) {
        // The minted token works against the server.
        const minted = stdout.match(/TOKEN (\S+)/)[1]
        const res = await fetch(`${guarded.httpUrl}/api/docs/team/x/update?token=${minted}`)
        assert.equal(res.status, 404, 'authorized (and never written)')
      }
    } finally {
      rmSync(file, { force: true })
    }
    if (source.includes('hello from Node')) {
      // The server has it (stored before it was answered; polled, since the snippet's socket
      // may close before the server has read the last frame).
      const deadline = Date.now() + 10000
      let text
      while (Date.now() < deadline) {
        const res = await fetch(`${server.httpUrl}/api/docs/team/notes/text/notes`)
        text = await res.text()
        if (text === 'hello from Node\n') break
        await new Promise((resolve) => setTimeout(resolve, 20))
      }
      assert.equal(text, 'hello from Node\n')
    }
  })
}

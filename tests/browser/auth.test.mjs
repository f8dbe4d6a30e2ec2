// The demo page with auth on: opened with ?token=..., it passes the token to its provider and
// its status calls, and a person can type; a read-only token shows the text but changes nothing.
import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { spawn, execFileSync } from 'node:child_process'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { chromium } from 'playwright-core'

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..')
const bin = process.env.CONCORD_BIN ? path.resolve(root, process.env.CONCORD_BIN) : path.join(root, 'target/release/concord')
const SECRET = 'browser-test-secret'

let server
let base
let dataDir
let browser

function token (...args) {
  return execFileSync(bin, ['token', '--expires', '1h', ...args], { env: { ...process.env, CONCORD_AUTH_SECRET: SECRET } }).toString().trim()
}

before(async () => {
  dataDir = mkdtempSync(path.join(tmpdir(), 'concord-auth-demo-'))
  server = spawn(bin, ['serve', '--listen', '127.0.0.1:0', '--data-dir', dataDir, '--auth-secret', SECRET], {
    env: { ...process.env, RUST_LOG: 'info', NO_COLOR: '1' },
    stdio: ['ignore', 'pipe', 'inherit']
  })
  base = await new Promise((resolve, reject) => {
    let buf = ''
    const timer = setTimeout(() => reject(new Error('server did not start')), 60000)
    server.on('exit', (code) => reject(new Error(`server exited with ${code}`)))
    server.stdout.on('data', (chunk) => {
      buf += chunk
      const m = buf.match(/listening addr=(\S+)/)
      if (m) { clearTimeout(timer); resolve(`http://${m[1]}`) }
    })
  })
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: ['--no-sandbox', '--disable-background-networking', '--disable-gpu', '--no-first-run']
  })
})

after(async () => {
  await browser?.close()
  if (server && server.exitCode === null) {
    const exited = new Promise((resolve) => server.once('exit', resolve))
    server.kill('SIGTERM')
    await exited
  }
  rmSync(dataDir, { recursive: true, force: true })
})

async function open (doc, tok) {
  const page = await browser.newPage()
  await page.goto(`${base}/?${new URLSearchParams({ doc, token: tok })}`)
  await page.waitForSelector('#connection[data-state="synced"]', { timeout: 30000 })
  return page
}

async function stored (doc) {
  const res = await fetch(`${base}/api/docs/${doc}/text/codemirror`, { headers: { authorization: `Bearer ${token('--admin', '--doc', '*=read')}` } })
  return res.status === 200 ? res.text() : ''
}

test('opened with ?token=, the demo syncs and a person types into the stored document', async () => {
  const page = await open('team/demo', token('--admin', '--doc', 'team/*=write'))
  // The token stays in the tab's URL (a reload keeps working), not in the share link.
  assert.match(page.url(), /token=/)
  assert.doesNotMatch(await page.getAttribute('#share', 'href'), /token=/)
  await page.click('.cm-content')
  await page.keyboard.type('typed with a token', { delay: 10 })
  const deadline = Date.now() + 20000
  while (await stored('team/demo') !== 'typed with a token') {
    assert.ok(Date.now() < deadline, `stored: ${await stored('team/demo')}`)
    await new Promise((resolve) => setTimeout(resolve, 100))
  }
})

test('with a read-only token the page shows the text and its typing changes nothing', async () => {
  const writer = await open('team/read', token('--doc', 'team/*=write'))
  await writer.click('.cm-content')
  await writer.keyboard.type('the writer wrote this', { delay: 5 })
  const reader = await open('team/read', token('--doc', 'team/read=read'))
  await reader.waitForFunction(() => window.concord.ytext.toString() === 'the writer wrote this', null, { timeout: 20000 })
  await reader.click('.cm-content')
  await reader.keyboard.type('READER', { delay: 5 })
  await writer.keyboard.type('!', { delay: 5 })
  await reader.waitForFunction(() => window.concord.ytext.toString().includes('!'), null, { timeout: 20000 })
  assert.equal(await writer.evaluate(() => window.concord.ytext.toString()), 'the writer wrote this!')
  assert.equal(await stored('team/read'), 'the writer wrote this!')
  // Without an admin token the replication panel says what it needs instead of polling a 403.
  await reader.waitForSelector('#replication:has-text("needs an admin token")', { timeout: 10000 })
})

// The web demo in a real browser (Debian's Chromium, driven by playwright-core) against
// `concord demo`: three regions in one process, 80 ms apart.
//
// Each scene is one page holding two windows side by side (iframes), each on a different region,
// like a person trying the demo with two browser windows. Typing goes through the keyboard.
import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { mkdtempSync, mkdirSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { chromium } from 'playwright-core'

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..')
const bin = process.env.CONCORD_BIN ? path.resolve(root, process.env.CONCORD_BIN) : path.join(root, 'target/release/concord')
const artifacts = path.join(root, 'target/browser-artifacts')

let demo
let dataDir
let regions = {}
/** Everything the demo printed so far (its URLs, then its answers to commands). */
let demoOut = ''
let browser
/** Console errors and uncaught page errors of the windows opened by the running test. */
const consoleErrors = []

before(async () => {
  dataDir = mkdtempSync(path.join(tmpdir(), 'concord-demo-'))
  demo = spawn(bin, ['demo', '--listen', '127.0.0.1:0', '--latency', '80ms', '--data-dir', dataDir], {
    env: { ...process.env, RUST_LOG: 'warn', NO_COLOR: '1' },
    stdio: ['pipe', 'pipe', 'inherit'] // stdin: the demo's commands (cut and heal a link)
  })
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('demo did not start')), 60000)
    demo.on('exit', (code) => reject(new Error(`demo exited with ${code}`)))
    demo.stdout.on('data', (chunk) => {
      demoOut += chunk
      for (const m of demoOut.matchAll(/region (\w+): (http:\/\/[\d.:]+)\//g)) regions[m[1]] = m[2]
      if (Object.keys(regions).length === 3) { clearTimeout(timer); resolve() }
    })
  })
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: ['--no-sandbox', '--disable-background-networking', '--disable-gpu', '--disable-component-update', '--disable-sync', '--no-first-run']
  })
  mkdirSync(artifacts, { recursive: true })
})

after(async () => {
  await browser?.close()
  if (demo && demo.exitCode === null) {
    const exited = new Promise((resolve) => demo.once('exit', resolve))
    demo.kill('SIGINT')
    await exited
  }
  rmSync(dataDir, { recursive: true, force: true })
})

/** One browser window on `region`, showing `doc`, as user `name`. Waits until synced. */
async function open (region, doc, name, viewport = { width: 900, height: 700 }) {
  const page = await browser.newPage({ viewport })
  page.on('console', (m) => { if (m.type() === 'error') consoleErrors.push(`${region}: ${m.text()}`) })
  page.on('pageerror', (e) => consoleErrors.push(`${region}: ${e}`))
  await page.goto(`${regions[region]}/?${new URLSearchParams({ doc, region, name })}`)
  await page.waitForSelector('#connection[data-state="synced"]', { timeout: 30000 })
  return page
}

/**
 * A test in the browser. A console error or uncaught exception in any window it opened fails
 * this test, the one in which it happened (so no test can pass on another's behalf, and none
 * passes vacuously when run alone).
 */
function browserTest (name, fn) {
  test(name, async (t) => {
    consoleErrors.length = 0
    await fn(t)
    assert.deepEqual(consoleErrors, [], 'console errors in the windows of this test')
  })
}

/** Types `line` into the demo's terminal and waits for it to answer `reply`. */
async function command (line, reply) {
  const from = demoOut.length
  demo.stdin.write(`${line}\n`)
  const deadline = Date.now() + 10000
  while (!demoOut.slice(from).includes(reply)) {
    if (Date.now() > deadline) throw new Error(`the demo did not answer ${reply} to ${line}:\n${demoOut.slice(from)}`)
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
}

/** Two windows of `doc`, on two regions. */
async function scene (doc, [a, nameA], [b, nameB]) {
  return { left: await open(a, doc, nameA), right: await open(b, doc, nameB) }
}

/** The two windows side by side in one picture, as a person would see them on screen. */
async function screenshot (left, right, file) {
  await new Promise((resolve) => setTimeout(resolve, 1500)) // presence and the replication panel settle
  const shots = await Promise.all([left, right].map(async (p) => (await p.screenshot({ fullPage: true })).toString('base64')))
  const page = await browser.newPage({ viewport: { width: 1808, height: 800 } })
  await page.setContent(`<!doctype html><style>body{margin:0;display:flex;align-items:flex-start;gap:8px;background:#777}</style>
    ${shots.map((b64) => `<img src="data:image/png;base64,${b64}">`).join('')}`)
  await page.screenshot({ path: path.join(artifacts, file), fullPage: true })
  await page.close()
}

const text = (page) => page.evaluate(() => window.concord.ytext.toString())

/** The text the editor displays, without the remote carets and name labels drawn inside it. */
const shown = (page) => page.evaluate(() => {
  const content = document.querySelector('.cm-content').cloneNode(true)
  for (const w of content.querySelectorAll('.cm-ySelectionCaret')) w.remove()
  return [...content.querySelectorAll('.cm-line')].map((l) => l.textContent).join('\n')
})

async function type (page, words, delay = 20) {
  await page.click('.cm-content')
  await page.keyboard.press('Control+End')
  await page.keyboard.type(words, { delay })
}

async function converged (left, right, ms = 30000) {
  const deadline = Date.now() + ms
  for (;;) {
    const [l, r] = [await text(left), await text(right)]
    if (l === r) return l
    if (Date.now() > deadline) throw new Error(`not converged:\n${l}\n---\n${r}`)
    await new Promise((resolve) => setTimeout(resolve, 100))
  }
}

browserTest('two windows on two regions type at once and end with the same text', async () => {
  const { left, right } = await scene('browser/concurrent', ['eu', 'Ann'], ['us', 'Bob'])
  const wordsA = ['apple', 'avocado', 'apricot', 'almond', 'acerola']
  const wordsB = ['banana', 'blueberry', 'blackberry', 'brazil', 'bilberry']
  // Two people typing at the same time, each in their own window and region.
  await Promise.all([
    type(left, wordsA.map((w) => ` ${w}`).join('')),
    type(right, wordsB.map((w) => ` ${w}`).join(''))
  ])
  const final = await converged(left, right)
  for (const w of [...wordsA, ...wordsB]) assert.ok(final.includes(w), `${w} missing from ${final}`)
  // What the editors show is the shared text, in both windows.
  for (const page of [left, right]) assert.equal(await shown(page), final)
  // Each window lists the other user, who is connected to the other region.
  await left.waitForSelector('#presence li:has-text("Bob")', { timeout: 10000 })
  await right.waitForSelector('#presence li:has-text("Ann")', { timeout: 10000 })
  await screenshot(left, right, 'two-regions.png')
  await left.close()
  await right.close()
})

browserTest('offline edits merge when the window comes back', async () => {
  const { left, right } = await scene('browser/offline', ['eu', 'Ann'], ['ap', 'Cy'])
  await type(left, 'shared start.')
  await converged(left, right)

  await left.click('#offline')
  await left.waitForSelector('#connection[data-state="offline"]')
  await type(left, ' written while offline.')
  await type(right, ' written online in ap.')
  await new Promise((resolve) => setTimeout(resolve, 500))
  assert.ok(!(await text(right)).includes('offline'), 'the offline edit must not have left the window')

  await left.click('#offline')
  await left.waitForSelector('#connection[data-state="synced"]', { timeout: 30000 })
  const final = await converged(left, right)
  assert.ok(final.includes('written while offline.') && final.includes('written online in ap.'), final)
  await left.close()
  await right.close()
})

browserTest('presence: each window lists the other user and shows their cursor', async () => {
  const { left, right } = await scene('browser/presence', ['eu', 'Ann'], ['us', 'Bob'])
  await type(right, 'Bob was here')
  await left.waitForSelector('#presence li:has-text("Bob")', { timeout: 30000 })
  await right.waitForSelector('#presence li:has-text("Ann")', { timeout: 30000 })
  await right.waitForSelector('#presence li:has-text("Bob (you)")')
  await left.waitForSelector('#presence li:has-text("Ann (you)")')
  // Bob's caret, labelled with his name, is drawn in Ann's editor.
  await left.locator('.cm-ySelectionInfo', { hasText: 'Bob' }).waitFor({ state: 'attached', timeout: 30000 })
  await left.close()
  await right.close()
})

browserTest('undo reverts only your own edits', async () => {
  const { left, right } = await scene('browser/undo', ['eu', 'Ann'], ['us', 'Bob'])
  await type(left, 'mine')
  await converged(left, right)
  await type(right, ' theirs')
  await left.waitForFunction(() => window.concord.ytext.toString().includes('theirs'))
  await left.click('#undo')
  const final = await converged(left, right)
  assert.ok(!final.includes('mine') && final.includes('theirs'), final)
  await left.close()
  await right.close()
})

browserTest('the replication panel shows every region linked', async () => {
  const page = await open('us', 'browser/panel', 'Dee')
  await page.waitForFunction(() => document.querySelectorAll('#replication section').length === 3)
  await page.waitForFunction(() => document.querySelectorAll('#replication li.up').length === 6, null, { timeout: 20000 })
  // This page's region first, then the others by name.
  assert.deepEqual(await page.locator('#region option').allTextContents(), ['us', 'ap', 'eu'])
  await page.close()
})

browserTest('works at a narrow width with sensible focus', async () => {
  const page = await open('eu', 'browser/narrow', 'Eve', { width: 380, height: 740 })
  // The editor has focus on load and the page fits the viewport (no horizontal scrolling).
  assert.ok(await page.evaluate(() => document.activeElement.closest('.cm-editor') !== null))
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth)
  assert.ok(overflow <= 0, `page overflows horizontally by ${overflow}px`)
  // Tab from the document field reaches the next control.
  await page.focus('#doc')
  await page.keyboard.press('Tab')
  assert.equal(await page.evaluate(() => document.activeElement.textContent), 'Open')
  await page.screenshot({ path: path.join(artifacts, 'narrow.png') })
  await page.close()
})

browserTest('the region map shows every region and link, a cut link down, and the link back up when healed', async (t) => {
  const page = await open('eu', 'browser/map', 'Fay')
  const link = (key) => page.locator(`#map [data-link="${key}"]`)
  const allUp = () => page.waitForFunction(() => document.querySelectorAll('#map [data-link][data-state="up"]').length === 3, null, { timeout: 30000 })
  await allUp()
  assert.deepEqual(await page.locator('#map [data-node]').evaluateAll((ns) => ns.map((n) => [n.dataset.node, n.dataset.state])),
    [['ap', 'up'], ['eu', 'up'], ['us', 'up']])
  assert.deepEqual(await page.locator('#map [data-link]').evaluateAll((ls) => ls.map((l) => l.dataset.link).sort()), ['ap|eu', 'ap|us', 'eu|us'])
  assert.match(await link('eu|us').getAttribute('aria-label'), /^eu – us: up, \d+ ms$/)
  assert.match(await link('eu|us').locator('title').textContent(), /^eu – us: up, \d+ ms$/)
  await page.locator('#region-map').screenshot({ path: path.join(artifacts, 'region-map.png') })

  // Servers that report routes (`carries` per peer) show the traffic going around the cut.
  const routed = (await (await fetch(`${regions.eu}/api/status`)).json()).peers.some((p) => 'carries' in p)
  await command('cut eu us', 'link eu-us cut')
  try {
    await page.waitForSelector('#map [data-link="eu|us"][data-state="down"]', { timeout: 20000 })
    assert.equal(await link('eu|us').getAttribute('aria-label'), 'eu – us: down')
    // The link's ends still answer: only the link is cut.
    assert.equal(await page.locator('#map [data-node][data-state="up"]').count(), 3)
    for (const key of ['ap|eu', 'ap|us']) assert.ok(['up', 'detour'].includes(await link(key).getAttribute('data-state')), key)
    if (routed) {
      // eu gets us's updates through ap, and us gets eu's.
      await page.waitForSelector('#map [data-link^="ap|"][data-state="detour"]', { timeout: 20000 })
      const said = await page.locator('#map [data-state="detour"]').first().getAttribute('aria-label')
      assert.match(said, /^ap – (eu|us): up, \d+ ms, carries (eu|us)'s updates \(detour\)$/)
    } else {
      t.diagnostic('skipped the detour check: the servers report no `carries` per peer')
    }
    await page.locator('#region-map').screenshot({ path: path.join(artifacts, 'region-map-cut.png') })
  } finally {
    await command('heal eu us', 'link eu-us healed')
  }
  // Back up, and (with routes) no longer detoured: all three links plainly up.
  await allUp()
  await page.close()
})

// The load test's report.html in a real browser (Debian's Chromium, driven by playwright-core).
//
// A tiny load test (2 regions, 3 s) writes report.json and report.html; the page is opened from
// file:// with every network request refused, screenshotted into target/browser-artifacts/, and
// its charts are checked against report.json: the histogram bars are the report's bins, the
// per-second charts have one marker per region and measured second (none at t=0), and the
// legends sit beside the plotted lines, not on them.
import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { mkdtempSync, mkdirSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { fileURLToPath, pathToFileURL } from 'node:url'
import { promisify } from 'node:util'
import { chromium } from 'playwright-core'

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..')
const loadtest = process.env.LOADTEST_BIN
  ? path.resolve(root, process.env.LOADTEST_BIN)
  : path.join(root, 'target/release/loadtest')
const artifacts = path.join(root, 'target/browser-artifacts')
const screenshot = path.join(artifacts, 'report.png')

// The colours charts.rs gives regions 0 and 1, and the histograms' open tail, as plotters writes them.
const REGION_COLORS = ['#3B7DD8', '#D8743B']
const TAIL = '#808080'

let out
let report
let browser
let page
/** Requests the page made for anything but its own file. */
const requests = []
/** Per chart id: what the browser drew (see `drawn`). */
const charts = {}

before(async () => {
  out = mkdtempSync(path.join(tmpdir(), 'concord-report-'))
  await promisify(execFile)(loadtest, [
    '--regions', '2', '--latency', '20ms', '--docs', '2', '--editors', '2', '--rate', '5',
    '--duration', '3s', '--quiet', '--out', out
  ], { timeout: 150000 })
  report = JSON.parse(readFileSync(path.join(out, 'report.json'), 'utf8'))

  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: ['--no-sandbox', '--disable-background-networking', '--disable-gpu', '--disable-component-update', '--disable-sync', '--no-first-run']
  })
  page = await browser.newPage({ viewport: { width: 1200, height: 900 } })
  const url = pathToFileURL(path.join(out, 'report.html')).href
  await page.route('**/*', (route) => {
    if (route.request().url() === url) return route.continue()
    requests.push(route.request().url())
    return route.abort()
  })
  await page.goto(url)
  mkdirSync(artifacts, { recursive: true })
  await page.screenshot({ path: screenshot, fullPage: true })
  console.log(`report screenshot: ${screenshot}`)
  for (const id of ['hist-local', 'hist-cross', 'local-p99', 'cross-p99', 'sent', 'delivered']) {
    charts[id] = await drawn(id)
  }
})

after(async () => {
  await browser?.close()
  if (out) rmSync(out, { recursive: true, force: true })
})

/**
 * What the browser shows of the chart in `<figure id=...>`: its SVG's box, its filled rectangles
 * (bars and legend swatches) and markers with their fill colour, its polylines with their stroke
 * colour, and its texts, each with its box on the page.
 */
function drawn (id) {
  return page.evaluate((id) => {
    const svg = document.querySelector(`figure#${id} svg`)
    if (!svg) return null
    const box = (e) => {
      const r = e.getBoundingClientRect()
      return { left: r.left, right: r.right, top: r.top, bottom: r.bottom }
    }
    const color = (e, attr) => (e.getAttribute(attr) || '').toUpperCase()
    return {
      box: box(svg),
      rects: [...svg.querySelectorAll('rect')].map((e) => ({ fill: color(e, 'fill'), ...box(e) })),
      circles: [...svg.querySelectorAll('circle')].map((e) => ({ fill: color(e, 'fill'), ...box(e) })),
      lines: [...svg.querySelectorAll('polyline')].map((e) => ({ stroke: color(e, 'stroke'), ...box(e) })),
      texts: [...svg.querySelectorAll('text')].map((e) => ({ text: e.textContent.trim(), ...box(e) }))
    }
  }, id)
}

const centre = (b) => ({ x: (b.left + b.right) / 2, y: (b.top + b.bottom) / 2 })
const union = (boxes) => ({
  left: Math.min(...boxes.map((b) => b.left)),
  right: Math.max(...boxes.map((b) => b.right)),
  top: Math.min(...boxes.map((b) => b.top)),
  bottom: Math.max(...boxes.map((b) => b.bottom))
})
const overlap = (a, b) => a.left < b.right && b.left < a.right && a.top < b.bottom && b.top < a.bottom
const inside = (a, b) => a.left >= b.left && a.right <= b.right && a.top >= b.top && a.bottom <= b.bottom

test('the report is one file: no request leaves it, no script runs', async () => {
  assert.deepEqual(requests, [])
  assert.equal(await page.locator('script, link, img').count(), 0)
})

for (const [id, kind, color] of [['hist-cross', 'cross', REGION_COLORS[1]], ['hist-local', 'local', REGION_COLORS[0]]]) {
  test(`the ${kind} histogram draws the report's bins, and they hold every sample`, () => {
    const binned = report[`histogram_${kind}`]
    const samples = report.all[kind].count
    assert.ok(samples > 0, `a run with no ${kind} deliveries`)
    assert.equal(binned.bins.reduce((n, b) => n + b.count, 0), samples)
    const full = binned.bins.filter((b) => b.count > 0)
    assert.ok(full.length > 1, `${kind} latencies in ${full.length} bin: its shape does not show`)

    const bars = charts[id].rects.filter((r) => r.fill === color || r.fill === TAIL).sort((a, b) => a.left - b.left)
    assert.equal(bars.length, full.length, 'one bar per bin with samples')
    // Left to right, in order, each bar's height is its bin's share of the tallest.
    const top = Math.max(...full.map((b) => b.count))
    const tallest = Math.max(...bars.map((b) => b.bottom - b.top))
    bars.forEach((bar, i) => {
      const want = (full[i].count / top) * tallest
      assert.ok(Math.abs(bar.bottom - bar.top - want) <= 2,
        `bar ${i} (${full[i].from_ms}–${full[i].to_ms} ms, ${full[i].count}) is ${bar.bottom - bar.top} px, want ${want}`)
      if (i > 0) assert.ok(bar.left >= bars[i - 1].right - 1, 'bars overlap')
    })
    assert.ok(charts[id].texts.some((t) => t.text === 'latency (ms)'), 'the x axis says its unit')
  })
}

test('the per-second charts have one point per region and measured second, none at t=0', () => {
  const { start, end } = report.timeline_seconds
  assert.ok(end - start >= 1, `no whole second measured: ${start}..${end}`)
  assert.ok(start > 0, 'the timeline starts at the generator\'s start (connecting, nothing sent)')
  const names = report.regions.map((r) => r.name)
  for (const [id, value] of [
    ['sent', (p) => p.sent], ['delivered', (p) => p.delivered],
    ['local-p99', (p) => p.local_samples > 0 ? p.local_p99_ms : null],
    ['cross-p99', (p) => p.cross_samples > 0 ? p.cross_p99_ms : null]
  ]) {
    const chart = charts[id]
    names.forEach((name, r) => {
      const points = report.timeline.filter((p) => p.region === r)
      assert.deepEqual(points.map((p) => p.second), Array.from({ length: end - start }, (_, i) => start + i))
      const values = points.map(value).filter((v) => v !== null)
      if (id.endsWith('p99')) assert.ok(values.every((v) => v > 0), `${id} of ${name}: a latency of 0: ${values}`)
      const markers = chart.circles.filter((c) => c.fill === REGION_COLORS[r]).map(centre).sort((a, b) => a.x - b.x)
      assert.equal(markers.length, values.length, `${id} of ${name}: markers`)
      // The leftmost marker stands over the x axis' label of the first measured second.
      const lowest = Math.max(...markers.map((m) => m.y))
      const ticks = chart.texts.filter((t) => t.text === String(start) && t.top > lowest)
      assert.ok(ticks.some((t) => Math.abs(centre(t).x - markers[0].x) < 4),
        `${id}: first marker at x ${markers[0].x}, labels "${start}" at ${ticks.map((t) => centre(t).x)}`)
    })
  }
})

test('legends sit beside the plotted lines, inside the chart', () => {
  const names = report.regions.map((r) => r.name)
  for (const id of ['local-p99', 'cross-p99', 'sent', 'delivered']) {
    const chart = charts[id]
    const data = union([
      ...chart.circles.filter((c) => REGION_COLORS.includes(c.fill)),
      ...chart.lines.filter((l) => REGION_COLORS.includes(l.stroke))
    ])
    names.forEach((name, r) => {
      const label = chart.texts.find((t) => t.text === name)
      assert.ok(label, `${id}: no legend entry ${name}`)
      const swatches = chart.rects.filter((x) => x.fill === REGION_COLORS[r])
      assert.equal(swatches.length, 1, `${id}: legend swatches of ${name}`)
      const swatch = swatches[0]
      assert.ok(swatch.right - swatch.left >= 4 && swatch.bottom - swatch.top >= 4, `${id}: ${name}'s swatch is not visible`)
      assert.ok(Math.abs(centre(swatch).y - centre(label).y) < 4 && swatch.right <= label.left, `${id}: ${name}'s swatch is not beside its name`)
      for (const [what, box] of [['name', label], ['swatch', swatch]]) {
        assert.ok(inside(box, chart.box), `${id}: legend ${what} of ${name} outside the chart`)
        assert.ok(!overlap(box, data), `${id}: legend ${what} of ${name} covers the data`)
      }
    })
  }
})

// The demo bundle is committed (web-demo/dist/app.js) so that `cargo run` serves a working demo
// on a fresh clone with no Node step. This test fails when it no longer matches its sources:
// rebuild with `npm --prefix web-demo run build` and commit the result.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

const demo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../web-demo')

test('the committed demo bundle is built from the current sources', () => {
  const out = mkdtempSync(path.join(tmpdir(), 'concord-bundle-'))
  try {
    execFileSync(process.execPath, [path.join(demo, 'build.mjs'), out], { stdio: 'inherit' })
    const fresh = readFileSync(path.join(out, 'app.js'))
    const committed = readFileSync(path.join(demo, 'dist/app.js'))
    assert.ok(fresh.equals(committed), 'web-demo/dist/app.js is stale: run `npm --prefix web-demo run build` and commit it')
  } finally {
    rmSync(out, { recursive: true, force: true })
  }
})

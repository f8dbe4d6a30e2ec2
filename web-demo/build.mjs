// Builds dist/app.js from src/ with esbuild. The bundle is committed so that `cargo run` serves a
// working demo on a fresh clone; tests/browser/bundle.test.mjs fails when it is stale.
// Usage: node build.mjs [outdir]
import { build } from 'esbuild'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

const here = path.dirname(fileURLToPath(import.meta.url))
const outdir = process.argv[2] ? path.resolve(process.argv[2]) : path.join(here, 'dist')
await build({
  entryPoints: [path.join(here, 'src/main.js')],
  bundle: true,
  minify: true,
  format: 'iife',
  target: ['es2020'],
  legalComments: 'none',
  outfile: path.join(outdir, 'app.js'),
  logLevel: 'warning'
})

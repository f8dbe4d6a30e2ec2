// Reads a server process's memory and CPU time from /proc (Linux), for the large-document memory
// tests and the comparison harness in bench/large-docs. Memory is measured as the OS sees it
// (VmRSS), since that is what limits how many documents and connections a machine holds, and it
// moves in steps (allocators return memory late, some only when asked): `settledRss` waits for it
// to stop moving, or to reach a bound, rather than sleeping for a fixed time. No dependencies
// beyond Node, so the harness (with its own node_modules) imports it too.
import { readFileSync } from 'node:fs'

/** The process's resident set size in bytes (VmRSS). */
export function rss (pid) {
  const m = readFileSync(`/proc/${pid}/status`, 'utf8').match(/^VmRSS:\s+(\d+) kB$/m)
  if (!m) throw new Error(`no VmRSS for process ${pid}`)
  return Number(m[1]) * 1024
}

/** The CPU time the process has used so far, user + system, in seconds. */
export function cpuSeconds (pid) {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
  // Fields after the command name (which may hold spaces, inside parentheses): utime and stime
  // are the 14th and 15th fields of the whole line, in clock ticks (100 per second on Linux).
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
  return (Number(fields[11]) + Number(fields[12])) / 100
}

/**
 * Polls the RSS of `pid` every 100 ms until it has stayed within `spread` bytes for `window` ms
 * (it settled), or `ok(rss)` holds; resolves with the last reading. After `timeout` ms resolves
 * with the last reading anyway, with `settled: false`: the caller asserts on the figure.
 */
export async function settledRss (pid, { ok = () => false, window = 1500, spread = 512 * 1024, timeout = 15000 } = {}) {
  const start = Date.now()
  const samples = []
  for (;;) {
    const now = Date.now()
    const value = rss(pid)
    samples.push({ at: now, value })
    if (ok(value)) return { rss: value, settled: true, ms: now - start }
    while (samples.length > 1 && samples[1].at <= now - window) samples.shift()
    const values = samples.map((s) => s.value)
    if (samples[0].at <= now - window && Math.max(...values) - Math.min(...values) <= spread) {
      return { rss: value, settled: true, ms: now - start }
    }
    if (now - start > timeout) return { rss: value, settled: false, ms: now - start }
    await new Promise((resolve) => setTimeout(resolve, 100))
  }
}

/** Bytes as MB with one decimal, for messages. */
export const mb = (bytes) => `${(bytes / 1e6).toFixed(1)} MB`

// What the region map shows, worked out from every region's /api/status: the regions, the links
// between them and each link's state. Pure (no DOM, no fetch) so that it can be tested alone.
//
// A link is "down" unless both its ends answer and every end that lists it says connected. It is
// "detour" when it is up and carries detoured traffic: an origin other than its two ends appears
// in `carries` or `relays` of either end's peer entry (servers too old to report these fields
// never show a detour).

/**
 * @param {{ r: { name: string, url: string, node?: string }, s?: object, error?: string }[]} answers
 *   one per region, as the replication panel fetches them: the status `s`, or an `error`
 * @param {string | null} here the URL of the region this page is connected to
 * @returns {{ nodes: object[], links: object[] }}
 */
export function regionMap (answers, here = null) {
  const idOf = (a) => (a.s && a.s.node_id) || a.r.node || a.r.name
  const nodes = answers
    .map((a) => ({ id: idOf(a), name: a.r.name, answering: !!a.s, here: a.r.url === here }))
    .sort((x, y) => x.name.localeCompare(y.name))
  const byId = new Map(nodes.map((n) => [n.id, n]))
  const names = originNames(answers, byId)

  // Each link once, under its two names sorted, with what each end says about it.
  const links = new Map()
  for (const a of answers) {
    if (!a.s) continue
    const me = byId.get(idOf(a))
    for (const p of a.s.peers || []) {
      const other = p.node_id != null ? byId.get(p.node_id) : undefined
      if (!other || other === me) continue
      const [x, y] = [me, other].sort((m, n) => m.name.localeCompare(n.name))
      const key = `${x.name}|${y.name}`
      if (!links.has(key)) links.set(key, { key, a: x, b: y, ends: [] })
      links.get(key).ends.push(p)
    }
  }
  return { nodes, links: [...links.values()].map((l) => linkState(l, names)) }
}

function linkState ({ key, a, b, ends }, names) {
  const up = a.answering && b.answering && ends.every((p) => p.connected)
  const lags = ends.map((p) => p.lag_ms).filter((v) => typeof v === 'number')
  const lag = up && lags.length ? Math.max(...lags) : null
  const detoured = new Set()
  for (const p of ends) {
    for (const origin of [...(p.carries || []), ...(p.relays || [])]) {
      if (origin !== a.id && origin !== b.id) detoured.add(origin)
    }
  }
  const via = [...detoured].map((o) => names.get(o) || o).sort()
  const state = !up ? 'down' : via.length ? 'detour' : 'up'
  const parts = [state === 'down' ? 'down' : 'up']
  if (lag != null) parts.push(`${lag} ms`)
  if (state === 'detour') parts.push(`carries ${via.map((n) => `${n}'s`).join(' and ')} updates (detour)`)
  return {
    key,
    a: a.name,
    b: b.name,
    state,
    lag,
    via,
    text: `${a.name} – ${b.name}: ${parts.join(', ')}`,
    label: state === 'down' ? 'down' : [lag != null ? `${lag} ms` : '', via.length ? `carries ${via.join(', ')}` : ''].filter(Boolean).join(' · ')
  }
}

/** Region names of node ids, from whatever the statuses say (origins may be nodes we do not poll). */
function originNames (answers, byId) {
  const names = new Map([...byId.values()].map((n) => [n.id, n.name]))
  for (const { s } of answers) {
    if (!s) continue
    for (const o of (s.replication && s.replication.origins) || []) {
      if (o.region && !names.has(o.origin)) names.set(o.origin, o.region)
    }
    for (const p of s.peers || []) {
      if (p.node_id && p.region && !names.has(p.node_id)) names.set(p.node_id, p.region)
    }
  }
  return names
}

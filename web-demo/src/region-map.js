// The region map: the regions on a circle and the links between them, drawn as SVG with plain DOM
// calls from what regionMap() worked out. Each link says its state in its colour and dash, in a
// label (lag, detoured origins) and in words for screen readers; `data-link` and `data-state`
// are there for tests.

const SVG = 'http://www.w3.org/2000/svg'
const W = 300
const H = 210
const R = 70

function el (name, attrs = {}, text) {
  const e = document.createElementNS(SVG, name)
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v))
  if (text != null) e.textContent = text
  return e
}

/** Positions on a circle, the first at the top, clockwise. */
function place (nodes) {
  const at = new Map()
  nodes.forEach((n, i) => {
    const angle = -Math.PI / 2 + (2 * Math.PI * i) / nodes.length
    at.set(n.name, { x: W / 2 + R * Math.cos(angle), y: H / 2 + R * Math.sin(angle), cos: Math.cos(angle), sin: Math.sin(angle) })
  })
  return at
}

/** Draws `map` ({ nodes, links } from regionMap) into the <svg> `svg`, replacing what it held. */
export function renderMap (svg, map) {
  const at = place(map.nodes)
  // As tall as the drawing: the nodes and their names, not the whole circle's box.
  const ys = [...at.values()].map((p) => p.y)
  const top = Math.min(H / 2 - R, ...ys) - 28
  const bottom = Math.max(...ys, top + 60) + 28
  svg.setAttribute('viewBox', `0 ${top} ${W} ${bottom - top}`)
  const links = el('g', { class: 'links' })
  for (const l of map.links) {
    const p = at.get(l.a)
    const q = at.get(l.b)
    const g = el('g', { class: `link ${l.state}`, 'data-link': l.key, 'data-state': l.state, role: 'img', 'aria-label': l.text })
    g.append(el('title', {}, l.text))
    g.append(el('line', { x1: p.x, y1: p.y, x2: q.x, y2: q.y }))
    // The label halfway, or nearer one end when halfway is the centre (diagonals cross there).
    const t = Math.hypot((p.x + q.x) / 2 - W / 2, (p.y + q.y) / 2 - H / 2) < 20 ? 0.3 : 0.5
    if (l.label) g.append(el('text', { x: p.x + t * (q.x - p.x), y: p.y + t * (q.y - p.y), 'text-anchor': 'middle', dy: '0.35em' }, l.label))
    links.append(g)
  }
  const nodes = el('g', { class: 'nodes' })
  for (const n of map.nodes) {
    const p = at.get(n.name)
    const says = `${n.name}: ${n.answering ? 'answering' : 'not answering'}${n.here ? ' (connected here)' : ''}`
    const g = el('g', { class: `node${n.answering ? '' : ' silent'}${n.here ? ' here' : ''}`, 'data-node': n.name, 'data-state': n.answering ? 'up' : 'down', role: 'img', 'aria-label': says })
    g.append(el('title', {}, says))
    g.append(el('circle', { cx: p.x, cy: p.y, r: 9 }))
    // The name outside the circle, away from the links.
    const anchor = Math.abs(p.cos) < 0.3 ? 'middle' : p.cos > 0 ? 'start' : 'end'
    g.append(el('text', { x: p.x + 16 * p.cos, y: p.y + 18 * p.sin, 'text-anchor': anchor, dy: '0.35em' }, n.name))
    nodes.append(g)
  }
  svg.replaceChildren(links, nodes)
}

/** The legend under the map: one sample per link state, and a silent region. */
export function legend () {
  const ul = document.createElement('ul')
  ul.className = 'map-legend'
  const items = [
    ['link up', 'up', 'line'],
    ['link down', 'down', 'line'],
    ["carries other regions' updates (detour)", 'detour', 'line'],
    ['this page\'s region', 'here', 'node'],
    ['region not answering', 'silent', 'node']
  ]
  for (const [words, cls, kind] of items) {
    const li = document.createElement('li')
    const sample = el('svg', { width: 28, height: 12, viewBox: '0 0 28 12', 'aria-hidden': 'true' })
    if (kind === 'line') {
      const g = el('g', { class: `link ${cls}` })
      g.append(el('line', { x1: 2, y1: 6, x2: 26, y2: 6 }))
      sample.append(g)
    } else {
      const g = el('g', { class: `node ${cls}` })
      g.append(el('circle', { cx: 14, cy: 6, r: 4 }))
      sample.append(g)
    }
    li.append(sample, document.createTextNode(words))
    ul.append(li)
  }
  return ul
}

// Concord's browser demo: a collaborative CodeMirror 6 editor on Yjs, connected to any region of
// the cluster, with presence, an offline switch and a live view of replication between regions.
//
// The document name and the region live in the URL (?doc=...&region=...), so a link can be shared.
// With auth on, open it with ?token=...: the token goes to the provider and to the status calls.
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import { yCollab, yUndoManagerKeymap } from 'y-codemirror.next'
import { EditorView, basicSetup } from 'codemirror'
import { keymap } from '@codemirror/view'
import { regionMap } from './region-map-model.js'
import { renderMap, legend } from './region-map.js'

const $ = (id) => document.getElementById(id)
const params = new URLSearchParams(location.search)
const token = params.get('token')

const COLORS = ['#d1495b', '#2e86ab', '#3bb273', '#8e44ad', '#e67e22', '#16a085', '#c0392b', '#2c3e50']
const ANIMALS = ['Otter', 'Heron', 'Lynx', 'Badger', 'Falcon', 'Marten', 'Ibex', 'Wren', 'Puffin', 'Gecko']
function me () {
  const saved = sessionStorage.getItem('concord-user')
  if (saved) return JSON.parse(saved)
  const n = Math.floor(Math.random() * 1e6)
  const user = { name: params.get('name') || `${ANIMALS[n % ANIMALS.length]} ${n % 97}`, color: COLORS[n % COLORS.length] }
  sessionStorage.setItem('concord-user', JSON.stringify(user))
  return user
}
const user = me()
user.colorLight = user.color + '33'

const state = {
  doc: params.get('doc') || 'demo',
  regions: [], // [{ name, url }] public URLs of every region
  region: null, // the region we are connected to
  offline: false,
  provider: null,
  statusDenied: false // the server refused our status calls (auth on, no admin token)
}

const ydoc = new Y.Doc()
const ytext = ydoc.getText('codemirror')
const undoManager = new Y.UndoManager(ytext) // tracks only this client's own edits
let view = null

// --- regions -------------------------------------------------------------------------------

async function status (base) {
  // The token goes in the query rather than a header: a cross-origin GET with a header would
  // need a CORS preflight per poll.
  const query = token ? `?token=${encodeURIComponent(token)}` : ''
  // A region that does not answer within 3 s counts as down (and polls do not pile up).
  const res = await fetch(`${base}/api/status${query}`, { cache: 'no-store', signal: AbortSignal.timeout(3000) })
  if (res.status === 401 || res.status === 403) state.statusDenied = true
  if (!res.ok) throw new Error(`status ${res.status}`)
  return res.json()
}

/** The cluster's regions, learned from this server's status: itself and its peers' public URLs. */
async function discoverRegions () {
  const s = await status(location.origin)
  const regions = [{ name: s.region, url: s.url.replace(/\/$/, ''), node: s.node_id }]
  for (const p of s.peers) {
    const url = (p.public_url || p.url || '').replace(/\/$/, '')
    if (url && !regions.some((r) => r.node === p.node_id)) regions.push({ name: p.region || url, url, node: p.node_id })
  }
  regions.splice(1, Infinity, ...regions.slice(1).sort((a, b) => a.name.localeCompare(b.name)))
  // The page's own origin is the reachable address of this region whatever --public-url says.
  regions[0].url = location.origin
  return regions
}

function wsUrl (region) {
  return region.url.replace(/^http/, 'ws') + '/ws'
}

// --- connection ----------------------------------------------------------------------------

function connect () {
  if (state.provider) {
    state.provider.destroy()
    state.provider = null
  }
  const provider = new WebsocketProvider(wsUrl(state.region), state.doc, ydoc, {
    connect: !state.offline,
    params: token ? { token } : {}
  })
  provider.awareness.setLocalStateField('user', user)
  provider.on('status', renderConnection)
  provider.on('sync', renderConnection)
  provider.awareness.on('change', renderPresence)
  state.provider = provider
  if (view) {
    view.destroy()
  }
  view = new EditorView({
    doc: ytext.toString(),
    extensions: [
      keymap.of(yUndoManagerKeymap),
      basicSetup,
      EditorView.lineWrapping,
      EditorView.contentAttributes.of({ 'aria-label': `Document ${state.doc}` }),
      yCollab(ytext, provider.awareness, { undoManager })
    ],
    parent: $('editor')
  })
  renderConnection()
  renderPresence()
}

function renderConnection () {
  const p = state.provider
  let label, cls
  if (state.offline) {
    label = 'offline'; cls = 'offline'
  } else if (p && p.wsconnected && p.synced) {
    label = 'synced'; cls = 'synced'
  } else if (p && p.wsconnected) {
    label = 'syncing'; cls = 'connecting'
  } else {
    label = 'connecting'; cls = 'connecting'
  }
  const el = $('connection')
  el.textContent = `${label} · ${state.region ? state.region.name : '?'}`
  el.className = `badge ${cls}`
  el.dataset.state = label
  $('offline').setAttribute('aria-pressed', String(state.offline))
  $('offline').textContent = state.offline ? 'Go online' : 'Go offline'
}

function renderPresence () {
  const list = $('presence')
  list.replaceChildren()
  const states = state.provider ? state.provider.awareness.getStates() : new Map()
  for (const [clientId, s] of states) {
    if (!s.user) continue
    const li = document.createElement('li')
    const dot = document.createElement('span')
    dot.className = 'dot'
    dot.style.background = s.user.color
    li.append(dot, document.createTextNode(s.user.name + (clientId === ydoc.clientID ? ' (you)' : '')))
    li.dataset.client = String(clientId)
    list.append(li)
  }
}

// --- replication panel ---------------------------------------------------------------------

function ago (ms) {
  if (ms == null) return 'never'
  return ms < 1000 ? `${ms} ms ago` : `${(ms / 1000).toFixed(1)} s ago`
}

async function renderReplication () {
  if (state.statusDenied) {
    // Status needs an admin token: say so once, and stop asking every second.
    const p = document.createElement('p')
    p.textContent = 'The replication panel needs an admin token (open the page with ?token= of one).'
    $('replication').replaceChildren(p)
    $('region-map').replaceChildren()
    return
  }
  const rows = await Promise.all(state.regions.map(async (r) => {
    try { return { r, s: await status(r.url) } } catch (e) { return { r, error: String(e.message || e) } }
  }))
  renderMap($('map'), regionMap(rows, state.region && state.region.url))
  const table = $('replication')
  table.replaceChildren()
  for (const { r, s, error } of rows) {
    const section = document.createElement('section')
    section.className = 'region'
    const h = document.createElement('h3')
    h.textContent = `${r.name}${state.region && r.url === state.region.url ? ' (connected here)' : ''}`
    section.append(h)
    if (error) {
      const p = document.createElement('p')
      p.className = 'down'
      p.textContent = `unreachable: ${error}`
      section.append(p)
    } else {
      const meta = document.createElement('p')
      meta.textContent = `log seq ${s.committed_seq} · ${s.connections} clients · ${s.documents} live docs`
      section.append(meta)
      const ul = document.createElement('ul')
      for (const p of s.peers) {
        const li = document.createElement('li')
        li.className = p.connected ? 'up' : 'down'
        const link = p.connected ? `linked, lag ${p.lag_ms} ms` : 'down'
        li.textContent = `${p.connected ? '●' : '○'} ${p.region || p.url}: ${link}, backlog ${p.backlog}, heard ${ago(p.last_contact_ago_ms)}`
        ul.append(li)
      }
      section.append(ul)
    }
    table.append(section)
  }
}

// --- controls ------------------------------------------------------------------------------

function updateUrl () {
  const q = new URLSearchParams({ doc: state.doc, region: state.region.name })
  // The token stays in this tab's URL (a reload keeps working) but not in the share link: a
  // token is its holder's own.
  const own = new URLSearchParams(q)
  if (token) own.set('token', token)
  history.replaceState(null, '', `?${own}`)
  $('share').href = `${state.region.url}/?${q}`
}

function setup () {
  $('doc').value = state.doc
  $('me').textContent = user.name
  $('me').style.borderColor = user.color
  $('doc-form').addEventListener('submit', (e) => {
    e.preventDefault()
    const name = $('doc').value.trim()
    if (!name || name === state.doc) return
    // A new document: reload with it in the URL, so each page holds one document.
    location.search = `?${new URLSearchParams({ doc: name, region: state.region.name })}`
  })
  $('region').addEventListener('change', () => {
    state.region = state.regions[Number($('region').value)]
    updateUrl()
    connect() // the same Y.Doc, another region: any edits the new region lacks are sent on sync
  })
  $('offline').addEventListener('click', () => {
    state.offline = !state.offline
    if (state.offline) state.provider.disconnect()
    else state.provider.connect()
    renderConnection()
  })
  $('undo').addEventListener('click', () => { undoManager.undo(); view.focus() })
  $('redo').addEventListener('click', () => { undoManager.redo(); view.focus() })
}

async function main () {
  setup()
  try {
    state.regions = await discoverRegions()
  } catch (e) {
    state.regions = [{ name: 'this server', url: location.origin }]
  }
  const wanted = params.get('region')
  state.region = state.regions.find((r) => r.name === wanted) || state.regions[0]
  const select = $('region')
  state.regions.forEach((r, i) => {
    const o = document.createElement('option')
    o.value = String(i)
    o.textContent = r.name
    o.selected = r === state.region
    select.append(o)
  })
  updateUrl()
  $('region-map').append(legend())
  connect()
  view.focus()
  renderReplication()
  setInterval(() => { renderReplication().catch(() => {}) }, 1000)
  // For tests and the curious: the shared state.
  window.concord = { ydoc, ytext, user, state }
}

main()

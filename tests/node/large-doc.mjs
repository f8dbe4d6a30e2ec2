// A large Yjs document as people write one, for the memory and join-storm tests and for the
// comparison harness in bench/large-docs: words typed at random places until the text holds
// `size` bytes. Typing 100k words at random places into one Y.Text is slow in yrs (it walks the
// text from its start on every insert), so the text is written in sections, as the Rust
// generator (concord_crdt::sample) does: `sections` authors (seeded random client ids), each in
// its own Doc with the same root, type words at random places within their own section until it
// holds size/sections bytes; their full states are then merged. Concurrent first inserts of the
// same root are ordered by Yjs's rules, so the merged text is the sections one after another.
// Seeded, so the same arguments give the same bytes. The Yjs module is passed in rather than
// imported: the tests and the harness each install their own copy, and a document must be made
// with the copy that reads it.

/** Words typed, each followed by a space (ASCII, so bytes = UTF-16 code units). */
const WORDS = [
  'document', 'server', 'regions', 'replication', 'updates', 'editors', 'cursors', 'merging',
  'state', 'vectors', 'clients', 'latency', 'memory', 'network', 'sections', 'paragraph',
  'agenda', 'meeting', 'notes', 'drafting', 'reviewers', 'changes', 'versions', 'history',
  'offline', 'online', 'conflicts', 'ordering', 'plaintext', 'chapters', 'specification',
  'design', 'measurements', 'bounded', 'storming', 'joining', 'leaving', 'idleness',
  'collaboration', 'acknowledgement', 'compaction', 'durability', 'throughput', 'websocket',
  'awareness', 'presence', 'snapshot', 'tombstone', 'insertion', 'deletion'
]

/** A small seeded PRNG (mulberry32): uniform 32-bit values, deterministic across runs. */
function prng (seed) {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

/**
 * The document's full state as one Yjs v1 update: `size` bytes of words typed at random places
 * into the Y.Text `root`, by `sections` authors. `Y` is the `yjs` module.
 */
export function typedDocument (Y, { root = 'text', size = 500_000, seed = 1, sections = 20 } = {}) {
  const rand = prng(seed)
  const per = Math.ceil(size / sections)
  const states = []
  for (let s = 1; s <= sections; s++) {
    const doc = new Y.Doc()
    // Random 32-bit ids as real clients have (they make every origin 5 bytes on the wire).
    doc.clientID = Math.floor(rand() * 4294967296)
    const text = doc.getText(root)
    while (text.length < per) {
      const word = WORDS[Math.floor(rand() * WORDS.length)] + ' '
      text.insert(Math.floor(rand() * (text.length + 1)), word)
    }
    states.push(Y.encodeStateAsUpdate(doc))
    doc.destroy()
  }
  return Y.mergeUpdates(states)
}

/** How many items (structs) a v1 update holds: a document's size as a CRDT, for reports. */
export function countItems (Y, update) {
  let n = 0
  for (const s of Y.decodeUpdate(update).structs) if (s.constructor.name === 'Item') n++
  return n
}

// Checks that a load test's report.json carries the replication cost from the servers' counters
// (copies, peer messages and peer bytes per update, and the ideal N-1), each a finite number,
// and says which count of updates it divides by. Not the bound itself: the cluster tests check
// that. Usage: node tests/replication-cost-fields.mjs target/loadtest/smoke/report.json
import { readFileSync } from 'node:fs'

const report = JSON.parse(readFileSync(process.argv[2], 'utf8'))
const cost = report.replication_cost
const fail = (why) => {
  console.error(`replication cost in ${process.argv[2]}: ${why}`)
  process.exit(1)
}
if (!cost) fail(`missing (${report.replication_cost_note})`)
for (const field of ['copies_per_update', 'peer_messages_per_update', 'peer_bytes_per_update',
  'ideal_copies_per_update', 'copies_over_ideal']) {
  // serde_json writes NaN and infinities as null, which isFinite rejects too.
  if (!Number.isFinite(cost[field]) || cost[field] <= 0) fail(`${field} is ${cost[field]}`)
}
if (cost.ideal_copies_per_update !== cost.regions - 1) fail('ideal is not N-1')
if (!['server', 'client'].includes(cost.denominator)) fail(`denominator ${cost.denominator}`)
console.log(`replication cost: ${cost.copies_per_update.toFixed(2)} copies/update ` +
  `(${cost.denominator} count of ${cost.updates} updates)`)

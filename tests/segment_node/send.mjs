// Drives the real @segment/analytics-node SDK for tests/test_segment_clients.py.
// Reads {host, writeKey, flushAt, calls: [{method, args}]} as JSON on stdin, makes each
// call, waits for every delivery (retries included), and prints {delivered, failures}.
import { Analytics } from '@segment/analytics-node'

const chunks = []
for await (const chunk of process.stdin) chunks.push(chunk)
const plan = JSON.parse(Buffer.concat(chunks).toString('utf8'))

const analytics = new Analytics({
  writeKey: plan.writeKey,
  host: plan.host,
  flushAt: plan.flushAt ?? 15,
  flushInterval: 50,
  maxRetries: 5,
  httpRequestTimeout: 10000,
})

let delivered = 0
const failures = []
const sent = plan.calls.map(
  ({ method, args }) =>
    new Promise((resolve) => {
      analytics[method](args, (err) => {
        if (err) failures.push(String(err && err.message ? err.message : err))
        else delivered += 1
        resolve()
      })
    }),
)
await Promise.all(sent)
await analytics.closeAndFlush({ timeout: 60000 })
process.stdout.write(JSON.stringify({ delivered, failures }) + '\n')

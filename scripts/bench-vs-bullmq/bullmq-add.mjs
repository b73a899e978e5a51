// The BullMQ side of bench-vs-bullmq.sh: add N jobs with a fixed number of
// calls in flight (queue.add, or queue.addBulk of BATCH jobs), timing each
// call; prints one JSON line. No worker runs: this measures accepting only.
//
// usage: node bullmq-add.mjs REDIS_PORT N IN_FLIGHT BATCH
import { Queue } from "bullmq";

const [port, total, inFlight, batch] = process.argv.slice(2).map(Number);
const queue = new Queue(`bench-${process.pid}-${Date.now()}`, {
  connection: { host: "127.0.0.1", port },
});
await queue.waitUntilReady();

let seq = 0;
const latencies = [];
const job = (i) => ({ name: "send", data: { chat_id: 1_000_000 + (i % 10_000), text: `bench:${i}` } });

async function producer() {
  while (seq < total) {
    const first = seq;
    seq += batch;
    const started = process.hrtime.bigint();
    if (batch === 1) {
      const j = job(first);
      await queue.add(j.name, j.data);
    } else {
      const jobs = [];
      for (let i = first; i < Math.min(first + batch, total); i++) jobs.push(job(i));
      await queue.addBulk(jobs);
    }
    latencies.push(Number(process.hrtime.bigint() - started) / 1e6);
  }
}

// Warm up the connection and the scripts.
for (let i = 0; i < 200; i++) await queue.add("warm", { i });
const started = process.hrtime.bigint();
await Promise.all(Array.from({ length: inFlight }, producer));
const seconds = Number(process.hrtime.bigint() - started) / 1e9;
latencies.sort((a, b) => a - b);
const at = (q) => latencies[Math.min(latencies.length - 1, Math.ceil(q * latencies.length) - 1)];
console.log(
  JSON.stringify({
    jobs: total,
    seconds,
    per_second: total / seconds,
    p50_ms: at(0.5),
    p99_ms: at(0.99),
  }),
);
await queue.obliterate({ force: true });
await queue.close();

// BullMQ's side of bench/memory_bench.py: leaves N jobs of one kind at rest on a server.
//
//     node bullmq_memory.mjs <redis url> <queue> <kind> <n>
//
// Kinds (the segue record each matches, in memory_bench.py):
//   waiting    N jobs added, no worker
//   finished   N jobs run by a worker, each returning a number; results kept (the default)
//   delayed    N jobs added with a delay of one hour
//   paused     N "step jobs" (BullMQ's documented pattern for a job that keeps its progress):
//              the job stores its state in its data (updateData), moves itself to delayed
//              for an hour (moveToDelayed) and throws DelayedError
//   workflow   N/2 flows of a parent waiting for one child (FlowProducer): N steps at rest
// Prints one line of JSON: {"kind": ..., "n": ...} once every job is where the kind puts it.
import { DelayedError, FlowProducer, Queue, Worker } from "bullmq";

const [url, queueName, kind, nText] = process.argv.slice(2);
const n = Number(nText);
const u = new URL(url);
const connection = { host: u.hostname, port: Number(u.port), maxRetriesPerRequest: null };
const CHUNK = 1000;
const HOUR = 3_600_000;

async function addAll(queue, opts) {
  for (let i = 0; i < n; i += CHUNK) {
    const jobs = [];
    for (let j = i; j < Math.min(n, i + CHUNK); j++) jobs.push({ name: "bench.noop", data: { i: j }, opts });
    await queue.addBulk(jobs);
  }
}

async function until(queue, state, count) {
  const deadline = Date.now() + 600_000;
  for (;;) {
    const counts = await queue.getJobCounts(state);
    if (counts[state] >= count) return;
    if (Date.now() > deadline) throw new Error(`${state}: ${counts[state]} of ${count}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

async function run(processor, queue, state, count) {
  const worker = new Worker(queueName, processor, { connection, concurrency: 50 });
  await until(queue, state, count);
  await worker.close();
}

const queue = new Queue(queueName, { connection });
if (kind === "waiting") {
  await addAll(queue, undefined);
} else if (kind === "delayed") {
  await addAll(queue, { delay: HOUR });
} else if (kind === "finished") {
  await addAll(queue, undefined);
  await run(async (job) => job.data.i, queue, "completed", n);
} else if (kind === "paused") {
  await addAll(queue, undefined);
  await run(
    async (job, token) => {
      await job.updateData({ i: job.data.i, state: { x: job.data.i } });
      await job.moveToDelayed(Date.now() + HOUR, token);
      throw new DelayedError();
    },
    queue,
    "delayed",
    n,
  );
} else if (kind === "workflow") {
  const flows = new FlowProducer({ connection });
  for (let i = 0; i < n / 2; i += CHUNK) {
    const batch = [];
    for (let j = i; j < Math.min(n / 2, i + CHUNK); j++) {
      batch.push({
        name: "bench.last",
        queueName,
        children: [{ name: "bench.first", queueName, data: { i: j } }],
      });
    }
    await flows.addBulk(batch);
  }
  await flows.close();
} else {
  throw new Error(`unknown kind ${kind}`);
}
await queue.close();
console.log(JSON.stringify({ kind, n }));

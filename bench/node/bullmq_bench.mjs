// BullMQ (Node) under the bench workloads of bench/run.py, the peer that runs outside Python.
//
//   node bullmq_bench.mjs worker                       a worker, concurrency BENCH_CONCURRENCY
//   node bullmq_bench.mjs WORKLOAD --n N --sleep S     prepare | enqueue-one | enqueue-batch |
//                                                      latency; prints one JSON line
//
// The task is the same as the Python peers': return i, after awaiting `sleep` seconds if set.
// Completed jobs are kept (BullMQ's default), so bench/run.py counts them in the completed set.
import { Queue, QueueEvents, Worker } from "bullmq";

const url = new URL(process.env.BENCH_URL ?? "redis://127.0.0.1:6379/0");
const connection = {
  host: url.hostname,
  port: Number(url.port || 6379),
  db: Number(url.pathname.slice(1) || 0),
  maxRetriesPerRequest: null,
};
const QUEUE = "bench";

function args() {
  const argv = process.argv.slice(2);
  const out = { workload: argv[0], n: 1000, sleep: 0 };
  for (let i = 1; i < argv.length; i += 2) {
    if (argv[i] === "--n") out.n = Number(argv[i + 1]);
    if (argv[i] === "--sleep") out.sleep = Number(argv[i + 1]);
  }
  return out;
}

async function work(job) {
  if (job.data.sleep) await new Promise((r) => setTimeout(r, job.data.sleep * 1000));
  return job.data.i;
}

function runWorker() {
  const worker = new Worker(QUEUE, work, {
    connection,
    concurrency: Number(process.env.BENCH_CONCURRENCY ?? 32),
  });
  const stop = async () => {
    await worker.close();
    process.exit(0);
  };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
}

async function main() {
  const a = args();
  if (a.workload === "worker") return runWorker();
  const queue = new Queue(QUEUE, { connection });
  await queue.waitUntilReady();
  let result;
  if (a.workload === "enqueue-one") {
    const t0 = performance.now();
    for (let i = 0; i < a.n; i++) await queue.add("work", { i, sleep: a.sleep });
    result = { rate: a.n / ((performance.now() - t0) / 1000) };
  } else if (a.workload === "enqueue-batch" || a.workload === "prepare") {
    const t0 = performance.now();
    // addBulk is one MULTI; chunks keep one call's reply and memory bounded like segue's batches
    for (let s = 0; s < a.n; s += 1000) {
      const jobs = [];
      for (let i = s; i < Math.min(a.n, s + 1000); i++) {
        jobs.push({ name: "work", data: { i, sleep: a.sleep } });
      }
      await queue.addBulk(jobs);
    }
    result = a.workload === "prepare"
      ? { enqueued: a.n }
      : { rate: a.n / ((performance.now() - t0) / 1000) };
  } else if (a.workload === "latency") {
    const events = new QueueEvents(QUEUE, { connection });
    await events.waitUntilReady();
    const once = async (i) => {
      const job = await queue.add("work", { i, sleep: 0 });
      return job.waitUntilFinished(events, 10_000);
    };
    for (let i = 0; i < 20; i++) await once(i); // warm up connections and the worker
    const lat = [];
    for (let i = 0; i < a.n; i++) {
      const t0 = performance.now();
      await once(i);
      lat.push(performance.now() - t0);
    }
    lat.sort((x, y) => x - y);
    result = {
      p50_ms: lat[Math.floor(lat.length / 2)],
      p99_ms: lat[Math.min(lat.length - 1, Math.floor(lat.length * 0.99))],
    };
    await events.close();
  } else {
    throw new Error(`unknown workload ${a.workload}`);
  }
  await queue.close();
  console.log(JSON.stringify(result));
  process.exit(0);
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});

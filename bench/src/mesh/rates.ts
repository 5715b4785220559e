// What the workers measured while the mesh bench ran, and the store link it calibrates from them.
// Each worker reports the wall time of its own recent work in its heartbeats (a computed prompt
// token, a token's KV fetched from the store); the router shows the live workers' last reports in
// /metrics (`kvmesh_router_worker_rate_ms`). The bench reads them every second during a replay.
//
// The calibrated store link is the one over which fetching a token's KV takes `fetchComputeRatio`
// times as long as the workers took to compute a token on loopback. A ratio of 1 is the point where
// a token from the store costs what recomputing it costs; it is about where an 8B model prefilling
// on an H100 stands when its store is behind 25 GbE (128 KiB of bf16 KV a token ≈ 42 µs on the wire,
// against 30-65 µs of compute at 250-550 TFLOP/s effective).
import { metricSamples } from './metrics.ts';

/** One worker's rate at one moment, as the router's /metrics showed it. */
export interface RateSample {
  pool: string;
  worker: string;
  rate: string;
  ms: number;
}

export const COMPUTE_RATE = 'prefill_ms_per_token';
export const FETCH_RATE = 'fetch_ms_per_token';
const RATE_METRIC = 'kvmesh_router_worker_rate_ms';
const SAMPLE_INTERVAL_MS = 1000;
// At one sample a second, an hour of replay with 8 workers × 3 rates.
const SAMPLES_MAX = 100_000;

/** The worker rates in a Prometheus text exposition (labels in any order). */
export function parseWorkerRates(text: string): RateSample[] {
  return metricSamples(text, RATE_METRIC).flatMap(({ labels, value: ms }) => {
    const [pool, worker, rate] = [labels.get('pool'), labels.get('worker'), labels.get('rate')];
    return pool !== undefined && worker !== undefined && rate !== undefined && ms > 0
      ? [{ pool, worker, rate, ms }]
      : [];
  });
}

/** Reads the router's worker rates every second and once more when stopped; a failed read is skipped. */
export function sampleWorkerRates(metricsUrl: string): { stop(): Promise<RateSample[]> } {
  const samples: RateSample[] = [];
  let pending: Promise<void> = Promise.resolve();
  const read = async (): Promise<void> => {
    try {
      const fresh = parseWorkerRates(await (await fetch(metricsUrl)).text());
      samples.push(...fresh.slice(0, Math.max(0, SAMPLES_MAX - samples.length)));
    } catch {
      // NOTE: a sample missed while the router was busy; the next one comes in a second.
    }
  };
  const timer = setInterval(() => {
    pending = pending.then(read);
  }, SAMPLE_INTERVAL_MS);
  return {
    // One last read at the end, so that a replay shorter than the interval has a sample too.
    stop: async () => {
      clearInterval(timer);
      await pending.then(read);
      return samples;
    },
  };
}

/** The median of a rate over all samples (every worker, every moment); undefined without any. */
export function medianRate(samples: readonly RateSample[], rate: string): number | undefined {
  const values = samples.filter((s) => s.rate === rate).map((s) => s.ms);
  if (values.length === 0) return undefined;
  values.sort((a, b) => a - b);
  const mid = values.length >> 1;
  return values.length % 2 === 1
    ? (values[mid] as number)
    : ((values[mid - 1] as number) + (values[mid] as number)) / 2;
}

/** Mbit/s of a link that moves `kvBytesPerToken` in `fetchComputeRatio` × `computeMsPerToken`. */
export function calibratedLinkMbit(
  kvBytesPerToken: number,
  computeMsPerToken: number,
  fetchComputeRatio: number,
): number {
  if (!(kvBytesPerToken > 0) || !(computeMsPerToken > 0) || !(fetchComputeRatio > 0))
    throw new Error(
      `calibrating the store link needs positive KV bytes, compute time and ratio, got ` +
        `${kvBytesPerToken} B, ${computeMsPerToken} ms, ${fetchComputeRatio}`,
    );
  const bytesPerSecond = kvBytesPerToken / ((fetchComputeRatio * computeMsPerToken) / 1000);
  return (bytesPerSecond * 8) / 1e6;
}

// The one definition of "throughput at concurrency c" that every transport in the bench is measured
// with: c closed-loop workers, each on its own connection with one operation outstanding at a time
// (no pipelining), run for a warm-up and then for `seconds`; operations that start before the
// deadline are counted, and the rate is bytes moved over the time until the last one completed.

export interface ClosedLoopOptions {
  concurrency: number;
  seconds: number;
  /** Not measured: warms connections, JIT and the server's buffers. */
  warmupSeconds: number;
  /** Payload bytes one operation moves (the big side: response of a GET, request of a PUT). */
  bytesPerOp: number;
}

export interface ThroughputResult {
  /** Payload GB/s (10^9 bytes per second) over all workers. */
  gbps: number;
  opsPerSecond: number;
  ops: number;
  seconds: number;
}

/** Runs `op(worker, i)` from `concurrency` workers in closed loop; `i` counts that worker's calls. */
export async function measureClosedLoop(
  options: ClosedLoopOptions,
  op: (worker: number, i: number) => Promise<void>,
): Promise<ThroughputResult> {
  const counts = new Array<number>(options.concurrency).fill(0);
  const phase = async (seconds: number): Promise<{ ops: number; seconds: number }> => {
    const start = performance.now();
    const deadline = start + seconds * 1000;
    let ops = 0;
    await Promise.all(
      counts.map(async (_, worker) => {
        while (performance.now() < deadline) {
          const i = counts[worker] as number;
          counts[worker] = i + 1;
          await op(worker, i);
          ops++;
        }
      }),
    );
    return { ops, seconds: (performance.now() - start) / 1000 };
  };
  if (options.warmupSeconds > 0) await phase(options.warmupSeconds);
  const { ops, seconds } = await phase(options.seconds);
  return {
    gbps: (ops * options.bytesPerOp) / seconds / 1e9,
    opsPerSecond: ops / seconds,
    ops,
    seconds,
  };
}

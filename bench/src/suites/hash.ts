// Block-identity hashing cost: a long prompt (default 131072 tokens, block 64 → 2048 chained
// hashes) on the native kernel, the TypeScript reference and hash-wasm, plus raw XXH3-128
// throughput on 1 MiB next to memcpy (Buffer.copy) measured in the same run as the anchor.
// Options: --tokens N, --block B, --runs R (native runs).
import { performance } from 'node:perf_hooks';

import { describeKernels, nativeKernels, referenceKernels } from '@kvmesh/kernels';
import { createXXHash128 } from 'hash-wasm';

import type { BenchContext, BenchSuite } from '../main.ts';
import { numberOption, round } from '../options.ts';

/** The budget the native chain must meet for a 128k-token prompt (DESIGN §2: hashing is never the bottleneck). */
const NATIVE_BUDGET_MS = 2;
const MIB = 1 << 20;

function timeRunsMs(runs: number, body: () => void): number[] {
  const times: number[] = [];
  for (let r = 0; r < runs; r++) {
    const start = performance.now();
    body();
    times.push(performance.now() - start);
  }
  return times.sort((a, b) => a - b);
}

function quantile(sorted: number[], q: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] as number;
}

/** Bytes per second over `iterations` calls of `body` on `bytes`, in GB/s (10^9). */
function throughputGBps(bytes: number, iterations: number, body: () => void): number {
  body(); // warm
  const start = performance.now();
  for (let i = 0; i < iterations; i++) body();
  const seconds = (performance.now() - start) / 1000;
  return (bytes * iterations) / seconds / 1e9;
}

async function run(ctx: BenchContext): Promise<Record<string, unknown>> {
  const promptTokens = numberOption(ctx.args, 'tokens', 131072);
  const blockTokens = numberOption(ctx.args, 'block', 64);
  const nativeRuns = numberOption(ctx.args, 'runs', 300);
  const tokens = Uint32Array.from({ length: promptTokens }, () => Math.floor(Math.random() * 2 ** 32));
  const seed = Uint8Array.from({ length: 16 }, () => Math.floor(Math.random() * 256));
  const blocks = Math.floor(promptTokens / blockTokens);

  const native = nativeKernels();
  let nativeResult: Record<string, unknown> | null = null;
  let expected: string | undefined;
  if (native) {
    ctx.log(`native: ${nativeRuns} runs of ${blocks} blocks`);
    timeRunsMs(20, () => native.blockHashes(seed, tokens, blockTokens));
    const times = timeRunsMs(nativeRuns, () => native.blockHashes(seed, tokens, blockTokens));
    const msMedian = quantile(times, 0.5);
    nativeResult = {
      isa: native.isa(),
      runs: nativeRuns,
      msMedian: round(msMedian),
      msP99: round(quantile(times, 0.99)),
      budgetMs: NATIVE_BUDGET_MS,
      withinBudget: msMedian < NATIVE_BUDGET_MS,
    };
    expected = Buffer.from(native.blockHashes(seed, tokens, blockTokens)).toString('hex');
  } else {
    ctx.log(`native kernels unavailable: ${describeKernels().detail}`);
  }

  ctx.log('reference: 3 runs');
  let referenceOut: Uint8Array = new Uint8Array(0);
  const referenceTimes = timeRunsMs(3, () => {
    referenceOut = referenceKernels.blockHashes(seed, tokens, blockTokens);
  });

  ctx.log('hash-wasm: 3 runs');
  const hasher = await createXXHash128();
  const input = Buffer.alloc(16 + 4 * blockTokens);
  let wasmOut = new Uint8Array(0);
  const wasmTimes = timeRunsMs(3, () => {
    const out = new Uint8Array(blocks * 16);
    input.set(seed, 0);
    for (let b = 0; b < blocks; b++) {
      // Tokens as u32le: the bytes of a Uint32Array on a little-endian host (x86, arm64).
      input.set(new Uint8Array(tokens.buffer, tokens.byteOffset + b * blockTokens * 4, blockTokens * 4), 16);
      hasher.init();
      hasher.update(input);
      const digest = hasher.digest('binary');
      out.set(digest, b * 16);
      input.set(digest, 0);
    }
    wasmOut = out;
  });

  // The three must agree, or the timings compare different work.
  const referenceHex = Buffer.from(referenceOut).toString('hex');
  const agree =
    referenceHex === Buffer.from(wasmOut).toString('hex') && (expected ?? referenceHex) === referenceHex;
  if (!agree) throw new Error('hash bench: native, reference and hash-wasm disagree on the block hashes');

  ctx.log('hash128 and memcpy throughput on 1 MiB');
  const data = Buffer.alloc(MIB);
  for (let i = 0; i < MIB; i++) data[i] = Math.floor(Math.random() * 256);
  const target = Buffer.alloc(MIB);
  const memcpyGBps = throughputGBps(MIB, 2000, () => data.copy(target));
  const hash128GBps = native ? throughputGBps(MIB, 2000, () => native.hash128(data)) : null;
  const referenceHash128GBps = throughputGBps(MIB, 10, () => referenceKernels.hash128(data));
  const hashWasm128GBps = throughputGBps(MIB, 200, () => {
    hasher.init();
    hasher.update(data);
    hasher.digest('binary');
  });

  return {
    promptTokens,
    blockTokens,
    blocks,
    native: nativeResult,
    nativeUnavailable: native ? undefined : describeKernels().detail,
    reference: { runs: 3, ms: round(quantile(referenceTimes, 0.5)) },
    hashWasm: { runs: 3, ms: round(quantile(wasmTimes, 0.5)) },
    hash128GBps: hash128GBps === null ? null : round(hash128GBps),
    referenceHash128GBps: round(referenceHash128GBps),
    hashWasm128GBps: round(hashWasm128GBps),
    memcpyGBps: round(memcpyGBps),
  };
}

export const suite: BenchSuite = {
  name: 'hash',
  description: 'block-identity hashing: 128k-token prompt chain and XXH3-128 GB/s vs memcpy',
  run,
};

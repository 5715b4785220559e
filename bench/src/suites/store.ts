// The block store next to Redis in the same run: GET and PUT of ~256 KiB blocks over loopback at 1
// and 8 concurrent clients (closed loop: each client has one operation outstanding, on its own
// connection; anchors/closed-loop.ts). kvmesh is one kvstore node process (standalone, R = 1, like
// one Redis without persistence) reached through the SDK over the binary data channel; every GET is
// verified (hash, namespace, header checksum, token identity) and every PUT is a new block (hash and
// token check on the node). Redis stores the same payload bytes as values. Options: --seconds S,
// --warmup S, --blocks N (GET working set), --concurrency 1,8.
import { availableParallelism } from 'node:os';

import { loadKernels } from '@kvmesh/kernels';
import { KvStoreClient } from '@kvmesh/sdk';
import { spawnService } from '@kvmesh/test-harness';

import type { BenchContext, BenchSuite } from '../main.ts';
import { BENCH_KV_BYTES, benchBlocks, type BenchBlock } from '../blocks.ts';
import { measureClosedLoop, type ThroughputResult } from '../anchors/closed-loop.ts';
import { measureRedisThroughput, startRedisServer } from '../anchors/redis.ts';
import { numberOption, round, stringOption } from '../options.ts';

function parseConcurrency(args: readonly string[]): number[] {
  const raw = stringOption(args, 'concurrency') ?? '1,8';
  const levels = raw.split(',').map(Number);
  if (levels.some((c) => !Number.isInteger(c) || c < 1 || c > 64)) {
    throw new Error(`--concurrency takes integers in [1, 64] separated by commas, got '${raw}'`);
  }
  return levels;
}

const best = (results: Record<string, ThroughputResult>): number =>
  Math.max(...Object.values(results).map((r) => r.gbps));

const table = (results: Record<string, ThroughputResult>): Record<string, number> =>
  Object.fromEntries(Object.entries(results).map(([c, r]) => [c, round(r.gbps)]));

export const suite: BenchSuite = {
  name: 'store',
  description: 'kvstore node vs Redis: GET and PUT of 256 KiB blocks at 1 and 8 clients over loopback',
  async run({ args, log }: BenchContext) {
    const seconds = numberOption(args, 'seconds', 3);
    const warmupSeconds = numberOption(args, 'warmup', 0.5);
    const blocks = numberOption(args, 'blocks', 256);
    const levels = parseConcurrency(args);
    const kernels = loadKernels();
    const { payload, block: makeBlock } = benchBlocks(kernels, '6b766d6573682d62656e63682d737431');
    log(
      `payload ${payload.length} bytes (${BENCH_KV_BYTES} of KV + header), ${availableParallelism()} cores`,
    );

    // Redis first (its own process), with the same value size and working set.
    const redis = await startRedisServer();
    const redisGet: Record<string, ThroughputResult> = {};
    const redisPut: Record<string, ThroughputResult> = {};
    try {
      log(`redis ${redis.version} on port ${redis.port}`);
      for (const c of levels) {
        const common = {
          host: redis.host,
          port: redis.port,
          client: 'resp' as const,
          valueBytes: payload.length,
          keys: blocks,
          concurrency: c,
          seconds,
          warmupSeconds,
          readInto: false,
        };
        redisGet[c] = await measureRedisThroughput({ ...common, op: 'get' });
        redisPut[c] = await measureRedisThroughput({ ...common, op: 'set' });
        log(`redis c=${c}: get ${round(redisGet[c].gbps)} GB/s, put ${round(redisPut[c].gbps)} GB/s`);
      }
    } finally {
      await redis.stop();
    }

    const budgetBytes = Math.max(1 << 30, 4 * blocks * payload.length);
    const node = await spawnService({
      name: 'kvstore-bench',
      // e.g. KVMESH_BENCH_NODE_ARGS='--cpu-prof --cpu-prof-dir=/tmp/prof' to profile the node.
      nodeArgs: (process.env.KVMESH_BENCH_NODE_ARGS ?? '').split(' ').filter((a) => a.length > 0),
      entry: 'services/kvstore/src/main.ts',
      env: {
        KVMESH_NODE_ID: 'bench-0',
        KVMESH_REPLICAS: '1',
        KVMESH_BYTES_BUDGET: String(budgetBytes),
        KVMESH_LOG_LEVEL: 'warn',
      },
    });
    const kvGet: Record<string, ThroughputResult> = {};
    const kvPut: Record<string, ThroughputResult> = {};
    try {
      const info = node.info as { nodeId: string; grpcAddress: string; dataAddress: string };
      const connect = (): Promise<KvStoreClient> =>
        KvStoreClient.connect({
          nodes: [{ nodeId: info.nodeId, grpcAddress: info.grpcAddress }],
          replicas: 1,
        });
      const setup = await connect();
      const working = Array.from({ length: blocks }, (_, i) => makeBlock(i));
      for (let i = 0; i < working.length; i += 32) {
        const report = await setup.put(working.slice(i, i + 32));
        if (report.failed.length > 0)
          throw new Error(`populating the store failed: ${String(report.failed[0])}`);
      }
      // The PUT phases store gigabytes of new blocks; pinning keeps the GET working set resident.
      await setup.pin(
        working.map((b) => b.hash),
        { ttlMs: 3_600_000, holder: 'store-bench' },
      );
      await setup.close();
      let nextPut = blocks;
      for (const c of levels) {
        const clients = await Promise.all(Array.from({ length: c }, connect));
        try {
          kvGet[c] = await measureClosedLoop(
            { concurrency: c, seconds, warmupSeconds, bytesPerOp: payload.length },
            async (worker, i) => {
              const block = working[(i * c + worker) % blocks] as BenchBlock;
              const [got] = await (clients[worker] as KvStoreClient).get([block.hash]);
              if (got?.payload.length !== payload.length)
                throw new Error(`GET ${block.hash} came back wrong`);
            },
          );
          kvPut[c] = await measureClosedLoop(
            { concurrency: c, seconds, warmupSeconds, bytesPerOp: payload.length },
            async (worker) => {
              const report = await (clients[worker] as KvStoreClient).put([makeBlock(nextPut++)]);
              if (report.acknowledged.length !== 1)
                throw new Error(`PUT not acknowledged: ${String(report.failed[0])}`);
            },
          );
        } finally {
          await Promise.all(clients.map((client) => client.close()));
        }
        log(`kvmesh c=${c}: get ${round(kvGet[c].gbps)} GB/s, put ${round(kvPut[c].gbps)} GB/s`);
      }
    } finally {
      await node.stop();
    }

    const result = {
      blockBytes: BENCH_KV_BYTES,
      payloadBytes: payload.length,
      redis: { getGBps: round(best(redisGet)), putGBps: round(best(redisPut)) },
      kvmesh: { getGBps: round(best(kvGet)), putGBps: round(best(kvPut)) },
      ratio: { get: round(best(kvGet) / best(redisGet), 3), put: round(best(kvPut) / best(redisPut), 3) },
      byConcurrency: {
        redis: { get: table(redisGet), put: table(redisPut) },
        kvmesh: { get: table(kvGet), put: table(kvPut) },
      },
    };
    return result;
  },
};

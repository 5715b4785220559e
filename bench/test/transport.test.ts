// Smoke test of the transport bench: a tiny run (one size, concurrency 1, short timings) prints its
// JSON contract on the last stdout line, with a figure for every transport and operation and bytes
// actually moved. Throughput values are not asserted beyond being positive: timings are not tests.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';

const main = fileURLToPath(new URL('../src/main.ts', import.meta.url));

describe('bench - transport suite', () => {
  it('bench - transport prints GB/s for every transport, operation and cell', () => {
    const r = spawnSync(
      process.execPath,
      [
        '--import',
        'tsx',
        main,
        'transport',
        '--sizes',
        '64k',
        '--concurrency',
        '1',
        '--seconds',
        '0.1',
        '--warmup',
        '0.02',
        '--repeats',
        '1',
        '--keys-bytes',
        '1m',
        '--json',
      ],
      { encoding: 'utf8', timeout: 120_000 },
    );
    assert.equal(r.status, 0, r.stderr);
    const out = JSON.parse(r.stdout.trim().split('\n').pop() as string) as {
      suite: string;
      sizes: number[];
      redisVersion: string | null;
      memcpyGBps: Record<string, number>;
      gbps: Record<'get' | 'put', Record<string, Record<string, Record<string, number>>>>;
      redisClientUsed: Record<'get' | 'put', Record<string, Record<string, string>>>;
      dataplaneVsRedis: Record<'get' | 'put', Record<string, Record<string, number>>>;
    };
    assert.equal(out.suite, 'transport');
    assert.deepEqual(out.sizes, [65536]);
    assert.match(out.redisVersion ?? '', /^\d+\.\d+\.\d+$/);
    assert.ok((out.memcpyGBps['64KiB'] as number) > 0);
    for (const op of ['get', 'put'] as const) {
      const cell = out.gbps[op]['64KiB']?.c1;
      assert.ok(cell !== undefined, `${op} cell`);
      assert.deepEqual(
        Object.keys(cell).sort(),
        ['dataplane', 'grpcDefault', 'grpcRaw', 'redis', 'redisNodeRedis', 'redisResp'],
        op,
      );
      for (const [transport, gbps] of Object.entries(cell))
        assert.ok(gbps > 0, `${op} ${transport}: ${gbps}`);
      assert.ok(['resp', 'node-redis'].includes(out.redisClientUsed[op]['64KiB']?.c1 as string));
      assert.ok((out.dataplaneVsRedis[op]['64KiB']?.c1 as number) > 0);
    }
  });
});

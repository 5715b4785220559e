// The prefill worker against an injected store that misbehaves on purpose (no NATS, no processes):
// a put the store does not acknowledge fails the request as UNAVAILABLE and claims no block; a
// held copy in another codec is recomputed instead of imported; a burst beyond the queue bound is
// refused with RESOURCE_EXHAUSTED while the running and waiting requests still complete.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';

import { credentials, status as GrpcStatus, type ServiceError } from '@grpc/grpc-js';
import { NO_PROGRESS, generateModel, loadModel, type LoadedModel } from '@kvmesh/engine';
import { PrefillRequest, WorkerClient, type BlockHash, type PrefillResponse } from '@kvmesh/protocol';
import { UnavailableError, createLogger } from '@kvmesh/runtime';
import type { FetchedBlock, PrefixMatchResult, PutReport } from '@kvmesh/sdk';

import { prefillConfig } from '../src/config.ts';
import { startPrefillWorker, type PrefillBlockStore, type PrefillWorker } from '../src/worker.ts';

const B = 16;

/** A store double: every hook can be replaced per test; the defaults hold nothing and ack every put. */
class FakeStore implements PrefillBlockStore {
  puts: BlockHash[][] = [];
  match: (hashes: readonly BlockHash[]) => Promise<PrefixMatchResult> = async () => ({
    matchedBlocks: 0,
    locations: [],
    unreachable: [],
  });
  fetch: (hash: BlockHash) => FetchedBlock | undefined = () => undefined;
  failPuts = false;

  matchPrefix(hashes: readonly (BlockHash | string)[]): Promise<PrefixMatchResult> {
    return this.match(hashes as BlockHash[]);
  }
  async get(hashes: readonly (BlockHash | string)[]): Promise<(FetchedBlock | undefined)[]> {
    return hashes.map((h) => this.fetch(h as BlockHash));
  }
  async put(blocks: readonly { hash: BlockHash | string | Uint8Array }[]): Promise<PutReport> {
    const hashes = blocks.map((b) => b.hash as BlockHash);
    this.puts.push(hashes);
    if (!this.failPuts) return { outcomes: [], acknowledged: hashes, failed: [] };
    const error = new UnavailableError('replicas unavailable');
    return { outcomes: [], acknowledged: [], failed: hashes.map((hash, index) => ({ index, hash, error })) };
  }
}

describe('prefill worker - faults of an injected store', () => {
  let dir = '';
  let model: LoadedModel;
  const store = new FakeStore();
  let worker: PrefillWorker;
  let client: WorkerClient;

  const prefill = (tokens: number[]): Promise<PrefillResponse> =>
    new Promise((resolve, reject) =>
      client.prefill(PrefillRequest.fromPartial({ promptTokenIds: tokens }), (err, res) =>
        err !== null ? reject(err) : resolve(res as PrefillResponse),
      ),
    );
  const tokens = (count: number, offset = 0): number[] =>
    Array.from({ length: count }, (_, i) => 10 + ((i * 7 + offset) % 1000));

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'kvmesh-prefill-faults-'));
    generateModel({ outDir: join(dir, 'tiny'), preset: 'tiny', seed: 9, progress: NO_PROGRESS });
    model = loadModel(join(dir, 'tiny'));
    worker = await startPrefillWorker(
      prefillConfig({ nodeId: 'prefill-f', modelDir: join(dir, 'tiny'), blockTokens: B, queueDepthMax: 1 }),
      { model, store, logger: createLogger({ service: 'prefill', level: 'error' }) },
    );
    client = new WorkerClient(worker.grpcAddress, credentials.createInsecure());
  });

  after(async () => {
    client?.close();
    await worker?.close();
    if (dir !== '') rmSync(dir, { recursive: true, force: true });
  });

  it('faults - an unacknowledged put serves the request without those blocks; the next request stores them', async () => {
    store.failPuts = true;
    const degraded = await prefill(tokens(2 * B + 3));
    assert.deepEqual(degraded.blockHashes, [], 'no block is promised that the store does not hold');
    assert.equal(degraded.computedTokens, 2 * B + 3);
    assert.equal(worker.stats().blocksNotStored, 2);
    store.failPuts = false;
    const response = await prefill(tokens(2 * B + 3));
    assert.equal(response.blockHashes.length, 2);
    assert.equal(worker.stats().active, 0);
  });

  it('faults - a held copy in another codec is recomputed, not imported', async () => {
    const prompt = tokens(2 * B + 3, 1);
    store.match = async (hashes) => ({
      matchedBlocks: hashes.length,
      locations: hashes.map((hash) => ({ hash, nodeIds: [], tier: 'dram', codec: 'f16' })),
      unreachable: [],
    });
    store.fetch = (hash) =>
      ({
        hash,
        codec: 'f16',
        dims: { layers: 2, kvHeads: 2, blockTokens: B, headDim: 32, groupSize: 16 },
      }) as FetchedBlock | undefined;
    store.puts = [];
    try {
      const response = await prefill(prompt);
      assert.equal(response.reusedTokens, 0);
      assert.equal(response.computedTokens, prompt.length);
      // Both were planned as imports and failed, so fresh copies are offered (the node deduplicates).
      assert.equal(store.puts[0]?.length, 2);
    } finally {
      store.match = async () => ({ matchedBlocks: 0, locations: [], unreachable: [] });
      store.fetch = () => undefined;
    }
  });

  it('faults - a burst beyond the queue bound is RESOURCE_EXHAUSTED; admitted requests complete', async () => {
    let release: () => void = () => undefined;
    const gate = new Promise<void>((resolve) => (release = resolve));
    let entered = 0;
    store.match = async () => {
      entered++;
      await gate;
      return { matchedBlocks: 0, locations: [], unreachable: [] };
    };
    try {
      const running = prefill(tokens(B + 1, 2));
      while (entered === 0) await new Promise((resolve) => setImmediate(resolve));
      const waiting = prefill(tokens(B + 1, 3));
      while (worker.stats().waiting === 0) await new Promise((resolve) => setImmediate(resolve));
      await assert.rejects(prefill(tokens(B + 1, 4)), (err: ServiceError) => {
        assert.equal(err.code, GrpcStatus.RESOURCE_EXHAUSTED);
        assert.match(err.details, /prefill queue is full \(1 requests waiting\)/);
        return true;
      });
      release();
      const results = await Promise.all([running, waiting]);
      assert.deepEqual(
        results.map((r) => r.computedTokens),
        [B + 1, B + 1],
      );
    } finally {
      release();
      store.match = async () => ({ matchedBlocks: 0, locations: [], unreachable: [] });
    }
  });
});

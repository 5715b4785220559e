// The router's index feed against the real thing: a nats-server with JetStream and two kvstore node
// processes (R = 2). Blocks put through the SDK show up in the index with both holders; a fresh
// router replaying the retained stream rebuilds the same index (restart recovery), and resuming
// from a saved position applies only what came after it.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import { encodeBlockPayload } from '@kvmesh/block';
import { jetstream } from '@nats-io/jetstream';
import { loadKernels } from '@kvmesh/kernels';
import { parseNamespace, type BlockHash } from '@kvmesh/protocol';
import { connectNats, type NatsConnection } from '@kvmesh/runtime';
import { chainBlocks, KvStoreClient } from '@kvmesh/sdk';
import {
  spawnKvStoreNodes,
  startNatsServer,
  waitFor,
  type NatsServerHandle,
  type ServiceHandle,
} from '@kvmesh/test-harness';

import { BlockIndex } from '../src/core/block-index.ts';
import { startIndexFeed } from '../src/adapters/index-feed.ts';

const kernels = loadKernels();
const DIMS = { layers: 2, kvHeads: 2, blockTokens: 16, headDim: 32, groupSize: 16 };
const FINGERPRINT = '0123456789abcdef0123456789abcdef';
const NS = parseNamespace('');

function blocks(count: number, firstToken: number): ReturnType<typeof chainBlocks> {
  const n = DIMS.kvHeads * DIMS.blockTokens * DIMS.headDim;
  const payload = (): Uint8Array =>
    encodeBlockPayload(
      kernels,
      'f32',
      DIMS,
      Array.from({ length: DIMS.layers }, () => ({
        k: Float32Array.from({ length: n }, () => Math.random() - 0.5),
        v: Float32Array.from({ length: n }, () => Math.random() - 0.5),
      })),
    );
  return chainBlocks(
    {
      modelFingerprint: FINGERPRINT,
      blockTokens: DIMS.blockTokens,
      tokens: Array.from({ length: count * DIMS.blockTokens }, (_, i) => firstToken + i),
      payloads: Array.from({ length: count }, payload),
    },
    kernels,
  );
}

describe('router - index feed from JetStream kv events', { timeout: 40_000 }, () => {
  let nats: NatsServerHandle;
  let nc: NatsConnection;
  const nodes: ServiceHandle[] = [];
  let store: KvStoreClient;

  before(async () => {
    nats = await startNatsServer({ jetstream: true });
    nc = await connectNats({ servers: nats.url, name: 'router-feed-test' });
    nodes.push(
      ...(await spawnKvStoreNodes({
        natsUrl: nats.url,
        nodeIds: ['kv-a', 'kv-b'],
        heartbeatIntervalMs: 200,
        missedHeartbeatsMax: 5,
      })),
    );
    store = await KvStoreClient.connect({
      natsUrl: nats.url,
      replicas: 2,
      heartbeatIntervalMs: 200,
      missedHeartbeatsMax: 5,
    });
    // Until both nodes see each other a put may be refused (fewer than R live): retry a probe block.
    await waitFor(async () => (await store.put(blocks(1, 90_000))).failed.length === 0, {
      timeoutMs: 15_000,
      intervalMs: 200,
      message: 'the kvstore nodes never accepted a put',
    });
  });

  after(async () => {
    await store?.close();
    await Promise.all(nodes.map((n) => n.stop()));
    await nc?.close();
    await nats?.stop();
  });

  it('index feed - puts appear with both holders; a fresh router rebuilds the index by replay', async () => {
    const chain = blocks(4, 1000);
    const report = await store.put(chain);
    assert.equal(report.acknowledged.length, 4);
    const hashes = chain.map((b) => b.hash as BlockHash);
    const js = jetstream(nc);

    const index = new BlockIndex({});
    const feed = startIndexFeed({ js, index });
    await feed.caughtUp;
    // Each node publishes its own events after the put is acknowledged: wait for both holders.
    await waitFor(
      () => {
        const m = index.match(NS, hashes);
        return m.blocks === 4 && m.positions.every((p) => p.holders.length === 2);
      },
      { timeoutMs: 10_000, message: 'index never saw 4 blocks on 2 holders' },
    );
    const match = index.match(NS, hashes);
    for (const position of match.positions) {
      assert.deepEqual(
        position.holders.map((h) => h.nodeId),
        ['kv-a', 'kv-b'],
      );
    }
    const saved = feed.stats().position;
    assert.ok(feed.stats().applied >= 3, 'cleared + stores from both nodes were applied');

    // Follow: a new block put after catching up arrives through the live subscription.
    const more = blocks(1, 5000);
    await store.put(more);
    await waitFor(() => index.match(NS, [more[0]!.hash as BlockHash]).blocks === 1, {
      timeoutMs: 10_000,
      message: 'followed event never applied',
    });
    await feed.stop();

    // Restart: a new router replays the whole retained stream and ends with the same view.
    const rebuilt = new BlockIndex({});
    const replay = startIndexFeed({ js, index: rebuilt });
    await replay.caughtUp;
    assert.equal(rebuilt.match(NS, hashes).blocks, 4);
    assert.equal(rebuilt.match(NS, [more[0]!.hash as BlockHash]).blocks, 1);
    await replay.stop();

    // Resume from the saved position: only the later block is applied.
    const resumed = new BlockIndex({});
    const tail = startIndexFeed({ js, index: resumed, fromStreamSeq: saved });
    await tail.caughtUp;
    assert.equal(resumed.match(NS, hashes).blocks, 0);
    assert.equal(resumed.match(NS, [more[0]!.hash as BlockHash]).blocks, 1);
    await tail.stop();
  });
});

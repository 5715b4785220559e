// Integration: R copies come back after a node leaves even for blocks its surviving co-owner holds
// only in its tier. Three in-process nodes on a real nats-server, R = 2: kv-a and kv-b each with DRAM
// for four blocks over their own real tiering service process (far memory for a few blocks, SSD for
// the rest), kv-c with plenty of DRAM and no tier. Every block shared with kv-c is demoted on its
// other owner before kv-c goes. What must hold:
// - after kv-c leaves, the automatic membership pass copies each of them to the surviving node, its
//   payload read from the tier (counted in copiesFromTier), and every acknowledged block reads back
//   identical from both survivors;
// - an anti-entropy probe counts a block a peer holds only in its tier as held (no copy), and a copy
//   a peer lost is pushed again from the tier.
import assert from 'node:assert/strict';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';

import { parseNodeId, type KvStoreClient, type NodeId } from '@kvmesh/protocol';
import { ownersOf } from '@kvmesh/runtime';
import {
  removeOnExit,
  spawnTieringService,
  startNatsServer,
  tieringInfo,
  waitFor,
  type NatsServerHandle,
  type ServiceHandle,
} from '@kvmesh/test-harness';

import { ENTRY_OVERHEAD_BYTES } from '../src/core/index.ts';
import { kvStoreConfig, startKvStoreNode, type KvStoreNode } from '../src/index.ts';
import { DIMS, chain, getBlocks, grpcClient, hashBytes, hex, putBlocks, type TestBlock } from './support.ts';

const payloadBytes = chain(1)[0]!.payload.byteLength;
const ENTRY_BYTES = payloadBytes + DIMS.blockTokens * 4 + ENTRY_OVERHEAD_BYTES;
const DRAM_BLOCKS = 4;
const FAR_BLOCKS = 6;
const [A, B, C] = ['kv-a', 'kv-b', 'kv-c'].map(parseNodeId) as [NodeId, NodeId, NodeId];

/** `count` single blocks (no parents: any may be demoted) owned by exactly `owners` among A, B, C. */
function ownedBy(owners: readonly NodeId[], count: number): TestBlock[] {
  const out: TestBlock[] = [];
  while (out.length < count) {
    const [block] = chain(1);
    const placed = ownersOf(block!.hash, [A, B, C], 2);
    if (owners.every((o) => placed.includes(o))) out.push(block!);
  }
  return out;
}

describe(
  'kvstore re-replication of demoted blocks - real tiering services, real NATS',
  { timeout: 60_000 },
  () => {
    let nats: NatsServerHandle;
    const tiers: ServiceHandle[] = [];
    const nodes = new Map<NodeId, KvStoreNode>();
    const clients = new Map<NodeId, KvStoreClient>();
    const node = (id: NodeId): KvStoreNode => nodes.get(id) as KvStoreNode;
    const client = (id: NodeId): KvStoreClient => clients.get(id) as KvStoreClient;

    // Put oldest first: what A and B share with C, then what they share with each other, so every
    // block shared with C ends up demoted on its surviving owner (DRAM keeps the last four puts).
    const withCofA = ownedBy([A, C], 6);
    const withCofB = ownedBy([B, C], 6);
    const shared = ownedBy([A, B], DRAM_BLOCKS);
    const blocks = [...withCofA, ...withCofB, ...shared];

    const start = async (nodeId: NodeId, tieringAddress: string, bytesBudget: number): Promise<void> => {
      const started = await startKvStoreNode(
        kvStoreConfig({
          nodeId,
          host: '127.0.0.1',
          natsUrl: nats.url,
          replicas: 2,
          heartbeatIntervalMs: 100,
          // NOTE: a node stalled for half a second on a loaded machine is not declared dead.
          missedHeartbeatsMax: 5,
          bytesBudget,
          tieringAddress,
          demotingBytesMax: 100 * ENTRY_BYTES,
          tierRetryMs: 50,
          tierCheckIntervalMs: 0,
          promoteParentsMax: 0,
          prefetchBlocksMax: 0,
          dataToken: 'tier-replication-test',
          peerTimeoutMs: 5_000,
          // Anti-entropy runs only when a test asks; the membership pass runs by itself.
          antiEntropyIntervalMs: 3_600_000,
          logLevel: 'error',
        }),
      );
      nodes.set(nodeId, started);
      clients.set(nodeId, grpcClient(started.grpcAddress));
    };

    const startTier = async (id: string): Promise<string> => {
      const ssdDir = mkdtempSync(join(tmpdir(), 'kvmesh-kv-tier-repl-'));
      removeOnExit(ssdDir);
      const service = await spawnTieringService({
        serviceId: `${id}-${process.pid}`,
        ssdDir,
        farBytes: FAR_BLOCKS * (payloadBytes + 512),
        ssdBytes: 64 * 1024 * 1024,
        flags: { 'ssd-direct-io': 'false', 'ssd-fsync': 'group' },
      });
      tiers.push(service);
      return tieringInfo(service).grpcAddress;
    };

    /** Every demotion of `id` acknowledged by its tier. */
    const settled = (id: NodeId): Promise<unknown> =>
      waitFor(() => node(id).store.stats().demoting === 0 && node(id).tier?.pending.demotionsInFlight === 0, {
        timeoutMs: 10_000,
        message: `every demotion of ${id} acknowledged`,
      });

    const holders = (block: TestBlock): NodeId[] =>
      [...nodes.keys()].filter((id) => node(id).store.has(block.namespace, block.hash));

    before(async () => {
      nats = await startNatsServer();
      const [tierA, tierB] = await Promise.all([startTier('kv-repl-a'), startTier('kv-repl-b')]);
      await Promise.all([
        start(A, tierA, Math.floor((DRAM_BLOCKS + 0.5) * ENTRY_BYTES)),
        start(B, tierB, Math.floor((DRAM_BLOCKS + 0.5) * ENTRY_BYTES)),
        start(C, '', 16 * 1024 * 1024),
      ]);
      await waitFor(() => [...nodes.values()].every((n) => n.liveNodes().length === 3), {
        timeoutMs: 5_000,
        message: 'every node sees all three',
      });
    });
    after(async () => {
      for (const c of clients.values()) c.close();
      await Promise.all([...nodes.values()].map((n) => n.close()));
      await Promise.all(tiers.map((t) => t.stop()));
      await nats?.stop();
    });

    it('tier replication - blocks held only in a tier get their second copy back after a node leaves', async () => {
      // One at a time, so each node stores its copies in `blocks` order.
      for (const block of blocks) {
        const res = await putBlocks(client(A), [block]);
        assert.equal(res.acknowledged.length, 1, `block ${block.hash} acknowledged`);
      }
      await Promise.all([settled(A), settled(B)]);
      for (const block of blocks) assert.equal(holders(block).length, 2, `block ${block.hash} has R copies`);
      // The case under test: the surviving owner holds each block shared with C only in its tier.
      for (const [id, mine] of [
        [A, withCofA],
        [B, withCofB],
      ] as const) {
        for (const block of mine) {
          const tier = node(id).store.tierOf(block.namespace, block.hash);
          assert.ok(tier === 'far' || tier === 'ssd', `block ${block.hash} is demoted on ${id} (${tier})`);
        }
      }

      await node(C).close();
      clients.get(C)?.close();
      nodes.delete(C);
      clients.delete(C);
      await waitFor(() => node(A).liveNodes().length === 2 && node(B).liveNodes().length === 2, {
        timeoutMs: 5_000,
        message: 'kv-c timed out of membership',
      });
      // NOTE: a peer stores a copy before its acknowledgement reaches the pusher's counters.
      await waitFor(
        () =>
          blocks.every((b) => holders(b).length === 2) &&
          node(A).replicationStats()!.copiesFromTier >= withCofA.length &&
          node(B).replicationStats()!.copiesFromTier >= withCofB.length,
        {
          timeoutMs: 8_000,
          message: 'every block held by both survivors again, copied from their tiers',
        },
      );

      // Read back from both, in opposite orders (so A ends with the first blocks demoted and B with
      // them in DRAM, which the next test relies on).
      for (const [id, order] of [
        [A, blocks],
        [B, [...blocks].reverse()],
      ] as const) {
        for (const block of order) {
          const [got] = await getBlocks(client(id), { hashes: [hashBytes(block.hash)] });
          assert.equal(got?.result?.$case, 'block', `${id} serves block ${block.hash}`);
          if (got?.result?.$case === 'block')
            assert.equal(
              hex(got.result.value.payload),
              hex(block.payload),
              `${id}: block ${block.hash} identical`,
            );
        }
        await settled(id);
      }
    });

    it('tier replication - anti-entropy counts tier-only copies as held, and restores a lost copy from the tier', async () => {
      const demotedOnB = blocks.filter((b) => node(B).store.tierOf(b.namespace, b.hash) !== 'dram');
      assert.ok(demotedOnB.length > 0, 'B holds some blocks only in its tier');
      const copiesBefore = node(A).replicationStats()!.copies;
      const replicaPutsBefore = node(B).node.counters.replicaPuts;
      await node(A).rebalance('anti-entropy');
      assert.equal(
        node(A).replicationStats()!.copies,
        copiesBefore,
        'B said it holds every block: no copies',
      );
      assert.equal(node(B).node.counters.replicaPuts, replicaPutsBefore);

      const lost = blocks.find(
        (b) =>
          node(B).store.tierOf(b.namespace, b.hash) === 'dram' &&
          node(A).store.tierOf(b.namespace, b.hash) !== 'dram',
      );
      assert.ok(lost !== undefined, 'a block B holds in DRAM and A only in its tier');
      assert.equal(node(B).store.delete(lost.namespace, lost.hash).deleted, true);
      const fromTierBefore = node(A).replicationStats()!.copiesFromTier;
      await node(A).rebalance('anti-entropy');
      assert.ok(node(B).store.has(lost.namespace, lost.hash), 'A pushed the lost copy back');
      assert.equal(node(A).replicationStats()!.copiesFromTier, fromTierBefore + 1);
      const [got] = await getBlocks(client(B), { hashes: [hashBytes(lost.hash)] });
      assert.equal(
        got?.result?.$case === 'block' ? hex(got.result.value.payload) : undefined,
        hex(lost.payload),
      );
    });
  },
);

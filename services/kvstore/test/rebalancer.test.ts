// The re-replication adapter over a real BlockStore with tiering on, with the peers and the host's
// tier as in-memory fakes (no sockets): a block this node holds only in its tier is copied like a
// DRAM block, its payload read from the tier without promoting it (the store keeps it demoted) and
// checked first. A tier read that fails, finds nothing or returns a bad copy is a failed copy that a
// later pass retries; it never stops the pass. Copies, tier reads included, respect `concurrency`.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { parseNodeId, type BlockHash, type Namespace, type NodeId } from '@kvmesh/protocol';
import { createLogger, ownersOf } from '@kvmesh/runtime';

import { Rebalancer, type RebalancerPeers, type RebalancerTier } from '../src/adapters/rebalancer.ts';
import type { BlockStore, LowerTier, PutBlockInput, ReplicaOutcome } from '../src/core/index.ts';
import { FakeClock, chain, hex, tieredStoreWith, type ChainBlock } from './core/helpers.ts';

const [A, B, C] = ['kv-a', 'kv-b', 'kv-c'].map(parseNodeId) as [NodeId, NodeId, NodeId];
const NODES = [A, B, C];
const logger = createLogger({ service: 'kvstore-test', level: 'error' });

function sharedWithB(count: number): ChainBlock[] {
  const out: ChainBlock[] = [];
  while (out.length < count) {
    const [block] = chain(1);
    const owners = ownersOf(block!.hash, NODES, 2);
    if (owners.includes(A) && owners.includes(B)) out.push(block!);
  }
  return out;
}

/** The host's tier as a map; read leaves the block there, like the real service's Read. */
class MapTier implements RebalancerTier {
  readonly blocks = new Map<BlockHash, PutBlockInput>();
  readonly reads: BlockHash[] = [];
  /** Per-hash behaviour of the next reads (default: the stored block). */
  readonly faults = new Map<BlockHash, 'reject' | 'missing' | 'corrupt'>();
  inFlight = 0;
  inFlightMax = 0;

  async read(hash: BlockHash): Promise<{ block: PutBlockInput; tier: LowerTier } | null> {
    this.reads.push(hash);
    this.inFlight++;
    this.inFlightMax = Math.max(this.inFlightMax, this.inFlight);
    try {
      await new Promise((resolve) => setTimeout(resolve, 2));
      const fault = this.faults.get(hash);
      if (fault === 'reject') throw new Error('tiering service unreachable');
      const block = this.blocks.get(hash);
      if (block === undefined || fault === 'missing') return null;
      if (fault === 'corrupt') {
        const payload = block.payload.slice();
        payload[payload.length - 100] = (payload[payload.length - 100] ?? 0) ^ 0x40;
        return { block: { ...block, payload }, tier: 'far' };
      }
      return { block, tier: 'far' };
    } finally {
      this.inFlight--;
    }
  }
}

/**
 * Peers that store what they are sent and answer probes from it. Copies in flight count in the
 * tier's inFlight, so one figure checks the bound on copies and tier reads together.
 */
class FakePeers implements RebalancerPeers {
  readonly held = new Map<NodeId, Map<BlockHash, Uint8Array>>();
  constructor(private readonly tier: MapTier) {}

  async putReplica(node: NodeId, input: PutBlockInput): Promise<ReplicaOutcome> {
    this.tier.inFlight++;
    this.tier.inFlightMax = Math.max(this.tier.inFlightMax, this.tier.inFlight);
    try {
      await new Promise((resolve) => setTimeout(resolve, 2));
      let blocks = this.held.get(node);
      if (blocks === undefined) this.held.set(node, (blocks = new Map()));
      blocks.set(input.hash, input.payload.slice());
      return 'stored';
    } finally {
      this.tier.inFlight--;
    }
  }

  heldBlocks(node: NodeId, _namespace: Namespace, hashes: readonly BlockHash[]): Promise<BlockHash[]> {
    const blocks = this.held.get(node);
    return Promise.resolve(hashes.filter((h) => blocks?.has(h) === true));
  }
}

/** Node A's store with `blocks` put in order into room for `dramBlocks`; the rest demoted to `tier`. */
function storeOfA(blocks: readonly ChainBlock[], dramBlocks: number, tier: MapTier): BlockStore {
  const store = tieredStoreWith(blocks, dramBlocks, new FakeClock());
  for (const record of store.claimDemotions(1_000)) {
    tier.blocks.set(record.hash, { ...record, payload: record.payload.slice() });
    assert.equal(store.demotionAcknowledged(record.namespace, record.hash, 'far'), 'demoted');
  }
  return store;
}

function rebalancerOf(
  store: BlockStore,
  tier: MapTier,
  peers: FakePeers,
  live: { now: NodeId[] },
): Rebalancer {
  return new Rebalancer({
    self: A,
    replicas: 2,
    store,
    live: () => live.now,
    peers,
    tier,
    concurrency: 2,
    settleDelayMs: 3_600_000,
    antiEntropyIntervalMs: 0,
    antiEntropyBlocksPerPass: 1_000,
    probeHashesMax: 64,
    logger,
    now: () => 0,
  });
}

describe('rebalancer - copies of demoted blocks', () => {
  it('rebalancer - after B leaves, demoted blocks are read from the tier (not promoted) and copied to C', async () => {
    const tier = new MapTier();
    const peers = new FakePeers(tier);
    const blocks = sharedWithB(8);
    const store = storeOfA(blocks, 3, tier);
    assert.equal(store.stats().demoted, 5);
    const live = { now: [...NODES] };
    const rebalancer = rebalancerOf(store, tier, peers, live);
    live.now = [A, C];
    await rebalancer.runNow('membership');
    await rebalancer.close();

    const atC = peers.held.get(C);
    assert.deepEqual([...(atC?.keys() ?? [])].sort(), blocks.map((b) => b.hash).sort());
    for (const block of blocks) assert.equal(hex(atC!.get(block.hash)!), hex(block.payload));
    assert.deepEqual(
      tier.reads.sort(),
      blocks
        .slice(0, 5)
        .map((b) => b.hash)
        .sort(),
      'one read per demoted block',
    );
    // Read, not promoted: A still holds them in its tier only, and the tier keeps its copies.
    for (const block of blocks.slice(0, 5)) assert.equal(store.tierOf(block.namespace, block.hash), 'far');
    assert.equal(tier.blocks.size, 5);
    assert.equal(store.stats().promotions, 0);
    assert.deepEqual(rebalancer.stats, {
      passes: 1,
      copies: 8,
      copiesFromTier: 5,
      copiesFailed: 0,
      probesFailed: 0,
    });
    assert.ok(tier.inFlightMax <= 2, `at most 2 copies or reads at once, saw ${tier.inFlightMax}`);
  });

  it('rebalancer - a failed, empty or corrupt tier read is a failed copy; anti-entropy retries it', async () => {
    const tier = new MapTier();
    const peers = new FakePeers(tier);
    const blocks = sharedWithB(6);
    const store = storeOfA(blocks, 2, tier);
    const [unreachable, missing, corrupt] = blocks as [ChainBlock, ChainBlock, ChainBlock];
    tier.faults.set(unreachable.hash, 'reject');
    tier.faults.set(missing.hash, 'missing');
    tier.faults.set(corrupt.hash, 'corrupt');
    const live = { now: [...NODES] };
    const rebalancer = rebalancerOf(store, tier, peers, live);
    live.now = [A, C];
    await rebalancer.runNow('membership');
    assert.deepEqual(
      [...(peers.held.get(C)?.keys() ?? [])].sort(),
      blocks
        .slice(3)
        .map((b) => b.hash)
        .sort(),
      'the corrupt copy was never sent',
    );
    assert.deepEqual(rebalancer.stats, {
      passes: 1,
      copies: 3,
      copiesFromTier: 1,
      copiesFailed: 3,
      probesFailed: 0,
    });
    // The metadata stays: the tier may well still hold the blocks (a read judges that, not a copy).
    for (const block of [unreachable, missing, corrupt])
      assert.equal(store.tierOf(block.namespace, block.hash), 'far');

    tier.faults.clear();
    await rebalancer.runNow('anti-entropy');
    await rebalancer.close();
    assert.deepEqual([...(peers.held.get(C)?.keys() ?? [])].sort(), blocks.map((b) => b.hash).sort());
    for (const block of blocks) assert.equal(hex(peers.held.get(C)!.get(block.hash)!), hex(block.payload));
    assert.deepEqual(rebalancer.stats, {
      passes: 2,
      copies: 6,
      copiesFromTier: 4,
      copiesFailed: 3,
      probesFailed: 0,
    });
  });
});

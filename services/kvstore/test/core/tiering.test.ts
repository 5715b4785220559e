// Tiering policy of the block store and the node's read-back path, without sockets: with tiering on,
// eviction victims become demotion candidates that stay readable until the tier acknowledges them;
// acknowledged ones keep only their metadata (tier 'far') in the index and events; the buffer and
// the demoted metadata are bounded; a read of a demoted block promotes it (verified, hit counted by
// tier) and its demoted parents; a corrupt read-back is dropped, never served; reading the first
// demoted block of a matched prefix prefetches the rest. The tier is an in-memory map here (the
// integration test runs the real service).
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { Tier, parseNodeId, type BlockHash, type KvEvent } from '@kvmesh/protocol';

import {
  KvNode,
  type BlockStore,
  type LowerTier,
  type PutBlockInput,
  type TierReader,
} from '../../src/core/index.ts';
import { BLOCK_BYTES, NS, chain, hex, kernels, makeStore } from './helpers.ts';

/** The host's tier as a map; promote gives the block up, like the real service. */
class MapTier implements TierReader {
  readonly blocks = new Map<BlockHash, PutBlockInput>();
  promoteCalls = 0;

  promote(hash: BlockHash): Promise<{ block: PutBlockInput; tier: LowerTier } | null> {
    this.promoteCalls++;
    const block = this.blocks.get(hash);
    this.blocks.delete(hash);
    return Promise.resolve(block === undefined ? null : { block, tier: 'far' });
  }
}

/** What the tiering adapter does: send every waiting demotion and record the acknowledgement. */
function drain(store: BlockStore, tier: MapTier): BlockHash[] {
  const sent: BlockHash[] = [];
  for (const record of store.claimDemotions(1_000)) {
    tier.blocks.set(record.hash, { ...record, payload: record.payload.slice() });
    assert.equal(store.demotionAcknowledged(record.namespace, record.hash, 'far'), 'demoted');
    sent.push(record.hash);
  }
  return sent;
}

function tiered(blocks: number, extra: Parameters<typeof makeStore>[0] = {}) {
  return makeStore({
    bytesBudget: blocks * BLOCK_BYTES,
    highWatermark: 1,
    lowWatermark: 1,
    tiering: true,
    demotingBytesMax: 100 * BLOCK_BYTES,
    ...extra,
  });
}

function nodeOver(store: BlockStore, tier: TierReader): KvNode {
  const self = parseNodeId('kvstore-test-0');
  return new KvNode({
    self,
    store,
    kernels,
    replicas: 1,
    live: () => [self],
    replicate: () => Promise.reject(new Error('no peers')),
    attentionLeaseMs: 0,
    tier,
  });
}

const storedTiers = (events: KvEvent[]): [string, Tier][] =>
  events.flatMap((e) => e.stored.map((s): [string, Tier] => [hex(s.hash), s.tier]));
const removedHashes = (events: KvEvent[]): string[] => events.flatMap((e) => e.removed.map(hex));

test('tiering - eviction victims become demotion candidates, readable until the tier acknowledges', () => {
  const { store, events } = tiered(3);
  const blocks = Array.from({ length: 5 }, () => chain(1)[0]!);
  for (const block of blocks) store.put(block);
  // Two victims (blocks 0 and 1, least recent): no `removed` event, still served from memory.
  assert.deepEqual(removedHashes(events), []);
  assert.equal(store.stats().blocks, 3);
  assert.equal(store.stats().demoting, 2);
  assert.equal(store.stats().demotingBytes, 2 * BLOCK_BYTES);
  assert.equal(store.stats().evictions, 2);
  const leaving = store.get(NS, blocks[0]!.hash);
  assert.deepEqual(leaving?.payload, blocks[0]!.payload);
  assert.equal(store.tierOf(NS, blocks[1]!.hash), 'dram');
  assert.deepEqual(
    store.matchPrefix(
      NS,
      blocks.map((b) => b.hash),
    ).matchedBlocks,
    5,
  );
  // Handed out once each, oldest first.
  assert.deepEqual(
    store.claimDemotions(10).map((r) => r.hash),
    [blocks[0]!.hash, blocks[1]!.hash],
  );
  assert.deepEqual(store.claimDemotions(10), []);
});

test('tiering - an acknowledged demotion keeps the metadata with tier far and reports it in a stored event', () => {
  const { store, events } = tiered(2);
  const [a, b, c] = [chain(1)[0]!, chain(1)[0]!, chain(1)[0]!];
  store.put(a);
  store.put(b);
  store.put(c);
  const tier = new MapTier();
  assert.deepEqual(drain(store, tier), [a.hash]);
  const last = events.at(-1)!;
  assert.deepEqual(last.removed, []);
  assert.deepEqual(storedTiers([last]), [[a.hash, Tier.TIER_FAR]]);
  assert.equal(last.stored[0]!.bytes, BigInt(a.payload.byteLength));
  assert.equal(store.tierOf(NS, a.hash), 'far');
  assert.equal(store.has(NS, a.hash), true);
  const match = store.matchPrefix(NS, [a.hash, b.hash]);
  assert.deepEqual(
    match.held.map((h) => h.tier),
    ['far', 'dram'],
  );
  assert.equal(match.matchedBlocks, 2);
  // A plain get does not read tiers (KvNode.read does).
  assert.equal(store.get(NS, a.hash), undefined);
  const stats = store.stats();
  assert.equal(stats.demoting, 0);
  assert.equal(stats.demotingBytes, 0);
  assert.equal(stats.demoted, 1);
  assert.equal(stats.demotions, 1);
});

test('tiering - a failed demotion is retried when the tier was unreachable and dropped when it refused', () => {
  const { store, events } = tiered(1);
  const [a, b, c] = [chain(1)[0]!, chain(1)[0]!, chain(1)[0]!];
  store.put(a);
  store.put(b);
  store.put(c);
  const [first, second] = store.claimDemotions(10);
  store.demotionFailed(NS, first!.hash, true);
  assert.deepEqual(
    store.claimDemotions(10).map((r) => r.hash),
    [a.hash],
  );
  assert.equal(store.tierOf(NS, a.hash), 'dram');
  store.demotionFailed(NS, second!.hash, false);
  assert.equal(store.tierOf(NS, b.hash), undefined);
  assert.deepEqual(removedHashes(events), [b.hash]);
  assert.equal(store.stats().demotionsDropped, 1);
});

test('tiering - victims beyond the demoting buffer are dropped with a removed event', () => {
  const { store, events } = tiered(2, { demotingBytesMax: 2 * BLOCK_BYTES });
  const blocks = Array.from({ length: 6 }, () => chain(1)[0]!);
  for (const block of blocks) store.put(block);
  // Victims 0 and 1 fill the buffer; 2 and 3 are dropped as without a tier.
  assert.deepEqual(removedHashes(events), [blocks[2]!.hash, blocks[3]!.hash]);
  assert.equal(store.stats().demoting, 2);
  assert.equal(store.stats().demotionsDropped, 2);
  assert.equal(store.has(NS, blocks[2]!.hash), false);
});

test('tiering - demoted metadata is bounded: the oldest goes with a removed event and leaves the tier', () => {
  const { store, events } = tiered(1, { demotedBlocksMax: 2 });
  const blocks = Array.from({ length: 4 }, () => chain(1)[0]!);
  for (const block of blocks) store.put(block);
  const tier = new MapTier();
  drain(store, tier);
  // Three acknowledged, two kept: the first demoted is forgotten here and queued for removal there.
  assert.equal(store.stats().demoted, 2);
  assert.equal(store.stats().demotedDropped, 1);
  assert.equal(store.tierOf(NS, blocks[0]!.hash), undefined);
  assert.deepEqual(removedHashes(events), [blocks[0]!.hash]);
  assert.deepEqual(store.claimTierRemovals(), [blocks[0]!.hash]);
  assert.deepEqual(store.claimTierRemovals(), []);
});

test('tiering - a fresh put of a demoted block makes it resident and the tier copy redundant', () => {
  const { store } = tiered(1);
  const [a, b] = [chain(1)[0]!, chain(1)[0]!];
  store.put(a);
  store.put(b);
  drain(store, new MapTier());
  assert.equal(store.put(a).status, 'stored');
  assert.equal(store.tierOf(NS, a.hash), 'dram');
  assert.deepEqual(store.claimTierRemovals(), [a.hash]);
});

test('tiering - a read of a demoted block promotes it, counts a far hit, and promotes its demoted parents', async () => {
  const { store, events } = tiered(3);
  const [a, b, c] = chain(3);
  const fillers = Array.from({ length: 3 }, () => chain(1)[0]!);
  for (const block of [a!, b!, c!, ...fillers]) store.put(block);
  const tier = new MapTier();
  // Leaf first: the chain leaves c, b, a.
  assert.deepEqual(drain(store, tier), [c!.hash, b!.hash, a!.hash]);
  const node = nodeOver(store, tier);

  const read = await node.read(NS, c!.hash);
  assert.equal(read?.tier, 'far');
  assert.deepEqual(read?.record.payload, c!.payload);
  assert.equal(store.stats().hitsByTier.far, 1);
  assert.equal(store.stats().hits, 1);
  assert.equal(tier.blocks.has(c!.hash), false, 'promote takes the block out of the tier');
  const promoted = events.find((e) =>
    e.stored.some((s) => hex(s.hash) === c!.hash && s.tier === Tier.TIER_DRAM),
  );
  assert.ok(promoted, 'a stored event reports the block back in DRAM');

  await node.idle();
  for (const block of [a!, b!, c!]) assert.equal(store.tierOf(NS, block.hash), 'dram', block.hash);
  assert.equal(node.counters.prefetched, 2);
  // Parents promoted in the background are not hits; the chain hangs together again.
  assert.equal(store.stats().hitsByTier.far, 1);
  assert.deepEqual(
    [...store.entries()].filter((r) => r.hash === a!.hash || r.hash === b!.hash).map((r) => r.localChildren),
    [1, 1],
  );
  // Room was made by demoting the fillers (least recent first).
  assert.equal(store.stats().demoting, 3);
});

test('tiering - concurrent reads of one demoted block share one promotion', async () => {
  const { store } = tiered(1);
  const [a, b] = [chain(1)[0]!, chain(1)[0]!];
  store.put(a);
  store.put(b);
  const tier = new MapTier();
  drain(store, tier);
  const node = nodeOver(store, tier);
  const [first, second] = await Promise.all([node.read(NS, a.hash), node.read(NS, a.hash)]);
  assert.equal(tier.promoteCalls, 1);
  assert.deepEqual(first?.record.payload, a.payload);
  assert.deepEqual(second?.record.payload, a.payload);
  assert.equal(store.stats().hitsByTier.far, 1);
  assert.equal(store.stats().hitsByTier.dram, 1);
});

test('tiering - a corrupt read-back is dropped from the index, never served', async () => {
  const { store, events } = tiered(1);
  const [a, b] = [chain(1)[0]!, chain(1)[0]!];
  store.put(a);
  store.put(b);
  const tier = new MapTier();
  drain(store, tier);
  const copy = tier.blocks.get(a.hash)!;
  // Flip one bit inside the payload's last section.
  copy.payload[copy.payload.byteLength - 5]! ^= 0x10;
  const node = nodeOver(store, tier);
  assert.equal(await node.read(NS, a.hash), undefined);
  assert.equal(store.tierOf(NS, a.hash), undefined);
  assert.equal(store.stats().promotionsCorrupt, 1);
  assert.equal(store.stats().misses, 1);
  assert.equal(store.stats().hitsByTier.far, 0);
  assert.deepEqual(removedHashes(events), [a.hash]);
  // A tier that lost a block: the same, as a miss.
  store.put(a);
  store.put(chain(1)[0]!);
  drain(store, tier);
  assert.equal(store.tierOf(NS, a.hash), 'far');
  tier.blocks.clear();
  assert.equal(await node.read(NS, a.hash), undefined);
  assert.equal(store.stats().promotionsMissed, 1);
  assert.equal(store.tierOf(NS, a.hash), undefined);
});

test('tiering - reading the first demoted block of a matched prefix prefetches the rest', async () => {
  const { store } = tiered(6);
  const prefix = chain(4);
  const fillers = Array.from({ length: 6 }, () => chain(1)[0]!);
  for (const block of [...prefix, ...fillers]) store.put(block);
  const tier = new MapTier();
  drain(store, tier);
  for (const block of prefix) assert.equal(store.tierOf(NS, block.hash), 'far');
  const node = nodeOver(store, tier);
  const match = node.matchPrefix(
    NS,
    prefix.map((b) => b.hash),
  );
  assert.equal(match.matchedBlocks, 4);
  const read = await node.read(NS, prefix[0]!.hash);
  assert.equal(read?.tier, 'far');
  await node.idle();
  for (const block of prefix) assert.equal(store.tierOf(NS, block.hash), 'dram', block.hash);
  assert.equal(node.counters.prefetched, 3);
  assert.equal(store.stats().hitsByTier.far, 1);
  // Now every read of the prefix is a DRAM hit.
  for (const block of prefix.slice(1)) assert.equal((await node.read(NS, block.hash))?.tier, 'dram');
});

test('tiering - off: victims are dropped and nothing is handed to a tier', () => {
  const { store, events } = makeStore({ bytesBudget: 2 * BLOCK_BYTES, highWatermark: 1, lowWatermark: 1 });
  const blocks = Array.from({ length: 3 }, () => chain(1)[0]!);
  for (const block of blocks) store.put(block);
  assert.deepEqual(removedHashes(events), [blocks[0]!.hash]);
  assert.deepEqual(store.claimDemotions(10), []);
  assert.equal(store.stats().demoting, 0);
});

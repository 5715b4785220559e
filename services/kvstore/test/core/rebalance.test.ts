// Re-replication planning over everything a node holds, without sockets: a real BlockStore with
// tiering on, whose older blocks were demoted (metadata here, payload in the tier), feeds
// heldRecords() to planPushes. A block held only in the tier is as much a copy as one in DRAM: after
// its other owner leaves it is planned exactly like a DRAM block, and anti-entropy probes ask about
// it too. Demoted records keep the time the block was stored, which the holder presumption uses.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { parseNodeId, type BlockHash, type NodeId } from '@kvmesh/protocol';
import { ownersOf } from '@kvmesh/runtime';

import {
  isDemoted,
  planPushes,
  presumedHolders,
  probesFor,
  type BlockPush,
  type BlockStore,
  type HeldRecord,
} from '../../src/core/index.ts';
import { FakeClock, chain, tieredStoreWith, type ChainBlock } from './helpers.ts';

const [A, B, C] = ['kv-a', 'kv-b', 'kv-c'].map(parseNodeId) as [NodeId, NodeId, NodeId];
const NODES = [A, B, C];
const DRAM_BLOCKS = 4;

/** Single blocks (no parents, so any of them may be demoted) whose owners under NODES are `owners`. */
function ownedBy(owners: readonly NodeId[], count: number): ChainBlock[] {
  const out: ChainBlock[] = [];
  while (out.length < count) {
    const [block] = chain(1);
    if (ownersOf(block!.hash, NODES, 2).slice().sort().join() === [...owners].sort().join()) out.push(block!);
  }
  return out;
}

/** What the tier link does: every waiting demotion acknowledged by far memory. */
function demoteAll(store: BlockStore): BlockHash[] {
  const sent: BlockHash[] = [];
  for (const record of store.claimDemotions(1_000)) {
    assert.equal(store.demotionAcknowledged(record.namespace, record.hash, 'far'), 'demoted');
    sent.push(record.hash);
  }
  return sent;
}

/**
 * Node A's store after putting `blocks` in order, 10 ms apart from t = 1000, into room for four:
 * all but the last four end up demoted.
 */
function nodeA(blocks: readonly ChainBlock[]): { store: BlockStore; clock: FakeClock; demoted: BlockHash[] } {
  const clock = new FakeClock(1_000);
  const store = tieredStoreWith(blocks, DRAM_BLOCKS, clock);
  const demoted = demoteAll(store);
  return { store, clock, demoted };
}

/** What node A must push once B left the membership {A, B, C} at `changedAtMs` (R = 2). */
function pushesOfAAfterBLeft(store: BlockStore, changedAtMs: number): BlockPush<HeldRecord>[] {
  const live = [A, C];
  return planPushes<HeldRecord>({
    self: A,
    live,
    replicas: 2,
    records: store.heldRecords(),
    holdersOf: presumedHolders({ placedLive: NODES, departed: new Set([B]), replicas: 2, live, changedAtMs }),
  });
}

const hashesOf = (records: Iterable<{ hash: BlockHash }>): BlockHash[] => [...records].map((r) => r.hash);

describe('rebalance - planning covers demoted blocks', () => {
  it('rebalance - heldRecords lists DRAM, demoting and demoted blocks; demoted ones keep storedAtMs', () => {
    const blocks = ownedBy([A, B], 6);
    const clock = new FakeClock(1_000);
    const store = tieredStoreWith(blocks, DRAM_BLOCKS, clock);
    // Two victims wait in the demoting buffer: still in memory, listed as DRAM records.
    const before = [...store.heldRecords()];
    assert.deepEqual(hashesOf(before), [...hashesOf(blocks.slice(2)), ...hashesOf(blocks.slice(0, 2))]);
    assert.deepEqual(
      before.map((r) => r.tier),
      ['dram', 'dram', 'dram', 'dram', 'dram', 'dram'],
    );
    demoteAll(store);
    const after = [...store.heldRecords()];
    assert.deepEqual(hashesOf(after), [...hashesOf(blocks.slice(2)), ...hashesOf(blocks.slice(0, 2))]);
    assert.deepEqual(
      after.map((r) => r.tier),
      ['dram', 'dram', 'dram', 'dram', 'far', 'far'],
    );
    assert.deepEqual(
      after.filter(isDemoted).map((r) => r.storedAtMs),
      [1_000, 1_010],
    );
    // entries() stays DRAM only.
    assert.deepEqual(hashesOf(store.entries()), hashesOf(blocks.slice(2)));
  });

  it('rebalance - after B leaves, A pushes every block it shared with B to C, demoted or not', () => {
    const sharedWithB = ownedBy([A, B], 6);
    const sharedWithC = ownedBy([A, C], 6);
    // Oldest first: four of the blocks shared with B and four shared with C are demoted; two of
    // each stay in DRAM.
    const order = [...sharedWithB.slice(0, 4), ...sharedWithC, ...sharedWithB.slice(4)];
    const { store, demoted } = nodeA(order);
    assert.deepEqual(demoted, hashesOf(order.slice(0, 8)));

    const pushes = pushesOfAAfterBLeft(store, 5_000);
    assert.deepEqual(
      pushes.map((p) => [p.record.hash, p.record.tier, p.targets]),
      [
        [sharedWithB[4]!.hash, 'dram', [C]],
        [sharedWithB[5]!.hash, 'dram', [C]],
        [sharedWithB[0]!.hash, 'far', [C]],
        [sharedWithB[1]!.hash, 'far', [C]],
        [sharedWithB[2]!.hash, 'far', [C]],
        [sharedWithB[3]!.hash, 'far', [C]],
      ],
    );
  });

  it('rebalance - a demoted block stored after the change was placed on the new owners: no copy', () => {
    const sharedWithB = ownedBy([A, B], 6);
    const { store } = nodeA(sharedWithB);
    // The change came between the second and third put (t = 1010 and 1020).
    const pushes = pushesOfAAfterBLeft(store, 1_015);
    assert.deepEqual(
      pushes.map((p) => [p.record.hash, p.record.tier]),
      [
        [sharedWithB[0]!.hash, 'far'],
        [sharedWithB[1]!.hash, 'far'],
      ],
    );
  });

  it('rebalance - anti-entropy asks the other owner about demoted blocks too', () => {
    const sharedWithB = ownedBy([A, B], 3);
    const sharedWithC = ownedBy([A, C], 3);
    const { store } = nodeA([...sharedWithB, ...sharedWithC]);
    assert.equal(store.stats().demoted, 2);
    const probes = probesFor(A, NODES, 2, store.heldRecords());
    assert.deepEqual([...probes.keys()].sort(), [B, C]);
    assert.deepEqual(
      [...(probes.get(B)?.get(sharedWithB[0]!.namespace) ?? [])].sort(),
      hashesOf(sharedWithB).sort(),
    );
    assert.deepEqual(
      [...(probes.get(C)?.get(sharedWithC[0]!.namespace) ?? [])].sort(),
      hashesOf(sharedWithC).sort(),
    );
  });
});

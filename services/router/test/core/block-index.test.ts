// The router's global block index fed by kv events: in-order application, duplicates, gaps, clears
// and restarts, namespace isolation, node removal, exact prefix matches, the entry bound with its
// documented eviction order, and a randomized comparison against a plain model of the same rules.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { InvalidArgumentError, LimitExceededError } from '@kvmesh/errors';
import { Codec, Tier, parseNodeId, type BlockHash, type Namespace, type NodeId } from '@kvmesh/protocol';

import { BlockIndex, type IndexMatch } from '../../src/core/index.ts';
import { A, B, C, NS, NS_A, chainOf, event, h, hs, n, rng } from './helpers.ts';

/** A match as plain numbers: [[block, [holders]]…] and [[node, leading blocks]…]. */
function summary(match: IndexMatch): { positions: [number, string[]][]; leading: [string, number][] } {
  return {
    positions: match.positions.map((p) => [n(p.hash), p.holders.map((x) => x.nodeId)]),
    leading: [...match.leadingBlocksByNode],
  };
}

/** Every (node, block) pair the index holds for the given block numbers, as 'node:block' strings. */
function pairs(index: BlockIndex, blocks: number[], namespace: Namespace = NS): string[] {
  const out: string[] = [];
  for (const b of blocks) {
    for (const holder of index.lookup(namespace, h(b))?.holders ?? []) out.push(`${holder.nodeId}:${b}`);
  }
  return out.sort();
}

test('block index - applies in-order events: stores with parent links, removals', () => {
  const index = new BlockIndex();
  assert.deepEqual(index.apply(event(A, 1, { stored: chainOf([1, 2, 3]) })), {
    kind: 'applied',
    nodeId: A,
    seq: 1n,
  });
  assert.deepEqual(index.apply(event(B, 1, { stored: chainOf([1, 2]) })), {
    kind: 'applied',
    nodeId: B,
    seq: 1n,
  });
  assert.equal(index.apply(event(A, 2, { removed: [3] })).kind, 'applied');

  assert.deepEqual(pairs(index, [1, 2, 3]), ['kv-a:1', 'kv-a:2', 'kv-b:1', 'kv-b:2']);
  assert.equal(index.lookup(NS, h(1))?.parentHash, null);
  assert.equal(index.lookup(NS, h(2))?.parentHash, h(1));
  assert.equal(index.lookup(NS, h(3)), undefined, 'a block with no holder left is forgotten');
  assert.deepEqual(summary(index.match(NS, hs(1, 2, 3))), {
    positions: [
      [1, ['kv-a', 'kv-b']],
      [2, ['kv-a', 'kv-b']],
    ],
    leading: [
      ['kv-a', 2],
      ['kv-b', 2],
    ],
  });
  assert.deepEqual(index.snapshot(), [
    { nodeId: A, lastSeq: 2n },
    { nodeId: B, lastSeq: 1n },
  ]);
  const stats = index.stats();
  assert.equal(stats.nodes, 2);
  assert.equal(stats.blocks, 2);
  assert.equal(stats.entries, 4);
  assert.equal(stats.eventsApplied, 3);
});

test('block index - a holder records tier, codec and bytes, and a re-store replaces them', () => {
  const index = new BlockIndex();
  index.apply(
    event(A, 1, { stored: [{ block: 1, tier: Tier.TIER_DRAM, codec: Codec.CODEC_KIVI4, bytes: 1234n }] }),
  );
  assert.deepEqual(index.lookup(NS, h(1))?.holders, [
    { nodeId: A, tier: Tier.TIER_DRAM, codec: Codec.CODEC_KIVI4, bytes: 1234n },
  ]);
  index.apply(
    event(A, 2, { stored: [{ block: 1, tier: Tier.TIER_FAR, codec: Codec.CODEC_KIVI4, bytes: 1234n }] }),
  );
  assert.equal(index.lookup(NS, h(1))?.holders[0]?.tier, Tier.TIER_FAR);
  assert.equal(index.stats().entries, 1, 'a re-store is not a second pair');
});

test('block index - duplicate and old events are ignored (replaying an overlap is harmless)', () => {
  const index = new BlockIndex();
  index.apply(event(A, 1, { stored: chainOf([1, 2, 3]) }));
  index.apply(event(A, 2, { removed: [3] }));
  // JetStream redelivers event 1: block 3 must not come back.
  assert.deepEqual(index.apply(event(A, 1, { stored: chainOf([1, 2, 3]) })), {
    kind: 'duplicate',
    nodeId: A,
    seq: 1n,
    lastSeq: 2n,
  });
  assert.equal(index.apply(event(A, 2, { removed: [1] })).kind, 'duplicate');
  assert.deepEqual(pairs(index, [1, 2, 3]), ['kv-a:1', 'kv-a:2']);
  assert.equal(index.stats().eventsDuplicate, 2);
  assert.deepEqual(index.snapshot(), [{ nodeId: A, lastSeq: 2n }]);
});

test('block index - a gap drops every entry of that node only, applies the event and reports it', () => {
  const index = new BlockIndex();
  index.apply(event(A, 1, { stored: chainOf([1, 2]) }));
  index.apply(event(B, 1, { stored: chainOf([1]) }));
  // Event A#2 is lost (it might have removed 1 or 2); A#3 stores 5.
  assert.deepEqual(index.apply(event(A, 3, { stored: [{ block: 5 }] })), {
    kind: 'gap',
    nodeId: A,
    seq: 3n,
    expectedSeq: 2n,
    droppedEntries: 2,
  });
  assert.deepEqual(pairs(index, [1, 2, 5]), ['kv-a:5', 'kv-b:1']);
  // The stream continues normally after the gap.
  assert.equal(index.apply(event(A, 4, { stored: [{ block: 6, parent: 5 }] })).kind, 'applied');
  assert.deepEqual(pairs(index, [1, 2, 5, 6]), ['kv-a:5', 'kv-a:6', 'kv-b:1']);
  assert.equal(index.stats().gaps, 1);
});

test('block index - the first event seen from a node with seq > 1 is a gap (nothing to drop)', () => {
  const index = new BlockIndex();
  assert.deepEqual(index.apply(event(C, 7, { stored: chainOf([1]) })), {
    kind: 'gap',
    nodeId: C,
    seq: 7n,
    expectedSeq: 1n,
    droppedEntries: 0,
  });
  assert.deepEqual(pairs(index, [1]), ['kv-c:1']);
});

test('block index - cleared drops the node blocks before the same event stores new ones', () => {
  const index = new BlockIndex();
  index.apply(event(A, 1, { stored: chainOf([1, 2]) }));
  index.apply(event(B, 1, { stored: chainOf([1, 2]) }));
  assert.equal(index.apply(event(A, 2, { cleared: true })).kind, 'applied');
  assert.deepEqual(pairs(index, [1, 2]), ['kv-b:1', 'kv-b:2']);
  index.apply(event(A, 3, { cleared: true, stored: [{ block: 9 }] }));
  assert.deepEqual(pairs(index, [1, 2, 9]), ['kv-a:9', 'kv-b:1', 'kv-b:2']);
  assert.equal(index.stats().entries, 3);
});

test('block index - a node restart (cleared as seq 1) resets its sequence', () => {
  const index = new BlockIndex();
  index.apply(event(A, 1, { cleared: true }));
  index.apply(event(A, 2, { stored: chainOf([1, 2]) }));
  index.apply(event(A, 3, { stored: [{ block: 3, parent: 2 }] }));
  assert.deepEqual(index.apply(event(A, 1, { cleared: true })), {
    kind: 'restart',
    nodeId: A,
    droppedEntries: 3,
  });
  assert.deepEqual(pairs(index, [1, 2, 3]), []);
  assert.deepEqual(index.apply(event(A, 2, { stored: chainOf([4]) })), {
    kind: 'applied',
    nodeId: A,
    seq: 2n,
  });
  assert.deepEqual(pairs(index, [4]), ['kv-a:4']);
  assert.equal(index.stats().restarts, 1);
});

test('block index - namespaces are isolated: the same hash under two namespaces', () => {
  const index = new BlockIndex();
  index.apply(event(A, 1, { stored: chainOf([1, 2]) }));
  index.apply(
    event(B, 1, {
      stored: [
        { block: 1, namespace: NS_A },
        { block: 2, parent: 1, namespace: NS_A },
      ],
    }),
  );
  assert.deepEqual(summary(index.match(NS, hs(1, 2))).positions, [
    [1, ['kv-a']],
    [2, ['kv-a']],
  ]);
  assert.deepEqual(summary(index.match(NS_A, hs(1, 2))).positions, [
    [1, ['kv-b']],
    [2, ['kv-b']],
  ]);
  // A removal names its namespace: B's removal of 2 in tenant-a leaves A's copy in '' alone.
  index.apply(event(B, 2, { removed: [2], removedNamespaces: [NS_A] }));
  // A removal in the wrong namespace changes nothing.
  index.apply(event(A, 2, { removed: [1], removedNamespaces: [NS_A] }));
  assert.deepEqual(pairs(index, [1, 2], NS), ['kv-a:1', 'kv-a:2']);
  assert.deepEqual(pairs(index, [1, 2], NS_A), ['kv-b:1']);
  assert.equal(index.match(NS_A, hs(1, 2)).blocks, 1);
});

test('block index - removeNode drops the node blocks and forgets its sequence', () => {
  const index = new BlockIndex();
  index.apply(event(A, 1, { stored: chainOf([1, 2]) }));
  index.apply(event(A, 2, { stored: [{ block: 3, parent: 2 }] }));
  index.apply(event(B, 1, { stored: chainOf([1]) }));
  assert.equal(index.removeNode(A), 3);
  assert.equal(index.removeNode(A), 0);
  assert.deepEqual(pairs(index, [1, 2, 3]), ['kv-b:1']);
  assert.deepEqual(index.snapshot(), [{ nodeId: B, lastSeq: 1n }]);
  // The node rejoins with a fresh stream.
  assert.equal(index.apply(event(A, 1, { cleared: true })).kind, 'applied');
  assert.deepEqual(index.stats().entries, 1);
});

test('block index - match: longest prefix by any holder, per-node leading runs, live filter', () => {
  const index = new BlockIndex();
  index.apply(event(A, 1, { stored: chainOf([1, 2, 3]) }));
  index.apply(event(B, 1, { stored: [{ block: 1 }, { block: 3, parent: 2 }] }));
  index.apply(
    event(C, 1, {
      stored: [
        { block: 2, parent: 1 },
        { block: 3, parent: 2 },
        { block: 5, parent: 4 },
      ],
    }),
  );
  // Block 4 is held by nobody, so block 5 (held by C) is not part of the prefix.
  assert.deepEqual(summary(index.match(NS, hs(1, 2, 3, 4, 5))), {
    positions: [
      [1, ['kv-a', 'kv-b']],
      [2, ['kv-a', 'kv-c']],
      [3, ['kv-a', 'kv-b', 'kv-c']],
    ],
    leading: [
      ['kv-a', 3],
      ['kv-b', 1],
    ],
  });
  // Without A: each block still has a holder, but no node alone holds more than block 1.
  assert.deepEqual(summary(index.match(NS, hs(1, 2, 3, 4), new Set([B, C]))), {
    positions: [
      [1, ['kv-b']],
      [2, ['kv-c']],
      [3, ['kv-b', 'kv-c']],
    ],
    leading: [['kv-b', 1]],
  });
  assert.deepEqual(summary(index.match(NS, hs(2, 3))).leading, [
    ['kv-a', 2],
    ['kv-c', 2],
  ]);
  assert.equal(index.match(NS, hs(4, 1)).blocks, 0);
  assert.equal(index.match(NS, []).blocks, 0);
  const stats = index.stats();
  assert.equal(stats.matches, 5);
  assert.equal(stats.blocksMatched, 3 + 3 + 2);
});

test('block index - match refuses more hashes than hashesPerMatchMax', () => {
  const index = new BlockIndex({ hashesPerMatchMax: 4 });
  assert.equal(index.match(NS, hs(1, 2, 3, 4)).blocks, 0);
  assert.throws(
    () => index.match(NS, hs(1, 2, 3, 4, 5)),
    (err: unknown) => err instanceof LimitExceededError && err.details.limit === 4,
  );
});

test('block index - entriesMax evicts least recently matched or stored blocks, all holders at once', () => {
  const index = new BlockIndex({ entriesMax: 4 });
  index.apply(event(A, 1, { stored: chainOf([1, 2, 3]) })); // recency (oldest first): 1 2 3
  index.match(NS, hs(1, 2)); // touched deepest first: 3 2 1
  index.apply(event(B, 1, { stored: [{ block: 4 }, { block: 5 }] })); // 5 pairs: evicts 3 → 2 1 4 5
  assert.deepEqual(pairs(index, [1, 2, 3, 4, 5]), ['kv-a:1', 'kv-a:2', 'kv-b:4', 'kv-b:5']);
  index.apply(event(B, 2, { stored: [{ block: 1 }] })); // a new holder touches 1 → evicts 2 → 4 5 1
  assert.deepEqual(pairs(index, [1, 2, 4, 5]), ['kv-a:1', 'kv-b:1', 'kv-b:4', 'kv-b:5']);
  index.apply(event(A, 2, { stored: [{ block: 6 }] })); // evicts 4 → 5 1 6
  index.apply(event(C, 1, { stored: [{ block: 7 }] })); // evicts 5 → 1 6 7
  assert.deepEqual(pairs(index, [1, 4, 5, 6, 7]), ['kv-a:1', 'kv-a:6', 'kv-b:1', 'kv-c:7']);
  index.apply(event(C, 2, { stored: [{ block: 8 }] })); // evicts block 1 with both its holders
  assert.deepEqual(pairs(index, [1, 6, 7, 8]), ['kv-a:6', 'kv-c:7', 'kv-c:8']);
  const stats = index.stats();
  assert.equal(stats.entries, 3);
  assert.equal(stats.entriesEvicted, 6);
  // An evicted pair's later removal is a no-op and the node's stream goes on.
  assert.equal(index.apply(event(B, 3, { removed: [1, 4] })).kind, 'applied');
  assert.equal(index.stats().entries, 3);
});

test('block index - eviction takes a matched chain tail first, so its head survives longest', () => {
  const index = new BlockIndex({ entriesMax: 3 });
  index.apply(event(A, 1, { stored: chainOf([1, 2, 3]) }));
  index.match(NS, hs(1, 2, 3)); // recency (oldest first): 3 2 1
  index.apply(event(B, 1, { stored: [{ block: 9 }] })); // evicts 3
  assert.deepEqual(pairs(index, [1, 2, 3, 9]), ['kv-a:1', 'kv-a:2', 'kv-b:9']);
  index.apply(event(B, 2, { stored: [{ block: 10 }] })); // evicts 2
  assert.deepEqual(pairs(index, [1, 2, 9, 10]), ['kv-a:1', 'kv-b:10', 'kv-b:9']);
  assert.equal(index.match(NS, hs(1, 2, 3)).blocks, 1);
});

test('block index - malformed events change nothing and are treated as lost', () => {
  const index = new BlockIndex();
  index.apply(event(A, 1, { stored: chainOf([1]) }));
  const shortHash = event(A, 2, { stored: [{ block: 2 }] });
  shortHash.stored[0]!.hash = Buffer.alloc(8);
  const result = index.apply(shortHash);
  assert.equal(result.kind, 'rejected');
  assert.equal(result.kind === 'rejected' && result.reason, 'malformed');
  const badNamespaces = event(A, 2, { removed: [1, 2], removedNamespaces: [NS] });
  assert.equal(index.apply(badNamespaces).kind, 'rejected');
  assert.equal(index.apply({ ...event(A, 2), nodeId: 'not a node id!' }).kind, 'rejected');
  assert.equal(index.apply(event(A, 0)).kind, 'rejected');
  assert.deepEqual(pairs(index, [1, 2]), ['kv-a:1']);
  // Seq 2 never applied, so seq 3 is a gap.
  assert.equal(index.apply(event(A, 3, { stored: [{ block: 2, parent: 1 }] })).kind, 'gap');
  assert.deepEqual(pairs(index, [1, 2]), ['kv-a:2']);
  assert.equal(index.stats().eventsRejected, 4);
  // Removals without namespaces (older producers) are in the default namespace.
  index.apply({ ...event(A, 4, { removed: [2] }), removedNamespaces: [] });
  assert.deepEqual(pairs(index, [2]), []);
});

test('block index - events from more than nodesMax nodes are rejected', () => {
  const index = new BlockIndex({ nodesMax: 2 });
  index.apply(event(A, 1, { stored: chainOf([1]) }));
  index.apply(event(B, 1, { stored: chainOf([1]) }));
  const result = index.apply(event(C, 1, { stored: chainOf([1]) }));
  assert.equal(result.kind === 'rejected' && result.reason, 'nodes-max');
  assert.deepEqual(pairs(index, [1]), ['kv-a:1', 'kv-b:1']);
  index.removeNode(A);
  assert.equal(index.apply(event(C, 1, { stored: chainOf([1]) })).kind, 'applied');
});

test('block index - bad config is an InvalidArgumentError naming the field', () => {
  for (const config of [{ entriesMax: 0 }, { nodesMax: 1.5 }, { hashesPerMatchMax: -1 }]) {
    assert.throws(
      () => new BlockIndex(config),
      (err: unknown) => err instanceof InvalidArgumentError && Object.keys(config)[0]! in err.details,
    );
  }
});

/**
 * Random streams from 4 nodes with lost, duplicated and reordered events, clears and restarts,
 * applied to the index and to a plain model of the documented rules. Without a bound the two agree
 * exactly; with a small bound the index holds a subset of the model and never more than entriesMax.
 */
function randomRun(seed: number, entriesMax: number): void {
  const random = rng(seed);
  const pick = (k: number): number => Math.floor(random() * k);
  const nodeIds: NodeId[] = [0, 1, 2, 3].map((i) => parseNodeId(`kv-${i}`));
  const index = new BlockIndex({ entriesMax });
  const model = new Map<NodeId, { lastSeq: number; held: Set<number> }>();
  const produced = new Map<NodeId, { seq: number; held: Set<number> }>();
  const blocks = Array.from({ length: 24 }, (_, i) => i + 1);
  for (const id of nodeIds) produced.set(id, { seq: 0, held: new Set() });

  for (let step = 0; step < 600; step++) {
    const nodeId = nodeIds[pick(nodeIds.length)]!;
    const producer = produced.get(nodeId)!;
    let ev;
    const roll = random();
    if (roll < 0.03) {
      producer.seq = 1; // restart: cleared as event 1
      producer.held.clear();
      ev = event(nodeId, 1, { cleared: true });
    } else {
      producer.seq++;
      const stored = blocks.filter(() => random() < 0.1);
      const removed = [...producer.held].filter(() => random() < 0.2);
      const cleared = random() < 0.02;
      if (cleared) producer.held.clear();
      for (const b of removed) producer.held.delete(b);
      for (const b of stored) producer.held.add(b);
      ev = event(nodeId, producer.seq, { stored: stored.map((block) => ({ block })), removed, cleared });
    }
    const fate = random();
    if (fate < 0.05) continue; // lost
    const deliveries = fate < 0.1 ? 2 : 1; // duplicated
    for (let d = 0; d < deliveries; d++) {
      index.apply(ev);
      // The model: the same rules, written plainly.
      const seq = Number(ev.seq);
      const m = model.get(nodeId) ?? { lastSeq: 0, held: new Set<number>() };
      model.set(nodeId, m);
      if (seq === 1 && ev.cleared && m.lastSeq >= 1) m.held.clear();
      else if (seq <= m.lastSeq) continue;
      else if (seq !== m.lastSeq + 1) m.held.clear();
      if (ev.cleared) m.held.clear();
      for (const b of ev.removed) m.held.delete(n(b.toString('hex') as BlockHash));
      for (const s of ev.stored) m.held.add(n(s.hash.toString('hex') as BlockHash));
      m.lastSeq = seq;
    }
    if (step % 50 === 0 && random() < 0.3) {
      const gone = nodeIds[pick(nodeIds.length)]!;
      index.removeNode(gone);
      model.delete(gone);
    }
    const expected: string[] = [];
    for (const [id, m] of model) for (const b of m.held) expected.push(`${id}:${b}`);
    const actual = pairs(index, blocks);
    const stats = index.stats();
    assert.equal(stats.entries, actual.length, `seed ${seed} step ${step}: entries counter`);
    assert.ok(stats.entries <= entriesMax, `seed ${seed} step ${step}: bound`);
    if (entriesMax >= 1000) assert.deepEqual(actual, expected.sort(), `seed ${seed} step ${step}`);
    else {
      const allowed = new Set(expected);
      for (const pair of actual)
        assert.ok(allowed.has(pair), `seed ${seed} step ${step}: ${pair} over-reported`);
    }
  }
}

test('block index - random streams agree with a plain model and never over-report', () => {
  const base = (Date.now() ^ 0x5bd1e995) >>> 0;
  for (let i = 0; i < 4; i++) {
    randomRun(base + i, 1 << 20);
    randomRun(base + 100 + i, 12);
  }
});

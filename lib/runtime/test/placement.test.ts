// Unit tests of rendezvous placement and the replication plan: determinism, balance, minimal
// movement on membership change, and exactly one pusher per block that needs a new copy.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { describe, it } from 'node:test';

import { InvalidArgumentError } from '@kvmesh/errors';
import { blockHashFromBytes, parseNodeId } from '@kvmesh/protocol';
import type { NodeId } from '@kvmesh/protocol';

import { ownersOf, planReplication, rankNodes } from '../src/index.ts';

const nodes = (...ids: string[]): NodeId[] => ids.map(parseNodeId);
const hashes = (n: number): Uint8Array[] => Array.from({ length: n }, () => new Uint8Array(randomBytes(16)));
const FIVE = nodes('kvstore-0', 'kvstore-1', 'kvstore-2', 'kvstore-3', 'kvstore-4');

describe('placement - rendezvous hashing', () => {
  it('placement - owners are deterministic and independent of the node list order', () => {
    for (const h of hashes(200)) {
      const a = ownersOf(h, FIVE, 3);
      const b = ownersOf(h, [...FIVE].reverse(), 3);
      assert.deepEqual(a, b);
      assert.equal(new Set(a).size, 3);
      assert.deepEqual(a, rankNodes(h, FIVE).slice(0, 3), 'top-R selection agrees with the full rank');
    }
  });

  it('placement - a hash as bytes and as its hex BlockHash places identically', () => {
    for (const h of hashes(100))
      assert.deepEqual(ownersOf(h, FIVE, 2), ownersOf(blockHashFromBytes(h), FIVE, 2));
  });

  it('placement - 10k hashes spread over 5 nodes within ±15% of even, for primaries and all replicas', () => {
    const all = hashes(10_000);
    const primaries = new Map<NodeId, number>();
    const replicas = new Map<NodeId, number>();
    for (const h of all) {
      const owners = ownersOf(h, FIVE, 2);
      primaries.set(owners[0]!, (primaries.get(owners[0]!) ?? 0) + 1);
      for (const o of owners) replicas.set(o, (replicas.get(o) ?? 0) + 1);
    }
    for (const node of FIVE) {
      const p = primaries.get(node) ?? 0;
      const r = replicas.get(node) ?? 0;
      assert.ok(Math.abs(p - 2000) <= 300, `${node} is primary for ${p} of 10000`);
      assert.ok(Math.abs(r - 4000) <= 600, `${node} holds ${r} of 20000 replicas`);
    }
  });

  it('placement - removing a node moves only the blocks it owned', () => {
    const without = FIVE.filter((n) => n !== 'kvstore-2');
    let moved = 0;
    for (const h of hashes(5_000)) {
      const before = ownersOf(h, FIVE, 2);
      const after = ownersOf(h, without, 2);
      if (!before.includes('kvstore-2' as NodeId)) {
        assert.deepEqual(after, before, 'a block not on the removed node keeps its owners');
      } else {
        moved++;
        // The surviving owner stays; exactly one new owner replaces the removed one.
        const survivors = before.filter((n) => n !== 'kvstore-2');
        for (const s of survivors) assert.ok(after.includes(s));
      }
    }
    assert.ok(moved > 1_500 && moved < 2_500, `${moved} of 5000 blocks had the removed node as an owner`);
  });

  it('placement - adding a node moves blocks only onto that node', () => {
    const grown = [...FIVE, parseNodeId('kvstore-5')];
    let changed = 0;
    for (const h of hashes(6_000)) {
      const before = ownersOf(h, FIVE, 1);
      const after = ownersOf(h, grown, 1);
      if (after[0] !== before[0]) {
        changed++;
        assert.equal(after[0], 'kvstore-5');
      }
    }
    assert.ok(changed > 700 && changed < 1_300, `${changed} of 6000 moved (~1/6 expected)`);
  });

  it('placement - replicas above the node count yield every node once', () => {
    const h = hashes(1)[0]!;
    assert.deepEqual(new Set(ownersOf(h, nodes('a', 'b'), 5)), new Set(['a', 'b']));
    assert.equal(ownersOf(h, nodes('a', 'b', 'a'), 3).length, 2, 'duplicates in the input count once');
    assert.deepEqual(ownersOf(h, [], 3), []);
  });

  it('placement - rejects a bad replica count and a malformed hash', () => {
    assert.throws(() => ownersOf(hashes(1)[0]!, FIVE, 0), InvalidArgumentError);
    assert.throws(() => ownersOf(new Uint8Array(8), FIVE, 1), InvalidArgumentError);
  });
});

describe('placement - replication plan', () => {
  it('placement - after a node dies, exactly one surviving holder pushes each of its blocks to the new owner', () => {
    const dead = parseNodeId('kvstore-3');
    const live = FIVE.filter((n) => n !== dead);
    const all = hashes(2_000).map((hash, i) => ({ key: i, hash }));
    // Every node holds exactly the blocks placement gave it under the old membership.
    const pushesByBlock = new Map<number, { from: NodeId; targets: NodeId[] }[]>();
    for (const self of live) {
      const held = all.filter((b) => ownersOf(b.hash, FIVE, 2).includes(self));
      const plan = planReplication({ self, held, live, replicas: 2, previousLive: FIVE });
      for (const p of plan.pushes) {
        const list = pushesByBlock.get(p.key) ?? [];
        list.push({ from: self, targets: p.targets });
        pushesByBlock.set(p.key, list);
      }
      assert.equal(plan.surplus.length, 0, 'removing a node never makes a survivor lose ownership');
    }
    for (const b of all) {
      const before = ownersOf(b.hash, FIVE, 2);
      const after = ownersOf(b.hash, live, 2);
      const pushes = pushesByBlock.get(b.key) ?? [];
      if (!before.includes(dead)) {
        assert.equal(pushes.length, 0, `block ${b.key} was not on the dead node and needs no copy`);
        continue;
      }
      assert.equal(pushes.length, 1, `block ${b.key} gets exactly one pusher`);
      const push = pushes[0]!;
      assert.ok(before.includes(push.from));
      const expected = after.filter((n) => !before.includes(n));
      assert.deepEqual(push.targets, expected);
    }
  });

  it('placement - a joining node receives its blocks from the best-ranked holder, which then holds surplus', () => {
    const joined = parseNodeId('kvstore-9');
    const live = [...FIVE, joined];
    const all = hashes(3_000).map((hash, i) => ({ key: i, hash }));
    const pushers = new Map<number, NodeId[]>();
    const surplus = new Map<NodeId, number>();
    for (const self of FIVE) {
      const held = all.filter((b) => ownersOf(b.hash, FIVE, 1).includes(self));
      const plan = planReplication({ self, held, live, replicas: 1, previousLive: FIVE });
      for (const p of plan.pushes) {
        assert.deepEqual(p.targets, [joined]);
        pushers.set(p.key, [...(pushers.get(p.key) ?? []), self]);
      }
      surplus.set(self, plan.surplus.length);
    }
    for (const b of all) {
      const moves = ownersOf(b.hash, live, 1)[0] === joined;
      assert.equal(pushers.get(b.key)?.length ?? 0, moves ? 1 : 0);
    }
    const totalSurplus = [...surplus.values()].reduce((a, b) => a + b, 0);
    assert.equal(totalSurplus, pushers.size, 'every pushed block is surplus on its old owner');
  });

  it('placement - known holders from the index override the presumption', () => {
    const h = hashes(1)[0]!;
    const [first, second] = ownersOf(h, FIVE, 2) as [NodeId, NodeId];
    // Only `second` holds it (first lost it in a restart): second must push to first.
    const plan = planReplication({
      self: second,
      held: [{ key: 'b', hash: h }],
      live: FIVE,
      replicas: 2,
      holdersOf: () => [second],
    });
    assert.deepEqual(plan.pushes, [{ key: 'b', hash: h, targets: [first] }]);
  });
});

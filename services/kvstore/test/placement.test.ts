// Unit tests of the node's pure decisions, without sockets: where a client put goes (owners first,
// substitutes in rendezvous order when an owner is full or unreachable, the failure modes), and who
// re-replicates what after a membership change or an anti-entropy probe.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { describe, it } from 'node:test';

import { InvalidArgumentError, type KvmeshError } from '@kvmesh/errors';
import { blockHashFromBytes, parseNodeId, type BlockHash, type NodeId } from '@kvmesh/protocol';
import { UnavailableError, ownersOf, rankNodes } from '@kvmesh/runtime';

import {
  ReplicasExhaustedError,
  ReplicasUnavailableError,
  StoreFullError,
  coordinatePut,
  planPushes,
  presumedHolders,
  type BlockRecord,
  type ReplicaOutcome,
} from '../src/index.ts';
import { blockKey, learnedHolders } from '../src/core/index.ts';

const NODES = ['kv-a', 'kv-b', 'kv-c', 'kv-d', 'kv-e'].map(parseNodeId);
const randomHash = (): BlockHash => blockHashFromBytes(randomBytes(16));

const full = (): StoreFullError =>
  new StoreFullError({
    bytesNeeded: 10,
    bytesUsed: 95,
    bytesBudget: 100,
    blocks: 9,
    blocksMax: 100,
    bytesEvictable: 0,
  });
const down = (node: NodeId): UnavailableError => new UnavailableError(`cannot reach ${node}`, { node });

/** storeOn that answers per node from `behaviour` (default: stored) and records the calls. */
function nodesThat(behaviour: Partial<Record<string, () => ReplicaOutcome | Promise<ReplicaOutcome>>>): {
  storeOn: (node: NodeId) => Promise<ReplicaOutcome>;
  calls: NodeId[];
} {
  const calls: NodeId[] = [];
  return {
    calls,
    storeOn: async (node) => {
      calls.push(node);
      const act = behaviour[node];
      return act === undefined ? 'stored' : act();
    },
  };
}

describe('placement - coordinated put', () => {
  it('placement - all owners answer: the R best-ranked nodes hold it, no substitutes', async () => {
    const hash = randomHash();
    const { storeOn, calls } = nodesThat({});
    const placed = await coordinatePut({ hash, live: NODES, replicas: 2, storeOn });
    const owners = ownersOf(hash, NODES, 2);
    assert.deepEqual([...placed.holders].sort(), [...owners].sort());
    assert.deepEqual([...calls].sort(), [...owners].sort());
    assert.deepEqual(placed.substitutes, []);
    assert.equal(placed.status, 'stored');
  });

  it('placement - an unreachable and a full owner are replaced by the next nodes in rank order', async () => {
    const hash = randomHash();
    const rank = rankNodes(hash, NODES);
    const [first, second, third, fourth] = rank as [NodeId, NodeId, NodeId, NodeId];
    const { storeOn, calls } = nodesThat({
      [first]: () => Promise.reject(down(first)),
      [second]: () => {
        throw full();
      },
    });
    const placed = await coordinatePut({ hash, live: NODES, replicas: 2, storeOn });
    assert.deepEqual([...placed.holders].sort(), [third, fourth].sort());
    assert.deepEqual([...placed.substitutes].sort(), [third, fourth].sort());
    assert.deepEqual(calls.slice(0, 2).sort(), [first, second].sort());
    assert.equal(calls.length, 4);
    assert.deepEqual(
      placed.failures.map((f) => `${f.node}:${f.failure}`).sort(),
      [`${first}:unavailable`, `${second}:full`].sort(),
    );
  });

  it('placement - fewer live nodes than R is UNAVAILABLE at once, naming the live count and R', async () => {
    const { storeOn, calls } = nodesThat({});
    await assert.rejects(
      coordinatePut({ hash: randomHash(), live: NODES.slice(0, 1), replicas: 2, storeOn }),
      (err: ReplicasUnavailableError) => {
        assert.ok(err instanceof ReplicasUnavailableError);
        assert.equal(err.kind, 'unavailable');
        assert.match(err.message, /needs 2 replicas but only 1 kvstore node\(s\) are live/);
        assert.equal(err.details['liveNodes'], 1);
        assert.equal(err.details['replicas'], 2);
        return true;
      },
    );
    assert.deepEqual(calls, [], 'nothing was stored anywhere');
  });

  it('placement - too few reachable nodes is UNAVAILABLE even though one copy was made', async () => {
    const hash = randomHash();
    const survivor = rankNodes(hash, NODES.slice(0, 3))[2] as NodeId;
    const behaviour: Record<string, () => Promise<ReplicaOutcome>> = {};
    for (const node of NODES.slice(0, 3))
      if (node !== survivor) behaviour[node] = () => Promise.reject(down(node));
    const { storeOn, calls } = nodesThat(behaviour);
    await assert.rejects(
      coordinatePut({ hash, live: NODES.slice(0, 3), replicas: 2, storeOn }),
      (err: KvmeshError) => {
        assert.ok(err instanceof ReplicasUnavailableError);
        assert.match(err.message, /only 1 of 2 replicas could be stored among 3 live node\(s\)/);
        assert.deepEqual(err.details['holders'], [survivor]);
        return true;
      },
    );
    assert.equal(calls.length, 3);
  });

  it('placement - reachable nodes that are all full make RESOURCE_EXHAUSTED with the store’s code', async () => {
    const hash = randomHash();
    const behaviour: Record<string, () => ReplicaOutcome> = {};
    for (const node of NODES.slice(1))
      behaviour[node] = () => {
        throw full();
      };
    const { storeOn } = nodesThat(behaviour);
    await assert.rejects(coordinatePut({ hash, live: NODES, replicas: 2, storeOn }), (err: KvmeshError) => {
      assert.ok(err instanceof ReplicasExhaustedError);
      assert.equal(err.kind, 'resource-exhausted');
      assert.equal(err.code, 'STORE_FULL');
      assert.match(err.message, /refused it for space/);
      return true;
    });
  });

  it('placement - a bad block ends the put with its own error; no substitute is tried', async () => {
    const hash = randomHash();
    const bad = new InvalidArgumentError('block hash does not match its token ids');
    const owners = ownersOf(hash, NODES, 2);
    const { storeOn, calls } = nodesThat({ [owners[0] as string]: () => Promise.reject(bad) });
    await assert.rejects(coordinatePut({ hash, live: NODES, replicas: 2, storeOn }), (err) => err === bad);
    await new Promise((resolve) => setImmediate(resolve));
    assert.deepEqual([...calls].sort(), [...owners].sort());
  });

  it('placement - deduplicated everywhere reads as deduplicated; a single new copy as stored', async () => {
    const hash = randomHash();
    const owners = ownersOf(hash, NODES, 2);
    const dup = nodesThat(Object.fromEntries(NODES.map((n) => [n, () => 'deduplicated' as const])));
    assert.equal(
      (await coordinatePut({ hash, live: NODES, replicas: 2, storeOn: dup.storeOn })).status,
      'deduplicated',
    );
    const mixed = nodesThat({ [owners[0] as string]: () => 'deduplicated' as const });
    assert.equal(
      (await coordinatePut({ hash, live: NODES, replicas: 2, storeOn: mixed.storeOn })).status,
      'stored',
    );
  });
});

describe('placement - re-replication planning', () => {
  /** Stored at 500, before the membership change at 1000 that each test plans for. */
  const record = (hash: BlockHash): BlockRecord =>
    ({ hash, namespace: '', storedAtMs: 500 }) as unknown as BlockRecord;
  const blocks = Array.from({ length: 300 }, () => record(randomHash()));

  /** Each node's plan when every block sits on its owners under `placed`. */
  function plans(
    placed: readonly NodeId[],
    live: readonly NodeId[],
    departed: ReadonlySet<NodeId>,
    holdersOnNode: (node: NodeId) => BlockRecord[],
  ): Map<NodeId, Map<BlockHash, NodeId[]>> {
    const out = new Map<NodeId, Map<BlockHash, NodeId[]>>();
    for (const self of live) {
      const pushes = planPushes({
        self,
        live,
        replicas: 2,
        records: holdersOnNode(self),
        holdersOf: presumedHolders({ placedLive: placed, departed, replicas: 2, live, changedAtMs: 1000 }),
      });
      out.set(self, new Map(pushes.map((p) => [p.record.hash, p.targets])));
    }
    return out;
  }

  it('re-replication - after a leave, exactly one surviving holder copies each block to its new owner', () => {
    const [gone] = NODES as [NodeId];
    const live = NODES.filter((n) => n !== gone);
    const onNode = (node: NodeId): BlockRecord[] =>
      blocks.filter((b) => ownersOf(b.hash, NODES, 2).includes(node));
    const byNode = plans(NODES, live, new Set([gone]), onNode);
    for (const block of blocks) {
      const before = ownersOf(block.hash, NODES, 2);
      const after = ownersOf(block.hash, live, 2);
      const pushers = [...byNode].filter(([, pushes]) => pushes.has(block.hash));
      if (!before.includes(gone)) {
        assert.equal(pushers.length, 0, `block ${block.hash} kept its owners: no copy`);
        continue;
      }
      assert.equal(pushers.length, 1, `block ${block.hash}: one pusher`);
      const [pusher, pushes] = pushers[0]!;
      assert.ok(before.includes(pusher), 'the pusher is the surviving holder');
      assert.deepEqual(
        pushes.get(block.hash),
        after.filter((n) => !before.includes(n)),
      );
    }
  });

  it('re-replication - a node that restarted (live, but departed) gets its blocks back from the other owner', () => {
    const restarted = NODES[1] as NodeId;
    const onNode = (node: NodeId): BlockRecord[] =>
      node === restarted ? [] : blocks.filter((b) => ownersOf(b.hash, NODES, 2).includes(node));
    const byNode = plans(NODES, NODES, new Set([restarted]), onNode);
    for (const block of blocks) {
      const owners = ownersOf(block.hash, NODES, 2);
      const targets = [...byNode.values()].flatMap((pushes) => pushes.get(block.hash) ?? []);
      assert.deepEqual(targets, owners.includes(restarted) ? [restarted] : []);
    }
  });

  it('re-replication - blocks stored after the change were placed on the new owners: no copies', () => {
    const [gone] = NODES as [NodeId];
    const live = NODES.filter((n) => n !== gone);
    const late = Array.from(
      { length: 100 },
      () => ({ ...record(randomHash()), storedAtMs: 1500 }) as BlockRecord,
    );
    for (const self of live) {
      const mine = late.filter((b) => ownersOf(b.hash, live, 2).includes(self));
      const pushes = planPushes({
        self,
        live,
        replicas: 2,
        records: mine,
        holdersOf: presumedHolders({
          placedLive: NODES,
          departed: new Set([gone]),
          replicas: 2,
          live,
          changedAtMs: 1000,
        }),
      });
      assert.deepEqual(pushes, []);
    }
  });

  it('re-replication - anti-entropy copies only to owners that said they lack the block', () => {
    const self = NODES[0] as NodeId;
    const otherOwner = (b: BlockRecord): NodeId => ownersOf(b.hash, NODES, 2)[1] as NodeId;
    const mine = blocks.filter((b) => ownersOf(b.hash, NODES, 2)[0] === self);
    const missing = mine[0]!;
    // A block whose other owner could not be asked: presumed held, so not pushed.
    const unasked = mine.find((b) => otherOwner(b) !== otherOwner(missing))!;
    const present = mine.filter((b) => b !== missing && otherOwner(b) !== otherOwner(unasked));
    assert.ok(present.length > 0);
    const held = new Map<NodeId, Set<string>>();
    for (const b of present) {
      if (!held.has(otherOwner(b))) held.set(otherOwner(b), new Set());
      held.get(otherOwner(b))!.add(blockKey(b.namespace, b.hash));
    }
    held.set(otherOwner(missing), held.get(otherOwner(missing)) ?? new Set());
    const pushes = planPushes({
      self,
      live: NODES,
      replicas: 2,
      records: [missing, unasked, ...present],
      holdersOf: learnedHolders(self, NODES, 2, held, new Set([otherOwner(unasked)])),
    });
    assert.deepEqual(
      pushes.map((p) => [p.record.hash, p.targets]),
      [[missing.hash, [otherOwner(missing)]]],
    );
  });
});

// Unit tests of the membership tracker with an explicit clock: joins, timeouts at the window edge,
// stale and restarted heartbeats, and the bound on tracked nodes.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { InvalidArgumentError } from '@kvmesh/errors';
import { NodeHeartbeat } from '@kvmesh/protocol';

import { MembershipTracker } from '../src/index.ts';
import type { MembershipChange } from '../src/index.ts';

const hb = (nodeId: string, seq: number, timestampMs = seq * 100, role = 'kvstore'): NodeHeartbeat =>
  NodeHeartbeat.fromPartial({ nodeId, role, seq: BigInt(seq), timestampMs: BigInt(timestampMs) });

const summary = (changes: MembershipChange[]): string[] =>
  changes.map((c) =>
    c.type === 'join' ? `join ${c.member.nodeId}` : `leave ${c.member.nodeId} ${c.reason}`,
  );

describe('membership - tracker', () => {
  it('membership - first heartbeat joins, later ones refresh without events', () => {
    const t = new MembershipTracker({ heartbeatIntervalMs: 100 });
    assert.deepEqual(summary(t.observe(hb('a', 1), 0)), ['join a']);
    assert.deepEqual(summary(t.observe(hb('b', 1), 10)), ['join b']);
    assert.deepEqual(t.observe(hb('a', 2), 100), []);
    assert.deepEqual(t.liveIds(), ['a', 'b']);
    assert.equal(t.get('a' as never)?.heartbeat.seq, 2n);
  });

  it('membership - a node silent for missedHeartbeatsMax intervals leaves; one just inside the window stays', () => {
    const t = new MembershipTracker({ heartbeatIntervalMs: 100, missedHeartbeatsMax: 3 });
    t.observe(hb('a', 1), 0);
    t.observe(hb('b', 1), 0);
    t.observe(hb('b', 2), 250);
    assert.deepEqual(t.tick(300), [], 'exactly at the window edge a node is still live');
    assert.deepEqual(summary(t.tick(301)), ['leave a timeout']);
    assert.deepEqual(t.liveIds(), ['b']);
    assert.deepEqual(summary(t.tick(551)), ['leave b timeout']);
    assert.deepEqual(summary(t.observe(hb('a', 7), 600)), ['join a'], 'a node that left can join again');
  });

  it('membership - duplicate and out-of-order heartbeats are dropped and do not extend liveness', () => {
    const t = new MembershipTracker({ heartbeatIntervalMs: 100, missedHeartbeatsMax: 2 });
    t.observe(hb('a', 5), 0);
    assert.deepEqual(t.observe(hb('a', 5), 150), []);
    assert.deepEqual(t.observe(hb('a', 4, 400), 150), [], 'lower seq with an older timestamp is stale');
    assert.equal(t.stats().staleDropped, 2);
    assert.deepEqual(summary(t.tick(201)), ['leave a timeout'], 'stale heartbeats did not refresh lastSeen');
  });

  it('membership - a restarted node (seq back to 1, newer timestamp) leaves and rejoins', () => {
    const t = new MembershipTracker({ heartbeatIntervalMs: 100 });
    t.observe(hb('a', 40, 4_000), 0);
    assert.deepEqual(summary(t.observe(hb('a', 1, 5_000), 50)), ['leave a restarted', 'join a']);
    assert.equal(t.get('a' as never)?.joinedAtMs, 50);
  });

  it('membership - the tracked set is bounded; further new nodes are rejected and counted', () => {
    const t = new MembershipTracker({ heartbeatIntervalMs: 100, nodesMax: 2 });
    t.observe(hb('a', 1), 0);
    t.observe(hb('b', 1), 0);
    assert.deepEqual(t.observe(hb('c', 1), 0), []);
    assert.equal(t.stats().rejectedFull, 1);
    assert.deepEqual(t.liveIds(), ['a', 'b']);
    t.tick(1_000);
    assert.deepEqual(summary(t.observe(hb('c', 2), 1_000)), ['join c'], 'room frees up after expiry');
  });

  it('membership - roles filter the live view; heartbeats without id or role are dropped', () => {
    const t = new MembershipTracker({ heartbeatIntervalMs: 100 });
    t.observe(hb('k', 1, 1, 'kvstore'), 0);
    t.observe(hb('d', 1, 1, 'decode'), 0);
    t.observe(hb('', 1), 0);
    assert.deepEqual(t.liveIds('kvstore'), ['k']);
    assert.deepEqual(t.liveIds(), ['d', 'k']);
    assert.equal(t.stats().invalidDropped, 1);
    assert.deepEqual(summary(t.remove('d' as never)), ['leave d removed']);
  });

  it('membership - rejects nonsensical options', () => {
    assert.throws(() => new MembershipTracker({ heartbeatIntervalMs: 0 }), InvalidArgumentError);
    assert.throws(
      () => new MembershipTracker({ heartbeatIntervalMs: 10, missedHeartbeatsMax: 0 }),
      InvalidArgumentError,
    );
    assert.throws(
      () => new MembershipTracker({ heartbeatIntervalMs: 10, nodesMax: 0 }),
      InvalidArgumentError,
    );
  });
});

// Integration: heartbeats from two "nodes" (separate NATS connections) through a real nats-server
// reach a MembershipTracker; a node that stops beating leaves after the missed-heartbeat window.
// Assertions are on join/leave events, never on how long something took.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import {
  MembershipTracker,
  connectNats,
  startHeartbeats,
  watchMembership,
  type MembershipChange,
  type NatsConnection,
} from '@kvmesh/runtime';
import { startNatsServer, waitFor, type NatsServerHandle } from '@kvmesh/test-harness';

const INTERVAL_MS = 50;

describe('membership - heartbeats over NATS', () => {
  let nats: NatsServerHandle;
  const connections: NatsConnection[] = [];

  before(async () => {
    nats = await startNatsServer({ jetstream: false });
  });
  after(async () => {
    await Promise.all(connections.map((c) => c.close()));
    await nats?.stop();
  });

  const connect = async (name: string): Promise<NatsConnection> => {
    const nc = await connectNats({ servers: nats.url, name });
    connections.push(nc);
    return nc;
  };

  it('membership - two nodes join; the one that stops beating leaves, the other stays', async () => {
    const watcherNc = await connect('watcher');
    const tracker = new MembershipTracker({ heartbeatIntervalMs: INTERVAL_MS, missedHeartbeatsMax: 3 });
    const changes: MembershipChange[] = [];
    const beats = new Set<string>();
    const watch = watchMembership(watcherNc, 'kvstore', tracker, Date.now, {
      onChange: (c) => changes.push(c),
      // Each heartbeat reaches it after the tracker took it.
      onHeartbeat: (h) => {
        assert.ok(tracker.get(h.nodeId as never) !== undefined);
        beats.add(`${h.role} ${h.nodeId}`);
      },
    });
    await watcherNc.flush(); // the subscription is registered before anyone beats

    let freeBlocks = 100n;
    const one = startHeartbeats(
      await connect('kvstore-1'),
      () => ({ nodeId: 'kvstore-1', role: 'kvstore', grpcAddress: '127.0.0.1:1', freeBlocks }),
      INTERVAL_MS,
    );
    const two = startHeartbeats(
      await connect('kvstore-2'),
      () => ({ nodeId: 'kvstore-2', role: 'kvstore', grpcAddress: '127.0.0.1:2' }),
      INTERVAL_MS,
    );
    // A heartbeat of another role on the same server is not this watcher's business.
    const other = startHeartbeats(
      await connect('decode-1'),
      () => ({ nodeId: 'decode-1', role: 'decode' }),
      INTERVAL_MS,
    );
    // Garbage on the subject is counted, not thrown.
    watcherNc.publish('kvmesh.nodes.kvstore.bogus.heartbeat', new Uint8Array([0xff, 0xff, 0xff]));

    await waitFor(() => tracker.liveIds().length === 2, { message: 'both kvstore nodes live' });
    assert.deepEqual(changes.map((c) => `${c.type} ${c.member.nodeId}`).sort(), [
      'join kvstore-1',
      'join kvstore-2',
    ]);
    freeBlocks = 42n;
    await waitFor(() => tracker.get('kvstore-1' as never)?.heartbeat.freeBlocks === 42n, {
      message: 'load changes carried by later heartbeats',
    });
    assert.equal(tracker.get('kvstore-2' as never)?.heartbeat.grpcAddress, '127.0.0.1:2');
    assert.deepEqual([...beats].sort(), ['kvstore kvstore-1', 'kvstore kvstore-2'], 'only its role');

    one.stop();
    await waitFor(() => changes.some((c) => c.type === 'leave'), {
      message: 'kvstore-1 leaves',
      timeoutMs: 5_000,
    });
    const leaves = changes.filter((c) => c.type === 'leave');
    assert.deepEqual(
      leaves.map((c) => (c.type === 'leave' ? `${c.member.nodeId} ${c.reason}` : '')),
      ['kvstore-1 timeout'],
    );
    assert.deepEqual(tracker.liveIds(), ['kvstore-2']);
    // kvstore-2 keeps beating across several windows and never leaves.
    const sentBefore = two.sent;
    await waitFor(() => two.sent >= sentBefore + 8, { message: 'more heartbeats from kvstore-2' });
    assert.deepEqual(tracker.liveIds(), ['kvstore-2']);
    assert.equal(changes.filter((c) => c.type === 'leave').length, 1);
    assert.ok(watch.invalidMessages + tracker.stats().invalidDropped >= 1, 'garbage was seen and dropped');

    two.stop();
    other.stop();
    watch.stop();
  });
});

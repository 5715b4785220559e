// Integration: a real nats-server with JetStream carries kv events from KvEventPublisher to
// replayKvEvents in order, and an outage longer than the publisher's queue ends in the documented
// resync marker instead of unbounded memory or a silent hole.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, describe, it } from 'node:test';

import { LimitExceededError, InvalidArgumentError } from '@kvmesh/errors';
import { KvEvent } from '@kvmesh/protocol';
import {
  KvEventPublisher,
  connectNats,
  ensureKvEventStream,
  replayKvEvents,
  type NatsConnection,
  type ReplayedKvEvent,
} from '@kvmesh/runtime';
import { startNatsServer, waitFor, type NatsServerHandle } from '@kvmesh/test-harness';
import { jetstream, jetstreamManager } from '@nats-io/jetstream';

function event(nodeId: string, seq: number): KvEvent {
  return KvEvent.fromPartial({
    nodeId,
    seq: BigInt(seq),
    stored: [{ hash: randomBytes(16), parentHash: randomBytes(16), tier: 1, codec: 4, bytes: 1234n }],
    removed: seq % 3 === 0 ? [randomBytes(16)] : [],
    timestampMs: BigInt(1_700_000_000_000 + seq),
  });
}

async function collect(it: AsyncIterable<ReplayedKvEvent>): Promise<ReplayedKvEvent[]> {
  const out: ReplayedKvEvent[] = [];
  for await (const e of it) out.push(e);
  return out;
}

describe('kv events - JetStream publish and replay', () => {
  let nats: NatsServerHandle;
  let nc: NatsConnection;

  before(async () => {
    nats = await startNatsServer({ jetstream: true });
    nc = await connectNats({ servers: nats.url, name: 'kv-events-test', reconnectTimeWaitMs: 50 });
  });
  after(async () => {
    await nc?.close();
    await nats?.stop();
  });

  it('kv events - the stream is created once and later calls update its limits', async () => {
    const jsm = await jetstreamManager(nc);
    const created = await ensureKvEventStream(jsm, { msgsMax: 10_000, ageMaxMs: 60_000 });
    assert.deepEqual(created.config.subjects, ['kvmesh.kv.events.>']);
    const updated = await ensureKvEventStream(jsm, { msgsMax: 20_000, ageMaxMs: 60_000 });
    assert.equal(updated.config.max_msgs, 20_000);
    assert.equal(updated.config.name, 'KVMESH_KV_EVENTS');
  });

  it('kv events - events come back complete and in seq order, per node and from a stream position', async () => {
    const js = jetstream(nc);
    const a = new KvEventPublisher(js, { nodeId: 'kvstore-a' });
    const b = new KvEventPublisher(js, { nodeId: 'kvstore-b' });
    const sent: KvEvent[] = [];
    for (let seq = 1; seq <= 60; seq++) {
      const e = event('kvstore-a', seq);
      sent.push(e);
      a.publish(e);
      if (seq % 2 === 0) b.publish(event('kvstore-b', seq / 2));
    }
    await Promise.all([a.flush(), b.flush()]);
    assert.equal(a.stats().published, 60);
    assert.equal(a.stats().lastPublishedSeq, 60n);

    const onlyA = await collect(replayKvEvents(js, { nodeId: 'kvstore-a' }));
    assert.deepEqual(
      onlyA.map((r) => r.event),
      sent,
    );
    const all = await collect(replayKvEvents(js));
    assert.equal(all.length, 90);
    const streamSeqs = all.map((r) => r.streamSeq);
    assert.deepEqual(
      streamSeqs,
      [...streamSeqs].sort((x, y) => x - y),
    );
    const bSeqs = all.filter((r) => r.event.nodeId === 'kvstore-b').map((r) => Number(r.event.seq));
    assert.deepEqual(
      bSeqs,
      Array.from({ length: 30 }, (_, i) => i + 1),
    );

    // A restarted reader resumes after the last position it applied.
    const resumeAt = all[44]!.streamSeq + 1;
    const rest = await collect(replayKvEvents(js, { fromSeq: resumeAt }));
    assert.deepEqual(rest, all.slice(45));
    assert.deepEqual(await collect(replayKvEvents(js, { fromSeq: all.at(-1)!.streamSeq + 1 })), []);
    await Promise.all([a.close(), b.close()]);
  });

  it('kv events - a following reader sees new events until aborted', async () => {
    const js = jetstream(nc);
    const info = await (await jetstreamManager(nc)).streams.info('KVMESH_KV_EVENTS');
    const publisher = new KvEventPublisher(js, { nodeId: 'kvstore-f' });
    const controller = new AbortController();
    const seen: bigint[] = [];
    const reading = (async () => {
      for await (const r of replayKvEvents(js, {
        nodeId: 'kvstore-f',
        fromSeq: info.state.last_seq + 1,
        follow: true,
        signal: controller.signal,
      })) {
        seen.push(r.event.seq);
        if (seen.length === 5) controller.abort();
      }
    })();
    for (let seq = 1; seq <= 5; seq++) publisher.publish(event('kvstore-f', seq));
    await reading;
    assert.deepEqual(seen, [1n, 2n, 3n, 4n, 5n]);
    await publisher.close();
  });

  it('kv events - publish rejects foreign node ids, non-increasing seqs and oversized events', async () => {
    const publisher = new KvEventPublisher(jetstream(nc), { nodeId: 'kvstore-v', eventBytesMax: 4096 });
    publisher.publish(event('kvstore-v', 1));
    assert.throws(() => publisher.publish(event('kvstore-w', 2)), InvalidArgumentError);
    assert.throws(() => publisher.publish(event('kvstore-v', 1)), InvalidArgumentError);
    const huge = KvEvent.fromPartial({
      nodeId: 'kvstore-v',
      seq: 2n,
      removed: Array.from({ length: 300 }, () => randomBytes(16)),
    });
    assert.throws(() => publisher.publish(huge), LimitExceededError);
    await publisher.flush();
    await publisher.close();
  });
});

describe('kv events - NATS outage', () => {
  it('kv events - an outage longer than the queue drops the oldest events behind one cleared marker', async () => {
    const nats = await startNatsServer({ jetstream: true });
    const nc = await connectNats({ servers: nats.url, name: 'outage-test', reconnectTimeWaitMs: 50 });
    try {
      const js = jetstream(nc);
      await ensureKvEventStream(await jetstreamManager(nc));
      const resyncs: bigint[] = [];
      const publisher = new KvEventPublisher(js, {
        nodeId: 'kvstore-o',
        queueMax: 5,
        publishTimeoutMs: 200,
        retryDelayMaxMs: 100,
        onResync: (seq) => resyncs.push(seq),
      });
      for (let seq = 1; seq <= 3; seq++) publisher.publish(event('kvstore-o', seq));
      await publisher.flush();

      await nats.kill('SIGTERM');
      // Event 4 goes in flight (and keeps failing); 5..23 pass through the 5-slot queue, so 5..19
      // are dropped and the marker takes seq 19.
      for (let seq = 4; seq <= 23; seq++) publisher.publish(event('kvstore-o', seq));
      const stats = publisher.stats();
      assert.equal(stats.queued, 6, 'one in flight plus queueMax queued');
      assert.equal(stats.dropped, 15);
      assert.equal(stats.resyncMarkers, 1);
      assert.equal(resyncs.at(-1), 19n);
      await waitFor(() => publisher.stats().failedAttempts > 0, { message: 'a failed publish attempt' });

      await nats.restart();
      await publisher.flush(15_000);
      const replayed = (await collect(replayKvEvents(js, { nodeId: 'kvstore-o' }))).map((r) => r.event);
      assert.deepEqual(
        replayed.map((e) => `${e.seq}${e.cleared ? ' cleared' : ''}`),
        ['1', '2', '3', '4', '19 cleared', '20', '21', '22', '23'],
      );
      assert.equal(replayed.find((e) => e.cleared)?.stored.length, 0);
      assert.equal(await publisher.close(), 0);
    } finally {
      await nc.close();
      await nats.stop();
    }
  });
});

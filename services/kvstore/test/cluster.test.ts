// Integration: kvstore nodes as real child processes (src/main.ts) on a real nats-server with
// JetStream, R = 2. A put is acknowledged only once both nodes hold the block, through either front
// door of either node; each node's kv events land on JetStream with contiguous seqs starting with
// `cleared`; with a node gone a put is refused as UNAVAILABLE instead of acknowledged with one copy,
// and a node that joins receives copies of the blocks it now owns.
// KVSTORE_TEST_DUMP=1 runs the nodes at debug level and prints their logs when they stop.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import { status as GrpcStatus, type ServiceError } from '@grpc/grpc-js';
import type { DataChannelClient } from '@kvmesh/dataplane';
import type { KvStoreClient, MatchPrefixResponse, StatsResponse } from '@kvmesh/protocol';
import { connectNats, replayKvEvents, type NatsConnection, type ReplayedKvEvent } from '@kvmesh/runtime';
import {
  spawnService,
  startNatsServer,
  waitFor,
  type NatsServerHandle,
  type ServiceHandle,
} from '@kvmesh/test-harness';
import { jetstream } from '@nats-io/jetstream';

import {
  chain,
  dataClient,
  dataPut,
  grpcClient,
  hashBytes,
  hex,
  putBlocks,
  rejectsWith,
  unary,
  type TestBlock,
} from './support.ts';

const TOKEN = 'cluster-test-token';
const HEARTBEAT_MS = 100;

interface Node {
  handle: ServiceHandle;
  client: KvStoreClient;
  grpcAddress: string;
  dataAddress: string;
}

describe('kvstore cluster - nodes as processes on a real nats-server, R = 2', () => {
  let nats: NatsServerHandle;
  let nc: NatsConnection;
  const nodes = new Map<string, Node>();
  const dataClients: DataChannelClient[] = [];
  /** Every block acknowledged so far (all of them must survive on the live nodes). */
  const acknowledged: TestBlock[] = [];

  const spawn = async (nodeId: string): Promise<Node> => {
    const handle = await spawnService({
      name: nodeId,
      entry: 'services/kvstore/src/main.ts',
      env: {
        KVMESH_NODE_ID: nodeId,
        KVMESH_NATS_URL: nats.url,
        KVMESH_REPLICAS: '2',
        KVMESH_HEARTBEAT_INTERVAL_MS: String(HEARTBEAT_MS),
        KVMESH_BYTES_BUDGET: '16MiB',
        KVMESH_DATA_TOKEN: TOKEN,
        KVMESH_PEER_TIMEOUT_MS: '2s',
        KVMESH_LOG_LEVEL: process.env['KVSTORE_TEST_DUMP'] === '1' ? 'debug' : 'warn',
      },
    });
    const grpcAddress = String(handle.info['grpcAddress']);
    const node = {
      handle,
      client: grpcClient(grpcAddress),
      grpcAddress,
      dataAddress: String(handle.info['dataAddress']),
    };
    nodes.set(nodeId, node);
    return node;
  };
  const node = (id: string): Node => nodes.get(id) as Node;
  const stats = (id: string): Promise<StatsResponse> => unary((cb) => node(id).client.stats({}, cb));
  const matched = async (id: string, blocks: readonly TestBlock[]): Promise<number> =>
    (
      await unary<MatchPrefixResponse>((cb) =>
        node(id).client.matchPrefix({ hashes: blocks.map((b) => hashBytes(b.hash)), namespace: '' }, cb),
      )
    ).matchedBlocks;

  /** Retries a put while the node still sees fewer than R live nodes (UNAVAILABLE); then it must succeed. */
  const acceptsPuts = (id: string, blocks: TestBlock[]): Promise<boolean> =>
    waitFor(
      async () => {
        try {
          return (await putBlocks(node(id).client, blocks)).acknowledged.length === blocks.length;
        } catch (err) {
          assert.equal((err as ServiceError).code, GrpcStatus.UNAVAILABLE, (err as ServiceError).details);
          return false;
        }
      },
      { timeoutMs: 10_000, message: `${id} sees both nodes and acknowledges a put` },
    );

  before(async () => {
    nats = await startNatsServer({ jetstream: true });
    nc = await connectNats({ servers: nats.url, name: 'kvstore-cluster-test' });
    await Promise.all([spawn('kv-a'), spawn('kv-b')]);
  });
  after(async () => {
    for (const c of dataClients) await c.close().catch(() => undefined);
    for (const n of nodes.values()) {
      n.client.close();
      await n.handle.stop();
      if (process.env['KVSTORE_TEST_DUMP'] === '1') process.stderr.write(n.handle.stderrTail());
    }
    await nc?.close();
    await nats?.stop();
  });

  it('cluster - a put is acknowledged only once both nodes hold the block', async () => {
    const first = chain(3);
    // Each node needs a heartbeat or two to see the other; until then a put is refused, never half-done.
    await Promise.all([acceptsPuts('kv-a', first), acceptsPuts('kv-b', chain(1))]);
    acknowledged.push(...first);
    // No waiting from here on: an acknowledgement means both copies exist already.
    assert.equal(await matched('kv-a', first), 3);
    assert.equal(await matched('kv-b', first), 3);

    const viaGrpcOnB = chain(2);
    await putBlocks(node('kv-b').client, viaGrpcOnB);
    acknowledged.push(...viaGrpcOnB);
    assert.equal(await matched('kv-a', viaGrpcOnB), 2);
    assert.equal(await matched('kv-b', viaGrpcOnB), 2);

    const data = await dataClient(node('kv-b').dataAddress, TOKEN);
    dataClients.push(data);
    const [viaData] = chain(1);
    const res = await dataPut(data, viaData!);
    assert.deepEqual(res.acknowledged.map(hex), [viaData!.hash]);
    acknowledged.push(viaData!);
    assert.equal(await matched('kv-a', [viaData!]), 1);
    assert.equal(await matched('kv-b', [viaData!]), 1);

    const [a, b] = await Promise.all([stats('kv-a'), stats('kv-b')]);
    assert.equal(a.blocks, BigInt(acknowledged.length + 1), 'kv-b’s warm-up block too');
    assert.equal(b.blocks, a.blocks);
  });

  it('cluster - kv events reach JetStream with contiguous seqs from 1, starting with cleared', async () => {
    const js = jetstream(nc);
    const expected = new Set(acknowledged.map((b) => b.hash));
    for (const nodeId of ['kv-a', 'kv-b']) {
      let events: ReplayedKvEvent[] = [];
      await waitFor(
        async () => {
          events = [];
          for await (const e of replayKvEvents(js, { nodeId })) events.push(e);
          const stored = new Set(events.flatMap((e) => e.event.stored.map((s) => hex(s.hash))));
          return [...expected].every((h) => stored.has(h));
        },
        { timeoutMs: 10_000, message: `${nodeId}'s stored events on JetStream` },
      );
      assert.deepEqual(
        events.map((e) => e.event.seq),
        events.map((_, i) => BigInt(i + 1)),
        `${nodeId}: seqs contiguous from 1`,
      );
      assert.equal(events[0]?.event.cleared, true, `${nodeId}: the first event is cleared`);
      assert.ok(events.every((e) => e.event.nodeId === nodeId));
    }
  });

  it('cluster - with a node gone a put is UNAVAILABLE; a joining node receives copies of what it owns', async () => {
    await node('kv-b').handle.kill9();
    node('kv-b').client.close();
    nodes.delete('kv-b');
    const [extra] = chain(1);
    await waitFor(
      async () => {
        const err = await rejectsWith(putBlocks(node('kv-a').client, [extra!]), GrpcStatus.UNAVAILABLE);
        return /needs 2 replicas but only 1 kvstore node\(s\) are live/.test(err.details);
      },
      { timeoutMs: 5_000, message: 'kv-a refuses puts once kv-b is out' },
    );
    assert.equal(await matched('kv-a', acknowledged), acknowledged.length, 'kv-a still holds everything');

    // R = 2 with two live nodes: the newcomer owns every block, and kv-a copies them all to it.
    await spawn('kv-c');
    await waitFor(async () => (await stats('kv-c')).blocks >= BigInt(acknowledged.length), {
      timeoutMs: 10_000,
      message: 'kv-c received copies of every block',
    });
    assert.equal(await matched('kv-c', acknowledged), acknowledged.length);
    assert.equal((await putBlocks(node('kv-a').client, [extra!])).acknowledged.length, 1);
    assert.equal(await matched('kv-c', [extra!]), 1);

    const exit = await node('kv-c').handle.stop();
    if (process.env['KVSTORE_TEST_DUMP'] === '1') process.stderr.write(node('kv-c').handle.stderrTail());
    assert.deepEqual(exit, { code: 0, signal: null }, 'graceful shutdown on SIGTERM');
    node('kv-c').client.close();
    nodes.delete('kv-c');
  });
});

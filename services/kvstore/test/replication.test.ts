// Integration: four in-process nodes on a real nats-server (R = 2), one of them full with nothing
// evictable. Puts still reach R copies by substituting the next node in rendezvous order for a full
// owner and for one that vanished mid-flight (closed, but not yet timed out of membership), and an
// anti-entropy pass restores a copy an owner lost.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import type { KvStoreClient, MatchPrefixResponse } from '@kvmesh/protocol';
import { ownersOf } from '@kvmesh/runtime';
import { startNatsServer, waitFor, type NatsServerHandle } from '@kvmesh/test-harness';

import { kvStoreConfig, startKvStoreNode, type KvStoreNode } from '../src/index.ts';
import { DIMS, chain, grpcClient, hashBytes, putBlocks, unary, type TestBlock } from './support.ts';

const ENTRY_BYTES = chain(1)[0]!.payload.byteLength + DIMS.blockTokens * 4 + 256;

describe('kvstore replication - substitutes and anti-entropy, in-process nodes on real NATS', () => {
  let nats: NatsServerHandle;
  const nodes = new Map<string, KvStoreNode>();
  const clients = new Map<string, KvStoreClient>();

  const start = async (nodeId: string, bytesBudget = 8 * 1024 * 1024): Promise<void> => {
    const node = await startKvStoreNode(
      kvStoreConfig({
        nodeId,
        natsUrl: nats.url,
        replicas: 2,
        heartbeatIntervalMs: 100,
        bytesBudget,
        dataToken: 'replication-test',
        peerTimeoutMs: 2000,
        // Passes run only when a test asks for one.
        antiEntropyIntervalMs: 3_600_000,
        logLevel: 'error',
      }),
    );
    nodes.set(nodeId, node);
    clients.set(nodeId, grpcClient(node.grpcAddress));
  };
  const client = (id: string): KvStoreClient => clients.get(id) as KvStoreClient;
  const node = (id: string): KvStoreNode => nodes.get(id) as KvStoreNode;
  const holds = async (id: string, block: TestBlock): Promise<boolean> =>
    (
      await unary<MatchPrefixResponse>((cb) =>
        client(id).matchPrefix({ hashes: [hashBytes(block.hash)], namespace: '' }, cb),
      )
    ).matchedBlocks === 1;

  before(async () => {
    nats = await startNatsServer({ jetstream: true });
    // kv-z has room for one block.
    await Promise.all([start('kv-w'), start('kv-x'), start('kv-y'), start('kv-z', 2 * ENTRY_BYTES - 1)]);
    await waitFor(() => [...nodes.values()].every((n) => n.liveNodes().length === 4), {
      timeoutMs: 5_000,
      message: 'every node sees all four',
    });
    // Fill kv-z with a pinned block (a replica put stores it there alone).
    const [filler] = chain(1);
    await putBlocks(client('kv-z'), [filler!], true);
    await unary((cb) =>
      client('kv-z').pin(
        { hashes: [hashBytes(filler!.hash)], namespace: '', ttlMs: 600_000, holder: 't' },
        cb,
      ),
    );
  });
  after(async () => {
    for (const c of clients.values()) c.close();
    await Promise.all([...nodes.values()].map((n) => n.close()));
    await nats?.stop();
  });

  it('replication - a full owner is replaced by the next node in rank order', async () => {
    const blocks = Array.from({ length: 16 }, () => chain(1)[0]!);
    const live = node('kv-x').liveNodes();
    const ownedByZ = blocks.filter((b) => ownersOf(b.hash, live, 2).includes(node('kv-z').nodeId));
    assert.ok(ownedByZ.length > 0, 'some blocks are owned by the full node');
    const before = node('kv-x').node.counters.substitutions;
    const res = await putBlocks(client('kv-x'), blocks);
    assert.equal(res.acknowledged.length, blocks.length);
    for (const block of blocks) {
      const holders = [];
      for (const id of nodes.keys()) if (await holds(id, block)) holders.push(id);
      assert.equal(holders.length, 2, `block ${block.hash} has exactly R copies (${holders.join(', ')})`);
      assert.ok(!holders.includes('kv-z'));
    }
    assert.ok(node('kv-x').node.counters.substitutions - before >= ownedByZ.length);
  });

  it('replication - an owner that vanished mid-put is replaced before membership notices', async () => {
    const live = node('kv-x').liveNodes();
    await node('kv-w').close();
    clients.get('kv-w')?.close();
    assert.equal(node('kv-x').liveNodes().length, live.length, 'kv-w has not timed out yet');
    const blocks = Array.from({ length: 16 }, () => chain(1)[0]!);
    assert.ok(blocks.some((b) => ownersOf(b.hash, live, 2).includes(node('kv-w').nodeId)));
    const res = await putBlocks(client('kv-x'), blocks);
    assert.equal(res.acknowledged.length, blocks.length);
    for (const block of blocks) {
      assert.ok(await holds('kv-x', block));
      assert.ok(await holds('kv-y', block));
    }
    nodes.delete('kv-w');
    clients.delete('kv-w');
  });

  it('replication - anti-entropy restores a copy an owner lost', async () => {
    await waitFor(() => node('kv-x').liveNodes().length === 3, { message: 'kv-w timed out' });
    // A block kv-x and kv-y own (so kv-y is a place it must be, not a substitute).
    let block: TestBlock;
    do block = chain(1)[0]!;
    while (ownersOf(block.hash, node('kv-x').liveNodes(), 2).includes(node('kv-z').nodeId));
    await putBlocks(client('kv-x'), [block]);
    assert.ok(await holds('kv-y', block));
    const deleted = node('kv-y').store.delete(block.namespace, block.hash);
    assert.equal(deleted.deleted, true);
    assert.equal(await holds('kv-y', block), false);
    await node('kv-x').rebalance('anti-entropy');
    assert.ok(await holds('kv-y', block), 'kv-x pushed the lost copy back');
  });
});

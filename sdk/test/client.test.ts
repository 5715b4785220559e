// KvStoreClient against in-process fake nodes (real gRPC and data channel servers on loopback, map
// storage): puts go to the rendezvous primary and move on to the next ranked node when it cannot be
// reached; an answer without an acknowledgement is never reported as stored; reads skip wrong copies;
// DistAttention retries hashes a node turns out not to hold and merges exactly. The kvstore service
// itself is covered by test/integration/kvstore-cluster.test.ts.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import { attendPayloads } from '@kvmesh/block';
import { InvalidArgumentError, type KvmeshError } from '@kvmesh/errors';
import { relativeL2Error } from '@kvmesh/kernels';
import type { NodeId } from '@kvmesh/protocol';
import { UnavailableError, rankNodes } from '@kvmesh/runtime';

import { KvStoreClient, type KvStoreClientOptions, type StaticNode } from '../src/index.ts';
import { DIMS, FakeNode, closedPort, kernels, makeChain } from './support.ts';

const TOKEN = 'fake-token';

describe('sdk client - against fake nodes', () => {
  const fakes: FakeNode[] = [];
  let dead: StaticNode;
  const clients: KvStoreClient[] = [];

  const connect = async (nodes: readonly StaticNode[], options: Partial<KvStoreClientOptions> = {}) => {
    const client = await KvStoreClient.connect({
      nodes,
      replicas: 1,
      timeoutMs: 3_000,
      suspectMs: 60_000,
      ...options,
    });
    clients.push(client);
    return client;
  };
  const holderOf = (hash: string): FakeNode[] =>
    fakes.filter((f) => [...f.blocks.keys()].some((k) => k.endsWith(hash)));

  before(async () => {
    for (const id of ['kv-a', 'kv-b', 'kv-c']) fakes.push(await FakeNode.start(id, TOKEN));
    dead = {
      nodeId: 'kv-dead',
      grpcAddress: `127.0.0.1:${await closedPort()}`,
      dataAddress: `127.0.0.1:${await closedPort()}`,
    };
  });
  after(async () => {
    await Promise.all(clients.map((c) => c.close()));
    await Promise.all(fakes.map((f) => f.stop()));
  });

  it('client - each block is put on its rendezvous primary over the data channel and read back identical', async () => {
    const client = await connect(fakes.map((f) => f.endpoint));
    const chain = makeChain(6);
    const report = await client.put(chain);
    assert.deepEqual(
      report.acknowledged,
      chain.map((b) => b.hash),
    );
    const ids = fakes.map((f) => f.nodeId as NodeId);
    for (const block of chain)
      assert.deepEqual(
        holderOf(block.hash).map((f) => f.nodeId),
        [rankNodes(block.hash, ids)[0]],
      );
    const got = await client.get(chain.map((b) => b.hash));
    got.forEach((b, i) => assert.deepEqual(Buffer.from(b!.payload), Buffer.from(chain[i]!.payload)));
    assert.deepEqual(await client.get([makeChain(1)[0]!.hash]), [undefined]);
    assert.ok(
      fakes.every((f) => f.calls.includes('grpc.openDataChannel')),
      'the token came from OpenDataChannel',
    );
  });

  it('client - an unreachable primary is retried on the next ranked node, then tried last', async () => {
    // One block at a time, so the first failure is seen before the next block picks its node.
    const client = await connect([...fakes.map((f) => f.endpoint), dead], { concurrency: 1 });
    const ids = [...fakes.map((f) => f.nodeId), dead.nodeId] as NodeId[];
    // NOTE: hashes are random, so each block has the dead node first with chance 1/4: 64 blocks miss
    // it entirely with chance (3/4)^64 ≈ 1e-8 (12 blocks did, 3% of runs).
    const chain = makeChain(64).filter((b) => rankNodes(b.hash, ids)[0] === dead.nodeId);
    assert.ok(chain.length > 0, 'some block has the dead node as primary');
    const report = await client.put(chain);
    assert.deepEqual(
      report.acknowledged,
      chain.map((b) => b.hash),
    );
    for (const outcome of report.outcomes) {
      assert.ok(outcome.acknowledged);
      assert.equal(outcome.nodeId, rankNodes(outcome.hash, ids)[1]);
    }
    // The first failure made the dead node a suspect: later blocks go straight to their second choice.
    assert.equal(client.counters().transportFailures, 1);
    assert.deepEqual(report.outcomes.map((o) => o.attempts).sort(), [...Array(chain.length - 1).fill(1), 2]);
  });

  it('client - a put the node answers without acknowledging is reported failed, never stored', async () => {
    const client = await connect(fakes.map((f) => f.endpoint));
    for (const f of fakes) f.behaviour.ackPuts = false;
    try {
      const report = await client.put(makeChain(3));
      assert.deepEqual(report.acknowledged, []);
      assert.deepEqual(
        report.failed.map((f) => f.error.code),
        Array(3).fill('PUT_NOT_ACKNOWLEDGED'),
      );
    } finally {
      for (const f of fakes) f.behaviour.ackPuts = true;
    }
  });

  it('client - a wrong copy on one node is skipped and the verified copy from another is returned', async () => {
    const client = await connect(
      fakes.map((f) => f.endpoint),
      { transport: 'grpc' },
    );
    const [block] = makeChain(1);
    assert.deepEqual((await client.put([block!])).acknowledged, [block!.hash]);
    const [holder] = holderOf(block!.hash);
    // A second, wrong copy on the best-ranked node.
    const ids = fakes.map((f) => f.nodeId as NodeId);
    const other = fakes.find(
      (f) => f.nodeId === rankNodes(block!.hash, ids).find((n) => n !== holder!.nodeId),
    )!;
    other.blocks.set(`/${block!.hash}`, holder!.blocks.get(`/${block!.hash}`)!);
    holder!.behaviour.corruptReads = true;
    try {
      const [got] = await client.get([block!.hash]);
      assert.equal(got?.nodeId, other.nodeId);
      assert.deepEqual(got?.tokenIds, block!.tokenIds);
      other.behaviour.corruptReads = true;
      await assert.rejects(
        client.get([block!.hash]),
        (e: KvmeshError) => e.code === 'BLOCK_UNAVAILABLE' && e.details.causeCode === 'CORRUPT_DATA',
      );
    } finally {
      holder!.behaviour.corruptReads = false;
      other.behaviour.corruptReads = false;
    }
  });

  it('client - DistAttention retries hashes a node does not hold and merges exactly', async () => {
    const client = await connect(fakes.map((f) => f.endpoint));
    const chain = makeChain(9, { codec: 'kivi4' });
    assert.equal((await client.put(chain)).acknowledged.length, 9);
    // Every node claims every block in MatchPrefix; only the primary can attend over it.
    for (const f of fakes) for (const b of chain) f.behaviour.phantom.add(b.hash);
    try {
      const query = new Float32Array(4 * DIMS.headDim).map(() => Math.random() * 2 - 1);
      const args = { layer: 1, queryHeads: 4, headDim: DIMS.headDim, query };
      const result = await client.partialAttention({ ...args, hashes: chain.map((b) => b.hash) });
      const whole = await attendPayloads(kernels, { ...args, payloads: chain.map((b) => b.payload) });
      assert.ok(relativeL2Error(result.o, whole.o) <= 1e-5, `o error ${relativeL2Error(result.o, whole.o)}`);
      assert.equal(result.blocksUsed, 9);
      assert.equal([...result.byNode.values()].flat().length, 9);
      await assert.rejects(client.partialAttention({ ...args, hashes: [makeChain(1)[0]!.hash] }), {
        code: 'BLOCK_NOT_FOUND',
      });
      await assert.rejects(client.partialAttention({ ...args, hashes: [chain[0]!.hash, chain[0]!.hash] }), {
        kind: 'invalid-argument',
      });
    } finally {
      for (const f of fakes) f.behaviour.phantom.clear();
    }
  });

  it('client - DistAttention moves the share of a failing node to another holder; bad arguments are not retried', async () => {
    const client = await connect(fakes.map((f) => f.endpoint));
    const [failing] = fakes;
    // Blocks the failing node does not really hold (their single copy is on their primary).
    const ids = fakes.map((f) => f.nodeId as NodeId);
    const chain = makeChain(12).filter((b) => rankNodes(b.hash, ids)[0] !== failing!.nodeId);
    assert.equal((await client.put(chain)).acknowledged.length, chain.length);
    for (const b of chain) failing!.behaviour.phantom.add(b.hash);
    const query = new Float32Array(2 * DIMS.headDim).map(() => Math.random() * 2 - 1);
    const args = { layer: 0, queryHeads: 2, headDim: DIMS.headDim, query, hashes: chain.map((b) => b.hash) };
    try {
      failing!.behaviour.attentionError = new UnavailableError('replica busy');
      const result = await client.partialAttention(args);
      const whole = await attendPayloads(kernels, { ...args, payloads: chain.map((b) => b.payload) });
      assert.ok(relativeL2Error(result.o, whole.o) <= 1e-5);
      assert.ok(!result.byNode.has(failing!.nodeId as NodeId), 'nothing counted from the failing node');
      failing!.behaviour.attentionError = new InvalidArgumentError('head_dim does not match');
      const before = fakes.map((f) => f.calls.length);
      await assert.rejects(client.partialAttention(args), { kind: 'invalid-argument' });
      const attentionCalls = fakes.flatMap((f, i) =>
        f.calls.slice(before[i]).filter((c) => c.startsWith('grpc.partialAttention')),
      );
      assert.ok(attentionCalls.length <= fakes.length, `one round only: ${attentionCalls.join(', ')}`);
    } finally {
      failing!.behaviour.attentionError = undefined;
      failing!.behaviour.phantom.clear();
    }
  });

  it('client - input errors and bounds are typed; a closed client refuses calls', async () => {
    const client = await KvStoreClient.connect({ nodes: [fakes[0]!.endpoint], batchBlocksMax: 2 });
    await assert.rejects(client.get(['nothex']), { kind: 'invalid-argument' });
    await assert.rejects(client.get(makeChain(3).map((b) => b.hash)), { code: 'LIMIT_EXCEEDED' });
    await assert.rejects(client.get([], { leaseMs: -1 }), { kind: 'invalid-argument' });
    await client.close();
    await assert.rejects(client.matchPrefix([]), { code: 'CLIENT_CLOSED' });
    await assert.rejects(KvStoreClient.connect({}), { kind: 'invalid-argument' });
  });
});

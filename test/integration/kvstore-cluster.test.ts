// Integration: three kvstore processes (services/kvstore/src/main.ts) on loopback behind a real
// nats-server, R = 2, driven only through @kvmesh/sdk KvStoreClient; plus one standalone node with a
// small DRAM budget for eviction order and protection. What must hold: acknowledged blocks are held
// by exactly R nodes and read back byte-identical from any client; identical puts deduplicate and
// namespaces never share; eviction is leaf-first LRU and spares pinned and leased blocks; a node
// killed with SIGKILL under a put loop loses no acknowledged block and R copies come back;
// DistAttention over the cluster equals single-process attention; bad input gets typed errors.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import { attendPayloads } from '@kvmesh/block';
import { KvmeshError } from '@kvmesh/errors';
import { relativeL2Error } from '@kvmesh/kernels';
import type { BlockHash, NodeId } from '@kvmesh/protocol';
import { ownersOf } from '@kvmesh/runtime';
import { KvStoreClient, type ChainedBlock, type KvStoreClientOptions, type PutReport } from '@kvmesh/sdk';
import { startNatsServer, waitFor, type NatsServerHandle, type ServiceHandle } from '@kvmesh/test-harness';

import {
  DIMS,
  kernels,
  makeChain,
  randomTokens,
  withCodecId,
  withFlippedSectionByte,
} from './support/blocks.ts';
import { DATA_TOKEN, clientOptions, endpointOf, startKvNode } from './support/cluster.ts';

const R = 2;
const NODE_IDS = ['kv-0', 'kv-1', 'kv-2'];
const EVICT_NODE_ID = 'kv-evict';
/** Whole blocks the eviction node holds: its budget is this many blocks plus half of one. */
const EVICT_CAPACITY_BLOCKS = 6;
/** Bytes a block is charged on a node: payload + u32 token ids + the store's per-entry overhead. */
const ENTRY_OVERHEAD_BYTES = 256;
const payloadBytes = makeChain(1)[0]!.payload.byteLength;
const BLOCK_CHARGE_BYTES = payloadBytes + DIMS.blockTokens * 4 + ENTRY_OVERHEAD_BYTES;

function assertAllAcknowledged(report: PutReport, blocks: readonly ChainedBlock[]): void {
  assert.deepEqual(
    report.failed.map((f) => `${f.hash}: ${f.error.code} ${f.error.message}`),
    [],
    'every block acknowledged',
  );
  assert.deepEqual(
    report.acknowledged,
    blocks.map((b) => b.hash),
  );
}

describe('kvstore cluster - 3 nodes, R=2, real NATS, through the SDK', () => {
  let nats: NatsServerHandle;
  const nodes = new Map<string, ServiceHandle>();
  let evictNode: ServiceHandle;
  const clients: KvStoreClient[] = [];
  let clientA: KvStoreClient;
  let clientB: KvStoreClient;
  let evictClient: KvStoreClient;

  const connect = async (overrides: Partial<KvStoreClientOptions> = {}): Promise<KvStoreClient> => {
    const client = await KvStoreClient.connect({
      ...clientOptions(nats.url, R),
      waitForNodes: NODE_IDS.length,
      ...overrides,
    });
    clients.push(client);
    return client;
  };

  before(async () => {
    nats = await startNatsServer();
    const started = await Promise.all([
      ...NODE_IDS.map((nodeId) => startKvNode({ nodeId, natsUrl: nats.url, replicas: R })),
      startKvNode({
        nodeId: EVICT_NODE_ID,
        replicas: 1,
        bytesBudget: Math.floor((EVICT_CAPACITY_BLOCKS + 0.5) * BLOCK_CHARGE_BYTES),
      }),
    ]);
    started.slice(0, NODE_IDS.length).forEach((handle, i) => nodes.set(NODE_IDS[i]!, handle));
    evictNode = started[NODE_IDS.length]!;
    // A learns each node's data channel token through OpenDataChannel; B moves bytes over gRPC.
    clientA = await connect({ dataToken: undefined });
    clientB = await connect({ transport: 'grpc' });
    const { nodeId, grpcAddress, dataAddress } = endpointOf(evictNode);
    evictClient = await KvStoreClient.connect({
      nodes: [{ nodeId, grpcAddress, dataAddress }],
      replicas: 1,
      dataToken: DATA_TOKEN,
      timeoutMs: 5_000,
    });
    clients.push(evictClient);
  });

  after(async () => {
    await Promise.all(clients.map((c) => c.close()));
    await Promise.all([...nodes.values(), evictNode].filter((n) => n !== undefined).map((n) => n.stop()));
    await nats?.stop();
  });

  it('cluster - a chain put by one client is matched and read back byte-identical by another, on exactly R owners', async () => {
    const chain = makeChain(8);
    assertAllAcknowledged(await clientA.put(chain), chain);
    const hashes = chain.map((b) => b.hash);
    const match = await clientB.matchPrefix(hashes);
    assert.equal(match.matchedBlocks, 8);
    assert.deepEqual(match.unreachable, []);
    const live = clientB.liveNodes();
    assert.deepEqual(live, NODE_IDS);
    for (const location of match.locations) {
      assert.equal(
        location.nodeIds.length,
        R,
        `block ${location.hash} holders ${location.nodeIds.join(',')}`,
      );
      assert.deepEqual(
        location.nodeIds,
        ownersOf(location.hash, live, R).sort(),
        'held by its rendezvous owners',
      );
      assert.equal(location.codec, 'f32');
      assert.equal(location.tier, 'dram');
    }
    const got = await clientB.get(hashes);
    got.forEach((block, i) => {
      assert.ok(block !== undefined, `block ${i} readable`);
      assert.deepEqual(Buffer.from(block.payload), Buffer.from(chain[i]!.payload));
      assert.deepEqual(block.tokenIds, chain[i]!.tokenIds);
      assert.equal(block.parentHash, chain[i]!.parentHash);
    });
  });

  it('cluster - identical puts deduplicate; the same tokens in another namespace are other blocks', async (t) => {
    const chain = makeChain(8);
    assertAllAcknowledged(await clientA.put(chain), chain);
    const before = (await clientB.stats()).totals;
    const again = await clientB.put(chain);
    assertAllAcknowledged(again, chain);
    assert.ok(
      again.outcomes.every((o) => o.acknowledged && o.deduplicated),
      'second put reports deduplicated',
    );
    const after = (await clientB.stats()).totals;
    assert.equal(after.blocks, before.blocks, 'no new copies');
    const deduplicated = after.deduplicated - before.deduplicated;
    assert.ok(deduplicated >= 8n, `deduplicated grew by ${deduplicated}`);
    t.diagnostic(`8 blocks put again: node dedup counters +${deduplicated}, stored blocks +0`);

    const tokens = new Uint32Array(chain.flatMap((b) => [...b.tokenIds]));
    const other = makeChain(8, { namespace: 'tenant-b', tokens });
    for (let i = 0; i < 8; i++) assert.notEqual(other[i]!.hash, chain[i]!.hash);
    assertAllAcknowledged(await clientA.put(other), other);
    assert.equal(
      (
        await clientB.matchPrefix(
          chain.map((b) => b.hash),
          'tenant-b',
        )
      ).matchedBlocks,
      0,
    );
    assert.deepEqual(await clientB.get([chain[0]!.hash, chain[7]!.hash], { namespace: 'tenant-b' }), [
      undefined,
      undefined,
    ]);
    assert.deepEqual(
      await clientB.get([other[0]!.hash]),
      [undefined],
      "tenant-b's block is not in the default namespace",
    );
    const [own] = await clientB.get([other[3]!.hash], { namespace: 'tenant-b' });
    assert.deepEqual(Buffer.from(own!.payload), Buffer.from(other[3]!.payload));
  });

  it('eviction - a small node evicts leaf-first in LRU order and spares pinned and leased blocks', async () => {
    const held = async (blocks: readonly ChainedBlock[]): Promise<string[]> => {
      const match = await evictClient.matchPrefix(blocks.map((b) => b.hash));
      const names = new Map(blocks.map((b, i) => [b.hash as string, i]));
      return match.locations.map((l) => names.get(l.hash)!).map((i) => label[i]!);
    };
    // c0 → c1 → c2 → c3, a branch d2 → d3 off c1, later a branch e1 → e4 off c0.
    const c = makeChain(4);
    const d = makeChain(2, { parentHash: c[1]!.hash });
    const e = makeChain(4, { parentHash: c[0]!.hash });
    const all = [...c, ...d, ...e];
    const label = ['c0', 'c1', 'c2', 'c3', 'd2', 'd3', 'e1', 'e2', 'e3', 'e4'];
    const name = (block: ChainedBlock): string => label[all.indexOf(block)]!;

    for (const block of [...c, ...d]) assertAllAcknowledged(await evictClient.put([block]), [block]);
    const stats = (await evictClient.stats()).nodes[0]!;
    assert.equal(stats.bytesUsed, BigInt(6 * BLOCK_CHARGE_BYTES), 'block charge as the budget assumes');
    assert.equal(stats.evictions, 0n);
    // Reading c3 makes it the most recently used leaf; d3 is now the least.
    await evictClient.get([c[3]!.hash]);

    const evicted: string[] = [];
    for (const block of e) {
      const before = await held(all);
      assertAllAcknowledged(await evictClient.put([block]), [block]);
      const after = await held(all);
      evicted.push(...before.filter((n) => !after.includes(n)));
      assert.ok(after.includes(name(block)));
    }
    // Leaves go first (d2 only after its child d3, c2 after c3); among leaves the least recently used.
    assert.deepEqual(evicted, ['d3', 'd2', 'c3', 'c2']);
    assert.deepEqual((await held(all)).sort(), ['c0', 'c1', 'e1', 'e2', 'e3', 'e4']);

    // Lease e4 (a read with leaseMs), then read c1: e4 is now the least recently used leaf.
    const [leased] = await evictClient.get([e[3]!.hash], { leaseMs: 60_000 });
    assert.ok(leased !== undefined);
    await evictClient.get([c[1]!.hash]);
    const [g0, h0] = [makeChain(1)[0]!, makeChain(1)[0]!];
    assertAllAcknowledged(await evictClient.put([g0]), [g0]);
    assert.deepEqual(
      (await held(all)).sort(),
      ['c0', 'e1', 'e2', 'e3', 'e4'],
      'c1 evicted, leased e4 spared',
    );

    // With g0 pinned nothing is evictable (e4 leased, the rest have children): the put is refused.
    assert.deepEqual((await evictClient.pin([g0.hash], { ttlMs: 60_000 })).pinned, [g0.hash]);
    const refused = await evictClient.put([h0]);
    assert.deepEqual(refused.acknowledged, []);
    assert.equal(refused.failed[0]?.error.kind, 'resource-exhausted', refused.failed[0]?.error.message);
    assert.deepEqual(await evictClient.get([g0.hash, h0.hash]).then((r) => r.map((b) => b?.hash)), [
      g0.hash,
      undefined,
    ]);
    assert.deepEqual(
      (await held(all)).sort(),
      ['c0', 'e1', 'e2', 'e3', 'e4'],
      'a refused put evicts nothing',
    );

    // Unpinned, g0 is the one block that may go.
    assert.equal((await evictClient.unpin([g0.hash])).unpinned, 1);
    assertAllAcknowledged(await evictClient.put([h0]), [h0]);
    assert.deepEqual(await evictClient.get([g0.hash, h0.hash]).then((r) => r.map((b) => b?.hash)), [
      undefined,
      h0.hash,
    ]);
    assert.deepEqual((await held(all)).sort(), ['c0', 'e1', 'e2', 'e3', 'e4']);
    assert.equal((await evictClient.stats()).nodes[0]!.evictions, 6n);
  });

  it('distattention - partial attention merged over 3 nodes equals single-process attention (f32 and kivi4)', async () => {
    for (const codec of ['f32', 'kivi4'] as const) {
      const chain = makeChain(12, { codec });
      assertAllAcknowledged(await clientA.put(chain), chain);
      const query = new Float32Array(4 * DIMS.headDim).map(() => Math.random() * 2 - 1);
      const args = { layer: 1, queryHeads: 4, headDim: DIMS.headDim, query };
      const result = await clientB.partialAttention({ ...args, hashes: chain.map((b) => b.hash) });
      const reference = await attendPayloads(kernels, { ...args, payloads: chain.map((b) => b.payload) });
      assert.equal(result.byNode.size, 3, `spread over ${[...result.byNode.keys()].join(',')}`);
      assert.equal([...result.byNode.values()].flat().length, 12);
      const error = relativeL2Error(result.o, reference.o);
      assert.ok(error <= 1e-5, `${codec}: relative L2 error ${error}`);
      assert.ok(relativeL2Error(result.l, reference.l) <= 1e-5, `${codec}: l`);
      assert.deepEqual(result.m, reference.m);
    }
  });

  it('faults - bad input gets typed errors and nothing acknowledged is lost', async () => {
    const good = makeChain(4);
    const [mismatch, unknownCodec, corrupt] = makeChain(3);
    const tampered = Uint32Array.from(mismatch!.tokenIds);
    tampered[0] = tampered[0]! + 1;
    const report = await clientA.put([
      good[0]!,
      { ...mismatch!, tokenIds: tampered },
      good[1]!,
      { ...unknownCodec!, payload: withCodecId(unknownCodec!.payload, 99) },
      good[2]!,
      { ...corrupt!, payload: withFlippedSectionByte(corrupt!.payload) },
      good[3]!,
    ]);
    assert.deepEqual(
      report.acknowledged,
      good.map((b) => b.hash),
    );
    const kinds = report.failed.map((f) => [f.index, f.error.kind]);
    assert.equal(
      kinds[0]?.[1],
      'invalid-argument',
      `hash/token mismatch: ${report.failed[0]?.error.message}`,
    );
    assert.ok(
      ['invalid-argument', 'data-loss'].includes(kinds[1]?.[1] as string),
      `unknown codec: ${kinds[1]?.[1]}`,
    );
    assert.equal(kinds[2]?.[1], 'data-loss', 'flipped section byte');
    assert.deepEqual(
      kinds.map((k) => k[0]),
      [1, 3, 5],
    );
    assert.ok(report.failed.every((f) => f.error instanceof KvmeshError));
    const got = await clientB.get(good.map((b) => b.hash));
    got.forEach((b, i) => assert.deepEqual(Buffer.from(b!.payload), Buffer.from(good[i]!.payload)));
    assert.deepEqual(await clientB.get([mismatch!.hash, unknownCodec!.hash, corrupt!.hash]), [
      undefined,
      undefined,
      undefined,
    ]);

    // Dims that do not match the blocks: refused by the nodes, not retried elsewhere.
    await assert.rejects(
      clientB.partialAttention({
        layer: 0,
        queryHeads: 4,
        headDim: 16,
        query: new Float32Array(64),
        hashes: [good[0]!.hash],
      }),
      (e: KvmeshError) => e.kind === 'invalid-argument',
    );
    await assert.rejects(
      clientB.partialAttention({
        layer: 7,
        queryHeads: 4,
        headDim: DIMS.headDim,
        query: new Float32Array(128),
        hashes: [good[0]!.hash],
      }),
      (e: KvmeshError) => e.kind === 'invalid-argument',
    );

    // A node whose every block is pinned refuses the next put with RESOURCE_EXHAUSTED and keeps them all.
    const fill = makeChain(EVICT_CAPACITY_BLOCKS + 2, { namespace: 'fill' });
    const pinned: ChainedBlock[] = [];
    let refusal: KvmeshError | undefined;
    for (const block of fill) {
      const r = await evictClient.put([block]);
      if (r.failed.length > 0) {
        refusal = r.failed[0]!.error;
        break;
      }
      pinned.push(block);
      assert.equal(
        (await evictClient.pin([block.hash], { namespace: 'fill', ttlMs: 60_000 })).pinned.length,
        1,
      );
    }
    assert.equal(refusal?.kind, 'resource-exhausted', `full node: ${refusal?.code} ${refusal?.message}`);
    assert.ok(pinned.length >= 1 && pinned.length <= EVICT_CAPACITY_BLOCKS);
    const stillThere = await evictClient.get(
      pinned.map((b) => b.hash),
      { namespace: 'fill' },
    );
    stillThere.forEach((b, i) => assert.deepEqual(Buffer.from(b!.payload), Buffer.from(pinned[i]!.payload)));
    await evictClient.unpin(
      pinned.map((b) => b.hash),
      { namespace: 'fill' },
    );
  });

  it('failover - kill -9 of a node under a put loop loses no acknowledged block; R copies come back', async (t) => {
    const writer = await connect();
    const acked = new Map<BlockHash, ChainedBlock>();
    let failedAfterDetection = 0;
    let detected = false;
    let stop = false;
    let putsAfterDetection = 0;
    const loop = (async () => {
      while (!stop) {
        const blocks = makeChain(2, { tokens: randomTokens(2 * DIMS.blockTokens) });
        const report = await writer.put(blocks);
        for (const hash of report.acknowledged)
          acked.set(
            hash,
            blocks.find((b) => b.hash === hash)!,
          );
        if (detected) {
          putsAfterDetection += report.acknowledged.length;
          failedAfterDetection += report.failed.length;
        }
      }
    })();
    await waitFor(() => acked.size >= 30, {
      timeoutMs: 20_000,
      message: '30 blocks acknowledged before the kill',
    });
    const victim = 'kv-1';
    const killedAtMs = Date.now();
    await nodes.get(victim)!.kill9();
    await waitFor(() => !writer.liveNodes().includes(victim as NodeId), {
      timeoutMs: 10_000,
      message: 'victim out',
    });
    const detectedMs = Date.now() - killedAtMs;
    detected = true;
    await waitFor(() => putsAfterDetection >= 20, {
      timeoutMs: 20_000,
      message: 'puts go on after detection',
    });
    stop = true;
    await loop;
    assert.equal(failedAfterDetection, 0, 'every put after detection is acknowledged');

    const hashes = [...acked.keys()];
    const ownedByVictim = hashes.filter((h) =>
      ownersOf(h, NODE_IDS as NodeId[], R).includes(victim as NodeId),
    );
    assert.ok(ownedByVictim.length > 0, 'some acknowledged blocks had a copy on the victim');
    let lastCounts = '';
    await waitFor(
      async () => {
        const match = await clientB.matchPrefix(hashes);
        const counts = match.locations.map((l) => l.nodeIds.length);
        lastCounts = `${match.locations.length}/${hashes.length} located, min copies ${Math.min(...counts)}`;
        return (
          match.unreachable.length === 0 &&
          match.locations.length === hashes.length &&
          counts.every((n) => n === R)
        );
      },
      { timeoutMs: 20_000, intervalMs: 100, message: `R copies of every acknowledged block (${lastCounts})` },
    );
    const rereplicatedMs = Date.now() - killedAtMs;
    const got = await clientB.get(hashes);
    got.forEach((b, i) =>
      assert.deepEqual(Buffer.from(b!.payload), Buffer.from(acked.get(hashes[i]!)!.payload)),
    );
    const counters = writer.counters();
    t.diagnostic(
      JSON.stringify({
        failover: {
          blocksAcknowledged: hashes.length,
          blocksOwnedByVictim: ownedByVictim.length,
          detectedMs,
          rereplicatedMs,
          putRetries: counters.putRetries,
          transportFailures: counters.transportFailures,
          putsFailed: counters.putsFailed,
        },
      }),
    );
  });
});

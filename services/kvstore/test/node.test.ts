// A standalone kvstore node in-process (startKvStoreNode, no NATS), driven through its real gRPC
// server with the generated client and through its real data channel: blocks come back
// byte-identical by either path, dedup and namespaces behave, and the probes (MatchPrefix, Stats,
// Pin/Unpin, OpenDataChannel, health) and DistAttention answer from what the node holds.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import { status as GrpcStatus } from '@grpc/grpc-js';
import { attendPayloads } from '@kvmesh/block';
import { DataChannelAuthError, PROTOCOL_VERSION, type DataChannelClient } from '@kvmesh/dataplane';
import {
  Codec,
  Tier,
  parseNamespace,
  type KvStoreClient,
  type MatchPrefixResponse,
  type OpenDataChannelResponse,
  type PartialAttentionResponse,
  type PinResponse,
  type StatsResponse,
  type UnpinResponse,
} from '@kvmesh/protocol';
import { checkHealth } from '@kvmesh/runtime';

import { kvStoreConfig, startKvStoreNode, type KvStoreNode } from '../src/index.ts';
import {
  DIMS,
  NS,
  chain,
  dataClient,
  dataGet,
  dataPut,
  getBlocks,
  grpcClient,
  hashBytes,
  hex,
  kernels,
  putBlocks,
  rejectsWith,
  unary,
} from './support.ts';

const TOKEN = 'test-cluster-secret';

describe('kvstore node - standalone, real gRPC and data channel', () => {
  let node: KvStoreNode;
  let client: KvStoreClient;
  let data: DataChannelClient;

  before(async () => {
    node = await startKvStoreNode(
      kvStoreConfig({ nodeId: 'kv-solo', bytesBudget: 8 * 1024 * 1024, dataToken: TOKEN, logLevel: 'error' }),
    );
    client = grpcClient(node.grpcAddress);
    data = await dataClient(node.dataAddress, TOKEN);
  });
  after(async () => {
    client?.close();
    await data?.close();
    await node?.close();
  });

  const stats = (): Promise<StatsResponse> => unary((cb) => client.stats({}, cb));
  const match = (hashes: Buffer[], namespace = ''): Promise<MatchPrefixResponse> =>
    unary((cb) => client.matchPrefix({ hashes, namespace }, cb));

  it('node - health is SERVING for the server and the KvStore service', async () => {
    assert.equal(await checkHealth(node.grpcAddress), 'SERVING');
    assert.equal(await checkHealth(node.grpcAddress, { service: 'kvmesh.v1.KvStore' }), 'SERVING');
    assert.equal(node.standalone, true);
    assert.equal(node.replicas, 1);
    assert.deepEqual(node.liveNodes(), ['kv-solo']);
  });

  it('node - OpenDataChannel hands out the address, token, version and block bound', async () => {
    const res = await unary<OpenDataChannelResponse>((cb) => client.openDataChannel({}, cb));
    assert.equal(res.address, node.dataAddress);
    assert.equal(res.token, TOKEN);
    assert.equal(res.protocolVersion, PROTOCOL_VERSION);
    assert.equal(res.blockBytesMax, BigInt(node.store.config.blockBytesMax));
    await assert.rejects(dataClient(node.dataAddress), DataChannelAuthError);
  });

  it('node - blocks put over gRPC come back byte-identical over gRPC and the data channel', async () => {
    const blocks = chain(3);
    const res = await putBlocks(client, blocks);
    assert.deepEqual(
      res.acknowledged.map(hex),
      blocks.map((b) => b.hash),
    );
    assert.equal(res.stored, 3);
    assert.equal(res.deduplicated, 0);

    const got = await getBlocks(client, { hashes: blocks.map((b) => hashBytes(b.hash)) });
    assert.equal(got.length, 3);
    got.forEach((r, i) => {
      const block = blocks[i]!;
      assert.equal(r.result?.$case, 'block');
      if (r.result?.$case !== 'block') return;
      assert.equal(hex(r.result.value.hash), block.hash);
      assert.equal(hex(r.result.value.parentHash), block.parentHash ?? '');
      assert.deepEqual(r.result.value.tokenIds, Array.from(block.tokenIds));
      assert.ok(Buffer.from(block.payload).equals(r.result.value.payload), `payload ${i} identical`);
      assert.equal(r.tier, Tier.TIER_DRAM);
    });

    const viaData = await dataGet(data, blocks[1]!.hash);
    assert.equal(viaData.response.result?.$case, 'block');
    assert.ok(Buffer.from(blocks[1]!.payload).equals(Buffer.from(viaData.body)));
  });

  it('node - blocks put over the data channel come back byte-identical over gRPC', async () => {
    const [block] = chain(1);
    const res = await dataPut(data, block!);
    assert.deepEqual(res.acknowledged.map(hex), [block!.hash]);
    assert.equal(res.stored, 1);
    const [got] = await getBlocks(client, { hashes: [hashBytes(block!.hash)], leaseMs: 1000 });
    assert.equal(got?.result?.$case, 'block');
    if (got?.result?.$case === 'block')
      assert.ok(Buffer.from(block!.payload).equals(got.result.value.payload));
  });

  it('node - a block put twice is stored once and counted as deduplicated', async () => {
    const blocks = chain(2);
    const before = await stats();
    await putBlocks(client, blocks);
    const again = await putBlocks(client, blocks);
    assert.equal(again.stored, 0);
    assert.equal(again.deduplicated, 2);
    const viaData = await dataPut(data, blocks[0]!);
    assert.equal(viaData.deduplicated, 1);
    const after = await stats();
    assert.equal(after.blocks - before.blocks, 2n);
    assert.equal(after.deduplicated - before.deduplicated, 3n);
  });

  it('node - namespaces never see each other’s blocks', async () => {
    const tenantA = parseNamespace('tenant-a');
    const blocks = chain(2, { namespace: tenantA });
    await putBlocks(client, blocks);
    const hashes = blocks.map((b) => hashBytes(b.hash));
    assert.equal((await match(hashes, 'tenant-a')).matchedBlocks, 2);
    assert.equal((await match(hashes, 'tenant-b')).matchedBlocks, 0);
    assert.equal((await match(hashes, '')).matchedBlocks, 0);
    const got = await getBlocks(client, { hashes, namespace: 'tenant-b' });
    assert.deepEqual(
      got.map((r) => r.result?.$case),
      ['missingHash', 'missingHash'],
    );
    const viaData = await dataGet(data, blocks[0]!.hash, NS);
    assert.equal(viaData.response.result?.$case, 'missingHash');
    assert.equal(viaData.body.length, 0);
  });

  it('node - MatchPrefix counts the leading held run and locates every held hash', async () => {
    const blocks = chain(4);
    await putBlocks(client, [blocks[0]!, blocks[1]!, blocks[3]!]);
    const res = await match(blocks.map((b) => hashBytes(b.hash)));
    assert.equal(res.matchedBlocks, 2);
    assert.deepEqual(
      res.locations.map((l) => hex(l.hash)),
      [blocks[0]!.hash, blocks[1]!.hash, blocks[3]!.hash],
    );
    for (const l of res.locations) {
      assert.deepEqual(l.nodeIds, ['kv-solo']);
      assert.equal(l.tier, Tier.TIER_DRAM);
      assert.equal(l.codec, Codec.CODEC_F32);
    }
    const missing = await getBlocks(client, { hashes: [hashBytes(blocks[2]!.hash)] });
    assert.equal(missing[0]?.result?.$case, 'missingHash');
  });

  it('node - Pin reports found and missing blocks; Unpin releases the holder’s pins', async () => {
    const blocks = chain(3);
    await putBlocks(client, blocks.slice(0, 2));
    const hashes = blocks.map((b) => hashBytes(b.hash));
    const pinned = await unary<PinResponse>((cb) =>
      client.pin({ hashes, namespace: '', ttlMs: 60_000, holder: 'session-1' }, cb),
    );
    assert.equal(pinned.pinned, 2);
    assert.deepEqual(pinned.missingHashes.map(hex), [blocks[2]!.hash]);
    assert.ok(node.store.stats().protectedBlocks >= 2);
    const unpinned = await unary<UnpinResponse>((cb) =>
      client.unpin({ hashes, namespace: '', holder: 'session-1' }, cb),
    );
    assert.equal(unpinned.unpinned, 2);
    const anonymous = await unary<PinResponse>((cb) =>
      client.pin({ hashes: hashes.slice(0, 1), namespace: '', ttlMs: 0, holder: '' }, cb),
    );
    assert.equal(anonymous.pinned, 1);
  });

  it('node - Stats reports the pool: node id, blocks, bytes, hits and misses', async () => {
    const before = await stats();
    const [block] = chain(1);
    await putBlocks(client, [block!]);
    await getBlocks(client, { hashes: [hashBytes(block!.hash), hashBytes(chain(1)[0]!.hash)] });
    const after = await stats();
    assert.equal(after.nodeId, 'kv-solo');
    assert.equal(after.blocks, before.blocks + 1n);
    assert.ok(after.bytesUsed > before.bytesUsed);
    assert.equal(after.bytesBudget, 8n * 1024n * 1024n);
    assert.equal(after.hits, before.hits + 1n);
    assert.equal(after.misses, before.misses + 1n);
    assert.equal(after.hitsByTier['dram'], (before.hitsByTier['dram'] ?? 0n) + 1n);
  });

  it('node - PartialAttention equals attendPayloads over the same payloads and lists missing blocks', async () => {
    const blocks = chain(3);
    await putBlocks(client, blocks);
    const absent = chain(1)[0]!;
    const queryHeads = 4;
    const query = Float32Array.from({ length: queryHeads * DIMS.headDim }, () => Math.random() * 2 - 1);
    const res = await unary<PartialAttentionResponse>((cb) =>
      client.partialAttention(
        {
          layer: 1,
          queryHeads,
          headDim: DIMS.headDim,
          query: Buffer.from(query.buffer),
          scale: 0,
          hashes: [blocks[0]!, absent, blocks[1]!, blocks[2]!].map((b) => hashBytes(b.hash)),
          namespace: '',
        },
        cb,
      ),
    );
    assert.equal(res.blocksUsed, 3);
    assert.deepEqual(res.missingHashes.map(hex), [absent.hash]);
    const expected = await attendPayloads(kernels, {
      layer: 1,
      queryHeads,
      headDim: DIMS.headDim,
      query,
      payloads: blocks.map((b) => b.payload),
    });
    const f32 = (b: Buffer): Float32Array => new Float32Array(new Uint8Array(b).buffer);
    for (const [name, got, want] of [
      ['o', f32(res.o), expected.o],
      ['m', f32(res.m), expected.m],
      ['l', f32(res.l), expected.l],
    ] as const) {
      assert.equal(got.length, want.length, `${name} length`);
      for (let i = 0; i < want.length; i++)
        assert.ok(Math.abs(got[i]! - want[i]!) <= 1e-6 * Math.max(1, Math.abs(want[i]!)), `${name}[${i}]`);
    }
    assert.ok(
      expected.l.every((v) => v > 0),
      'attention saw the tokens',
    );
  });

  it('node - PartialAttention rejects a bad shape with INVALID_ARGUMENT naming the field', async () => {
    const [block] = chain(1);
    await putBlocks(client, [block!]);
    const call = (over: Record<string, unknown>): Promise<unknown> =>
      unary((cb) =>
        client.partialAttention(
          {
            layer: 0,
            queryHeads: 2,
            headDim: DIMS.headDim,
            query: Buffer.alloc(2 * DIMS.headDim * 4),
            scale: 0,
            hashes: [hashBytes(block!.hash)],
            namespace: '',
            ...over,
          },
          cb,
        ),
      );
    await rejectsWith(call({ query: Buffer.alloc(12) }), GrpcStatus.INVALID_ARGUMENT, /query/);
    await rejectsWith(call({ queryHeads: 0 }), GrpcStatus.INVALID_ARGUMENT, /query_heads/);
    await rejectsWith(
      call({ queryHeads: 3, query: Buffer.alloc(3 * DIMS.headDim * 4) }),
      GrpcStatus.INVALID_ARGUMENT,
      /query_heads/,
    );
    await rejectsWith(
      call({ headDim: 16, query: Buffer.alloc(2 * 16 * 4) }),
      GrpcStatus.INVALID_ARGUMENT,
      /head_dim/,
    );
    await rejectsWith(call({ layer: DIMS.layers }), GrpcStatus.INVALID_ARGUMENT, /layer/);
  });
});

// Integration tests of the tiering service as a real process on loopback, over real gRPC (Demote,
// Read, Promote, Stats, LocateFar, health) and its data channel: far memory and its spill to SSD,
// read-keeps / promote-removes, per-tier stats, SSD blocks read again and again from reused read
// buffers and read-ahead windows, corruption in far memory caught before serving, the
// same-host mapped read path, restarts (the SSD tier survives, far memory is demoted to it at a clean
// shutdown and lost on a crash), bad input, and a full SSD that leaves far memory serving.
import assert from 'node:assert/strict';
import { after, before, describe, it, type TestContext } from 'node:test';

import { status as GrpcStatus, type ServiceError } from '@grpc/grpc-js';
import { DataChannelClient, parseDataAddress } from '@kvmesh/dataplane';
import { KvmeshError } from '@kvmesh/errors';
import { nativeMemory } from '@kvmesh/kernels';
import {
  Tier,
  blockHashFromBytes,
  blockHashToBytes,
  type DemoteRequest,
  type DemoteResponse,
  type OpenDataChannelResponse,
  type TierBlockResponse,
  type TieringClient,
} from '@kvmesh/protocol';
import { callUnary, checkHealth, fromGrpcError } from '@kvmesh/runtime';

import { FarMemoryReader } from '../src/adapters/client.ts';
import { TIERING_DATA_METHODS } from '../src/adapters/data-methods.ts';
import { blockOf } from '../src/adapters/wire.ts';
import { encodeRecordHead, type TierBlock } from '../src/core/index.ts';
import { SMALL_DIMS, kernels, makeBlock, startTiering, tempDir, type RunningTiering } from './support.ts';

function demote(client: TieringClient, messages: DemoteRequest[]): Promise<DemoteResponse> {
  return new Promise((resolve, reject) => {
    const call = client.demote((err: ServiceError | null, response?: DemoteResponse) => {
      if (err !== null) reject(fromGrpcError(err));
      else resolve(response as DemoteResponse);
    });
    call.on('error', () => undefined); // the status arrives through the callback
    for (const message of messages) call.write(message);
    call.end();
  });
}

const demoteBlocks = (
  client: TieringClient,
  blocks: readonly TierBlock[],
  target: Tier,
): Promise<DemoteResponse> =>
  demote(
    client,
    blocks.map((b) => ({ block: blockOf(b, true), target })),
  );

function collect(call: NodeJS.ReadableStream): Promise<TierBlockResponse[]> {
  return new Promise((resolve, reject) => {
    const out: TierBlockResponse[] = [];
    call.on('data', (m: TierBlockResponse) => out.push(m));
    call.on('end', () => resolve(out));
    call.on('error', (err: unknown) => reject(fromGrpcError(err)));
  });
}

const hashBytes = (b: TierBlock): Buffer => Buffer.from(blockHashToBytes(b.hash));
const read = (client: TieringClient, hashes: Buffer[]) => collect(client.read({ hashes }));
const promote = (client: TieringClient, hashes: Buffer[]) => collect(client.promote({ hashes }));

interface TierFigures {
  blocks: number;
  bytesUsed: number;
  bytesCapacity: number;
  reads: number;
  writes: number;
  checksumFailures: number;
}

async function stats(t: RunningTiering): Promise<{ far?: TierFigures; ssd?: TierFigures }> {
  const response = await t.client.stats();
  const out: { far?: TierFigures; ssd?: TierFigures } = {};
  for (const tier of response.tiers) {
    const figures: TierFigures = {
      blocks: Number(tier.blocks),
      bytesUsed: Number(tier.bytesUsed),
      bytesCapacity: Number(tier.bytesCapacity),
      reads: Number(tier.reads),
      writes: Number(tier.writes),
      checksumFailures: Number(tier.checksumFailures),
    };
    if (tier.tier === Tier.TIER_FAR) out.far = figures;
    if (tier.tier === Tier.TIER_SSD) out.ssd = figures;
  }
  return out;
}

function blockOfResponse(
  response: TierBlockResponse | undefined,
): { hash: string; payload: Buffer } | string {
  if (response?.result?.$case === 'block')
    return { hash: blockHashFromBytes(response.result.value.hash), payload: response.result.value.payload };
  if (response?.result?.$case === 'missingHash')
    return `missing ${blockHashFromBytes(response.result.value)}`;
  return 'nothing';
}

/** Far-memory bytes that hold exactly `n` records of the test blocks (64-byte aligned extents). */
function farBytesFor(n: number): number {
  return n * Math.ceil(encodeRecordHead(kernels, makeBlock(0)).recordBytes / 64) * 64;
}

/** Skips `context` when the pool cannot be mapped here (no native module); true if it did. */
function skippedWithoutMapping(context: TestContext): boolean {
  if (nativeMemory() !== null) return false;
  context.skip('no native module: the pool is not mappable');
  return true;
}

function rejectsWith(code: number, pattern?: RegExp) {
  return (err: unknown): boolean => {
    assert.ok(err instanceof KvmeshError, String(err));
    assert.equal(err.details['grpcCode'], code, `${err.code}: ${err.message}`);
    if (pattern !== undefined) assert.match(err.message, pattern);
    return true;
  };
}

describe('tiering service - far memory, SSD and the policy over gRPC', () => {
  const ssd = tempDir('tier-svc');
  let t: RunningTiering;
  before(async () => {
    t = await startTiering({
      KVMESH_SERVICE_ID: `tier-test-${process.pid}`,
      KVMESH_FAR_BYTES: String(farBytesFor(3)),
      KVMESH_SSD_DIR: ssd.dir,
      KVMESH_SSD_BYTES: '64MiB',
    });
  });
  after(async () => {
    await t.stop();
    ssd.remove();
  });

  it('tiering service - health is SERVING for the server and kvmesh.v1.Tiering', async () => {
    assert.equal(await checkHealth(t.info.grpcAddress), 'SERVING');
    assert.equal(await checkHealth(t.info.grpcAddress, { service: 'kvmesh.v1.Tiering' }), 'SERVING');
  });

  it('tiering service - demote to far, full far memory spills its coldest to SSD, read keeps, promote removes', async () => {
    const blocks = [1, 2, 3, 4, 5].map((i) => makeBlock(i));
    const [b1, b2, b3, b4, b5] = blocks as [TierBlock, TierBlock, TierBlock, TierBlock, TierBlock];
    const ack = await demoteBlocks(t.client.grpc, [b1, b2, b3], Tier.TIER_FAR);
    assert.deepEqual(
      ack.acknowledged.map((h) => blockHashFromBytes(h)),
      [b1.hash, b2.hash, b3.hash],
    );
    // Read 1: block 2 becomes the coldest, so the two demotes below push 2 then 3 to SSD.
    const [first] = await read(t.client.grpc, [hashBytes(b1)]);
    assert.equal(first?.tier, Tier.TIER_FAR);
    await demoteBlocks(t.client.grpc, [b4, b5], Tier.TIER_FAR);
    let s = await stats(t);
    assert.deepEqual(
      { far: s.far?.blocks, ssd: s.ssd?.blocks, farWrites: s.far?.writes, ssdWrites: s.ssd?.writes },
      { far: 3, ssd: 2, farWrites: 5, ssdWrites: 2 },
    );
    assert.equal(s.far?.bytesCapacity, farBytesFor(3));
    assert.equal(s.ssd?.bytesCapacity, 64 * 1024 * 1024);

    // Read streams every hash back in order, with its tier, and keeps the blocks.
    const missing = makeBlock(99);
    const answers = await read(t.client.grpc, [b2, b1, missing, b5].map(hashBytes));
    assert.deepEqual(
      answers.map((a) => a.tier),
      [Tier.TIER_SSD, Tier.TIER_FAR, Tier.TIER_UNSPECIFIED, Tier.TIER_FAR],
    );
    assert.deepEqual(blockOfResponse(answers[0]), { hash: b2.hash, payload: Buffer.from(b2.payload) });
    assert.deepEqual(blockOfResponse(answers[1]), { hash: b1.hash, payload: Buffer.from(b1.payload) });
    assert.equal(blockOfResponse(answers[2]), `missing ${missing.hash}`);
    const tokens = answers[3]?.result?.$case === 'block' ? answers[3].result.value.tokenIds : [];
    assert.deepEqual(tokens, Array.from(b5.tokenIds));
    s = await stats(t);
    assert.deepEqual({ far: s.far?.blocks, ssd: s.ssd?.blocks }, { far: 3, ssd: 2 });

    // Promote streams them back and removes them from their tier.
    const promoted = await promote(t.client.grpc, [b3, b4].map(hashBytes));
    assert.deepEqual(
      promoted.map((a) => [a.tier, blockOfResponse(a)]),
      [
        [Tier.TIER_SSD, { hash: b3.hash, payload: Buffer.from(b3.payload) }],
        [Tier.TIER_FAR, { hash: b4.hash, payload: Buffer.from(b4.payload) }],
      ],
    );
    const again = await promote(t.client.grpc, [b3, b4].map(hashBytes));
    assert.deepEqual(
      again.map((a) => blockOfResponse(a)),
      [`missing ${b3.hash}`, `missing ${b4.hash}`],
    );
    s = await stats(t);
    assert.deepEqual({ far: s.far?.blocks, ssd: s.ssd?.blocks }, { far: 2, ssd: 1 });
    await promote(t.client.grpc, [b1, b2, b5].map(hashBytes));
  });

  it('tiering service - demote straight to SSD and the data channel path round-trip', async () => {
    const [a, b] = [makeBlock(10), makeBlock(11)];
    await demoteBlocks(t.client.grpc, [a], Tier.TIER_SSD);
    await t.client.demote(b, 'far');
    const fromSsd = await t.client.read(a.hash);
    assert.equal(fromSsd?.tier, 'ssd');
    assert.deepEqual(fromSsd?.block, a);
    const fromFar = await t.client.promote(b.hash);
    assert.equal(fromFar?.tier, 'far');
    assert.deepEqual(fromFar?.block, b);
    assert.equal(await t.client.read(b.hash), null);
    assert.equal((await t.client.promote(a.hash))?.tier, 'ssd');
  });

  it('tiering service - a multi-hash Read / Promote of an SSD prefix answers every hash in order', async () => {
    const prefix = Array.from({ length: 40 }, (_, i) => makeBlock(300 + i));
    await demoteBlocks(t.client.grpc, prefix, Tier.TIER_SSD);
    const absent = makeBlock(399);
    const asked = [...prefix.slice(0, 20), absent, ...prefix.slice(20)];
    const got = await read(t.client.grpc, asked.map(hashBytes));
    assert.deepEqual(
      got.map(blockOfResponse),
      asked.map((b) =>
        b === absent ? `missing ${b.hash}` : { hash: b.hash, payload: Buffer.from(b.payload) },
      ),
    );
    // The data-channel batch: pipelined single-block reads, in order.
    const many = await t.client.readMany([absent.hash, ...prefix.map((b) => b.hash)], 8);
    assert.equal(many[0], null);
    assert.deepEqual(
      many.slice(1).map((r) => r?.block),
      prefix,
    );
    // Promote: each block leaves the SSD as it is sent; a hash asked twice is sent once.
    const first = prefix[0] as TierBlock;
    const promoted = await promote(t.client.grpc, [...prefix, first].map(hashBytes));
    assert.deepEqual(promoted.map(blockOfResponse), [
      ...prefix.map((b) => ({ hash: b.hash, payload: Buffer.from(b.payload) })),
      `missing ${first.hash}`,
    ]);
    assert.deepEqual(
      (await read(t.client.grpc, prefix.map(hashBytes))).map(blockOfResponse),
      prefix.map((b) => `missing ${b.hash}`),
    );
  });

  it('tiering service - SSD blocks read over and over through the data channel come back intact', async () => {
    // Sent straight from the SSD tier's read buffers, which are reused once the socket took them,
    // and mostly from read-ahead windows (the blocks lie back to back): a buffer handed back too
    // early would show here as another block's bytes.
    const dims = { ...SMALL_DIMS, kvHeads: 8, blockTokens: 32 };
    const blocks = Array.from({ length: 48 }, (_, i) => makeBlock(500 + i, dims));
    await demoteBlocks(t.client.grpc, blocks, Tier.TIER_SSD);
    for (let round = 0; round < 4; round++) {
      const got = await t.client.readMany(
        blocks.map((b) => b.hash),
        8,
      );
      assert.deepEqual(
        got.map((r) => [r?.tier, r?.block]),
        blocks.map((b) => ['ssd', b]),
        `round ${round}`,
      );
    }
    await promote(t.client.grpc, blocks.map(hashBytes));
  });

  it('tiering service - same-host readers map the pool and read verified payloads in place', async (context) => {
    if (skippedWithoutMapping(context)) return;
    const blocks = [20, 21].map((i) => makeBlock(i));
    await demoteBlocks(t.client.grpc, blocks, Tier.TIER_FAR);
    const reader = new FarMemoryReader(t.client, kernels);
    try {
      const result = await reader.read([...blocks.map((b) => b.hash), makeBlock(98).hash], {
        leaseMs: 2000,
        withMeta: true,
      });
      assert.deepEqual(
        result.hits.map((h) => [
          h.hash,
          Buffer.from(h.payload).equals(
            Buffer.from((blocks.find((b) => b.hash === h.hash) as TierBlock).payload),
          ),
        ]),
        blocks.map((b) => [b.hash, true]),
      );
      assert.deepEqual(result.missing, [makeBlock(98).hash]);
      assert.deepEqual(result.hits[0]?.meta?.tokenIds, blocks[0]?.tokenIds);
    } finally {
      reader.close();
    }
    await promote(t.client.grpc, blocks.map(hashBytes));
  });

  it('tiering service - with stageSsd, same-host readers reach SSD blocks through the staging area', async (context) => {
    if (skippedWithoutMapping(context)) return;
    const onSsd = [22, 23].map((i) => makeBlock(i));
    await demoteBlocks(t.client.grpc, onSsd, Tier.TIER_SSD);
    const reader = new FarMemoryReader(t.client, kernels);
    try {
      const hashes = [...onSsd.map((b) => b.hash), makeBlock(97).hash];
      const plain = await reader.read(hashes, { leaseMs: 50 });
      assert.deepEqual(plain.missing, hashes, 'without stageSsd, SSD blocks are not located');
      const staged = await reader.read(hashes, { leaseMs: 50, withMeta: true, stageSsd: true });
      assert.deepEqual(
        staged.hits.map((h) => [
          h.hash,
          h.tier,
          Buffer.from(h.payload).equals(Buffer.from(onSsd.find((b) => b.hash === h.hash)!.payload)),
          h.meta?.tokenIds,
        ]),
        onSsd.map((b) => [b.hash, 'ssd', true, b.tokenIds]),
      );
      assert.deepEqual([staged.missing, staged.unstaged, staged.corrupt], [[makeBlock(97).hash], [], []]);
      const ssdReads = (await stats(t)).ssd?.reads;
      const again = await reader.read(
        onSsd.map((b) => b.hash),
        { leaseMs: 50, stageSsd: true },
      );
      assert.equal(again.hits.length, 2);
      assert.equal((await stats(t)).ssd?.reads, ssdReads, 'the staged copies serve the second read');
      assert.equal((await t.client.read(onSsd[0]!.hash))?.tier, 'ssd', 'staging leaves the blocks on SSD');
    } finally {
      reader.close();
    }
    await promote(t.client.grpc, onSsd.map(hashBytes));
  });

  it('tiering service - a corrupt byte in far memory is detected: missing, counted, never served', async (context) => {
    const memory = nativeMemory();
    if (memory === null) {
      context.skip('no native module: the pool cannot be reached from the test');
      return;
    }
    const block = makeBlock(30);
    await t.client.demote(block, 'far');
    const located = await t.client.locateFar([block.hash], 1);
    const location = located.locations[0];
    assert.ok(location !== undefined);
    const pool = memory.mapSharedFile(located.poolPath, Number(located.poolBytes));
    try {
      const at = Number(location.payloadOffset) + Number(location.payloadBytes) - 17;
      const view = new Uint8Array(pool);
      view[at] = (view[at] as number) ^ 0x10;
    } finally {
      memory.unmap(pool);
    }
    const before = (await stats(t)).far?.checksumFailures ?? 0;
    const [answer] = await read(t.client.grpc, [hashBytes(block)]);
    assert.equal(blockOfResponse(answer), `missing ${block.hash}`);
    assert.equal((await stats(t)).far?.checksumFailures, before + 1);
    assert.equal(await t.client.read(block.hash), null, 'the corrupt block is gone');
  });

  it('tiering service - bad input is refused with a precise status and the service goes on', async () => {
    const block = makeBlock(40);
    const broken = Buffer.from(block.payload);
    broken[broken.length - 3] = (broken[broken.length - 3] as number) ^ 0xff;
    await assert.rejects(
      demote(t.client.grpc, [{ block: { ...blockOf(block, true), payload: broken }, target: Tier.TIER_FAR }]),
      rejectsWith(GrpcStatus.INVALID_ARGUMENT, /block 0 .*not a valid block payload/),
    );
    await assert.rejects(
      demoteBlocks(t.client.grpc, [block], Tier.TIER_DRAM),
      rejectsWith(GrpcStatus.INVALID_ARGUMENT, /TIER_FAR .* or TIER_SSD .*got TIER_DRAM/),
    );
    await assert.rejects(
      demote(t.client.grpc, [
        { block: { ...blockOf(block, true), hash: Buffer.alloc(5) }, target: Tier.TIER_FAR },
      ]),
      rejectsWith(GrpcStatus.INVALID_ARGUMENT, /block\.hash/),
    );
    await assert.rejects(
      demote(t.client.grpc, [{ block: undefined, target: Tier.TIER_FAR }]),
      rejectsWith(GrpcStatus.INVALID_ARGUMENT),
    );
    // The first good block of a stream stays acknowledged when a later one is bad.
    const good = makeBlock(41);
    await assert.rejects(
      demote(t.client.grpc, [
        { block: blockOf(good, true), target: Tier.TIER_FAR },
        { block: blockOf(block, true), target: Tier.TIER_UNSPECIFIED },
      ]),
      (err: unknown) => {
        assert.ok(err instanceof KvmeshError);
        assert.equal(err.details['acknowledged'], 1);
        return true;
      },
    );
    assert.equal((await t.client.read(good.hash))?.tier, 'far');
    await assert.rejects(
      collect(t.client.grpc.read({ hashes: [Buffer.alloc(3)] })),
      rejectsWith(GrpcStatus.INVALID_ARGUMENT),
    );
    assert.equal(
      blockOfResponse((await read(t.client.grpc, [hashBytes(block)]))[0]),
      `missing ${block.hash}`,
    );
    // A locateFar call on the data channel whose body is not a LocateFarRequest.
    const channel = await callUnary<OpenDataChannelResponse>((cb) => t.client.grpc.openDataChannel({}, cb));
    const address = parseDataAddress(channel.address);
    const data = await DataChannelClient.connect({ host: address.host, port: address.port });
    try {
      await assert.rejects(
        data.call(TIERING_DATA_METHODS.locateFar, new Uint8Array(0), Buffer.from([0x0a, 0x7f, 0x01])),
        (err: unknown) => {
          assert.ok(err instanceof KvmeshError, String(err));
          assert.equal(err.kind, 'invalid-argument');
          assert.match(err.message, /locateFar body is not a valid LocateFarRequest/);
          return true;
        },
      );
    } finally {
      await data.close();
    }
    assert.equal(await checkHealth(t.info.grpcAddress), 'SERVING');
    await t.client.promote(good.hash);
  });
});

describe('tiering service - limits and restarts', () => {
  it('tiering service - without the native module far memory is in-process, says so, and refuses LocateFar', async () => {
    const t = await startTiering({
      KVMESH_SERVICE_ID: `tier-nonative-${process.pid}`,
      KVMESH_FAR_BYTES: '1MiB',
      KVMESH_SSD_BYTES: '0',
      KVMESH_KERNELS_ADDON: '/nonexistent/kvmesh_kernels.node',
      KVMESH_REQUIRE_NATIVE: '0',
    });
    try {
      assert.match(
        t.info.far,
        /^in-process memory \(no native module: .*nonexistent.*\); same-host readers cannot map it$/,
      );
      const block = makeBlock(50);
      await t.client.demote(block, 'far');
      assert.deepEqual((await t.client.read(block.hash))?.block, block);
      // The same refusal over the data channel (what the client uses) and over gRPC.
      await assert.rejects(t.client.locateFar([block.hash]), (err: unknown) => {
        assert.ok(err instanceof KvmeshError, String(err));
        assert.equal(err.code, 'FAR_MEMORY_NOT_MAPPABLE');
        assert.match(err.message, /cannot map/);
        return true;
      });
      await assert.rejects(
        callUnary((cb) =>
          t.client.grpc.locateFar(
            { hashes: [hashBytes(block)], leaseMs: 0, withBlock: false, stageSsd: false },
            cb,
          ),
        ),
        rejectsWith(GrpcStatus.FAILED_PRECONDITION, /cannot map/),
      );
      assert.match(t.service.stderrTail(), /far memory: in-process memory/);
    } finally {
      await t.stop();
    }
  });

  it('tiering service - SSD blocks the staging area has no free room for come back unstaged', async (context) => {
    if (skippedWithoutMapping(context)) return;
    const ssd = tempDir('tier-stage');
    const t = await startTiering({
      KVMESH_SERVICE_ID: `tier-stage-${process.pid}`,
      KVMESH_FAR_BYTES: String(farBytesFor(1)),
      KVMESH_SSD_STAGE_BYTES: String(farBytesFor(2)),
      KVMESH_SSD_DIR: ssd.dir,
      KVMESH_SSD_BYTES: '16MiB',
    });
    const reader = new FarMemoryReader(t.client, kernels);
    try {
      const blocks = [60, 61, 62].map((i) => makeBlock(i));
      await t.client.demote(blocks[0]!, 'ssd');
      await t.client.demote(blocks[1]!, 'ssd');
      await t.client.demote(blocks[2]!, 'ssd');
      const first = await reader.read(
        blocks.map((b) => b.hash),
        { leaseMs: 60_000, stageSsd: true },
      );
      // Room for two: whichever read finished last finds both extents leased.
      assert.deepEqual([first.hits.length, first.unstaged.length], [2, 1]);
      assert.deepEqual(
        [...first.hits.map((h) => h.hash), ...first.unstaged].sort(),
        blocks.map((b) => b.hash).sort(),
      );
      const unstaged = blocks.find((b) => b.hash === first.unstaged[0])!;
      // Unstaged is not lost: the block reads over the data channel, and is still held on SSD.
      assert.deepEqual((await t.client.read(unstaged.hash))?.block, unstaged);
    } finally {
      reader.close();
      await t.stop();
      ssd.remove();
    }
  });

  it('tiering service - an oversized block and too many hashes are RESOURCE_EXHAUSTED', async () => {
    const ssd = tempDir('tier-limits');
    const t = await startTiering({
      KVMESH_SERVICE_ID: `tier-limits-${process.pid}`,
      KVMESH_FAR_BYTES: '1MiB',
      KVMESH_SSD_DIR: ssd.dir,
      KVMESH_SSD_BYTES: '16MiB',
      KVMESH_BLOCK_BYTES_MAX: '4KiB',
      KVMESH_HASHES_PER_REQUEST_MAX: '4',
    });
    try {
      await assert.rejects(
        demoteBlocks(t.client.grpc, [makeBlock(1)], Tier.TIER_FAR),
        rejectsWith(GrpcStatus.RESOURCE_EXHAUSTED, /exceeds blockBytesMax 4096/),
      );
      const five = [1, 2, 3, 4, 5].map((i) => hashBytes(makeBlock(i)));
      await assert.rejects(
        read(t.client.grpc, five),
        rejectsWith(GrpcStatus.RESOURCE_EXHAUSTED, /limit is 4/),
      );
    } finally {
      await t.stop();
      ssd.remove();
    }
  });

  it('tiering service - a block the SSD cannot hold is a clear RESOURCE_EXHAUSTED and far memory keeps serving', async () => {
    const ssd = tempDir('tier-disk-full');
    const t = await startTiering({
      KVMESH_SERVICE_ID: `tier-full-${process.pid}`,
      KVMESH_FAR_BYTES: String(farBytesFor(2)),
      KVMESH_SSD_DIR: ssd.dir,
      // One 4 KiB-aligned record of a test block is ~12 KiB: the SSD holds none, evicting cannot help.
      KVMESH_SSD_BYTES: '8KiB',
    });
    try {
      const [a, b, c, d] = [1, 2, 3, 4].map((i) => makeBlock(i)) as [
        TierBlock,
        TierBlock,
        TierBlock,
        TierBlock,
      ];
      await assert.rejects(
        demoteBlocks(t.client.grpc, [a], Tier.TIER_SSD),
        rejectsWith(GrpcStatus.RESOURCE_EXHAUSTED, /SSD tier full/),
      );
      await demoteBlocks(t.client.grpc, [b, c], Tier.TIER_FAR);
      // Far memory is full and its coldest block cannot go to SSD: the new block is refused, by name.
      await assert.rejects(
        demoteBlocks(t.client.grpc, [d], Tier.TIER_FAR),
        rejectsWith(GrpcStatus.RESOURCE_EXHAUSTED, /far memory full.*SSD tier full/),
      );
      const answers = await read(t.client.grpc, [a, b, c, d].map(hashBytes));
      assert.deepEqual(
        answers.map((x) => x.tier),
        [Tier.TIER_UNSPECIFIED, Tier.TIER_FAR, Tier.TIER_FAR, Tier.TIER_UNSPECIFIED],
      );
      assert.equal(await checkHealth(t.info.grpcAddress), 'SERVING');
    } finally {
      await t.stop();
      ssd.remove();
    }
  });

  it('tiering service - a full SSD evicts its coldest block for a demote or a spill; evicted blocks read missing', async () => {
    const ssd = tempDir('tier-ssd-evict');
    const t = await startTiering({
      KVMESH_SERVICE_ID: `tier-evict-${process.pid}`,
      KVMESH_FAR_BYTES: String(farBytesFor(2)),
      KVMESH_SSD_DIR: ssd.dir,
      // Room for one record of a test block: each new one evicts the last.
      KVMESH_SSD_BYTES: '20KiB',
      KVMESH_SSD_COMPACT_INTERVAL_MS: '0',
    });
    try {
      const [a, b, c, d, e] = [1, 2, 3, 4, 5].map((i) => makeBlock(300 + i)) as [
        TierBlock,
        TierBlock,
        TierBlock,
        TierBlock,
        TierBlock,
      ];
      await demoteBlocks(t.client.grpc, [a], Tier.TIER_SSD);
      await demoteBlocks(t.client.grpc, [b], Tier.TIER_SSD);
      await demoteBlocks(t.client.grpc, [c, d], Tier.TIER_FAR);
      // Far memory is full: its coldest blocks spill to SSD (c, and d as well when c's extent is not
      // reusable yet), each evicting the SSD's one block for it.
      await demoteBlocks(t.client.grpc, [e], Tier.TIER_FAR);
      const answers = (await read(t.client.grpc, [a, b, c, d, e].map(hashBytes))).map((x) => x.tier);
      assert.deepEqual(answers.slice(0, 2), [Tier.TIER_UNSPECIFIED, Tier.TIER_UNSPECIFIED]);
      assert.equal(answers.slice(2, 4).filter((tier) => tier === Tier.TIER_SSD).length, 1);
      assert.equal(answers[4], Tier.TIER_FAR);
      assert.equal(Number((await stats(t)).ssd?.blocks), 1);
    } finally {
      await t.stop();
      ssd.remove();
    }
  });

  it('tiering service - an SSD tier full of removed blocks compacts and takes the next block', async () => {
    const ssd = tempDir('tier-compact');
    const t = await startTiering({
      KVMESH_SERVICE_ID: `tier-compact-${process.pid}`,
      KVMESH_FAR_BYTES: '0',
      KVMESH_SSD_DIR: ssd.dir,
      // Room for one record of a test block; only compaction makes room for the next.
      KVMESH_SSD_BYTES: '20KiB',
      KVMESH_SSD_COMPACT_INTERVAL_MS: '0',
    });
    try {
      const blocks = [1, 2, 3].map((i) => makeBlock(100 + i));
      for (const block of blocks) {
        await demoteBlocks(t.client.grpc, [block], Tier.TIER_SSD);
        // Promote takes it back out of the tier: its record is dead space until compaction.
        const [back] = await promote(t.client.grpc, [hashBytes(block)]);
        assert.equal(back?.tier, Tier.TIER_SSD);
      }
      const last = makeBlock(200);
      await demoteBlocks(t.client.grpc, [last], Tier.TIER_SSD);
      const [got] = await read(t.client.grpc, [hashBytes(last)]);
      assert.equal(got?.tier, Tier.TIER_SSD);
      assert.equal(Number((await stats(t)).ssd?.blocks), 1);
    } finally {
      await t.stop();
      ssd.remove();
    }
  });

  it('tiering service - restart: SSD contents survive; far memory is demoted to SSD at a clean stop, lost on a crash', async () => {
    const ssd = tempDir('tier-restart');
    const env = {
      KVMESH_SERVICE_ID: `tier-restart-${process.pid}`,
      KVMESH_FAR_BYTES: '1MiB',
      KVMESH_SSD_DIR: ssd.dir,
      KVMESH_SSD_BYTES: '16MiB',
    };
    const [onSsd, onFar, crashSsd, crashFar] = [1, 2, 3, 4].map((i) => makeBlock(i)) as [
      TierBlock,
      TierBlock,
      TierBlock,
      TierBlock,
    ];
    try {
      let t = await startTiering(env);
      await demoteBlocks(t.client.grpc, [onSsd], Tier.TIER_SSD);
      await demoteBlocks(t.client.grpc, [onFar], Tier.TIER_FAR);
      await t.stop(); // SIGTERM: far memory goes to SSD
      t = await startTiering(env);
      let answers = await read(t.client.grpc, [onSsd, onFar].map(hashBytes));
      assert.deepEqual(
        answers.map((a) => [a.tier, blockOfResponse(a)]),
        [
          [Tier.TIER_SSD, { hash: onSsd.hash, payload: Buffer.from(onSsd.payload) }],
          [Tier.TIER_SSD, { hash: onFar.hash, payload: Buffer.from(onFar.payload) }],
        ],
      );
      await demoteBlocks(t.client.grpc, [crashSsd], Tier.TIER_SSD);
      await demoteBlocks(t.client.grpc, [crashFar], Tier.TIER_FAR);
      await t.client.close();
      await t.service.kill9();
      t = await startTiering(env);
      answers = await read(t.client.grpc, [crashSsd, crashFar].map(hashBytes));
      // An acknowledged SSD demote survives a crash; far memory is volatile (documented).
      assert.deepEqual(
        answers.map((a) => blockOfResponse(a)),
        [{ hash: crashSsd.hash, payload: Buffer.from(crashSsd.payload) }, `missing ${crashFar.hash}`],
      );
      await t.stop();
    } finally {
      ssd.remove();
    }
  });
});

// Unit tests of the tiering policy over a plain byte region and an in-memory SSD tier (the core
// takes both injected): demote / read / promote per tier, LRU demotion of far memory to SSD in exact
// order, corruption in far memory detected and dropped, a refusing SSD leaving far memory serving,
// bad blocks refused before anything is written, and a full SSD evicting its coldest blocks (in exact
// order, never one being read) to take new ones.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { InvalidArgumentError, LimitExceededError } from '@kvmesh/errors';

const SsdFullError = LimitExceededError;
import type { BlockHash } from '@kvmesh/protocol';

import {
  FarMemoryFullError,
  FarPool,
  TierPolicy,
  TierUnavailableError,
  encodeRecordHead,
  type LentBytes,
  type SsdTier,
  type TierBlock,
} from '../src/core/index.ts';
import { kernels, makeBlock } from './support.ts';

/** An SSD tier in memory: what the policy relies on (append durable on resolve, bounded bytes). */
class MemorySsd implements SsdTier {
  readonly records = new Map<BlockHash, Uint8Array>();
  writes = 0;
  reads = 0;
  /** Blocks removed, in order. */
  readonly removed: BlockHash[] = [];
  /** While set, reads wait for it (a read in flight). */
  readGate: Promise<void> | null = null;
  constructor(private readonly bytesCapacity = Number.MAX_SAFE_INTEGER) {}
  private get bytesUsed(): number {
    let used = 0;
    for (const r of this.records.values()) used += r.length;
    return used;
  }
  append(hash: BlockHash, payload: Uint8Array): Promise<void> {
    if (this.bytesUsed + payload.length > this.bytesCapacity)
      return Promise.reject(
        new SsdFullError('ssd full', { bytesNeeded: payload.length, bytesCapacity: this.bytesCapacity }),
      );
    this.records.set(hash, payload.slice());
    this.writes++;
    return Promise.resolve();
  }
  /** Reads lent and not yet released. */
  lent = 0;
  async read(hash: BlockHash): Promise<LentBytes | null> {
    this.reads++;
    await this.readGate;
    const record = this.records.get(hash);
    if (record === undefined) return null;
    this.lent++;
    let released = false;
    const release = (): void => {
      assert.ok(!released, 'lent bytes are released once');
      released = true;
      this.lent--;
    };
    return { payload: record.slice(), release };
  }
  remove(hash: BlockHash): Promise<boolean> {
    if (this.records.has(hash)) this.removed.push(hash);
    return Promise.resolve(this.records.delete(hash));
  }
  has(hash: BlockHash): boolean {
    return this.records.has(hash);
  }
  hashes(): Iterable<BlockHash> {
    return this.records.keys();
  }
  stats() {
    return {
      blocks: this.records.size,
      bytesUsed: this.bytesUsed,
      bytesLive: this.bytesUsed,
      bytesCapacity: this.bytesCapacity,
      reads: this.reads,
      writes: this.writes,
      checksumFailures: 0,
    };
  }
}

const recordBytes = (i: number): number => encodeRecordHead(kernels, makeBlock(i)).recordBytes;

function setup(farBlocks: number, ssd: MemorySsd | null = new MemorySsd()) {
  const extent = Math.ceil(recordBytes(0) / 64) * 64;
  const region = new Uint8Array(farBlocks * extent);
  const pool = new FarPool({ bytesCapacity: region.length, blocksMax: 1000, alignBytes: 64 }, () => 0);
  const policy = new TierPolicy({
    kernels,
    far: { region, pool },
    ssd,
    blockBytesMax: 1 << 20,
    leaseMsMax: 1000,
  });
  return { policy, pool, region, ssd };
}

describe('tier policy - demote, read, promote', () => {
  it('tier policy - far memory keeps on read and gives up on promote; payload and identity round-trip', async () => {
    const { policy } = setup(4);
    const block = makeBlock(1);
    assert.equal(await policy.demote(block, 'far'), 'stored');
    assert.equal(await policy.demote(block, 'far'), 'held');
    const read = await policy.read(block.hash);
    assert.equal(read?.tier, 'far');
    assert.deepEqual(read?.block, block);
    const promoted = await policy.promote(block.hash);
    assert.deepEqual(promoted?.block.payload, block.payload);
    assert.equal(await policy.read(block.hash), undefined);
    assert.deepEqual(
      policy.stats().map((s) => [s.tier, s.blocks, s.reads, s.writes]),
      [
        ['far', 0, 2, 1],
        ['ssd', 0, 0, 0],
      ],
    );
  });

  it('tier policy - full far memory demotes its least recently used blocks to SSD, in LRU order', async () => {
    const { policy, ssd } = setup(3);
    const [b1, b2, b3, b4, b5] = [1, 2, 3, 4, 5].map((i) => makeBlock(i)) as [
      TierBlock,
      TierBlock,
      TierBlock,
      TierBlock,
      TierBlock,
    ];
    for (const b of [b1, b2, b3]) await policy.demote(b, 'far');
    await policy.read(b1.hash); // 1 becomes the most recent: 2 is now the coldest
    await policy.demote(b4, 'far');
    await policy.demote(b5, 'far');
    assert.deepEqual([...ssd!.records.keys()], [b2.hash, b3.hash]);
    assert.equal(policy.where(b1.hash), 'far');
    assert.equal(policy.spills, 2);
    // Blocks demoted to SSD read back intact from there.
    const fromSsd = await policy.read(b2.hash);
    assert.equal(fromSsd?.tier, 'ssd');
    assert.deepEqual(fromSsd?.block, b2);
    assert.equal((await policy.promote(b3.hash))?.tier, 'ssd');
    assert.equal(ssd!.has(b3.hash), false);
  });

  it('tier policy - an SSD hit holds the lent bytes until releasePayload; a record failing its checks is released at once', async () => {
    const { policy, ssd } = setup(2);
    const [good, bad] = [makeBlock(21), makeBlock(22)] as [TierBlock, TierBlock];
    await policy.demote(good, 'ssd');
    await policy.demote(bad, 'ssd');
    const hit = await policy.read(good.hash);
    assert.deepEqual(hit?.block, good);
    assert.equal(ssd!.lent, 1, 'the payload is a view of the lent bytes while the hit is held');
    hit?.releasePayload();
    assert.equal(ssd!.lent, 0);
    // A flipped byte in the record head: the policy's own check fails, the block is dropped.
    const record = ssd!.records.get(bad.hash)!;
    record[30] = (record[30] as number) ^ 0x01;
    assert.equal(await policy.read(bad.hash), undefined);
    assert.equal(ssd!.lent, 0, 'bytes that are not served are released');
    assert.equal(ssd!.has(bad.hash), false);
    assert.equal(policy.stats().find((s) => s.tier === 'ssd')?.checksumFailures, 1);
  });

  it('tier policy - a flipped byte in far memory is detected: block dropped, reported missing, counted', async () => {
    const { policy, pool, region } = setup(2);
    const block = makeBlock(7);
    await policy.demote(block, 'far');
    const entry = pool.get(block.hash)!;
    const at = entry.offset + entry.bytes - 100; // inside the payload's last section
    region[at] = (region[at] as number) ^ 0x01;
    assert.equal(await policy.read(block.hash), undefined);
    assert.equal(policy.where(block.hash), undefined);
    assert.equal(policy.stats()[0]?.checksumFailures, 1);
  });

  it('tier policy - when the SSD refuses, the new block is refused and far memory keeps serving', async () => {
    const { policy } = setup(2, new MemorySsd(100));
    const [a, b, c] = [makeBlock(1), makeBlock(2), makeBlock(3)];
    await policy.demote(a, 'far');
    await policy.demote(b, 'far');
    await assert.rejects(policy.demote(c, 'far'), (err: unknown) => {
      assert.ok(err instanceof FarMemoryFullError);
      assert.match(err.message, /demoting cold block .* to SSD failed: ssd full/);
      return true;
    });
    assert.deepEqual((await policy.read(a.hash))?.block, a);
    assert.deepEqual((await policy.read(b.hash))?.block, b);
    await assert.rejects(policy.demote(c, 'ssd'), SsdFullError);
  });

  it('tier policy - without an SSD tier a full far memory is a clear refusal, and SSD demotes are unavailable', async () => {
    const { policy } = setup(1, null);
    await policy.demote(makeBlock(1), 'far');
    await assert.rejects(policy.demote(makeBlock(2), 'far'), /no SSD tier/);
    await assert.rejects(policy.demote(makeBlock(3), 'ssd'), TierUnavailableError);
  });

  it('tier policy - malformed and oversized blocks are refused before anything is stored', async () => {
    const { policy } = setup(4);
    const block = makeBlock(1);
    const broken = block.payload.slice();
    broken[broken.length - 1] = (broken[broken.length - 1] as number) ^ 0xff;
    await assert.rejects(policy.demote({ ...block, payload: broken }, 'far'), InvalidArgumentError);
    await assert.rejects(
      policy.demote({ ...block, payload: new Uint8Array(10) }, 'ssd'),
      InvalidArgumentError,
    );
    const small = new TierPolicy({
      kernels,
      far: null,
      ssd: new MemorySsd(),
      blockBytesMax: 1024,
      leaseMsMax: 0,
    });
    await assert.rejects(small.demote(block, 'ssd'), LimitExceededError);
    assert.equal(policy.where(block.hash), undefined);
  });

  it('tier policy - drainFarToSsd moves every far block to SSD, coldest first', async () => {
    const { policy, ssd } = setup(4);
    const blocks = [3, 1, 2].map((i) => makeBlock(i));
    for (const b of blocks) await policy.demote(b, 'far');
    assert.equal(await policy.drainFarToSsd(), 3);
    assert.deepEqual(
      [...ssd!.records.keys()],
      blocks.map((b) => b.hash),
    );
    for (const b of blocks) assert.equal(policy.where(b.hash), 'ssd');
  });
});

describe('tier policy - SSD eviction', () => {
  it('tier policy - a full SSD evicts its least recently appended or read blocks, in order', async () => {
    const ssd = new MemorySsd(3 * recordBytes(0));
    const { policy } = setup(1, ssd);
    const b = Array.from({ length: 7 }, (_, i) => makeBlock(i));
    for (const block of b.slice(0, 3)) assert.equal(await policy.demote(block, 'ssd'), 'stored');
    assert.ok((await policy.read(b[0]!.hash)) !== undefined); // recency now 1, 2, 0
    assert.equal(await policy.demote(b[3]!, 'ssd'), 'stored');
    assert.equal(await policy.demote(b[4]!, 'ssd'), 'stored');
    assert.deepEqual(ssd.removed, [b[1]!.hash, b[2]!.hash]);
    assert.equal(policy.ssdEvictions, 2);
    assert.equal(await policy.read(b[1]!.hash), undefined, 'an evicted block is missing');
    assert.deepEqual((await policy.read(b[0]!.hash))?.block, b[0]);

    // A block being read is passed over: 3 is the coldest, 4 goes instead.
    let open = (): void => undefined;
    ssd.readGate = new Promise((resolve) => {
      open = resolve;
    });
    const reading = policy.read(b[3]!.hash);
    assert.equal(await policy.demote(b[5]!, 'ssd'), 'stored');
    open();
    ssd.readGate = null;
    assert.deepEqual((await reading)?.block, b[3]);
    assert.deepEqual(ssd.removed.slice(2), [b[4]!.hash]);
    assert.equal(policy.ssdEvictions, 3);
    assert.deepEqual(new Set(ssd.records.keys()), new Set([b[0]!.hash, b[3]!.hash, b[5]!.hash]));
  });

  it('tier policy - blocks the SSD held before the policy started are evicted first', async () => {
    const ssd = new MemorySsd(2 * recordBytes(0));
    const { policy: before } = setup(1, ssd);
    const [old, kept, fresh] = [makeBlock(1), makeBlock(2), makeBlock(3)];
    await before.demote(old, 'ssd');
    await before.demote(kept, 'ssd');
    const { policy } = setup(1, ssd); // a restart: the new policy learns the SSD's blocks
    assert.ok((await policy.read(kept.hash)) !== undefined);
    assert.equal(await policy.demote(fresh, 'ssd'), 'stored');
    assert.deepEqual(ssd.removed, [old.hash]);
    assert.equal(await policy.read(old.hash), undefined);
  });
});

describe('tier policy - staging SSD blocks for same-host readers', () => {
  /** Far memory and the staging area back to back in one region, as the service maps them. */
  function stagedSetup(farBlocks: number, stageBlocks: number) {
    const extent = Math.ceil(recordBytes(0) / 64) * 64;
    const mapping = new Uint8Array((farBlocks + stageBlocks) * extent);
    const farBytes = farBlocks * extent;
    const clock = { ms: 0 };
    const now = (): number => clock.ms;
    const ssd = new MemorySsd();
    const stage = {
      region: mapping.subarray(farBytes),
      offset: farBytes,
      pool: new FarPool({ bytesCapacity: stageBlocks * extent, blocksMax: 1000, alignBytes: 64 }, now),
    };
    const policy = new TierPolicy({
      kernels,
      far: {
        region: mapping.subarray(0, farBytes),
        pool: new FarPool({ bytesCapacity: farBytes, blocksMax: 1000, alignBytes: 64 }, now),
      },
      ssd,
      stage,
      blockBytesMax: 1 << 20,
      leaseMsMax: 1000,
    });
    const payloadAt = (location: { payloadOffset: number; payloadBytes: number }): Uint8Array =>
      mapping.subarray(location.payloadOffset, location.payloadOffset + location.payloadBytes);
    const ssdStats = () => policy.stats().find((s) => s.tier === 'ssd');
    return { policy, ssd, stage, mapping, farBytes, clock, payloadAt, ssdStats };
  }

  it('tier policy - an SSD block is copied after the far pool and leased; the copy serves the next stage without a read', async () => {
    const { policy, ssd, farBytes, payloadAt, ssdStats } = stagedSetup(2, 2);
    const [inFar, onSsd] = [makeBlock(31), makeBlock(32)] as [TierBlock, TierBlock];
    await policy.demote(inFar, 'far');
    await policy.demote(onSsd, 'ssd');

    const far = await policy.stage(inFar.hash, 10);
    assert.ok(far !== undefined && far !== 'unstaged');
    assert.equal(far.tier, 'far');
    assert.ok(far.payloadOffset < farBytes);
    assert.deepEqual(payloadAt(far), inFar.payload);

    const staged = await policy.stage(onSsd.hash, 10, true);
    assert.ok(staged !== undefined && staged !== 'unstaged');
    assert.equal(staged.tier, 'ssd');
    assert.ok(staged.payloadOffset >= farBytes, 'staged copies lie after the far pool');
    assert.deepEqual(payloadAt(staged), onSsd.payload);
    const { payload: _payload, ...meta } = onSsd;
    assert.deepEqual(staged.meta, meta);
    assert.equal(ssd.lent, 0, 'the SSD read buffer is released once copied');
    assert.equal(ssd.reads, 1);

    const again = await policy.stage(onSsd.hash, 10);
    assert.ok(again !== undefined && again !== 'unstaged');
    assert.equal(again.payloadOffset, staged.payloadOffset);
    assert.equal(ssd.reads, 1, 'a staged copy is located without reading the SSD again');
    assert.equal(policy.where(onSsd.hash), 'ssd', 'staging does not move the block between tiers');
    assert.equal(await policy.stage(makeBlock(39).hash, 10), undefined);
    assert.deepEqual([ssdStats()?.staged, ssdStats()?.stageHits], [1, 1]);
  });

  it('tier policy - leased copies are never reused (unstaged); unleased ones are, least recently used first', async () => {
    const { policy, ssd, clock, payloadAt } = stagedSetup(1, 2);
    const [b1, b2, b3] = [41, 42, 43].map((i) => makeBlock(i)) as [TierBlock, TierBlock, TierBlock];
    for (const b of [b1, b2, b3]) await policy.demote(b, 'ssd');
    await policy.stage(b1.hash, 100);
    await policy.stage(b2.hash, 100);
    assert.equal(await policy.stage(b3.hash, 100), 'unstaged');
    assert.equal(ssd.lent, 0);
    assert.equal(policy.where(b3.hash), 'ssd', 'an unstaged block is still held');

    clock.ms = 150; // both leases ended: b1 is the least recently used copy
    await policy.stage(b2.hash, 100);
    const third = await policy.stage(b3.hash, 100);
    assert.ok(third !== undefined && third !== 'unstaged');
    assert.deepEqual(payloadAt(third), b3.payload);
    const reads = ssd.reads;
    await policy.stage(b2.hash, 100);
    assert.equal(ssd.reads, reads, 'b2 kept its copy');
    await policy.stage(b1.hash, 100);
    assert.equal(ssd.reads, reads + 1, 'b1 lost its copy and is read again');
  });

  it('tier policy - a copy never outlives its SSD block, and a damaged copy is dropped and read again', async () => {
    const { policy, ssd, stage, mapping, clock, payloadAt, ssdStats } = stagedSetup(1, 4);
    const [promoted, dropped, damaged, raced] = [51, 52, 53, 54].map((i) => makeBlock(i)) as TierBlock[];
    for (const b of [promoted, dropped, damaged, raced]) await policy.demote(b as TierBlock, 'ssd');
    for (const b of [promoted, dropped, damaged]) await policy.stage((b as TierBlock).hash, 10);

    (await policy.promote(promoted!.hash))?.releasePayload();
    assert.equal(stage.pool.has(promoted!.hash), false, 'promotion drops the copy');
    assert.equal(await policy.stage(promoted!.hash, 10), undefined);

    ssd.records.delete(dropped!.hash); // the SSD tier lost it on its own
    assert.equal(await policy.stage(dropped!.hash, 10), undefined);
    assert.equal(stage.pool.has(dropped!.hash), false);

    const entry = stage.pool.get(damaged!.hash)!;
    const at = stage.offset + entry.offset + 30;
    mapping[at] = (mapping[at] as number) ^ 0x01;
    const reads = ssd.reads;
    const reread = await policy.stage(damaged!.hash, 10, true);
    assert.ok(reread !== undefined && reread !== 'unstaged');
    assert.deepEqual(payloadAt(reread), damaged!.payload);
    assert.equal(ssd.reads, reads + 1, 'the damaged copy was replaced by a fresh read');

    // Two readers staging the same block at once get one copy (once the dropped copies' leases end).
    clock.ms = 20;
    ssd.readGate = new Promise((resolve) => setTimeout(resolve, 5));
    const [a, b] = await Promise.all([policy.stage(raced!.hash, 10), policy.stage(raced!.hash, 10)]);
    ssd.readGate = null;
    assert.ok(a !== undefined && a !== 'unstaged' && b !== undefined && b !== 'unstaged');
    assert.equal(a.payloadOffset, b.payloadOffset);
    assert.equal(ssd.lent, 0);
    assert.equal(ssdStats()?.staged, 5);
  });
});

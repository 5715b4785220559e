// Integration: a kvstore node (real gRPC and data-channel servers, in this process so the test can
// look at its store) over a real tiering service process, driven through @kvmesh/sdk KvStoreClient.
// DRAM holds four blocks; the working set is twelve times that, far memory a handful, so evicted
// blocks are demoted to far memory and the service spills the colder ones to SSD. What must hold:
// - every acknowledged block reads back byte-identical, from far memory and from SSD; Stats count
//   the hits per tier on both sides; MatchPrefix finds demoted blocks;
// - a corrupted tier copy (SSD segment or far-memory pool) is reported missing and leaves the
//   index, never served;
// - the tiering process killed with SIGKILL while demotions stream, then restarted: every block
//   the kvstore still held in memory (DRAM or its demoting buffer, i.e. not yet acknowledged by the
//   tier) and every block the tier had on SSD reads back identical. Blocks the tier held only in
//   far memory may be lost (far memory does not survive a crash): those, and only those, read as
//   missing, and nothing is ever served wrong.
import assert from 'node:assert/strict';
import { closeSync, mkdtempSync, openSync, readdirSync, readFileSync, readSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';

import { attendPayloads } from '@kvmesh/block';
import { relativeL2Error } from '@kvmesh/kernels';
import { Tier, type BlockHash } from '@kvmesh/protocol';
import { freePort } from '@kvmesh/runtime';
import { KvStoreClient, type FetchedBlock } from '@kvmesh/sdk';
import {
  removeOnExit,
  spawnTieringService,
  tieringInfo,
  waitFor,
  type ServiceHandle,
} from '@kvmesh/test-harness';
import { TierServiceClient } from '@kvmesh/tiering';

import { kvStoreConfig } from '../src/config.ts';
import { startKvStoreNode, type KvStoreNode } from '../src/node.ts';
import { BLOCK_BYTES, DIMS, chain, kernels, type ChainBlock } from './core/helpers.ts';

const DRAM_BLOCKS = 4;
// NOTE: a chain longer than DRAM cannot be held at once (a parent never leaves before its child).
const CHAINS = 16;
const CHAIN_BLOCKS = 3;
/** Far memory holds about this many blocks; the rest of what is demoted spills to SSD. */
const FAR_BLOCKS = 6;
const payloadBytes = chain(1)[0]!.payload.byteLength;

async function startNode(tieringAddress: string, flags: { promote: boolean }): Promise<KvStoreNode> {
  return startKvStoreNode(
    kvStoreConfig({
      nodeId: `kv-tier-${process.pid}`,
      host: '127.0.0.1',
      bytesBudget: Math.floor((DRAM_BLOCKS + 0.5) * BLOCK_BYTES),
      tieringAddress,
      // Larger than the whole working set: no victim is ever dropped for want of buffer.
      demotingBytesMax: 200 * BLOCK_BYTES,
      tierRetryMs: 50,
      // The tier check runs when a test asks (node.tier.checkTiers()), so tiers change only then.
      tierCheckIntervalMs: 0,
      promoteParentsMax: flags.promote ? 8 : 0,
      prefetchBlocksMax: flags.promote ? 64 : 0,
      logLevel: 'error',
    }),
  );
}

async function startTier(
  serviceId: string,
  ssdDir: string,
  grpcPort = 0,
): Promise<{ service: ServiceHandle; client: TierServiceClient }> {
  const service = await spawnTieringService({
    serviceId,
    ssdDir,
    farBytes: FAR_BLOCKS * (payloadBytes + 512),
    ssdBytes: 64 * 1024 * 1024,
    grpcPort,
    flags: { 'ssd-direct-io': 'false', 'ssd-fsync': 'group' },
  });
  const client = await TierServiceClient.connect({ grpcAddress: tieringInfo(service).grpcAddress });
  return { service, client };
}

async function settled(node: KvStoreNode): Promise<void> {
  await waitFor(
    () => {
      const pending = node.tier?.pending;
      return node.store.stats().demoting === 0 && pending?.demotionsInFlight === 0;
    },
    { timeoutMs: 20_000, message: 'every demotion acknowledged' },
  );
  await node.node.idle();
}

function tierFigures(response: Awaited<ReturnType<TierServiceClient['stats']>>): {
  far: { reads: number; writes: number; checksumFailures: number; blocks: number };
  ssd: { reads: number; writes: number; checksumFailures: number; blocks: number };
} {
  const pick = (tier: Tier) => {
    const t = response.tiers.find((x) => x.tier === tier);
    return {
      reads: Number(t?.reads ?? 0),
      writes: Number(t?.writes ?? 0),
      checksumFailures: Number(t?.checksumFailures ?? 0),
      blocks: Number(t?.blocks ?? 0),
    };
  };
  return { far: pick(Tier.TIER_FAR), ssd: pick(Tier.TIER_SSD) };
}

/** Flips one byte of `block`'s payload where it lies in the SSD segment files. */
function corruptOnSsd(ssdDir: string, block: ChainBlock): void {
  const needle = Buffer.from(block.payload.subarray(payloadBytes - 200, payloadBytes - 136));
  for (const name of readdirSync(ssdDir).filter((n) => n.endsWith('.log'))) {
    const path = join(ssdDir, name);
    const at = readFileSync(path).indexOf(needle);
    if (at < 0) continue;
    const fd = openSync(path, 'r+');
    try {
      writeSync(fd, Buffer.from([needle[10]! ^ 0x20]), 0, 1, at + 10);
    } finally {
      closeSync(fd);
    }
    return;
  }
  assert.fail(`block ${block.hash} is in no segment file of ${ssdDir}`);
}

/** Flips one byte of a far-memory payload through the pool's shared file. */
function corruptInFar(poolPath: string, payloadOffset: number, bytes: number): void {
  const fd = openSync(poolPath, 'r+');
  try {
    const at = payloadOffset + bytes - 17;
    const one = Buffer.alloc(1);
    readSync(fd, one, 0, 1, at);
    one[0] = one[0]! ^ 0x10;
    writeSync(fd, one, 0, 1, at);
  } finally {
    closeSync(fd);
  }
}

function assertSame(fetched: FetchedBlock | undefined, block: ChainBlock): void {
  assert.ok(fetched !== undefined, `block ${block.hash} reads back`);
  assert.equal(fetched.hash, block.hash);
  assert.ok(
    Buffer.from(fetched.payload).equals(Buffer.from(block.payload)),
    `block ${block.hash} is identical`,
  );
  assert.deepEqual([...fetched.tokenIds], [...block.tokenIds]);
}

describe('kvstore tiering - a working set 12x DRAM over a real tiering service', { timeout: 120_000 }, () => {
  const ssdDir = mkdtempSync(join(tmpdir(), 'kvmesh-kv-tier-'));
  removeOnExit(ssdDir);
  let tier: { service: ServiceHandle; client: TierServiceClient };
  let node: KvStoreNode;
  let client: KvStoreClient;
  const chains = Array.from({ length: CHAINS }, () => chain(CHAIN_BLOCKS));
  const blocks = chains.flat();

  before(async () => {
    tier = await startTier(`kv-tier-a-${process.pid}`, ssdDir);
    node = await startNode(tieringInfo(tier.service).grpcAddress, { promote: true });
    client = await KvStoreClient.connect({
      nodes: [{ nodeId: node.nodeId, grpcAddress: node.grpcAddress }],
      replicas: 1,
      timeoutMs: 10_000,
    });
  });
  after(async () => {
    await client?.close();
    await node?.close();
    await tier?.client.close();
    await tier?.service.stop();
  });

  it('tiering - every block reads back identical from far memory and SSD; stats and matchPrefix see the tiers', async () => {
    for (const sequence of chains) {
      const report = await client.put(sequence);
      assert.equal(report.acknowledged.length, CHAIN_BLOCKS, JSON.stringify(report.failed));
    }
    await settled(node);
    const stats = node.store.stats();
    assert.equal(stats.demotionsDropped, 0);
    assert.ok(stats.blocks <= DRAM_BLOCKS);
    assert.equal(stats.blocks + stats.demoted, blocks.length, 'every block is held at some tier');
    assert.ok(stats.demoted >= blocks.length - DRAM_BLOCKS);

    // MatchPrefix finds demoted blocks (reported at the tier they were demoted to).
    for (const sequence of chains) {
      const match = await client.matchPrefix(sequence.map((b) => b.hash));
      assert.equal(match.matchedBlocks, CHAIN_BLOCKS);
    }
    const anyChain = await client.matchPrefix(blocks.map((b) => b.hash));
    assert.ok(anyChain.locations.some((l) => l.tier === 'far'));

    // Where the tier holds them now: far memory for the latest, SSD for what it spilled.
    const demoted = blocks.filter((b) => node.store.tierOf(b.namespace, b.hash) === 'far');
    const located = await tier.client.locateFar(
      demoted.map((b) => b.hash),
      1,
    );
    const inFar = new Set(located.locations.map((l) => l.hash.toString('hex') as BlockHash));
    const farBlocks = demoted.filter((b) => inFar.has(b.hash));
    const ssdBlocks = demoted.filter((b) => !inFar.has(b.hash));
    assert.ok(farBlocks.length >= 2, `far memory holds ${farBlocks.length} blocks`);
    assert.ok(ssdBlocks.length >= 2, `SSD holds ${ssdBlocks.length} blocks`);
    const figures = tierFigures(await tier.client.stats());
    assert.equal(figures.far.blocks + figures.ssd.blocks, demoted.length);
    // The tier check learns what far memory spilled: those blocks are now recorded (and announced)
    // on SSD, the others stay in far memory.
    assert.equal(await node.tier?.checkTiers(), ssdBlocks.length);
    for (const b of ssdBlocks) assert.equal(node.store.tierOf(b.namespace, b.hash), 'ssd');
    for (const b of farBlocks) assert.equal(node.store.tierOf(b.namespace, b.hash), 'far');

    // A corrupt copy on SSD and one in far memory: reported missing, dropped from the index.
    const badSsd = ssdBlocks[0]!;
    corruptOnSsd(ssdDir, badSsd);
    // NOTE: LocateFar answered, so the pool is a shared file this process can write.
    const badFar = farBlocks[0]!;
    const location = located.locations.find((l) => l.hash.toString('hex') === badFar.hash)!;
    corruptInFar(located.poolPath, Number(location.payloadOffset), Number(location.payloadBytes));
    const corrupted: ChainBlock[] = [badSsd, badFar];
    for (const bad of corrupted) {
      assert.deepEqual(await client.get([bad.hash]), [undefined], `corrupt ${bad.hash} is not served`);
      assert.equal(node.store.tierOf(bad.namespace, bad.hash), undefined);
      const match = await client.matchPrefix([bad.hash]);
      assert.equal(match.locations.length, 0, 'a corrupt block leaves the index');
    }
    const afterCorrupt = tierFigures(await tier.client.stats());
    assert.equal(afterCorrupt.ssd.checksumFailures, 1);
    assert.equal(afterCorrupt.far.checksumFailures, 1);
    assert.equal(node.store.stats().promotionsMissed, corrupted.length);

    // One read that must come from far memory, one from SSD, then the whole working set.
    const [fromFar] = await client.get([farBlocks[1]!.hash]);
    assertSame(fromFar, farBlocks[1]!);
    assert.equal(fromFar?.tier, 'far');
    const [fromSsd] = await client.get([ssdBlocks[1]!.hash]);
    assertSame(fromSsd, ssdBlocks[1]!);
    assert.equal(fromSsd?.tier, 'ssd');
    const bad = new Set(corrupted.map((b) => b.hash));
    const healthy = blocks.filter((b) => !bad.has(b.hash));
    const fetched = await client.get(healthy.map((b) => b.hash));
    healthy.forEach((block, i) => assertSame(fetched[i], block));
    // Twice: what was read back and demoted again reads back again.
    const again = await client.get(healthy.map((b) => b.hash));
    healthy.forEach((block, i) => assertSame(again[i], block));

    const kvStats = (await client.stats()).nodes[0]!;
    assert.ok((kvStats.hitsByTier['far'] ?? 0n) >= 1n, 'hits from far memory');
    assert.ok((kvStats.hitsByTier['ssd'] ?? 0n) >= 1n, 'hits from SSD');
    const tierStats = tierFigures(await tier.client.stats());
    assert.ok(tierStats.far.reads >= 1 && tierStats.ssd.reads >= 1);
    assert.ok(tierStats.far.writes >= demoted.length);
    await settled(node);
    assert.equal(node.store.stats().demotionsDropped, 0);

    // PartialAttention and the gRPC GetBlocks path read demoted blocks back too.
    const below = healthy.filter((b) => node.store.tierOf(b.namespace, b.hash) === 'far').slice(0, 3);
    assert.equal(below.length, 3);
    const query = new Float32Array(4 * DIMS.headDim).map(() => Math.random() * 2 - 1);
    const args = { layer: 1, queryHeads: 4, headDim: DIMS.headDim, query };
    const promotionsBefore = node.store.stats().promotions;
    const result = await client.partialAttention({ ...args, hashes: below.map((b) => b.hash) });
    const reference = await attendPayloads(kernels, { ...args, payloads: below.map((b) => b.payload) });
    assert.equal(result.blocksUsed, below.length);
    assert.ok(relativeL2Error(result.o, reference.o) <= 1e-5);
    assert.deepEqual(result.m, reference.m);
    // (Background promotions of their demoted ancestors may add to the count.)
    assert.ok(node.store.stats().promotions - promotionsBefore >= below.length);
    await settled(node);
    const viaGrpc = await KvStoreClient.connect({
      nodes: [{ nodeId: node.nodeId, grpcAddress: node.grpcAddress }],
      replicas: 1,
      transport: 'grpc',
    });
    try {
      const target = healthy.find((b) => node.store.tierOf(b.namespace, b.hash) === 'far')!;
      const [block] = await viaGrpc.get([target.hash]);
      assertSame(block, target);
      assert.notEqual(block?.tier, 'dram');
    } finally {
      await viaGrpc.close();
    }
  });
});

describe(
  'kvstore tiering - the tiering process is killed mid-demotion and restarted',
  { timeout: 120_000 },
  () => {
    const ssdDir = mkdtempSync(join(tmpdir(), 'kvmesh-kv-tier-crash-'));
    removeOnExit(ssdDir);
    const serviceId = `kv-tier-b-${process.pid}`;
    let grpcPort: number;
    let tier: { service: ServiceHandle; client: TierServiceClient };
    let node: KvStoreNode;
    let client: KvStoreClient;

    before(async () => {
      grpcPort = await freePort();
      tier = await startTier(serviceId, ssdDir, grpcPort);
      // No background promotions: what is where stays exactly what the test observed.
      node = await startNode(tieringInfo(tier.service).grpcAddress, { promote: false });
      client = await KvStoreClient.connect({
        nodes: [{ nodeId: node.nodeId, grpcAddress: node.grpcAddress }],
        replicas: 1,
        timeoutMs: 10_000,
      });
    });
    after(async () => {
      await client?.close();
      await node?.close();
      await tier?.client.close();
      await tier?.service.stop();
    });

    it('tiering - no block the kvstore or the SSD tier held is lost; far-only blocks read as missing, never wrong', async () => {
      // Phase 1: demoted and settled; the service spilled most of them to SSD.
      const first = Array.from({ length: 8 }, () => chain(CHAIN_BLOCKS)).flat();
      assert.equal((await client.put(first)).acknowledged.length, first.length);
      await settled(node);
      const demoted = first.filter((b) => node.store.tierOf(b.namespace, b.hash) === 'far');
      const located = await tier.client.locateFar(
        demoted.map((b) => b.hash),
        1,
      );
      const inFar = new Set(located.locations.map((l) => l.hash.toString('hex')));
      const onSsd = new Set(demoted.filter((b) => !inFar.has(b.hash)).map((b) => b.hash));
      assert.ok(onSsd.size >= 4, `${onSsd.size} blocks on SSD before the crash`);
      await tier.client.close();

      // Phase 2: puts go on while demotions stream; the service dies under them.
      const second = Array.from({ length: 8 }, () => chain(CHAIN_BLOCKS)).flat();
      const acknowledged: ChainBlock[] = [];
      for (const [i, block] of second.entries()) {
        if (i === 8) await tier.service.kill9();
        const report = await client.put([block]);
        assert.deepEqual(report.acknowledged, [block.hash], JSON.stringify(report.failed));
        acknowledged.push(block);
      }
      // Every call that could still carry an acknowledgement has settled; the service is dead.
      await waitFor(() => node.tier?.pending.demotionsInFlight === 0, { message: 'demotions settled' });
      const all = [...first, ...acknowledged];
      const heldHere = all.filter((b) => node.store.tierOf(b.namespace, b.hash) === 'dram');
      const inTier = all.filter((b) => node.store.tierOf(b.namespace, b.hash) === 'far');
      assert.equal(heldHere.length + inTier.length, all.length, 'every acknowledged block is indexed');
      assert.ok(node.store.stats().demoting > 0, 'some demotions waited for the service');
      assert.equal(node.store.stats().demotionsDropped, 0);
      // While the service is down, what the kvstore holds (DRAM and the demoting buffer) is served.
      const servedDown = await client.get(heldHere.map((b) => b.hash));
      heldHere.forEach((block, i) => assertSame(servedDown[i], block));

      // Restart at the same address: queued demotions go through.
      tier = await startTier(serviceId, ssdDir, grpcPort);
      await settled(node);
      assert.equal(node.store.stats().demotionsDropped, 0);

      const mustSurvive = [...heldHere, ...inTier.filter((b) => onSsd.has(b.hash))];
      const mayBeLost = inTier.filter((b) => !onSsd.has(b.hash));
      const survived = await client.get(mustSurvive.map((b) => b.hash));
      mustSurvive.forEach((block, i) => assertSame(survived[i], block));
      let lost = 0;
      const maybe = await client.get(mayBeLost.map((b) => b.hash));
      mayBeLost.forEach((block, i) => {
        const got = maybe[i];
        if (got === undefined) {
          lost++;
          assert.equal(
            node.store.tierOf(block.namespace, block.hash),
            undefined,
            'a lost block leaves the index',
          );
        } else assertSame(got, block);
      });
      assert.equal(node.store.stats().promotionsMissed, lost);
      process.stdout.write(
        `# tiering crash: ${all.length} acknowledged, ${heldHere.length} held by the kvstore, ` +
          `${mustSurvive.length - heldHere.length} on SSD, ${mayBeLost.length} far-only of which ${lost} lost\n`,
      );
    });
  },
);

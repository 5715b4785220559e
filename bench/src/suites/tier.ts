// The tiering service next to the raw limits of its media, measured in the same run. One tiering
// service process on loopback; blocks of 256 KiB of KV (payload format v1, random f32).
// - far write: demote to TIER_FAR over the service's binary data channel (negotiated over gRPC);
// - far read: the same-host zero-copy path: LocateFar on the data channel for a batch of hashes, then each
//   payload read in place from a read-only mapping of the pool and verified (every section checksum);
//   the data-channel read (a copy through the service) is reported beside it;
// - SSD write: demote to TIER_SSD over the data channel;
// - SSD read: the same-host path: LocateFar with stageSsd for a batch of hashes (the service reads
//   each block from its segment log, verifies it and copies it into the staging area after the pool,
//   leased for SSD_STAGE_LEASE_MS), then each payload verified in place in the mapping; blocks the
//   staging area had no room for are read over the data channel. The data-channel read (a copy
//   through the service's socket) is reported beside it. SSD reads use O_DIRECT (the ready line's
//   ssdDirectIo says whether the filesystem allowed it), so they are not page-cache hits.
// Anchors: memcpy GB/s into a shared-memory mapping like the pool (far); for SSD, `dd` direct-I/O
// sequential write of the same volume next to the SSD tier, and `dd` direct-I/O sequential reads
// (1 MiB) of the SSD tier's own segment files after each read pass (best of SSD_READ_PASSES each). GB/s are 10^9 bytes/s of
// payload. Options: --blocks N (volume), --concurrency C, --batch B (hashes per LocateFar), --dir D.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { loadKernels, nativeMemory } from '@kvmesh/kernels';
import { spawnService } from '@kvmesh/test-harness';
import { FarMemoryReader, TierServiceClient, type TierBlock } from '@kvmesh/tiering';

import type { BenchContext, BenchSuite } from '../main.ts';
import { benchBlocks } from '../blocks.ts';
import { numberOption, round, stringOption } from '../options.ts';

const MIB = 1024 * 1024;
const WARMUP_BLOCKS = 32;
const FAR_READ_PASSES = 3;
/**
 * SSD read passes (best counts), for the service and dd alike: the virtual disk's speed swings from
 * one moment to the next. Each pass reads every block from the device: the staging area holds the
 * last SSD_STAGE_BYTES read, and reading in the same order evicts those copies before it reaches them.
 */
const SSD_READ_PASSES = 3;
/** Lease on staged SSD copies: verifying a batch in place takes a few ms; the staging room is reused after. */
const SSD_STAGE_LEASE_MS = 20;
/** The service's staging area for SSD reads (its default size). */
const SSD_STAGE_BYTES = 64 * MIB;

/**
 * Runs `op(i, worker)` over `count` items from `concurrency` closed-loop workers (one operation
 * outstanding each); returns the seconds until the last one completed.
 */
async function timeAll(
  count: number,
  concurrency: number,
  op: (i: number, worker: number) => Promise<void>,
): Promise<number> {
  let next = 0;
  const start = performance.now();
  await Promise.all(
    Array.from({ length: Math.min(concurrency, count) }, async (_, worker) => {
      while (next < count) await op(next++, worker);
    }),
  );
  return (performance.now() - start) / 1000;
}

/** memcpy GB/s of `bytes` in `chunkBytes` pieces into a shared mapping like the pool (best of 3). */
function measureMemcpy(dir: string, bytes: number, chunkBytes: number): { gbps: number; medium: string } {
  const memory = nativeMemory();
  const path = join(dir, 'memcpy-probe');
  const buffer = memory?.mapSharedFile(path, bytes, { create: true }) ?? new ArrayBuffer(bytes);
  try {
    const target = new Uint8Array(buffer);
    const source = new Uint8Array(chunkBytes);
    for (let i = 0; i < source.length; i++) source[i] = (i * 2654435761) >>> 24;
    const chunks = Math.floor(bytes / chunkBytes);
    let best = 0;
    for (let pass = 0; pass < 4; pass++) {
      const start = performance.now();
      for (let c = 0; c < chunks; c++) target.set(source, c * chunkBytes);
      const gbps = (chunks * chunkBytes) / 1e9 / ((performance.now() - start) / 1000);
      // Pass 0 faults the pages in (the pool's pages are reserved at start too): not counted.
      if (pass > 0) best = Math.max(best, gbps);
    }
    return { gbps: best, medium: memory === null ? 'process memory' : 'shared-memory mapping' };
  } finally {
    if (memory !== null) memory.unmap(buffer);
    rmSync(path, { force: true });
  }
}

/** Bytes and seconds of one `dd` run, from dd's own report. */
function dd(args: string[]): { bytes: number; seconds: number } {
  const r = spawnSync('dd', args, { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`dd ${args.join(' ')} failed: ${r.stderr}`);
  // "268435456 bytes (268 MB, 256 MiB) copied, 0.105698 s, 2.5 GB/s"
  const m = /(\d+) bytes .* copied, ([\d.]+) s/.exec(r.stderr);
  if (m === null) throw new Error(`cannot parse dd output: ${r.stderr}`);
  return { bytes: Number(m[1]), seconds: Number(m[2]) };
}

/** `dd` direct-I/O sequential write of `mib` MiB at `file` (removed after); GB/s. */
function measureDdWrite(file: string, mib: number): number {
  try {
    const { bytes, seconds } = dd([`if=/dev/zero`, `of=${file}`, 'bs=1M', `count=${mib}`, 'oflag=direct']);
    return bytes / 1e9 / seconds;
  } finally {
    rmSync(file, { force: true });
  }
}

/**
 * `dd` direct-I/O sequential read (1 MiB reads) of the SSD tier's own segment files: the bytes the
 * service reads, where they lie on the device; GB/s over all of them.
 */
function measureDdReadSegments(ssdDir: string): number {
  let bytes = 0;
  let seconds = 0;
  for (const name of readdirSync(ssdDir).filter((n) => /^seg-\d+\.log$/.test(n))) {
    const run = dd([`if=${join(ssdDir, name)}`, 'of=/dev/null', 'bs=1M', 'iflag=direct']);
    bytes += run.bytes;
    seconds += run.seconds;
  }
  if (bytes === 0) throw new Error(`no segment files in ${ssdDir}`);
  return bytes / 1e9 / seconds;
}

export const suite: BenchSuite = {
  name: 'tier',
  description: 'tiering service: far-memory and SSD write/read of 256 KiB blocks vs memcpy and dd direct I/O',
  async run({ args, log }: BenchContext) {
    const blocks = Math.floor(numberOption(args, 'blocks', 1024));
    const concurrency = Math.floor(numberOption(args, 'concurrency', 8));
    const batch = Math.floor(numberOption(args, 'batch', 64));
    const base = stringOption(args, 'dir') ?? tmpdir();
    const dir = mkdtempSync(join(base, 'kvmesh-bench-tier-'));
    const shmDir = mkdtempSync(join('/dev/shm', 'kvmesh-bench-tier-'));
    const kernels = loadKernels();
    const { payload, block: makeBlock } = benchBlocks(kernels, '6b766d6573682d62656e63682d746972');
    const far = Array.from({ length: blocks }, (_, i) => makeBlock(i));
    const ssd = Array.from({ length: blocks }, (_, i) => makeBlock(blocks + i));
    const volumeBytes = blocks * payload.length;
    /** Blocks that fill the staging area once (its warm-up). */
    const stageWarmBlocks = Math.ceil(SSD_STAGE_BYTES / payload.length) + 1;
    const volumeGB = volumeBytes / 1e9;
    log(
      `${blocks} blocks of ${payload.length} bytes (${(volumeBytes / MIB).toFixed(0)} MiB per phase), c=${concurrency}`,
    );

    const service = await spawnService({
      name: 'tiering-bench',
      // e.g. KVMESH_BENCH_NODE_ARGS='--cpu-prof --cpu-prof-dir=/tmp/prof' to profile the service.
      nodeArgs: (process.env.KVMESH_BENCH_NODE_ARGS ?? '').split(' ').filter((a) => a.length > 0),
      entry: 'services/tiering/src/main.ts',
      env: {
        KVMESH_SERVICE_ID: `bench-tier-${process.pid}`,
        KVMESH_FAR_PATH: join(shmDir, 'pool'),
        // Room for every block and its record head: the far phases never spill.
        KVMESH_FAR_BYTES: String(Math.ceil((blocks * (payload.length + 4096)) / MIB + 16) * MIB),
        KVMESH_SSD_DIR: join(dir, 'ssd'),
        // Room for the SSD phase, the far blocks spilled at the end and both warm-up sets.
        KVMESH_SSD_BYTES: String(
          Math.ceil(((2 * blocks + WARMUP_BLOCKS + stageWarmBlocks) * (payload.length + 8192)) / MIB + 64) *
            MIB,
        ),
        KVMESH_SSD_STAGE_BYTES: String(SSD_STAGE_BYTES),
        KVMESH_FAR_DRAIN_ON_SHUTDOWN: 'false',
        // A long-running service's pool pages are mapped already: measure that, not first faults.
        KVMESH_FAR_PREFAULT: 'true',
        KVMESH_LOG_LEVEL: 'warn',
      },
    });
    let result: Record<string, unknown>;
    try {
      const info = service.info as { grpcAddress: string; ssdDirectIo: boolean; far: string };
      log(`service: far = ${info.far}; ssd O_DIRECT reads: ${info.ssdDirectIo}`);
      const client = await TierServiceClient.connect({
        grpcAddress: info.grpcAddress,
        dataConnections: Math.min(concurrency, 4),
      });
      const reader = new FarMemoryReader(client, kernels);
      try {
        // Warm-up (not measured): connections, JIT, the service's buffers, the reader's mapping.
        const warm = Array.from({ length: WARMUP_BLOCKS }, (_, i) => makeBlock(2 * blocks + i));
        await timeAll(warm.length, concurrency, (i) => client.demote(warm[i] as TierBlock, 'far'));
        await timeAll(
          warm.length,
          concurrency,
          async (i) => void (await client.read((warm[i] as TierBlock).hash)),
        );
        const into = Array.from({ length: concurrency }, () => new Uint8Array(payload.length));
        const farReadPass = (): Promise<number> =>
          timeAll(Math.ceil(blocks / batch), Math.min(concurrency, 2), async (b) => {
            const hashes = far.slice(b * batch, (b + 1) * batch).map((x) => x.hash);
            const got = await reader.read(hashes);
            if (
              got.hits.length !== hashes.length ||
              got.hits.some((h) => h.payload.length !== payload.length)
            )
              throw new Error(`far read of batch ${b} came back incomplete (${got.missing.length} missing)`);
          });
        const viaChannel = { unstaged: 0, leaseEnded: 0 };
        /**
         * Mapped reads of SSD blocks staged by the service. Over the data channel instead: blocks the
         * staging area had no room for, and copies that failed verification here (only possible when
         * this reader overran its lease and the room was reused).
         */
        const ssdStagedRead = (list: readonly TierBlock[]): Promise<number> =>
          timeAll(Math.ceil(list.length / batch), Math.min(concurrency, 2), async (b, w) => {
            const hashes = list.slice(b * batch, (b + 1) * batch).map((x) => x.hash);
            const got = await reader.read(hashes, { stageSsd: true, leaseMs: SSD_STAGE_LEASE_MS });
            for (const hash of [...got.unstaged, ...got.corrupt]) {
              const read = await client.read(hash, into[w]);
              if (read?.tier !== 'ssd') throw new Error(`ssd block ${hash} not read from SSD`);
            }
            viaChannel.unstaged += got.unstaged.length;
            viaChannel.leaseEnded += got.corrupt.length;
            if (
              got.hits.length + got.unstaged.length + got.corrupt.length !== hashes.length ||
              got.hits.some((h) => h.tier !== 'ssd' || h.payload.length !== payload.length)
            )
              throw new Error(`ssd read of batch ${b} came back incomplete (${got.missing.length} missing)`);
          });
        const farWriteS = await timeAll(blocks, concurrency, (i) =>
          client.demote(far[i] as TierBlock, 'far'),
        );
        // Reads keep the blocks: one pass maps and warms, the best of the next passes counts.
        await farReadPass();
        let farReadS = Number.POSITIVE_INFINITY;
        for (let pass = 0; pass < FAR_READ_PASSES; pass++) farReadS = Math.min(farReadS, await farReadPass());
        const farChannelReadS = await timeAll(blocks, concurrency, async (i, w) => {
          const got = await client.read((far[i] as TierBlock).hash, into[w]);
          if (got?.tier !== 'far') throw new Error(`far block ${i} not read from far memory`);
        });
        await timeAll(
          warm.length,
          concurrency,
          async (i) => void (await client.promote((warm[i] as TierBlock).hash)),
        );
        await timeAll(warm.length, concurrency, (i) => client.demote(warm[i] as TierBlock, 'ssd'));
        await timeAll(
          warm.length,
          concurrency,
          async (i, w) => void (await client.read((warm[i] as TierBlock).hash, into[w])),
        );
        // The staging area is reused in a cycle: one cycle maps its pages into this reader.
        const stageWarm = Array.from({ length: stageWarmBlocks }, (_, i) =>
          makeBlock(2 * blocks + WARMUP_BLOCKS + i),
        );
        await timeAll(stageWarm.length, concurrency, (i) => client.demote(stageWarm[i] as TierBlock, 'ssd'));
        await ssdStagedRead(stageWarm);
        viaChannel.unstaged = viaChannel.leaseEnded = 0;
        const ssdWriteS = await timeAll(blocks, concurrency, (i) =>
          client.demote(ssd[i] as TierBlock, 'ssd'),
        );
        // O_DIRECT reads come from the device every time, nothing to warm. Each pass is followed by
        // dd reading the segment files, so both see the device alike. The data-channel pass does not
        // use the staged copies.
        let ssdReadS = Number.POSITIVE_INFINITY;
        let ddReadGBps = 0;
        for (let pass = 0; pass < SSD_READ_PASSES; pass++) {
          ssdReadS = Math.min(ssdReadS, await ssdStagedRead(ssd));
          ddReadGBps = Math.max(ddReadGBps, measureDdReadSegments(join(dir, 'ssd')));
        }
        const ssdChannelReadS = await timeAll(blocks, concurrency, async (i, w) => {
          const got = await client.read((ssd[i] as TierBlock).hash, into[w]);
          if (got?.tier !== 'ssd' || got.block.payload.length !== payload.length)
            throw new Error(`ssd block ${i} came back wrong`);
        });

        log('anchors: memcpy into a shared mapping, dd direct I/O in the SSD directory');
        const memcpy = measureMemcpy(shmDir, Math.min(Math.max(volumeBytes, 256 * MIB), 1 << 30), 256 * 1024);
        const ddWriteGBps = measureDdWrite(join(dir, 'dd-probe'), Math.max(1, Math.ceil(volumeBytes / MIB)));

        const farRead = volumeGB / farReadS;
        const ssdRead = volumeGB / ssdReadS;
        const ssdWrite = volumeGB / ssdWriteS;
        result = {
          far: {
            readGBps: round(farRead),
            writeGBps: round(volumeGB / farWriteS),
            memcpyGBps: round(memcpy.gbps),
          },
          ssd: {
            readGBps: round(ssdRead),
            writeGBps: round(ssdWrite),
            rawReadGBps: round(ddReadGBps),
            rawWriteGBps: round(ddWriteGBps),
          },
          ratio: {
            ssdRead: round(ssdRead / ddReadGBps, 3),
            ssdWrite: round(ssdWrite / ddWriteGBps, 3),
            farRead: round(farRead / memcpy.gbps, 3),
          },
          paths: {
            farRead: `same-host mapped pool: LocateFar (data channel, ${batch} hashes per call) + in-place checksum verification`,
            farWrite: 'data channel (negotiated over gRPC) → far memory',
            ssdWrite: 'data channel (negotiated over gRPC) → segment log',
            farReadThroughServiceGBps: round(volumeGB / farChannelReadS),
            ssdRead: `same-host staged: LocateFar with stageSsd (data channel, ${batch} hashes per call, ${SSD_STAGE_LEASE_MS} ms lease) + in-place checksum verification`,
            ssdReadViaChannelBlocks: viaChannel,
            ssdReadThroughServiceGBps: round(volumeGB / ssdChannelReadS),
            ssdDirectIoReads: info.ssdDirectIo,
            memcpyMedium: memcpy.medium,
          },
          blocks,
          payloadBytes: payload.length,
          concurrency,
        };
      } finally {
        reader.close();
        await client.close();
      }
    } finally {
      await service.stop();
      rmSync(dir, { recursive: true, force: true });
      rmSync(shmDir, { recursive: true, force: true });
    }
    return result;
  },
};

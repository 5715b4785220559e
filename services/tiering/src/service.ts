// Assembles one tiering service from its config: kernels → far-memory backing (shared mapping, DAX
// device, or the in-process fallback) and its pool → SSD segment log (recovered from its directory)
// → policy → data channel server + gRPC server (Tiering + health, bound, NOT_SERVING) → SERVING.
// close() undoes it in reverse: NOT_SERVING, in-flight requests drain, far memory is demoted to SSD
// (farDrainOnShutdown: far memory itself does not survive a restart, the SSD tier does), the segment
// log closes, and the pool is unmapped and its shared-memory file removed.
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';

import { DataChannelServer, PROTOCOL_VERSION, formatDataAddress } from '@kvmesh/dataplane';
import { loadKernels, nativeMemory, type Kernels } from '@kvmesh/kernels';
import { TieringService as TieringServiceDefinition, type NodeId } from '@kvmesh/protocol';
import {
  CleanupStack,
  createGrpcServer,
  createLogger,
  isLogLevel,
  loggingWrapOptions,
  type Logger,
} from '@kvmesh/runtime';

import { demoteBodyAllocator, registerTieringDataHandlers } from './adapters/data-handlers.ts';
import { openFarBacking, type FarBacking } from './adapters/far-memory.ts';
import { tieringGrpcService } from './adapters/grpc-service.ts';
import type { LocateFarOptions } from './adapters/locate-far.ts';
import { SegmentLog } from './adapters/segment-log.ts';
import { ssdTierOf, startSsdCompaction } from './adapters/ssd-compaction.ts';
import { checkTieringConfig, resolveServiceId, type TieringConfig } from './config.ts';
import {
  FarPool,
  RECORD_META_BYTES_MAX,
  ReusableBuffers,
  TierPolicy,
  type SsdTier,
  type StageArea,
} from './core/index.ts';

export const TIERING_SERVICE_NAME = 'kvmesh.v1.Tiering';
/** gRPC message bound above blockBytesMax: room for the block's other fields and token ids. */
const GRPC_MESSAGE_OVERHEAD_BYTES = 1024 * 1024;
/** Blocks of one Demote stream stored at once. */
const DEMOTE_STREAM_CONCURRENCY = 8;
const DIRECT_IO_ALIGN_BYTES = 4096;
/** Received payloads and built records kept for reuse, per size (bounds that memory). */
const REUSABLE_BUFFERS_PER_SIZE = 32;

export interface TieringServiceHandle {
  readonly serviceId: NodeId;
  /** host:port of the gRPC server (Tiering + health). */
  readonly grpcAddress: string;
  /** host:port of the data channel. */
  readonly dataAddress: string;
  readonly dataToken: string;
  /** What backs far memory (null without far memory). */
  readonly far: {
    kind: FarBacking['kind'];
    path: string;
    poolId: string;
    bytes: number;
    description: string;
  } | null;
  /** The SSD tier's directory ('' without one). */
  readonly ssdDir: string;
  /** Whether SSD reads bypass the page cache (O_DIRECT); false without an SSD tier. */
  readonly ssdDirectIo: boolean;
  readonly policy: TierPolicy;
  /** Graceful shutdown; idempotent. */
  close(): Promise<void>;
}

export interface StartTieringServiceOptions {
  readonly logger?: Logger;
  readonly kernels?: Kernels;
}

export async function startTieringService(
  config: TieringConfig,
  options: StartTieringServiceOptions = {},
): Promise<TieringServiceHandle> {
  checkTieringConfig(config);
  const serviceId = resolveServiceId(config.serviceId);
  const logger =
    options.logger ??
    createLogger({
      service: 'tiering',
      nodeId: serviceId,
      level: isLogLevel(config.logLevel) ? config.logLevel : 'info',
    });
  const kernels = options.kernels ?? loadKernels();
  // NOTE: leases are relative times: a monotonic clock keeps them immune to wall-clock steps.
  const now = (): number => performance.now();

  const cleanups = new CleanupStack(logger);

  try {
    let far: FarBacking | null = null;
    let pool: FarPool | null = null;
    let stage: StageArea | null = null;
    // The staging area for SSD blocks follows the pool in the same mapping (one map per reader).
    const stageBytes = config.farBytes > 0 && config.ssdBytes > 0 ? config.ssdStageBytes : 0;
    const mappedBytes = config.farBytes + stageBytes;
    if (config.farBytes > 0) {
      const backing = openFarBacking({
        backing: config.farBacking as 'auto' | 'shm' | 'dax' | 'process',
        path: config.farPath,
        bytesCapacity: mappedBytes,
        numaNode: config.farNumaNode,
        serviceId,
        prefault: config.farPrefault,
      });
      far = backing;
      cleanups.push(() => backing.close());
      pool = new FarPool(
        { bytesCapacity: config.farBytes, blocksMax: config.farBlocksMax, alignBytes: config.farAlignBytes },
        now,
      );
      if (stageBytes > 0) {
        // NOTE: staged copies cycle through this area on every read: its pages are faulted in once,
        // here, rather than under the first reads.
        backing.region.fill(0, config.farBytes, mappedBytes);
        stage = {
          region: backing.region.subarray(config.farBytes, mappedBytes),
          offset: config.farBytes,
          pool: new FarPool(
            { bytesCapacity: stageBytes, blocksMax: config.farBlocksMax, alignBytes: config.farAlignBytes },
            now,
          ),
        };
      }
      if (backing.kind === 'process') logger.warn(`far memory: ${backing.description}`);
      else logger.info(`far memory: ${backing.description}`, { bytes: config.farBytes });
    }

    let ssd: SsdTier | null = null;
    let ssdDirectIo = false;
    let ssdDir = '';
    if (config.ssdBytes > 0) {
      ssdDir = config.ssdDir === '' ? join('/var/tmp/kvmesh', serviceId, 'ssd') : config.ssdDir;
      mkdirSync(ssdDir, { recursive: true });
      const memory = nativeMemory();
      const log = await SegmentLog.open({
        dir: ssdDir,
        capacityBytes: config.ssdBytes,
        segmentBytesMax: config.ssdSegmentBytes,
        fsync: config.ssdFsync as 'always' | 'group' | 'interval',
        fsyncIntervalMs: config.ssdFsyncIntervalMs,
        recordBytesMax: config.blockBytesMax + RECORD_META_BYTES_MAX + DIRECT_IO_ALIGN_BYTES,
        blocksMax: config.ssdBlocksMax,
        directIo: config.ssdDirectIo,
        readMergeBytesMax: config.ssdReadMergeBytesMax,
        readsInFlightMax: config.ssdReadsInFlightMax,
        readsQueuedMax: config.ssdReadsQueuedMax,
        readAheadBytes: config.ssdReadAheadBytes,
        kernels,
        ...(memory === null
          ? {}
          : {
              allocate: (bytes: number) => new Uint8Array(memory.allocAligned(bytes, DIRECT_IO_ALIGN_BYTES)),
            }),
      });
      cleanups.push(() => log.close());
      const compaction = startSsdCompaction(
        log,
        { intervalMs: config.ssdCompactIntervalMs, garbageRatio: config.ssdCompactGarbageRatio },
        logger,
      );
      cleanups.push(() => compaction.stop());
      ssd = ssdTierOf(log, compaction);
      const stats = log.stats();
      ssdDirectIo = stats.directIo;
      // NOTE: reads and stats go to the log; appends compact once when the log is at capacity.
      logger.info('ssd tier open', { dir: ssdDir, blocks: stats.blocks, directIo: stats.directIo });
    }

    // Demoted payloads are received into, and SSD records built in, buffers that are reused once
    // the demote is done with them (a fresh 256 KiB buffer each kept V8 collecting).
    const reusable = (): ReusableBuffers =>
      new ReusableBuffers({ buffersPerSize: REUSABLE_BUFFERS_PER_SIZE, sizesMax: 4, bytesMin: 64 * 1024 });
    const demoteBodies = reusable();
    const policy = new TierPolicy({
      recordBuffers: reusable(),
      kernels,
      far: far === null || pool === null ? null : { region: far.region.subarray(0, config.farBytes), pool },
      ssd,
      stage,
      blockBytesMax: config.blockBytesMax,
      leaseMsMax: config.leaseMsMax,
      onFault: (what, details) => logger.warn(what, details),
    });
    if (config.farDrainOnShutdown && far !== null && ssd !== null) {
      cleanups.push(async () => {
        const moved = await policy.drainFarToSsd();
        logger.info('far memory demoted to SSD at shutdown', { blocks: moved });
      });
    }

    const advertiseHost = config.advertiseHost === '' ? config.host : config.advertiseHost;
    const dataServer = new DataChannelServer();
    const locate: LocateFarOptions = {
      hashesPerRequestMax: config.hashesPerRequestMax,
      leaseMsDefault: config.leaseMsDefault,
      farPool:
        far === null
          ? null
          : far.kind === 'process'
            ? { unmappable: far.description, backing: 'in-process memory' }
            : { path: far.path, bytes: mappedBytes, poolId: far.poolId },
    };
    registerTieringDataHandlers(dataServer, policy, locate, demoteBodies);
    const dataBound = await dataServer.listen({
      host: config.host,
      port: config.dataPort,
      ...(config.dataToken === '' ? {} : { token: config.dataToken }),
      limits: { bodyBytesMax: config.blockBytesMax, connectionsMax: config.dataConnectionsMax },
      requestBodies: demoteBodyAllocator(demoteBodies),
      closeTimeoutMs: Math.max(1, config.shutdownGraceMs),
      onError: (err, peer) => logger.debug('data channel connection fault', { peer, err }),
    });
    cleanups.push(() => dataServer.close());
    const dataAddress = formatDataAddress({ host: advertiseHost, port: dataBound.port });

    const grpc = createGrpcServer({
      healthServices: [TIERING_SERVICE_NAME],
      messageBytesMax: config.blockBytesMax + GRPC_MESSAGE_OVERHEAD_BYTES,
    });
    grpc.server.addService(
      TieringServiceDefinition,
      tieringGrpcService(policy, {
        ...locate,
        demoteMessagesPerStreamMax: config.demoteMessagesPerStreamMax,
        demoteStreamConcurrency: DEMOTE_STREAM_CONCURRENCY,
        readAheadBlocks: config.readAheadBlocks,
        dataAddress,
        dataToken: config.dataToken,
        dataProtocolVersion: PROTOCOL_VERSION,
        blockBytesMax: config.blockBytesMax,
        wrap: loggingWrapOptions(logger),
      }),
    );
    const grpcPort = await grpc.bind(formatDataAddress({ host: config.host, port: config.grpcPort }));
    cleanups.push(() => grpc.shutdown(config.shutdownGraceMs));
    const grpcAddress = formatDataAddress({ host: advertiseHost, port: grpcPort });

    grpc.setServing(true);
    logger.info('tiering service serving', {
      grpcAddress,
      dataAddress,
      far: far?.description ?? 'none',
      farBytes: config.farBytes,
      ssdDir,
      ssdBytes: config.ssdBytes,
    });

    let closing: Promise<void> | undefined;
    const backing = far;
    return {
      serviceId,
      grpcAddress,
      dataAddress,
      dataToken: config.dataToken,
      far:
        backing === null
          ? null
          : {
              kind: backing.kind,
              path: backing.path,
              poolId: backing.poolId,
              bytes: config.farBytes,
              description: backing.description,
            },
      ssdDir,
      ssdDirectIo,
      policy,
      close() {
        closing ??= (async () => {
          logger.info('tiering service shutting down');
          // NOTE: NOT_SERVING first; cleanups then run in reverse start order: servers (in-flight
          // requests finish), the far → SSD drain, the segment log, the pool.
          grpc.setServing(false);
          await cleanups.run();
          logger.info('tiering service stopped');
        })();
        return closing;
      },
    };
  } catch (err) {
    await cleanups.run();
    throw err;
  }
}

// Assembles one kvstore node from its config: kernels → BlockStore → NATS (kv event publisher,
// `cleared` as event 1) → data channel server + gRPC server (bound, NOT_SERVING) → membership watch
// and heartbeats (which advertise the bound addresses) → re-replication → SERVING. close() undoes it
// in reverse: heartbeats stop first so peers start re-replicating, then NOT_SERVING, in-flight
// requests drain, peers and NATS close, and queued events are flushed. Without a NATS url the node
// runs standalone: the only member, R = 1, no events. With a tiering address, evictions demote to
// the host's tiering service (TierLink) and reads of demoted blocks promote them back.
import { DataChannelServer, PROTOCOL_VERSION, formatDataAddress } from '@kvmesh/dataplane';
import { loadKernels, type Kernels } from '@kvmesh/kernels';
import { KVSTORE_DATA_METHODS, KvStoreService, type NodeId } from '@kvmesh/protocol';
import {
  CleanupStack,
  MembershipTracker,
  createGrpcServer,
  createLogger,
  isLogLevel,
  startHeartbeats,
  watchMembership,
  type HeartbeatPublisher,
  type Logger,
  type MembershipWatch,
  loggingWrapOptions,
} from '@kvmesh/runtime';

import { KvEventForwarder, connectCluster, type ClusterConnection } from './adapters/cluster.ts';
import { registerDataHandlers } from './adapters/data-handlers.ts';
import { PayloadPool, type PayloadPoolStats } from './adapters/payload-pool.ts';
import { kvStoreGrpcService } from './adapters/grpc-service.ts';
import { PeerDirectory } from './adapters/peers.ts';
import { Rebalancer, type RebalancerStats } from './adapters/rebalancer.ts';
import { TierLink } from './adapters/tier-link.ts';
import { checkKvStoreConfig, resolveNodeId, type KvStoreConfig } from './config.ts';
import { BlockStore, KvNode } from './core/index.ts';

export const KVSTORE_ROLE = 'kvstore';
export const KVSTORE_SERVICE_NAME = 'kvmesh.v1.KvStore';
/** gRPC message bound above blockBytesMax: room for the block's other fields and token ids. */
const GRPC_MESSAGE_OVERHEAD_BYTES = 1024 * 1024;

export interface KvStoreNode {
  readonly nodeId: NodeId;
  /** host:port of the gRPC server (KvStore + health). */
  readonly grpcAddress: string;
  /** host:port of the data channel. */
  readonly dataAddress: string;
  readonly dataToken: string;
  /** Copies every client put makes (1 when standalone). */
  readonly replicas: number;
  readonly standalone: boolean;
  readonly store: BlockStore;
  readonly node: KvNode;
  /** The link to the host's tiering service; undefined when tiering is off. */
  readonly tier: TierLink | undefined;
  /** Receive memory of data channel PUT bodies; undefined when the pool is disabled. */
  payloadPoolStats(): PayloadPoolStats | undefined;
  /** Live kvstore members as this node sees them, self included, sorted. */
  liveNodes(): NodeId[];
  /**
   * Re-replication counters (copies made, from DRAM or read back from the tier, and failures); a
   * snapshot, undefined when standalone.
   */
  replicationStats(): RebalancerStats | undefined;
  /** Runs a re-replication pass now (cluster mode; a no-op standalone). */
  rebalance(kind?: 'membership' | 'anti-entropy'): Promise<void>;
  /** Graceful shutdown; idempotent. */
  close(): Promise<void>;
}

export interface StartKvStoreNodeOptions {
  readonly logger?: Logger;
  readonly kernels?: Kernels;
}

/** Wall-clock milliseconds that never go backwards (the BlockStore requires a non-decreasing clock). */
function monotonicWallClock(): () => number {
  let last = 0;
  return () => {
    last = Math.max(last, Date.now());
    return last;
  };
}

export async function startKvStoreNode(
  config: KvStoreConfig,
  options: StartKvStoreNodeOptions = {},
): Promise<KvStoreNode> {
  checkKvStoreConfig(config);
  const nodeId = resolveNodeId(config.nodeId);
  const logger =
    options.logger ??
    createLogger({
      service: 'kvstore',
      nodeId,
      level: isLogLevel(config.logLevel) ? config.logLevel : 'info',
    });
  const kernels = options.kernels ?? loadKernels();
  const standalone = config.natsUrl.trim() === '';
  const replicas = standalone ? 1 : config.replicas;
  if (standalone && config.replicas > 1)
    logger.warn('standalone (no natsUrl): this node is the only member, so replicas is 1', {
      configuredReplicas: config.replicas,
    });

  const now = monotonicWallClock();
  const events = new KvEventForwarder(logger);
  const payloadPool = config.payloadPoolDisabled
    ? undefined
    : new PayloadPool({
        bytesMax: config.payloadPoolBytes === 0 ? config.bytesBudget : config.payloadPoolBytes,
      });
  const tiering = config.tieringAddress.trim() !== '';
  const store = new BlockStore(
    {
      nodeId,
      bytesBudget: config.bytesBudget,
      highWatermark: config.highWatermark,
      lowWatermark: config.lowWatermark,
      blocksMax: config.blocksMax,
      ...(config.blockBytesMax > 0 ? { blockBytesMax: config.blockBytesMax } : {}),
      leaseMsMax: config.leaseMsMax,
      pinTtlMsDefault: config.pinTtlMsDefault,
      pinTtlMsMax: config.pinTtlMsMax,
      pinHoldersMax: config.pinHoldersMax,
      hashesPerRequestMax: config.hashesPerRequestMax,
      tiering,
      ...(config.demotingBytesMax > 0 ? { demotingBytesMax: config.demotingBytesMax } : {}),
      demotedBlocksMax: config.demotedBlocksMax,
    },
    {
      now,
      // A standalone node publishes no events, so it does not build them either.
      ...(standalone ? {} : { sink: events.sink }),
      kernels,
      onTierWork: () => tier?.wake(),
      ...(payloadPool === undefined ? {} : { releasePayload: (payload) => payloadPool.release(payload) }),
    },
  );
  const tier = tiering
    ? new TierLink({
        grpcAddress: config.tieringAddress.trim(),
        store,
        logger,
        concurrency: config.demoteConcurrency,
        retryDelayMs: config.tierRetryMs,
        timeoutMs: config.tierTimeoutMs,
        tierCheckIntervalMs: config.tierCheckIntervalMs,
      })
    : undefined;

  const cleanups = new CleanupStack(logger);

  try {
    let cluster: ClusterConnection | undefined;
    if (!standalone) {
      cluster = await connectCluster({ natsUrl: config.natsUrl, nodeId, logger });
      const { nc, publisher } = cluster;
      cleanups.push(() => nc.close());
      cleanups.push(async () => {
        const unpublished = await publisher.close(config.shutdownGraceMs);
        if (unpublished > 0) logger.warn('kv events left unpublished at shutdown', { unpublished });
      });
      events.publisher = publisher;
    }
    // A fresh node holds nothing: say so first, so an index that knew an earlier incarnation forgets it.
    store.clear();

    const tracker = new MembershipTracker({
      heartbeatIntervalMs: config.heartbeatIntervalMs,
      missedHeartbeatsMax: config.missedHeartbeatsMax,
      nodesMax: config.nodesMax,
    });
    const liveNodes = (): NodeId[] => {
      if (standalone) return [nodeId];
      const ids = tracker.liveIds(KVSTORE_ROLE);
      return ids.includes(nodeId) ? ids : [...ids, nodeId].sort();
    };
    const peers = new PeerDirectory({
      addressesOf: (node) => {
        const heartbeat = tracker.get(node)?.heartbeat;
        return heartbeat === undefined
          ? undefined
          : { grpcAddress: heartbeat.grpcAddress, dataAddress: heartbeat.dataAddress };
      },
      token: config.dataToken,
      timeoutMs: config.peerTimeoutMs,
      connections: config.peerConnections,
      logger,
    });
    cleanups.push(() => peers.close());
    if (tier !== undefined) cleanups.push(() => tier.close());
    const node = new KvNode({
      self: nodeId,
      store,
      kernels,
      replicas,
      live: liveNodes,
      replicate: (peer, input) => peers.putReplica(peer, input),
      attentionLeaseMs: config.attentionLeaseMs,
      ...(tier === undefined
        ? {}
        : {
            tier,
            promotion: {
              parentsMax: config.promoteParentsMax,
              prefetchBlocksMax: config.prefetchBlocksMax,
            },
          }),
    });

    const advertiseHost = config.advertiseHost === '' ? config.host : config.advertiseHost;
    const dataServer = new DataChannelServer();
    registerDataHandlers(dataServer, node, payloadPool);
    const dataBound = await dataServer.listen({
      host: config.host,
      port: config.dataPort,
      ...(config.dataToken === '' ? {} : { token: config.dataToken }),
      limits: { bodyBytesMax: store.config.blockBytesMax, connectionsMax: config.dataConnectionsMax },
      closeTimeoutMs: Math.max(1, config.shutdownGraceMs),
      onError: (err, peer) => logger.debug('data channel connection fault', { peer, err }),
      ...(payloadPool === undefined
        ? {}
        : {
            requestBodies: {
              allocate: ({ methodId, bytes }) =>
                methodId === KVSTORE_DATA_METHODS.putBlock ? payloadPool.allocate(bytes) : undefined,
            },
          }),
    });
    cleanups.push(() => dataServer.close());
    const dataAddress = formatDataAddress({ host: advertiseHost, port: dataBound.port });

    const grpc = createGrpcServer({
      healthServices: [KVSTORE_SERVICE_NAME],
      messageBytesMax: store.config.blockBytesMax + GRPC_MESSAGE_OVERHEAD_BYTES,
    });
    grpc.server.addService(
      KvStoreService,
      kvStoreGrpcService(node, {
        dataAddress,
        dataToken: config.dataToken,
        dataProtocolVersion: PROTOCOL_VERSION,
        putMessagesPerStreamMax: config.putMessagesPerStreamMax,
        putStreamConcurrency: config.putStreamConcurrency,
        wrap: loggingWrapOptions(logger),
      }),
    );
    const grpcPort = await grpc.bind(formatDataAddress({ host: config.host, port: config.grpcPort }));
    cleanups.push(() => grpc.shutdown(config.shutdownGraceMs));
    const grpcAddress = formatDataAddress({ host: advertiseHost, port: grpcPort });

    const tick = setInterval(() => {
      try {
        store.tick();
      } catch (err) {
        logger.error('block store tick failed', { err });
      }
    }, config.tickIntervalMs);
    tick.unref();
    cleanups.push(() => clearInterval(tick));

    let rebalancer: Rebalancer | undefined;
    if (cluster !== undefined) {
      const { nc } = cluster;
      rebalancer = new Rebalancer({
        self: nodeId,
        replicas,
        store,
        live: liveNodes,
        peers,
        ...(tier === undefined ? {} : { tier }),
        concurrency: config.replicationConcurrency,
        settleDelayMs: config.heartbeatIntervalMs,
        antiEntropyIntervalMs:
          config.antiEntropyIntervalMs > 0 ? config.antiEntropyIntervalMs : 10 * config.heartbeatIntervalMs,
        antiEntropyBlocksPerPass: config.antiEntropyBlocksPerPass,
        probeHashesMax: config.hashesPerRequestMax,
        logger,
        now,
      });
      const activeRebalancer = rebalancer;
      cleanups.push(() => activeRebalancer.close());
      const watch: MembershipWatch = watchMembership(nc, KVSTORE_ROLE, tracker, Date.now, {
        onChange: (change) => {
          const peer = change.member.nodeId;
          logger.info(`kvstore node ${change.type === 'join' ? 'joined' : 'left'}`, {
            peer,
            ...(change.type === 'leave' ? { reason: change.reason } : {}),
            live: tracker.liveIds(KVSTORE_ROLE).length,
          });
          if (change.type === 'leave' && peer !== nodeId) peers.remove(peer);
          activeRebalancer.onChange(change);
        },
        onInvalid: (err, subject) => logger.debug('invalid heartbeat', { subject, err }),
      });
      cleanups.push(() => watch.stop());
      // The subscription is registered before the first heartbeat, so this node sees itself at once.
      await nc.flush();
      const heartbeats: HeartbeatPublisher = startHeartbeats(
        nc,
        () => {
          const stats = store.stats();
          return {
            nodeId,
            role: KVSTORE_ROLE,
            grpcAddress,
            dataAddress,
            usedBytes: BigInt(stats.bytesUsed),
            freeBytes: BigInt(Math.max(0, stats.bytesBudget - stats.bytesUsed)),
            freeBlocks: BigInt(Math.max(0, stats.blocksMax - stats.blocks)),
          };
        },
        config.heartbeatIntervalMs,
        { onError: (err) => logger.warn('heartbeat not published', { err }) },
      );
      cleanups.push(() => heartbeats.stop());
      rebalancer.start();
    }

    grpc.setServing(true);
    logger.info('kvstore node serving', {
      grpcAddress,
      dataAddress,
      replicas,
      standalone,
      bytesBudget: store.config.bytesBudget,
      blockBytesMax: store.config.blockBytesMax,
      tieringAddress: tier === undefined ? 'off' : config.tieringAddress,
    });

    let closing: Promise<void> | undefined;
    return {
      nodeId,
      grpcAddress,
      dataAddress,
      dataToken: config.dataToken,
      replicas,
      standalone,
      store,
      node,
      tier,
      payloadPoolStats: () => payloadPool?.stats(),
      liveNodes,
      replicationStats: () => (rebalancer === undefined ? undefined : { ...rebalancer.stats }),
      rebalance: async (kind = 'anti-entropy') => rebalancer?.runNow(kind),
      close() {
        closing ??= (async () => {
          logger.info('kvstore node shutting down');
          // NOTE: NOT_SERVING first (health checks see it while requests drain); the cleanups run in
          // reverse start order: heartbeats, membership, re-replication, servers, peers, events, NATS.
          grpc.setServing(false);
          await cleanups.run();
          logger.info('kvstore node stopped');
        })();
        return closing;
      },
    };
  } catch (err) {
    await cleanups.run();
    throw err;
  }
}

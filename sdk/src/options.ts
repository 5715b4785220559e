// Options of KvStoreClient, their defaults and validation. Every bound the client keeps (nodes
// tracked, calls in flight and waiting, blocks per call, attempts per block) is here, so a caller
// can see at one glance how much a client may hold.
import { InvalidArgumentError } from '@kvmesh/errors';
import type { Kernels } from '@kvmesh/kernels';
import type { NatsConnection } from '@kvmesh/runtime';

/** A node given up front instead of discovered over NATS. */
export interface StaticNode {
  readonly nodeId: string;
  /** host:port of the node's gRPC server. */
  readonly grpcAddress: string;
  /** host:port of its data channel; asked for with OpenDataChannel when absent. */
  readonly dataAddress?: string;
}

export interface KvStoreClientOptions {
  /** NATS server(s) to discover nodes from (heartbeats of role 'kvstore'). */
  readonly natsUrl?: string | readonly string[];
  /** An open NATS connection to discover nodes from (not closed by the client). */
  readonly nats?: NatsConnection;
  /** A fixed node list, instead of NATS discovery. */
  readonly nodes?: readonly StaticNode[];
  /** Replication factor of the cluster (placement only: nodes enforce it). Default 2. */
  readonly replicas?: number;
  /** Namespace used when a call names none. Default '' (the shared default). */
  readonly namespace?: string;
  /** Data channel token; without it each node is asked with OpenDataChannel. */
  readonly dataToken?: string;
  /** 'data' (default) moves block bytes over the binary data channel, 'grpc' over PutBlocks/GetBlocks. */
  readonly transport?: 'data' | 'grpc';
  /** Deadline of every call to a node. Default 10 s. */
  readonly timeoutMs?: number;
  /** The nodes' heartbeat interval (membership timeouts derive from it). Default 1000 ms. */
  readonly heartbeatIntervalMs?: number;
  /** Missed heartbeats before a node is out. Default 3. */
  readonly missedHeartbeatsMax?: number;
  /** Most nodes tracked. Default 256. */
  readonly nodesMax?: number;
  /** Calls to nodes in flight at once, over the whole client. Default 128. */
  readonly inFlightMax?: number;
  /** Calls waiting for an in-flight slot before new ones fail with LIMIT_EXCEEDED. Default 8192. */
  readonly waitingCallsMax?: number;
  /** Blocks one put / get works on in parallel. Default 32. */
  readonly concurrency?: number;
  /** Most blocks or hashes in one call. Default 8192. */
  readonly batchBlocksMax?: number;
  /** Largest block payload accepted by put. Default 64 MiB. */
  readonly blockBytesMax?: number;
  /** Data channel connections per node. Default 1. */
  readonly dataConnectionsPerNode?: number;
  /** How long a node that failed a call is tried last. Default: the membership timeout. */
  readonly suspectMs?: number;
  /** Nodes one block's put or get tries at most. Default 4. */
  readonly attemptsMax?: number;
  /** Recompute each fetched block's hash from its token ids. Default true. */
  readonly verifyIdentity?: boolean;
  /** connect() resolves once this many nodes are live. Default 1. */
  readonly waitForNodes?: number;
  /** How long connect() waits for them. Default 10 s. */
  readonly connectTimeoutMs?: number;
  /** NATS connection name and default pin holder. Default 'kvmesh-sdk-<random>'. */
  readonly name?: string;
  /** Kernels for payload header checks and hashing. Default loadKernels(). */
  readonly kernels?: Kernels;
}

export interface ResolvedOptions {
  readonly replicas: number;
  readonly namespace: string;
  readonly dataToken: string | undefined;
  readonly transport: 'data' | 'grpc';
  readonly timeoutMs: number;
  readonly heartbeatIntervalMs: number;
  readonly missedHeartbeatsMax: number;
  readonly nodesMax: number;
  readonly inFlightMax: number;
  readonly waitingCallsMax: number;
  readonly concurrency: number;
  readonly batchBlocksMax: number;
  readonly blockBytesMax: number;
  readonly dataConnectionsPerNode: number;
  readonly suspectMs: number;
  readonly attemptsMax: number;
  readonly verifyIdentity: boolean;
  readonly waitForNodes: number;
  readonly connectTimeoutMs: number;
  readonly name: string;
}

export const CLIENT_DEFAULTS = {
  replicas: 2,
  timeoutMs: 10_000,
  heartbeatIntervalMs: 1_000,
  missedHeartbeatsMax: 3,
  nodesMax: 256,
  inFlightMax: 128,
  waitingCallsMax: 8192,
  concurrency: 32,
  batchBlocksMax: 8192,
  blockBytesMax: 64 * 1024 * 1024,
  dataConnectionsPerNode: 1,
  attemptsMax: 4,
  waitForNodes: 1,
  connectTimeoutMs: 10_000,
} as const;

function integer(name: string, value: number | undefined, fallback: number, min: number): number {
  const v = value ?? fallback;
  if (!Number.isSafeInteger(v) || v < min)
    throw new InvalidArgumentError(`${name} must be an integer >= ${min}, got ${String(v)}`, { [name]: v });
  return v;
}

export function resolveOptions(options: KvStoreClientOptions): ResolvedOptions {
  const sources = [options.natsUrl, options.nats, options.nodes].filter((s) => s !== undefined).length;
  if (sources !== 1)
    throw new InvalidArgumentError('give exactly one of natsUrl, nats or nodes to find the kvstore nodes', {
      sources,
    });
  if (options.transport !== undefined && options.transport !== 'data' && options.transport !== 'grpc')
    throw new InvalidArgumentError(`transport must be 'data' or 'grpc', got ${String(options.transport)}`, {
      transport: options.transport,
    });
  const heartbeatIntervalMs = integer(
    'heartbeatIntervalMs',
    options.heartbeatIntervalMs,
    CLIENT_DEFAULTS.heartbeatIntervalMs,
    1,
  );
  const missedHeartbeatsMax = integer(
    'missedHeartbeatsMax',
    options.missedHeartbeatsMax,
    CLIENT_DEFAULTS.missedHeartbeatsMax,
    1,
  );
  const nodesMax = integer('nodesMax', options.nodesMax, CLIENT_DEFAULTS.nodesMax, 1);
  if (options.nodes !== undefined && options.nodes.length > nodesMax)
    throw new InvalidArgumentError(`${options.nodes.length} static nodes exceed nodesMax ${nodesMax}`, {
      nodes: options.nodes.length,
      nodesMax,
    });
  return {
    replicas: integer('replicas', options.replicas, CLIENT_DEFAULTS.replicas, 1),
    namespace: options.namespace ?? '',
    dataToken: options.dataToken,
    transport: options.transport ?? 'data',
    timeoutMs: integer('timeoutMs', options.timeoutMs, CLIENT_DEFAULTS.timeoutMs, 1),
    heartbeatIntervalMs,
    missedHeartbeatsMax,
    nodesMax,
    inFlightMax: integer('inFlightMax', options.inFlightMax, CLIENT_DEFAULTS.inFlightMax, 1),
    waitingCallsMax: integer('waitingCallsMax', options.waitingCallsMax, CLIENT_DEFAULTS.waitingCallsMax, 1),
    concurrency: integer('concurrency', options.concurrency, CLIENT_DEFAULTS.concurrency, 1),
    batchBlocksMax: integer('batchBlocksMax', options.batchBlocksMax, CLIENT_DEFAULTS.batchBlocksMax, 1),
    blockBytesMax: integer('blockBytesMax', options.blockBytesMax, CLIENT_DEFAULTS.blockBytesMax, 1),
    dataConnectionsPerNode: integer(
      'dataConnectionsPerNode',
      options.dataConnectionsPerNode,
      CLIENT_DEFAULTS.dataConnectionsPerNode,
      1,
    ),
    suspectMs: integer('suspectMs', options.suspectMs, heartbeatIntervalMs * missedHeartbeatsMax, 0),
    attemptsMax: integer('attemptsMax', options.attemptsMax, CLIENT_DEFAULTS.attemptsMax, 1),
    verifyIdentity: options.verifyIdentity ?? true,
    waitForNodes: integer('waitForNodes', options.waitForNodes, CLIENT_DEFAULTS.waitForNodes, 0),
    connectTimeoutMs: integer(
      'connectTimeoutMs',
      options.connectTimeoutMs,
      CLIENT_DEFAULTS.connectTimeoutMs,
      1,
    ),
    name: options.name ?? `kvmesh-sdk-${Math.random().toString(36).slice(2, 10)}`,
  };
}

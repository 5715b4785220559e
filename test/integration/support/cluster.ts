// kvstore node processes for integration tests: the real entry (services/kvstore/src/main.ts) spawned
// on 127.0.0.1 with ephemeral ports and short heartbeat intervals, configured through --flags, plus
// the matching SDK client options (the client must know the nodes' heartbeat interval to time out a
// dead node on the same schedule).
import type { KvStoreClientOptions } from '@kvmesh/sdk';
import { spawnService, type ServiceHandle } from '@kvmesh/test-harness';

export const KVSTORE_ENTRY = 'services/kvstore/src/main.ts';
// NOTE: 200 ms × 5 detects a crash within ~1 s, yet a node stalled by a loaded 2-core machine for
// half a second is not declared dead.
export const HEARTBEAT_INTERVAL_MS = 200;
export const MISSED_HEARTBEATS_MAX = 5;
export const DATA_TOKEN = 'integration-data-token';

export interface KvNodeOptions {
  readonly nodeId: string;
  /** Omit for a standalone node (the only member, R = 1, no events). */
  readonly natsUrl?: string;
  readonly replicas?: number;
  readonly bytesBudget?: number;
  /** Further --flag value pairs. */
  readonly flags?: Readonly<Record<string, string>>;
}

export function startKvNode(options: KvNodeOptions): Promise<ServiceHandle> {
  const flags: Record<string, string> = {
    'node-id': options.nodeId,
    host: '127.0.0.1',
    'grpc-port': '0',
    'data-port': '0',
    replicas: String(options.replicas ?? 2),
    'heartbeat-interval-ms': String(HEARTBEAT_INTERVAL_MS),
    'missed-heartbeats-max': String(MISSED_HEARTBEATS_MAX),
    'data-token': DATA_TOKEN,
    'log-level': 'warn',
    ...(options.natsUrl === undefined ? {} : { 'nats-url': options.natsUrl }),
    ...(options.bytesBudget === undefined ? {} : { 'bytes-budget': String(options.bytesBudget) }),
    ...options.flags,
  };
  return spawnService({
    name: options.nodeId,
    entry: KVSTORE_ENTRY,
    args: Object.entries(flags).flatMap(([flag, value]) => [`--${flag}`, value]),
    readyTimeoutMs: 30_000,
  });
}

/** Client options matching the nodes above. */
export function clientOptions(natsUrl: string, replicas = 2): KvStoreClientOptions {
  return {
    natsUrl,
    replicas,
    dataToken: DATA_TOKEN,
    heartbeatIntervalMs: HEARTBEAT_INTERVAL_MS,
    missedHeartbeatsMax: MISSED_HEARTBEATS_MAX,
    timeoutMs: 5_000,
    connectTimeoutMs: 15_000,
  };
}

/** The ready line's addresses of a spawned node. */
export function endpointOf(handle: ServiceHandle): {
  nodeId: string;
  grpcAddress: string;
  dataAddress: string;
} {
  const { nodeId, grpcAddress, dataAddress } = handle.info as Record<string, string>;
  return { nodeId: nodeId as string, grpcAddress: grpcAddress as string, dataAddress: dataAddress as string };
}

// kvstore nodes as real child processes for integration tests: one `services/kvstore/src/main.ts`
// per node id, all on the given nats-server, with short heartbeats so membership settles fast.
import { spawnService, type ServiceHandle } from './service.ts';

export interface KvStoreNodesOptions {
  natsUrl: string;
  nodeIds: readonly string[];
  replicas?: number;
  heartbeatIntervalMs?: number;
  missedHeartbeatsMax?: number;
  bytesBudget?: string;
  /** Shared data-channel token; none when absent. */
  dataToken?: string;
}

/** Starts every node and resolves once all printed their ready line. */
export function spawnKvStoreNodes(options: KvStoreNodesOptions): Promise<ServiceHandle[]> {
  return Promise.all(
    options.nodeIds.map((nodeId) =>
      spawnService({
        name: nodeId,
        entry: 'services/kvstore/src/main.ts',
        env: {
          KVMESH_NODE_ID: nodeId,
          KVMESH_NATS_URL: options.natsUrl,
          KVMESH_REPLICAS: String(options.replicas ?? 2),
          KVMESH_HEARTBEAT_INTERVAL_MS: String(options.heartbeatIntervalMs ?? 200),
          KVMESH_MISSED_HEARTBEATS_MAX: String(options.missedHeartbeatsMax ?? 5),
          KVMESH_BYTES_BUDGET: options.bytesBudget ?? '64MiB',
          ...(options.dataToken === undefined ? {} : { KVMESH_DATA_TOKEN: options.dataToken }),
          KVMESH_LOG_LEVEL: 'warn',
        },
      }),
    ),
  );
}

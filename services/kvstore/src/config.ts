// Configuration of one kvstore node: listeners, cluster (NATS, replicas, heartbeats, the shared data
// channel token), the DRAM pool bounds handed to the BlockStore, and every request / queue bound of
// the service edge. Loaded once at start from defaults < KVMESH_* env < --flags; a bad value fails
// the start with a message naming the field. Pure: env and argv are parameters.
import { hostname } from 'node:os';
import { randomBytes } from 'node:crypto';

import { InvalidArgumentError } from '@kvmesh/errors';
import { parseNodeId, type NodeId } from '@kvmesh/protocol';
import { loadConfig, type ConfigOf, type LoadConfigOptions } from '@kvmesh/runtime';

export const KVSTORE_CONFIG_SCHEMA = {
  nodeId: {
    type: 'string',
    default: '',
    lengthMax: 63,
    description: 'unique node id in the cluster; empty picks kvstore-<host>-<random>',
  },
  host: { type: 'string', default: '127.0.0.1', description: 'address both listeners bind' },
  advertiseHost: {
    type: 'string',
    default: '',
    description: 'host peers and clients dial (heartbeats, OpenDataChannel); empty means --host',
  },
  grpcPort: { type: 'int', default: 0, min: 0, max: 65535, description: '0 picks a free port' },
  dataPort: { type: 'int', default: 0, min: 0, max: 65535, description: 'data channel port; 0 picks one' },
  natsUrl: {
    type: 'string',
    default: '',
    description: 'NATS server(s), comma-separated; empty runs standalone (sole member, no events)',
  },
  replicas: { type: 'int', default: 2, min: 1, max: 16, description: 'copies of every block (R)' },
  dataToken: {
    type: 'string',
    default: '',
    lengthMax: 256,
    description: 'shared cluster secret for the data channel HELLO; empty disables the check',
  },
  bytesBudget: { type: 'bytes', default: '1GiB', min: 1, description: 'DRAM the block pool may hold' },
  highWatermark: { type: 'number', default: 0.95, min: 0.01, max: 1 },
  lowWatermark: { type: 'number', default: 0.85, min: 0.01, max: 1 },
  blocksMax: { type: 'int', default: 1 << 20, min: 1 },
  blockBytesMax: {
    type: 'bytes',
    default: 0,
    min: 0,
    max: '1GiB',
    description: 'largest block payload; 0 means min(64MiB, bytesBudget)',
  },
  payloadPoolBytes: {
    type: 'bytes',
    default: 0,
    min: 0,
    description:
      'receive memory for PUT payloads, reused once the store drops a block nobody read, or once ' +
      'the payload is garbage (0 = bytesBudget); without a free slot a put allocates fresh memory',
  },
  payloadPoolDisabled: { type: 'bool', default: false, description: 'allocate fresh memory for every PUT' },
  leaseMsMax: { type: 'duration', default: '60s', min: 0 },
  pinTtlMsDefault: { type: 'duration', default: '60s', min: 1 },
  pinTtlMsMax: { type: 'duration', default: '1h', min: 1 },
  pinHoldersMax: { type: 'int', default: 16, min: 1 },
  hashesPerRequestMax: { type: 'int', default: 8192, min: 1, max: 1 << 20 },
  putMessagesPerStreamMax: {
    type: 'int',
    default: 65536,
    min: 1,
    description: 'most blocks one PutBlocks stream may carry',
  },
  putStreamConcurrency: {
    type: 'int',
    default: 8,
    min: 1,
    max: 256,
    description: 'blocks of one PutBlocks stream being placed at once',
  },
  attentionLeaseMs: {
    type: 'duration',
    default: '10s',
    min: 0,
    description: 'read lease PartialAttention takes on the blocks it reads',
  },
  heartbeatIntervalMs: { type: 'duration', default: '1s', min: 10, max: '1m' },
  missedHeartbeatsMax: { type: 'int', default: 3, min: 1, max: 100 },
  nodesMax: { type: 'int', default: 1024, min: 1, description: 'most cluster members tracked' },
  replicationConcurrency: {
    type: 'int',
    default: 4,
    min: 1,
    max: 256,
    description: 're-replication copies in flight at once',
  },
  antiEntropyIntervalMs: {
    type: 'duration',
    default: 0,
    min: 0,
    description: 'period of the anti-entropy pass; 0 means 10 heartbeat intervals',
  },
  antiEntropyBlocksPerPass: { type: 'int', default: 65536, min: 1 },
  peerTimeoutMs: {
    type: 'duration',
    default: '5s',
    min: 1,
    description: 'bound on connecting to a peer and on each forwarded block',
  },
  peerConnections: { type: 'int', default: 1, min: 1, max: 64, description: 'data connections per peer' },
  dataConnectionsMax: { type: 'int', default: 256, min: 1, description: 'data channel connections held' },
  tieringAddress: {
    type: 'string',
    default: '',
    description:
      "host:port of this host's tiering service (gRPC); evicted blocks are demoted there and read back on a hit. Empty: evictions drop blocks",
  },
  demotingBytesMax: {
    type: 'bytes',
    default: 0,
    min: 0,
    description:
      'memory of evicted blocks awaiting the tier, on top of bytesBudget (0 = min(256MiB, bytesBudget / 4)); a victim that does not fit is dropped',
  },
  demotedBlocksMax: {
    type: 'int',
    default: 1 << 20,
    min: 1,
    description: 'demoted blocks whose metadata stays indexed here; the oldest beyond it are dropped',
  },
  demoteConcurrency: { type: 'int', default: 4, min: 1, max: 256, description: 'demotions in flight' },
  tierRetryMs: {
    type: 'duration',
    default: '250ms',
    min: 1,
    description: 'first wait before demoting again after the tiering service could not be reached',
  },
  tierTimeoutMs: { type: 'duration', default: '10s', min: 1, description: 'bound on each tiering call' },
  tierCheckIntervalMs: {
    type: 'duration',
    default: '5s',
    min: 0,
    description:
      'period of the check that learns which far-memory demotions the tier spilled to SSD (0: off)',
  },
  promoteParentsMax: {
    type: 'int',
    default: 8,
    min: 0,
    description: 'demoted ancestors promoted in the background after a block is read back from a tier',
  },
  prefetchBlocksMax: {
    type: 'int',
    default: 64,
    min: 0,
    description: 'blocks of a matched prefix prefetched once its first block is read back from a tier',
  },
  tickIntervalMs: {
    type: 'duration',
    default: '1s',
    min: 10,
    description: 'period of lease / pin expiry and watermark eviction',
  },
  shutdownGraceMs: { type: 'duration', default: '5s', min: 0 },
  logLevel: { type: 'string', default: 'info', choices: ['debug', 'info', 'warn', 'error'] },
} as const;

export type KvStoreConfig = ConfigOf<typeof KVSTORE_CONFIG_SCHEMA>;

/** Loads the node's config from env and argv (see KVSTORE_CONFIG_SCHEMA for every field). */
export function loadKvStoreConfig(options: LoadConfigOptions = {}): KvStoreConfig {
  return loadConfig(KVSTORE_CONFIG_SCHEMA, options);
}

/** Defaults overlaid with `overrides`: for in-process nodes (tests, the local launcher). */
export function kvStoreConfig(overrides: Partial<KvStoreConfig> = {}): KvStoreConfig {
  return { ...loadConfig(KVSTORE_CONFIG_SCHEMA, {}), ...overrides };
}

/** The configured node id, or `kvstore-<host>-<6 hex>` (characters a node id may not hold become '-'). */
export function resolveNodeId(configured: string): NodeId {
  if (configured !== '') return parseNodeId(configured);
  const host = hostname()
    .replace(/[^A-Za-z0-9_-]/g, '-')
    .slice(0, 40);
  return parseNodeId(`kvstore-${host || 'node'}-${randomBytes(3).toString('hex')}`);
}

/** Checks the cross-field rules loadConfig cannot express; throws InvalidArgumentError naming them. */
export function checkKvStoreConfig(config: KvStoreConfig): void {
  if (config.lowWatermark > config.highWatermark)
    throw new InvalidArgumentError(
      `config lowWatermark ${config.lowWatermark} must not exceed highWatermark ${config.highWatermark}`,
      { lowWatermark: config.lowWatermark, highWatermark: config.highWatermark },
    );
  if (config.blockBytesMax > config.bytesBudget)
    throw new InvalidArgumentError(
      `config blockBytesMax ${config.blockBytesMax} exceeds bytesBudget ${config.bytesBudget}`,
      { blockBytesMax: config.blockBytesMax, bytesBudget: config.bytesBudget },
    );
  if (config.pinTtlMsDefault > config.pinTtlMsMax)
    throw new InvalidArgumentError(
      `config pinTtlMsDefault ${config.pinTtlMsDefault} exceeds pinTtlMsMax ${config.pinTtlMsMax}`,
      { pinTtlMsDefault: config.pinTtlMsDefault, pinTtlMsMax: config.pinTtlMsMax },
    );
}

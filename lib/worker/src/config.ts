// Configuration fields every model worker (prefill, decode) shares: identity and listener, the model
// directory and KV layout, the store it reads and writes (NATS discovery, replicas, data token),
// heartbeats, shutdown grace and log level. Each service spreads these fragments into its own schema
// around its role-specific bounds, so the field order (and the --help listing) stays as it was.
import { randomBytes } from 'node:crypto';
import { hostname } from 'node:os';

import { InvalidArgumentError } from '@kvmesh/errors';
import { parseNodeId, type NodeId } from '@kvmesh/protocol';

export interface WorkerConfigTexts {
  /** Prefix of a generated node id (`<role>-<host>-<random>`). */
  readonly role: string;
  /** What the worker does with KV blocks in its codec. */
  readonly codecDescription: string;
  /** What running without a store gives up. */
  readonly natsUrlDescription: string;
}

/** The leading fields of a worker's config schema, from nodeId through heartbeatIntervalMs. */
export function workerConfigFields(texts: WorkerConfigTexts) {
  return {
    nodeId: {
      type: 'string',
      default: '',
      lengthMax: 63,
      description: `unique node id in the cluster; empty picks ${texts.role}-<host>-<random>`,
    },
    host: { type: 'string', default: '127.0.0.1', description: 'address the gRPC server binds' },
    advertiseHost: { type: 'string', default: '', description: 'host others dial; empty means --host' },
    grpcPort: { type: 'int', default: 0, min: 0, max: 65535, description: '0 picks a free port' },
    modelDir: { type: 'string', default: '', description: 'Hugging Face model directory (required)' },
    modelName: {
      type: 'string',
      default: '',
      lengthMax: 256,
      description: "name requests use for the model; empty means the directory's last component",
    },
    blockTokens: {
      type: 'int',
      default: 64,
      min: 16,
      max: 256,
      description: 'tokens per KV block (a multiple of 16); must match the rest of the cluster',
    },
    codec: {
      type: 'string',
      default: 'f32',
      choices: ['f32', 'f16', 'kivi8', 'kivi4', 'kivi2'],
      description: texts.codecDescription,
    },
    maxContextTokens: {
      type: 'int',
      default: 0,
      min: 0,
      description: "longest sequence; 0 means the model's max_position_embeddings",
    },
    natsUrl: { type: 'string', default: '', description: texts.natsUrlDescription },
    replicas: {
      type: 'int',
      default: 2,
      min: 1,
      max: 16,
      description: 'copies the kvstore cluster keeps (R)',
    },
    dataToken: {
      type: 'string',
      default: '',
      lengthMax: 256,
      description: 'kvstore data channel token; empty asks each node with OpenDataChannel',
    },
    storeNodesMin: {
      type: 'int',
      default: 0,
      min: 0,
      max: 1024,
      description:
        'kvstore nodes to see before serving (0 serves at once; requests fail UNAVAILABLE meanwhile)',
    },
    storeConnectTimeoutMs: { type: 'duration', default: '30s', min: 1 },
    storeTimeoutMs: { type: 'duration', default: '10s', min: 1, description: 'deadline of each store call' },
    storeHeartbeatIntervalMs: {
      type: 'duration',
      default: '1s',
      min: 10,
      max: '1m',
      description: "the kvstore nodes' heartbeat interval (their liveness is judged on it)",
    },
    storeMissedHeartbeatsMax: { type: 'int', default: 3, min: 1, max: 100 },
    heartbeatIntervalMs: { type: 'duration', default: '1s', min: 10, max: '1m' },
    threads: {
      type: 'int',
      default: 0,
      min: 0,
      max: 1024,
      description:
        'compute threads (BLAS and the matmul kernels); 0 uses every CPU the process may run on (its affinity, capped by a cgroup v2 CPU quota). Workers sharing a host should split its cores: idle threads spin, and a thread that waits for a core stalls the whole step',
    },
  } as const;
}

/** The trailing fields of a worker's config schema. */
export const WORKER_CONFIG_TAIL_FIELDS = {
  shutdownGraceMs: { type: 'duration', default: '5s', min: 0 },
  logLevel: { type: 'string', default: 'info', choices: ['debug', 'info', 'warn', 'error'] },
} as const;

/** Checks the shared rules loadConfig cannot express; throws InvalidArgumentError naming the field. */
export function checkWorkerConfig(config: { readonly modelDir: string; readonly blockTokens: number }): void {
  if (config.modelDir.trim() === '')
    throw new InvalidArgumentError('config modelDir is required (--model-dir or KVMESH_MODEL_DIR)', {
      field: 'modelDir',
    });
  if (config.blockTokens % 16 !== 0)
    throw new InvalidArgumentError(`config blockTokens ${config.blockTokens} must be a multiple of 16`, {
      field: 'blockTokens',
      blockTokens: config.blockTokens,
    });
}

/** The configured node id, or `<role>-<host>-<6 hex>`. */
export function resolveWorkerNodeId(role: string, configured: string): NodeId {
  if (configured !== '') return parseNodeId(configured);
  const host = hostname()
    .replace(/[^A-Za-z0-9_-]/g, '-')
    .slice(0, 40);
  return parseNodeId(`${role}-${host || 'node'}-${randomBytes(3).toString('hex')}`);
}

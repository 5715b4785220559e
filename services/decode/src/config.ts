// Configuration of one decode worker: the model directory and the KV layout it decodes in (block
// size, codec, context), the store it reads and writes back to (NATS discovery, replicas, data
// token), its own listener, heartbeats, and the bounds on sequences, batch, KV pool and write-backs. Loaded once at start from defaults <
// KVMESH_* env < --flags; a bad value fails the start with a message naming the field.
import { hostname } from 'node:os';
import { randomBytes } from 'node:crypto';

import { InvalidArgumentError } from '@kvmesh/errors';
import { parseNodeId, type NodeId } from '@kvmesh/protocol';
import { loadConfig, type ConfigOf, type LoadConfigOptions } from '@kvmesh/runtime';

export const DECODE_CONFIG_SCHEMA = {
  nodeId: {
    type: 'string',
    default: '',
    lengthMax: 63,
    description: 'unique node id in the cluster; empty picks decode-<host>-<random>',
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
    description: 'codec of the KV blocks this worker decodes in, fetches and stores',
  },
  maxContextTokens: {
    type: 'int',
    default: 0,
    min: 0,
    description: "longest sequence; 0 means the model's max_position_embeddings",
  },
  natsUrl: {
    type: 'string',
    default: '',
    description: 'NATS server(s), comma-separated; empty runs without a store (no reuse, no write-back)',
  },
  replicas: { type: 'int', default: 2, min: 1, max: 16, description: 'copies the kvstore cluster keeps (R)' },
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
  sequencesMax: {
    type: 'int',
    default: 16,
    min: 1,
    max: 4096,
    description: 'requests admitted at once (fetching or decoding); more are refused with RESOURCE_EXHAUSTED',
  },
  maxBatch: {
    type: 'int',
    default: 8,
    min: 1,
    max: 1024,
    description: 'sequences decoded in one forward pass',
  },
  kvBlocksMax: {
    type: 'int',
    default: 0,
    min: 0,
    description: 'full KV blocks the local pool holds; 0 means sequencesMax full contexts (never full)',
  },
  maxTokensDefault: {
    type: 'int',
    default: 256,
    min: 1,
    description: 'tokens generated when a request leaves sampling.max_tokens at 0',
  },
  writeBacksMax: {
    type: 'int',
    default: 64,
    min: 0,
    max: 65536,
    description: 'finished sequences being written back at once; beyond it a write-back is skipped',
  },
  shutdownGraceMs: { type: 'duration', default: '5s', min: 0 },
  logLevel: { type: 'string', default: 'info', choices: ['debug', 'info', 'warn', 'error'] },
} as const;

export type DecodeConfig = ConfigOf<typeof DECODE_CONFIG_SCHEMA>;

/** Loads the worker's config from env and argv (see DECODE_CONFIG_SCHEMA for every field). */
export function loadDecodeConfig(options: LoadConfigOptions = {}): DecodeConfig {
  return loadConfig(DECODE_CONFIG_SCHEMA, options);
}

/** Defaults overlaid with `overrides`: for in-process workers (tests, the local launcher). */
export function decodeConfig(overrides: Partial<DecodeConfig> = {}): DecodeConfig {
  return { ...loadConfig(DECODE_CONFIG_SCHEMA, {}), ...overrides };
}

/** Checks the rules loadConfig cannot express; throws InvalidArgumentError naming the field. */
export function checkDecodeConfig(config: DecodeConfig): void {
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

/** The configured node id, or `decode-<host>-<6 hex>`. */
export function resolveDecodeNodeId(configured: string): NodeId {
  if (configured !== '') return parseNodeId(configured);
  const host = hostname()
    .replace(/[^A-Za-z0-9_-]/g, '-')
    .slice(0, 40);
  return parseNodeId(`decode-${host || 'node'}-${randomBytes(3).toString('hex')}`);
}

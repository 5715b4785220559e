// Configuration of the router service: the model it serves (tokenizer, chat template, context), the
// HTTP and gRPC listeners and their bounds (request bytes, requests in flight, max_tokens, label sets
// per metric), the optional API key, NATS (worker heartbeats and the kv-event stream) and the routing
// policy. Loaded once at start from defaults < KVMESH_* env < --flags; a bad value fails the start
// with a message naming the field.
import { InvalidArgumentError } from '@kvmesh/errors';
import { loadConfig, type ConfigOf, type LoadConfigOptions } from '@kvmesh/runtime';

import { ROUTING_DEFAULTS, ROUTING_POLICIES } from './core/index.ts';

export const ROUTER_CONFIG_SCHEMA = {
  host: { type: 'string', default: '127.0.0.1', description: 'address the HTTP and gRPC servers bind' },
  advertiseHost: { type: 'string', default: '', description: 'host clients dial; empty means --host' },
  httpPort: { type: 'int', default: 8000, min: 0, max: 65535, description: '0 picks a free port' },
  grpcPort: {
    type: 'int',
    default: 0,
    min: 0,
    max: 65535,
    description: 'port of the gRPC front door (kvmesh.v1.Router + health); 0 picks a free port',
  },
  modelDir: { type: 'string', default: '', description: 'Hugging Face model directory (required)' },
  modelName: {
    type: 'string',
    default: '',
    lengthMax: 256,
    description: "name requests use for the model; empty means the directory's last component",
  },
  natsUrl: { type: 'string', default: '', description: 'NATS server(s), comma-separated (required)' },
  policy: {
    type: 'string',
    default: ROUTING_DEFAULTS.policy,
    choices: ROUTING_POLICIES,
    description: 'how a decode worker and a prefill worker are chosen',
  },
  storeGBps: {
    type: 'number',
    default: 1,
    min: 0.001,
    description:
      'bandwidth of a block fetch from the store into a worker (GB/s): prices a cached token by its KV bytes until the workers report a measured fetch rate',
  },
  farGBps: { type: 'number', default: 0.5, min: 0.001, description: 'the same for a copy in far memory' },
  ssdGBps: { type: 'number', default: 0.25, min: 0.001, description: 'the same for a copy on SSD' },
  workerGflops: {
    type: 'number',
    default: 100,
    min: 0.001,
    description:
      "a worker's sustained dense GFLOP/s: prices a computed token at 2 FLOPs per weight until the workers report a measured prefill rate",
  },
  activeSequenceMs: {
    type: 'number',
    default: 10,
    min: 0,
    description:
      'delay each sequence already running on a worker adds to a new request (kv-aware) until the decode workers report a measured one',
  },
  decodeAttemptsMax: {
    type: 'int',
    default: 4,
    min: 1,
    max: 32,
    description:
      'decode workers tried for one request when one is full or unreachable before its first token',
  },
  decodeRetryDelayMs: {
    type: 'duration',
    default: '50ms',
    min: 0,
    max: '10s',
    description: 'wait before trying again once every decode worker refused (times the attempt number)',
  },
  inflightBlocksMax: {
    type: 'int',
    default: 200_000,
    min: 0,
    description:
      'prompt blocks of requests in flight tracked per worker for prefix affinity (beyond it a request is routed without)',
  },
  prefillUncachedTokensMin: {
    type: 'int',
    default: ROUTING_DEFAULTS.prefillUncachedTokensMin,
    min: 0,
    description: 'uncached prompt tokens from which a request is prefilled on a prefill worker',
  },
  blockTokens: {
    type: 'int',
    default: 64,
    min: 16,
    max: 256,
    description: 'tokens per KV block (a multiple of 16); must match the workers',
  },
  codec: {
    type: 'string',
    default: 'f32',
    choices: ['f32', 'f16', 'kivi8', 'kivi4', 'kivi2'],
    description: 'codec the workers compute KV in',
  },
  maxContextTokens: {
    type: 'int',
    default: 0,
    min: 0,
    description: "longest sequence (prompt + max_tokens); 0 means the model's max_position_embeddings",
  },
  maxTokensDefault: { type: 'int', default: 256, min: 1, description: 'max_tokens when a request omits it' },
  maxTokensMax: { type: 'int', default: 4096, min: 1, description: 'largest max_tokens a request may ask' },
  requestBytesMax: {
    type: 'bytes',
    default: '1MiB',
    min: 1024,
    description:
      'largest HTTP request body or gRPC request message; larger ones get 413 / RESOURCE_EXHAUSTED',
  },
  requestsInFlightMax: {
    type: 'int',
    default: 256,
    min: 1,
    description: 'generations running at once over HTTP and gRPC; more get 429 / RESOURCE_EXHAUSTED',
  },
  metricsLabelSetsMax: {
    type: 'int',
    default: 1000,
    min: 1,
    description: 'label sets per /metrics metric; further ones are counted in one __overflow__ series',
  },
  apiKey: {
    type: 'string',
    default: '',
    lengthMax: 512,
    description:
      'when set, /v1 requests and gRPC calls need "Authorization: Bearer <key>" (/health, /metrics do not)',
  },
  workerHeartbeatIntervalMs: {
    type: 'duration',
    default: '1s',
    min: 10,
    max: '1m',
    description: "the workers' and kvstore nodes' heartbeat interval (liveness is judged on it)",
  },
  workerMissedHeartbeatsMax: { type: 'int', default: 3, min: 1, max: 100 },
  workerTimeoutMs: {
    type: 'duration',
    default: '10m',
    min: 1,
    description: 'deadline of one prefill call and of one whole decode stream',
  },
  shutdownGraceMs: { type: 'duration', default: '5s', min: 0 },
  logLevel: { type: 'string', default: 'info', choices: ['debug', 'info', 'warn', 'error'] },
} as const;

export type RouterConfig = ConfigOf<typeof ROUTER_CONFIG_SCHEMA>;

/** Loads the router's config from env and argv (see ROUTER_CONFIG_SCHEMA for every field). */
export function loadRouterConfig(options: LoadConfigOptions = {}): RouterConfig {
  return loadConfig(ROUTER_CONFIG_SCHEMA, options);
}

/** Defaults overlaid with `overrides`: for an in-process router (tests, the local launcher). */
export function routerConfig(overrides: Partial<RouterConfig> = {}): RouterConfig {
  return { ...loadConfig(ROUTER_CONFIG_SCHEMA, {}), ...overrides };
}

/** Checks the rules loadConfig cannot express; throws InvalidArgumentError naming the field. */
export function checkRouterConfig(config: RouterConfig): void {
  if (config.modelDir.trim() === '')
    throw new InvalidArgumentError('config modelDir is required (--model-dir or KVMESH_MODEL_DIR)', {
      field: 'modelDir',
    });
  if (config.natsUrl.trim() === '')
    throw new InvalidArgumentError('config natsUrl is required (--nats-url or KVMESH_NATS_URL)', {
      field: 'natsUrl',
    });
  if (config.blockTokens % 16 !== 0)
    throw new InvalidArgumentError(`config blockTokens ${config.blockTokens} must be a multiple of 16`, {
      field: 'blockTokens',
      blockTokens: config.blockTokens,
    });
  if (config.maxTokensDefault > config.maxTokensMax)
    throw new InvalidArgumentError(
      `config maxTokensDefault ${config.maxTokensDefault} exceeds maxTokensMax ${config.maxTokensMax}`,
      { field: 'maxTokensDefault' },
    );
}

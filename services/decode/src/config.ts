// Configuration of one decode worker: the model directory and the KV layout it decodes in (block
// size, codec, context), the store it reads and writes back to (NATS discovery, replicas, data
// token), its own listener, heartbeats, and the bounds on sequences, batch, KV pool and write-backs. Loaded once at start from defaults <
// KVMESH_* env < --flags; a bad value fails the start with a message naming the field.
import { loadConfig, type ConfigOf, type LoadConfigOptions } from '@kvmesh/runtime';
import { WORKER_CONFIG_TAIL_FIELDS, checkWorkerConfig, workerConfigFields } from '@kvmesh/worker';

export const DECODE_CONFIG_SCHEMA = {
  ...workerConfigFields({
    role: 'decode',
    codecDescription: 'codec of the KV blocks this worker decodes in, fetches and stores',
    natsUrlDescription:
      'NATS server(s), comma-separated; empty runs without a store (no reuse, no write-back)',
  }),
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
  localCacheBlocksMax: {
    type: 'int',
    default: 4096,
    min: 0,
    description:
      'full blocks of finished sequences kept in the local pool for prefix reuse (published as kv events for kv-aware routing); freed first when the pool is full; 0 turns the cache off',
  },
  sequenceKvBlocksMax: {
    type: 'int',
    default: 0,
    min: 0,
    description:
      'full KV blocks one sequence keeps in the local pool; older ones stay in the store and are attended to there (DistAttention); 0 keeps the whole context local',
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
  ...WORKER_CONFIG_TAIL_FIELDS,
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
  checkWorkerConfig(config);
}

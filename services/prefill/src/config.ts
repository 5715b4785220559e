// Configuration of one prefill worker: the model directory and the KV layout it computes (block
// size, codec, context), the store it reads and writes (NATS discovery, replicas, data token), its
// own listener, heartbeats and the request queue bound. Loaded once at start from defaults <
// KVMESH_* env < --flags; a bad value fails the start with a message naming the field.
import { loadConfig, type ConfigOf, type LoadConfigOptions } from '@kvmesh/runtime';
import { WORKER_CONFIG_TAIL_FIELDS, checkWorkerConfig, workerConfigFields } from '@kvmesh/worker';

export const PREFILL_CONFIG_SCHEMA = {
  ...workerConfigFields({
    role: 'prefill',
    codecDescription: 'codec of the KV blocks this worker computes and stores',
    natsUrlDescription:
      'NATS server(s), comma-separated; empty runs without a store (no reuse, no heartbeats)',
  }),
  queueDepthMax: {
    type: 'int',
    default: 16,
    min: 0,
    max: 65536,
    description: 'requests waiting behind the running one; more are refused with RESOURCE_EXHAUSTED',
  },
  ...WORKER_CONFIG_TAIL_FIELDS,
} as const;

export type PrefillConfig = ConfigOf<typeof PREFILL_CONFIG_SCHEMA>;

/** Loads the worker's config from env and argv (see PREFILL_CONFIG_SCHEMA for every field). */
export function loadPrefillConfig(options: LoadConfigOptions = {}): PrefillConfig {
  return loadConfig(PREFILL_CONFIG_SCHEMA, options);
}

/** Defaults overlaid with `overrides`: for in-process workers (tests, the local launcher). */
export function prefillConfig(overrides: Partial<PrefillConfig> = {}): PrefillConfig {
  return { ...loadConfig(PREFILL_CONFIG_SCHEMA, {}), ...overrides };
}

/** Checks the rules loadConfig cannot express; throws InvalidArgumentError naming the field. */
export function checkPrefillConfig(config: PrefillConfig): void {
  checkWorkerConfig(config);
}

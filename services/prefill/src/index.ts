// Public surface of @kvmesh/prefill: start a worker in-process (tests, the local launcher), its
// config schema and handle, and the pure core (request validation, import / put plan, bounded
// serial queue, typed errors) for simulations and the router's planning.
export {
  PREFILL_CONFIG_SCHEMA,
  checkPrefillConfig,
  loadPrefillConfig,
  prefillConfig,
  type PrefillConfig,
} from './config.ts';
export {
  PREFILL_ROLE,
  WORKER_SERVICE_NAME,
  startPrefillWorker,
  type PrefillBlockStore,
  type PrefillWorker,
  type PrefillWorkerStats,
  type StartPrefillWorkerOptions,
} from './worker.ts';
export * from './core/index.ts';

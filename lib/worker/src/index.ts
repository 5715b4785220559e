// Public surface of @kvmesh/worker: what the prefill and decode workers share — the common config
// fields and checks, and the pure core (typed request errors, shared request validation).
export {
  WORKER_CONFIG_TAIL_FIELDS,
  checkWorkerConfig,
  resolveWorkerNodeId,
  workerConfigFields,
  type WorkerConfigTexts,
} from './config.ts';
export * from './core/index.ts';
export * from './store.ts';
export * from './main.ts';

// Public surface of @kvmesh/decode: start a worker in-process (tests, the local launcher), its
// config schema and handle, and the pure core (request validation, fetch / write-back plan,
// bounded sequence slots, the continuous-batching step loop, typed errors) for simulations.
export {
  DECODE_CONFIG_SCHEMA,
  checkDecodeConfig,
  decodeConfig,
  loadDecodeConfig,
  type DecodeConfig,
} from './config.ts';
export {
  DECODE_ROLE,
  WORKER_SERVICE_NAME,
  startDecodeWorker,
  type DecodeBlockStore,
  type DecodeWorker,
  type DecodeWorkerStats,
  type StartDecodeWorkerOptions,
} from './worker.ts';
export * from './core/index.ts';

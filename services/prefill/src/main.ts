// Entry point of one prefill worker process: config (KVMESH_* env, --flags) → startPrefillWorker
// (logger, model, store client, gRPC server, heartbeats) → the ready line on stdout → graceful
// shutdown on SIGTERM / SIGINT (a second signal exits at once). Wiring only.
import { runWorkerMain } from '@kvmesh/worker';

import { PREFILL_CONFIG_SCHEMA, checkPrefillConfig, loadPrefillConfig } from './config.ts';
import { startPrefillWorker } from './worker.ts';

await runWorkerMain({
  role: 'prefill',
  schema: PREFILL_CONFIG_SCHEMA,
  load: loadPrefillConfig,
  check: checkPrefillConfig,
  start: (config) => startPrefillWorker(config),
});

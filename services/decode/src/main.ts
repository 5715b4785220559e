// Entry point of one decode worker process: config (KVMESH_* env, --flags) → startDecodeWorker
// (logger, model, store client, step loop, gRPC server, heartbeats) → the ready line on stdout →
// graceful shutdown on SIGTERM / SIGINT (a second signal exits at once). Wiring only.
import { runWorkerMain } from '@kvmesh/worker';

import { DECODE_CONFIG_SCHEMA, checkDecodeConfig, loadDecodeConfig } from './config.ts';
import { startDecodeWorker } from './worker.ts';

await runWorkerMain({
  role: 'decode',
  schema: DECODE_CONFIG_SCHEMA,
  load: loadDecodeConfig,
  check: checkDecodeConfig,
  start: (config) => startDecodeWorker(config),
});

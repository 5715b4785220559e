// Entry point of one prefill worker process: config (KVMESH_* env, --flags) → startPrefillWorker
// (logger, model, store client, gRPC server, heartbeats) → the ready line on stdout → graceful
// shutdown on SIGTERM / SIGINT (a second signal exits at once). Wiring only.
import { announceReady, describeConfig } from '@kvmesh/runtime';

import {
  PREFILL_CONFIG_SCHEMA,
  checkPrefillConfig,
  loadPrefillConfig,
  type PrefillConfig,
} from './config.ts';
import { startPrefillWorker } from './worker.ts';

const argv = process.argv.slice(2);
if (argv.includes('--help')) {
  process.stdout.write(
    `prefill worker; every setting is a --flag or a KVMESH_* variable:\n${describeConfig(PREFILL_CONFIG_SCHEMA)}\n`,
  );
  process.exit(0);
}

let config: PrefillConfig;
try {
  config = loadPrefillConfig({ env: process.env, argv });
  checkPrefillConfig(config);
} catch (err) {
  process.stderr.write(`prefill: ${(err as Error).message}\n`);
  process.exit(2);
}

const worker = await startPrefillWorker(config).catch((err: unknown) => {
  process.stderr.write(`prefill: cannot start: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exit(1);
});

let stopping = false;
const stop = (signal: NodeJS.Signals): void => {
  if (stopping) {
    process.stderr.write(`prefill: ${signal} again, exiting now\n`);
    process.exit(1);
  }
  stopping = true;
  worker.close().then(
    () => process.exit(0),
    (err: unknown) => {
      process.stderr.write(`prefill: shutdown failed: ${err instanceof Error ? err.message : String(err)}\n`);
      process.exit(1);
    },
  );
};
process.on('SIGTERM', stop);
process.on('SIGINT', stop);

announceReady({
  nodeId: worker.nodeId,
  grpcAddress: worker.grpcAddress,
  role: 'prefill',
  model: worker.model.name,
  blockTokens: worker.blockTokens,
  codec: worker.codec,
});

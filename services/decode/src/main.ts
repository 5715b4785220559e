// Entry point of one decode worker process: config (KVMESH_* env, --flags) → startDecodeWorker
// (logger, model, engine and step loop, store client, gRPC server, heartbeats) → the ready line on
// stdout → graceful shutdown on SIGTERM / SIGINT (a second signal exits at once). Wiring only.
import { announceReady, describeConfig } from '@kvmesh/runtime';

import { DECODE_CONFIG_SCHEMA, checkDecodeConfig, loadDecodeConfig, type DecodeConfig } from './config.ts';
import { startDecodeWorker } from './worker.ts';

const argv = process.argv.slice(2);
if (argv.includes('--help')) {
  process.stdout.write(
    `decode worker; every setting is a --flag or a KVMESH_* variable:\n${describeConfig(DECODE_CONFIG_SCHEMA)}\n`,
  );
  process.exit(0);
}

let config: DecodeConfig;
try {
  config = loadDecodeConfig({ env: process.env, argv });
  checkDecodeConfig(config);
} catch (err) {
  process.stderr.write(`decode: ${(err as Error).message}\n`);
  process.exit(2);
}

const worker = await startDecodeWorker(config).catch((err: unknown) => {
  process.stderr.write(`decode: cannot start: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exit(1);
});

let stopping = false;
const stop = (signal: NodeJS.Signals): void => {
  if (stopping) {
    process.stderr.write(`decode: ${signal} again, exiting now\n`);
    process.exit(1);
  }
  stopping = true;
  worker.close().then(
    () => process.exit(0),
    (err: unknown) => {
      process.stderr.write(`decode: shutdown failed: ${err instanceof Error ? err.message : String(err)}\n`);
      process.exit(1);
    },
  );
};
process.on('SIGTERM', stop);
process.on('SIGINT', stop);

announceReady({
  nodeId: worker.nodeId,
  grpcAddress: worker.grpcAddress,
  role: 'decode',
  model: worker.model.name,
  blockTokens: worker.blockTokens,
  codec: worker.codec,
});

// Entry point of the tiering service process (one per host): config (KVMESH_* env, --flags) →
// startTieringService → the ready line on stdout → graceful shutdown on SIGTERM / SIGINT (a second
// signal exits at once). Wiring only: everything the service does lives in service.ts and below.
import { announceReady, describeConfig, stopOnSignals } from '@kvmesh/runtime';

import { TIERING_CONFIG_SCHEMA, loadTieringConfig, type TieringConfig } from './config.ts';
import { startTieringService } from './service.ts';

const argv = process.argv.slice(2);
if (argv.includes('--help')) {
  process.stdout.write(
    `tiering service; every setting is a --flag or a KVMESH_* variable:\n${describeConfig(TIERING_CONFIG_SCHEMA)}\n`,
  );
  process.exit(0);
}

let config: TieringConfig;
try {
  config = loadTieringConfig({ env: process.env, argv });
} catch (err) {
  process.stderr.write(`tiering: ${(err as Error).message}\n`);
  process.exit(2);
}

const service = await startTieringService(config).catch((err: unknown) => {
  process.stderr.write(`tiering: cannot start: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exit(1);
});

stopOnSignals({ role: 'tiering', close: () => service.close() });

announceReady({
  serviceId: service.serviceId,
  grpcAddress: service.grpcAddress,
  dataAddress: service.dataAddress,
  far: service.far?.description ?? 'none',
  farPath: service.far?.path ?? '',
  ssdDir: service.ssdDir,
  ssdDirectIo: service.ssdDirectIo,
});

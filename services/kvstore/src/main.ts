// Entry point of one kvstore node process: config (KVMESH_* env, --flags) → startKvStoreNode → the
// ready line on stdout → graceful shutdown on SIGTERM / SIGINT (a second signal exits at once).
// Wiring only: everything the node does lives in node.ts and the modules it assembles.
import { announceReady, describeConfig, stopOnSignals } from '@kvmesh/runtime';

import { KVSTORE_CONFIG_SCHEMA, loadKvStoreConfig, type KvStoreConfig } from './config.ts';
import { startKvStoreNode } from './node.ts';

const argv = process.argv.slice(2);
if (argv.includes('--help')) {
  process.stdout.write(
    `kvstore node; every setting is a --flag or a KVMESH_* variable:\n${describeConfig(KVSTORE_CONFIG_SCHEMA)}\n`,
  );
  process.exit(0);
}

let config: KvStoreConfig;
try {
  config = loadKvStoreConfig({ env: process.env, argv });
} catch (err) {
  process.stderr.write(`kvstore: ${(err as Error).message}\n`);
  process.exit(2);
}

const node = await startKvStoreNode(config).catch((err: unknown) => {
  process.stderr.write(`kvstore: cannot start: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exit(1);
});

stopOnSignals({ role: 'kvstore', close: () => node.close() });

announceReady({
  nodeId: node.nodeId,
  grpcAddress: node.grpcAddress,
  dataAddress: node.dataAddress,
  replicas: node.replicas,
  standalone: node.standalone,
});

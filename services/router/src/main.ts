// Entry point of the router process: config (KVMESH_* env, --flags) → startRouter (logger, model
// tokenizer, NATS, membership, index feed, HTTP and gRPC servers) → the ready line on stdout → graceful
// shutdown on SIGTERM / SIGINT (a second signal exits at once). Wiring only.
import { announceReady, describeConfig, stopOnSignals } from '@kvmesh/runtime';

import { ROUTER_CONFIG_SCHEMA, checkRouterConfig, loadRouterConfig, type RouterConfig } from './config.ts';
import { startRouter } from './router.ts';

const argv = process.argv.slice(2);
if (argv.includes('--help')) {
  process.stdout.write(
    `router; every setting is a --flag or a KVMESH_* variable:\n${describeConfig(ROUTER_CONFIG_SCHEMA)}\n`,
  );
  process.exit(0);
}

let config: RouterConfig;
try {
  config = loadRouterConfig({ env: process.env, argv });
  checkRouterConfig(config);
} catch (err) {
  process.stderr.write(`router: ${(err as Error).message}\n`);
  process.exit(2);
}

const router = await startRouter(config).catch((err: unknown) => {
  process.stderr.write(`router: cannot start: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exit(1);
});

stopOnSignals({ role: 'router', close: () => router.close() });

announceReady({
  role: 'router',
  httpAddress: router.httpAddress,
  grpcAddress: router.grpcAddress,
  model: router.modelName,
  policy: router.policy,
});

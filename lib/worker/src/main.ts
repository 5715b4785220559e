// The process entry both workers share: config from KVMESH_* env and --flags (--help lists them),
// start, the ready line on stdout, graceful shutdown on SIGTERM / SIGINT (a second signal exits at
// once). A bad config exits 2, a failed start exits 1.
import { announceReady, describeConfig, stopOnSignals, type ConfigSchema } from '@kvmesh/runtime';

/** What the ready line reports of a started worker. */
export interface StartedWorker {
  readonly nodeId: string;
  readonly grpcAddress: string;
  readonly model: { readonly name: string };
  readonly blockTokens: number;
  readonly codec: string;
  close(): Promise<void>;
}

export interface WorkerMainSpec<C, W extends StartedWorker> {
  role: string;
  schema: ConfigSchema;
  load(options: { env: NodeJS.ProcessEnv; argv: string[] }): C;
  check(config: C): void;
  start(config: C): Promise<W>;
}

const message = (err: unknown): string => (err instanceof Error ? err.message : String(err));

export async function runWorkerMain<C, W extends StartedWorker>(spec: WorkerMainSpec<C, W>): Promise<void> {
  const { role } = spec;
  const argv = process.argv.slice(2);
  if (argv.includes('--help')) {
    process.stdout.write(
      `${role} worker; every setting is a --flag or a KVMESH_* variable:\n${describeConfig(spec.schema)}\n`,
    );
    process.exit(0);
  }
  let config: C;
  try {
    config = spec.load({ env: process.env, argv });
    spec.check(config);
  } catch (err) {
    process.stderr.write(`${role}: ${message(err)}\n`);
    process.exit(2);
  }
  const worker = await spec.start(config).catch((err: unknown) => {
    process.stderr.write(`${role}: cannot start: ${message(err)}\n`);
    process.exit(1);
  });
  stopOnSignals({ role, close: () => worker.close() });
  announceReady({
    nodeId: worker.nodeId,
    grpcAddress: worker.grpcAddress,
    role,
    model: worker.model.name,
    blockTokens: worker.blockTokens,
    codec: worker.codec,
  });
}

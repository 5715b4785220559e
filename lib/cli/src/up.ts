// `kvmesh up`: the local mesh on one machine. Starts nats-server (JetStream), the host's tiering
// service (far memory + SSD; kvstore nodes demote evicted blocks to it), the kvstore nodes, prefill
// and decode workers and the router as child processes on loopback, each waiting for the previous
// tier's ready line; streams their logs to stderr with a per-service prefix; prints the
// router's gRPC address (`kvmesh grpc: 127.0.0.1:<port> ...`) and then
// `kvmesh ready: http://127.0.0.1:<port>/v1`; on Ctrl-C or SIGTERM stops them in reverse order
// (SIGTERM, then SIGKILL after a grace period) so no child outlives it.
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { createInterface } from 'node:readline';

import { generateModel } from '@kvmesh/engine';
import { EXIT_WITH_PARENT_ENV, freePort, parseBytes, parseReadyLine, usableCpus } from '@kvmesh/runtime';

const REPO_ROOT = resolve(new URL('../../..', import.meta.url).pathname);
const READY_TIMEOUT_MS = 60_000;
const STOP_GRACE_MS = 8_000;
const SETPRIV = '/usr/bin/setpriv';

export const UP_USAGE = `usage: kvmesh up [options]

options:
  --model DIR          Hugging Face model directory (default: generate the tiny model in .kvmesh/models/tiny)
  --port N             router HTTP port (default 8000; 0 picks a free one)
  --kvstore N          kvstore nodes (default 2)      --replicas N   copies per block (default min(2, kvstore))
  --prefill N          prefill workers (default 1)    --decode N     decode workers (default 1)
  --codec C            KV codec: f32, f16, kivi8, kivi4, kivi2 (default f32)
  --block-tokens N     tokens per KV block (default 64)
  --policy P           kv-aware | round-robin | least-loaded (default kv-aware)
  --far-bytes SIZE     far-memory pool of the tiering service (default 256MiB; 0: none)
  --ssd-bytes SIZE     SSD tier of the tiering service (default 2GiB; 0: none)
  --tier-dir DIR       SSD tier directory (default: a temporary one, removed at exit)
  --no-tiering         no tiering service: kvstore nodes drop what they evict
  --threads N          compute threads per worker (default: this host's cores split among the workers)
  --kvstore-data-port N  data-channel port of kvstore node 0; node i listens on N + i (default: free ports)
`;

export interface UpOptions {
  modelDir?: string;
  port: number;
  kvstore: number;
  replicas?: number;
  prefill: number;
  decode: number;
  codec: string;
  blockTokens: number;
  policy: string;
  tiering: boolean;
  /** Byte sizes as given (e.g. '256MiB'), checked by parseUpArgs. */
  farBytes: string;
  ssdBytes: string;
  tierDir?: string;
  /** Compute threads per prefill and decode worker; undefined: the cores split among them. */
  threads?: number;
  /** Data-channel port of kvstore node 0 (node i listens on it + i); undefined: free ports. */
  kvstoreDataPort?: number;
}

class UsageError extends Error {}

function intOption(flag: string, raw: string | undefined, min: number, max: number): number {
  const value = Number(raw);
  if (raw === undefined || !Number.isInteger(value) || value < min || value > max) {
    throw new UsageError(`${flag} must be an integer in [${min}, ${max}], got '${raw ?? ''}'`);
  }
  return value;
}

function byteOption(flag: string, raw: string | undefined): string {
  try {
    parseBytes(raw ?? '');
  } catch {
    throw new UsageError(`${flag} must be a byte size such as 512MiB or 2GiB, got '${raw ?? ''}'`);
  }
  return raw as string;
}

export function parseUpArgs(args: readonly string[]): UpOptions {
  const options: UpOptions = {
    port: 8000,
    kvstore: 2,
    prefill: 1,
    decode: 1,
    codec: 'f32',
    blockTokens: 64,
    policy: 'kv-aware',
    tiering: true,
    farBytes: '256MiB',
    ssdBytes: '2GiB',
  };
  for (let i = 0; i < args.length; i++) {
    const flag = args[i] as string;
    const value = (): string | undefined => args[++i];
    switch (flag) {
      case '--model':
        options.modelDir = value();
        if (options.modelDir === undefined) throw new UsageError('--model needs a directory');
        break;
      case '--port':
        options.port = intOption(flag, value(), 0, 65535);
        break;
      case '--kvstore':
        options.kvstore = intOption(flag, value(), 1, 16);
        break;
      case '--replicas':
        options.replicas = intOption(flag, value(), 1, 16);
        break;
      case '--prefill':
        options.prefill = intOption(flag, value(), 0, 16);
        break;
      case '--decode':
        options.decode = intOption(flag, value(), 1, 16);
        break;
      case '--codec': {
        const codec = value();
        if (!['f32', 'f16', 'kivi8', 'kivi4', 'kivi2'].includes(codec ?? '')) {
          throw new UsageError(`--codec must be one of f32, f16, kivi8, kivi4, kivi2, got '${codec ?? ''}'`);
        }
        options.codec = codec as string;
        break;
      }
      case '--block-tokens':
        options.blockTokens = intOption(flag, value(), 16, 256);
        if (options.blockTokens % 16 !== 0) throw new UsageError('--block-tokens must be a multiple of 16');
        break;
      case '--policy': {
        const policy = value();
        if (!['kv-aware', 'round-robin', 'least-loaded'].includes(policy ?? '')) {
          throw new UsageError(
            `--policy must be kv-aware, round-robin or least-loaded, got '${policy ?? ''}'`,
          );
        }
        options.policy = policy as string;
        break;
      }
      case '--far-bytes':
        options.farBytes = byteOption(flag, value());
        break;
      case '--ssd-bytes':
        options.ssdBytes = byteOption(flag, value());
        break;
      case '--tier-dir':
        options.tierDir = value();
        if (options.tierDir === undefined || options.tierDir === '')
          throw new UsageError('--tier-dir needs a directory');
        break;
      case '--no-tiering':
        options.tiering = false;
        break;
      case '--threads':
        options.threads = intOption(flag, value(), 1, 1024);
        break;
      case '--kvstore-data-port':
        options.kvstoreDataPort = intOption(flag, value(), 1, 65535);
        break;
      default:
        throw new UsageError(`unknown argument '${flag}'`);
    }
  }
  if (options.tiering && parseBytes(options.farBytes) === 0 && parseBytes(options.ssdBytes) === 0) {
    throw new UsageError('--far-bytes and --ssd-bytes are both 0: use --no-tiering');
  }
  if (options.kvstoreDataPort !== undefined && options.kvstoreDataPort + options.kvstore - 1 > 65535) {
    throw new UsageError(
      `--kvstore-data-port ${options.kvstoreDataPort} leaves no port for kvstore node ${options.kvstore - 1}`,
    );
  }
  if (options.replicas !== undefined && options.replicas > options.kvstore) {
    throw new UsageError(`--replicas ${options.replicas} needs at least that many kvstore nodes`);
  }
  return options;
}

/**
 * Compute threads of each worker: --threads, else the CPUs this launcher may use (usableCpus) split
 * evenly among the prefill and decode workers (at least 1). Each worker left at its default would start a thread per core,
 * and on a shared host their spinning, descheduled threads stalled every step (the mesh bench's warm
 * TTFT P50 went from about 150 to 27 ms on 2 cores with 4 workers once each had one thread).
 */
export function workerThreads(options: Pick<UpOptions, 'threads' | 'prefill' | 'decode'>): number {
  if (options.threads !== undefined) return options.threads;
  return Math.max(1, Math.floor(usableCpus() / Math.max(1, options.prefill + options.decode)));
}

interface Child {
  name: string;
  process: ChildProcess;
  exited: Promise<void>;
}

/** Prefixes every line of a child's stream onto our stderr. */
function prefixLines(name: string, stream: NodeJS.ReadableStream, out: NodeJS.WritableStream): void {
  const lines = createInterface({ input: stream });
  lines.on('line', (line) => out.write(`[${name}] ${line}\n`));
}

function startChild(
  name: string,
  command: string,
  args: string[],
  env: Record<string, string>,
  readyWhen: (line: string) => Record<string, unknown> | undefined,
  children: Child[],
): Promise<Record<string, unknown>> {
  // Our own services get stdin as a pipe that only this process holds: if it dies without stopping
  // them (SIGKILL, a crash), the pipe's end tells them to stop (stopOnSignals in @kvmesh/runtime).
  const ours = command === process.execPath;
  const child = spawn(command, args, {
    cwd: REPO_ROOT,
    env: { ...process.env, ...(ours ? { [EXIT_WITH_PARENT_ENV]: '1' } : {}), ...env },
    stdio: [ours ? 'pipe' : 'ignore', 'pipe', 'pipe'],
  });
  const exited = new Promise<void>((done) => child.once('exit', () => done()));
  children.push({ name, process: child, exited });
  prefixLines(name, child.stderr as NodeJS.ReadableStream, process.stderr);
  return new Promise((resolveReady, reject) => {
    const timer = setTimeout(
      () => reject(new Error(`${name} was not ready within ${READY_TIMEOUT_MS / 1000} s`)),
      READY_TIMEOUT_MS,
    );
    const lines = createInterface({ input: child.stdout as NodeJS.ReadableStream });
    lines.on('line', (line) => {
      const info = readyWhen(line);
      if (info !== undefined) {
        clearTimeout(timer);
        resolveReady(info);
      } else {
        process.stderr.write(`[${name}] ${line}\n`);
      }
    });
    child.once('exit', (code, signal) => {
      clearTimeout(timer);
      reject(new Error(`${name} exited (code ${code}, signal ${signal}) before it was ready`));
    });
  });
}

async function stopAll(children: Child[]): Promise<void> {
  for (const child of [...children].reverse()) {
    if (child.process.exitCode !== null || child.process.signalCode !== null) continue;
    child.process.kill('SIGTERM');
    const killed = setTimeout(() => child.process.kill('SIGKILL'), STOP_GRACE_MS);
    await child.exited;
    clearTimeout(killed);
  }
}

function ensureModel(modelDir: string | undefined): string {
  if (modelDir !== undefined) {
    if (!existsSync(join(modelDir, 'config.json')))
      throw new UsageError(`--model ${modelDir} has no config.json`);
    return modelDir;
  }
  const dir = join(REPO_ROOT, '.kvmesh', 'models', 'tiny');
  if (!existsSync(join(dir, 'config.json'))) {
    process.stderr.write(`kvmesh up: generating the tiny model in ${dir}\n`);
    mkdirSync(dir, { recursive: true });
    generateModel({ outDir: dir, preset: 'tiny', seed: 0 });
  }
  return dir;
}

/** Runs the mesh until SIGINT/SIGTERM; resolves with the exit code. */
export async function runUp(args: readonly string[]): Promise<number> {
  let options: UpOptions;
  let modelDir: string;
  try {
    options = parseUpArgs(args);
    modelDir = ensureModel(options.modelDir);
  } catch (err) {
    if (err instanceof UsageError) {
      process.stderr.write(`kvmesh up: ${err.message}\n\n${UP_USAGE}`);
      return 2;
    }
    throw err;
  }
  const children: Child[] = [];
  const storeDir = mkdtempSync(join(tmpdir(), 'kvmesh-up-'));
  const tsx = createRequire(import.meta.url).resolve('tsx');
  // KVMESH_NODE_ARGS: extra Node flags for every service (e.g. '--cpu-prof --cpu-prof-dir=/tmp/prof',
  // which NODE_OPTIONS refuses).
  const nodeArgs = (process.env['KVMESH_NODE_ARGS'] ?? '').split(' ').filter((a) => a.length > 0);
  const node = (entry: string): [string, string[]] => [
    process.execPath,
    [...nodeArgs, '--import', tsx, join(REPO_ROOT, entry)],
  ];
  const token = randomBytes(16).toString('hex');
  /** Files outside storeDir the children create and, if killed, leave behind (the far pool). */
  const leftovers: string[] = [];
  const removeLeftovers = (): void => {
    for (const path of leftovers) rmSync(path, { force: true });
  };
  let stopping: Promise<number> | undefined;
  const stop = (code: number): Promise<number> => {
    stopping ??= (async () => {
      process.stderr.write('kvmesh up: stopping\n');
      await stopAll(children);
      rmSync(storeDir, { recursive: true, force: true });
      removeLeftovers();
      return code;
    })();
    return stopping;
  };
  let signalled: (code: number) => void = () => undefined;
  const stopped = new Promise<number>((done) => (signalled = done));
  const onSignal = (): void => void stop(0).then(signalled);
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  // NOTE: whoever reads our output (a terminal, a pipe to a bench) going away is an EPIPE on the
  // next write; unhandled, it would end this process with the mesh still running. It means no one is
  // watching any more: stop the mesh, quietly.
  const onOutputError = (): void => onSignal();
  process.stdout.on('error', onOutputError);
  process.stderr.on('error', onOutputError);
  // Last resort for any other way out (an uncaught error): children still running are killed.
  process.once('exit', () => {
    for (const child of children)
      if (child.process.exitCode === null && child.process.signalCode === null) child.process.kill('SIGKILL');
    removeLeftovers();
  });
  try {
    const natsPort = await freePort();
    const natsUrl = `nats://127.0.0.1:${natsPort}`;
    // nats-server prints no ready line of ours: its readiness is its port accepting connections.
    const natsArgs = ['-js', '-a', '127.0.0.1', '-p', String(natsPort), '-sd', storeDir];
    // nats-server cannot watch a pipe: util-linux's setpriv gives it a parent-death signal instead.
    void startChild(
      'nats',
      ...((existsSync(SETPRIV)
        ? [SETPRIV, ['--pdeathsig', 'TERM', 'nats-server', ...natsArgs]]
        : ['nats-server', natsArgs]) as [string, string[]]),
      {},
      () => undefined,
      children,
    ).catch(() => undefined);
    await waitForPort(natsPort);
    const replicas = options.replicas ?? Math.min(2, options.kvstore);
    const common = {
      KVMESH_NATS_URL: natsUrl,
      KVMESH_DATA_TOKEN: token,
      KVMESH_REPLICAS: String(replicas),
      KVMESH_BLOCK_TOKENS: String(options.blockTokens),
      KVMESH_CODEC: options.codec,
      KVMESH_MODEL_DIR: modelDir,
    };
    // One tiering service per host (this one), before the kvstore nodes that demote to it.
    let tieringAddress = '';
    if (options.tiering) {
      const [tc, ta] = node('services/tiering/src/main.ts');
      const serviceId = `tiering-up-${randomBytes(3).toString('hex')}`;
      // NOTE: a shared-memory file holds RAM until it is removed: the service removes it when it
      // stops cleanly, and this launcher does too, in case the service was killed.
      const farPath = join('/dev/shm', `kvmesh-far-${serviceId}`);
      leftovers.push(farPath);
      try {
        const tiering = await startChild(
          'tiering',
          tc,
          ta,
          {
            KVMESH_SERVICE_ID: serviceId,
            KVMESH_DATA_TOKEN: token,
            KVMESH_FAR_BYTES: options.farBytes,
            KVMESH_SSD_BYTES: options.ssdBytes,
            KVMESH_SSD_DIR: options.tierDir ?? join(storeDir, 'ssd'),
            KVMESH_FAR_PATH: farPath,
            // Far memory is demoted to SSD at a clean stop only when the SSD tier outlives the run.
            KVMESH_FAR_DRAIN_ON_SHUTDOWN: options.tierDir === undefined ? 'false' : 'true',
          },
          parseReadyLine,
          children,
        );
        if (typeof tiering.grpcAddress !== 'string')
          throw new Error('the tiering service announced no gRPC address');
        tieringAddress = tiering.grpcAddress;
      } catch (err) {
        // NOTE: tiering extends the store; without it the mesh still serves (evicted blocks are dropped).
        process.stderr.write(
          `kvmesh up: the tiering service did not start (${err instanceof Error ? err.message : String(err)}); ` +
            'going on without tiering (see --far-bytes, --ssd-bytes, --tier-dir, --no-tiering)\n',
        );
      }
    }
    const [cmd, kvArgs] = node('services/kvstore/src/main.ts');
    await Promise.all(
      Array.from({ length: options.kvstore }, (_, i) =>
        startChild(
          `kvstore-${i}`,
          cmd,
          kvArgs,
          {
            ...common,
            KVMESH_NODE_ID: `kvstore-${i}`,
            KVMESH_TIERING_ADDRESS: tieringAddress,
            ...(options.kvstoreDataPort === undefined
              ? {}
              : { KVMESH_DATA_PORT: String(options.kvstoreDataPort + i) }),
          },
          parseReadyLine,
          children,
        ),
      ),
    );
    const workers: Promise<unknown>[] = [];
    const workerEnv = { ...common, KVMESH_THREADS: String(workerThreads(options)) };
    for (let i = 0; i < options.prefill; i++) {
      const [c, a] = node('services/prefill/src/main.ts');
      workers.push(
        startChild(
          `prefill-${i}`,
          c,
          a,
          { ...workerEnv, KVMESH_NODE_ID: `prefill-${i}` },
          parseReadyLine,
          children,
        ),
      );
    }
    for (let i = 0; i < options.decode; i++) {
      const [c, a] = node('services/decode/src/main.ts');
      workers.push(
        startChild(
          `decode-${i}`,
          c,
          a,
          { ...workerEnv, KVMESH_NODE_ID: `decode-${i}` },
          parseReadyLine,
          children,
        ),
      );
    }
    await Promise.all(workers);
    const [rc, ra] = node('services/router/src/main.ts');
    const router = await startChild(
      'router',
      rc,
      ra,
      { ...common, KVMESH_HTTP_PORT: String(options.port), KVMESH_POLICY: options.policy },
      parseReadyLine,
      children,
    );
    const base = `http://${String(router.httpAddress)}`;
    await warmUp(base);
    if (typeof router.grpcAddress === 'string')
      process.stdout.write(`kvmesh grpc: ${router.grpcAddress} (kvmesh.v1.Router)\n`);
    process.stdout.write(`kvmesh ready: ${base}/v1\n`);
  } catch (err) {
    process.stderr.write(`kvmesh up: ${(err as Error).message}\n`);
    return stop(1);
  }
  return stopped;
}

async function waitForPort(port: number): Promise<void> {
  const deadline = Date.now() + READY_TIMEOUT_MS;
  for (;;) {
    const ok = await new Promise<boolean>((done) => {
      const socket = connect({ host: '127.0.0.1', port });
      socket.once('connect', () => {
        socket.destroy();
        done(true);
      });
      socket.once('error', () => done(false));
    });
    if (ok) return;
    if (Date.now() > deadline) throw new Error(`nats-server did not listen on port ${port}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/**
 * Ready means a request goes through: workers have been seen by the router and the kvstore nodes
 * by each other. One tiny completion, retried while the mesh answers 503, proves the whole path.
 */
async function warmUp(base: string): Promise<void> {
  const deadline = Date.now() + READY_TIMEOUT_MS;
  let last = '';
  while (Date.now() < deadline) {
    try {
      const models = (await (await fetch(`${base}/v1/models`)).json()) as { data?: { id: string }[] };
      const model = models.data?.[0]?.id;
      const response = await fetch(`${base}/v1/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ model, prompt: 'warm up', max_tokens: 1 }),
      });
      if (response.ok) return;
      last = `${response.status} ${await response.text()}`;
    } catch (err) {
      last = (err as Error).message;
    }
    await new Promise((r) => setTimeout(r, 250));
  }
  throw new Error(`the mesh did not serve a request within ${READY_TIMEOUT_MS / 1000} s: ${last}`);
}

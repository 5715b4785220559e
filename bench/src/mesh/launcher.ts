// Starts the mesh with the real launcher (`kvmesh up`) as a child process and stops it. The child's
// stderr (every service's log lines) goes to a log file, so the bench's own stderr stays readable;
// a start that fails quotes the log's tail. Stopping sends SIGTERM and waits for the launcher to
// exit, which it does only after all of its children have (so the next mesh starts on a quiet machine).
import { spawn, type ChildProcess } from 'node:child_process';
import { createWriteStream, readFileSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

const REPO_ROOT = fileURLToPath(new URL('../../../', import.meta.url));
const CLI = fileURLToPath(new URL('../../../lib/cli/bin/kvmesh.mjs', import.meta.url));
const READY_LINE = /^kvmesh ready: (http:\/\/\S+)$/;
const READY_TIMEOUT_MS = 180_000;
// The launcher itself gives each of its children up to 8 s after SIGTERM, one after another.
const STOP_TIMEOUT_MS = 90_000;

export interface MeshOptions {
  modelDir: string;
  policy: string;
  kvstore: number;
  prefill: number;
  decode: number;
  blockTokens: number;
  codec: string;
  /** Data-channel port of kvstore node 0 (node i: + i); undefined: free ports. */
  kvstoreDataPort?: number;
  logFile: string;
}

export interface RunningMesh {
  /** The OpenAI base URL, ending in /v1. */
  baseUrl: string;
  stop(): Promise<void>;
}

function logTail(file: string, lines = 20): string {
  try {
    return readFileSync(file, 'utf8').trimEnd().split('\n').slice(-lines).join('\n');
  } catch {
    return '(no log)';
  }
}

async function stopChild(child: ChildProcess, exited: Promise<void>): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), STOP_TIMEOUT_MS);
  await exited;
  clearTimeout(timer);
}

export async function startMesh(options: MeshOptions): Promise<RunningMesh> {
  const log = createWriteStream(options.logFile);
  const child = spawn(
    process.execPath,
    [
      CLI,
      'up',
      '--model',
      options.modelDir,
      '--port',
      '0',
      '--kvstore',
      String(options.kvstore),
      '--prefill',
      String(options.prefill),
      '--decode',
      String(options.decode),
      '--policy',
      options.policy,
      '--block-tokens',
      String(options.blockTokens),
      '--codec',
      options.codec,
      ...(options.kvstoreDataPort === undefined
        ? []
        : ['--kvstore-data-port', String(options.kvstoreDataPort)]),
    ],
    {
      cwd: REPO_ROOT,
      // Info lines of every service would only fill the log; warnings and errors are what matter.
      env: { ...process.env, KVMESH_LOG_LEVEL: process.env.KVMESH_LOG_LEVEL ?? 'warn' },
      stdio: ['ignore', 'pipe', 'pipe'],
    },
  );
  const exited = new Promise<void>((done) => child.once('exit', () => done()));
  child.stderr?.pipe(log);
  const baseUrl = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => {
      reject(new Error(`kvmesh up was not ready within ${READY_TIMEOUT_MS / 1000} s`));
    }, READY_TIMEOUT_MS);
    const lines = createInterface({ input: child.stdout as NodeJS.ReadableStream });
    lines.on('line', (line) => {
      const match = READY_LINE.exec(line.trim());
      if (match !== null) {
        clearTimeout(timer);
        resolve(match[1] as string);
      }
    });
    child.once('exit', (code, signal) => {
      clearTimeout(timer);
      reject(new Error(`kvmesh up exited (code ${code}, signal ${signal}) before it was ready`));
    });
  }).catch(async (err: unknown) => {
    await stopChild(child, exited);
    log.end();
    throw new Error(`${(err as Error).message}; log ${options.logFile}:\n${logTail(options.logFile)}`);
  });
  return {
    baseUrl,
    stop: async () => {
      await stopChild(child, exited);
      await new Promise<void>((done) => log.end(done));
    },
  };
}

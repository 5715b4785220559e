// Runs a service entry (a .ts file) as a real child process: `node --import tsx <entry> ...args`.
// Readiness protocol: the child prints exactly one JSON line `{"ready":true, ...info}` on stdout once
// every listener is bound (@kvmesh/runtime's `announceReady(info)` does this) and logs only to stderr.
// The harness resolves with that info; if the child exits or stays silent past the timeout first, it
// rejects with the tail of the child's stderr. Output is kept in bounded ring buffers.
import { spawn } from 'node:child_process';
import { resolve as resolvePath } from 'node:path';
import { fileURLToPath } from 'node:url';

import { EXIT_WITH_PARENT_ENV } from '@kvmesh/runtime';

import { track } from './children.ts';
import { LineRing } from './util.ts';

export interface SpawnServiceOptions {
  /** Used in error messages. */
  readonly name: string;
  /** Entry file; relative paths resolve against `cwd`. */
  readonly entry: string;
  readonly args?: readonly string[];
  /** Added to the parent's environment (unless `inheritEnv` is false). */
  readonly env?: Readonly<Record<string, string>>;
  readonly inheritEnv?: boolean;
  /** Default: the repository root. */
  readonly cwd?: string;
  /** Default 30 s. */
  readonly readyTimeoutMs?: number;
  /** Extra node options placed before `--import tsx`. */
  readonly nodeArgs?: readonly string[];
}

export interface ExitInfo {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
}

export interface ServiceHandle {
  readonly name: string;
  readonly pid: number;
  /** The ready line's fields (without `ready`). */
  readonly info: Readonly<Record<string, unknown>>;
  /** Resolves when the process exits, however that happens. */
  readonly exited: Promise<ExitInfo>;
  /** Undefined while running. */
  readonly exitInfo: ExitInfo | undefined;
  stderrTail(): string;
  stdoutTail(): string;
  /** SIGTERM, then SIGKILL after `graceMs` (default 5 s); resolves with how it exited. */
  stop(graceMs?: number): Promise<ExitInfo>;
  /** SIGKILL at once, like a crash. */
  kill9(): Promise<ExitInfo>;
}

export const REPO_ROOT = fileURLToPath(new URL('../..', import.meta.url));

function parseReady(line: string): Record<string, unknown> | undefined {
  if (!line.trimStart().startsWith('{')) return undefined;
  try {
    const value: unknown = JSON.parse(line);
    if (typeof value === 'object' && value !== null && (value as { ready?: unknown }).ready === true) {
      const { ready: _ready, ...info } = value as Record<string, unknown>;
      return info;
    }
  } catch {
    // An ordinary stdout line.
  }
  return undefined;
}

export function spawnService(options: SpawnServiceOptions): Promise<ServiceHandle> {
  const cwd = options.cwd ?? REPO_ROOT;
  const entry = resolvePath(cwd, options.entry);
  const readyTimeoutMs = options.readyTimeoutMs ?? 30_000;
  // NOTE: resolved here, so the child finds tsx no matter what its cwd is.
  const tsx = import.meta.resolve('tsx');
  // A test runner that dies (a timeout kill) takes its services with it: they watch their stdin.
  const env = {
    ...(options.inheritEnv === false ? {} : process.env),
    [EXIT_WITH_PARENT_ENV]: '1',
    ...options.env,
  };
  const child = spawn(
    process.execPath,
    [...(options.nodeArgs ?? []), '--import', tsx, entry, ...(options.args ?? [])],
    { cwd, env, stdio: ['pipe', 'pipe', 'pipe'] },
  );
  track(child);

  let exitInfo: ExitInfo | undefined;
  const exited = new Promise<ExitInfo>((resolve) => {
    child.once('exit', (code, signal) => {
      exitInfo = { code, signal };
      resolve(exitInfo);
    });
  });

  return new Promise<ServiceHandle>((resolve, reject) => {
    let settled = false;
    const stderr = new LineRing(200);
    const stdout = new LineRing(200, 2_000, (line) => {
      if (settled) return;
      const info = parseReady(line);
      if (info !== undefined) succeed(info);
    });
    child.stderr!.on('data', (chunk: Buffer) => stderr.push(chunk));
    child.stderr!.on('end', () => stderr.end());
    child.stdout!.on('data', (chunk: Buffer) => stdout.push(chunk));
    child.stdout!.on('end', () => stdout.end());

    const terminate = async (signal: NodeJS.Signals, graceMs: number): Promise<ExitInfo> => {
      if (exitInfo !== undefined) return exitInfo;
      child.kill(signal);
      const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
      const info = await exited;
      clearTimeout(timer);
      return info;
    };

    const fail = (why: string): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      child.kill('SIGKILL');
      reject(new Error(`service ${options.name} (${entry}) ${why}; stderr tail:\n${stderr.text()}`));
    };
    const succeed = (info: Record<string, unknown>): void => {
      settled = true;
      clearTimeout(timer);
      resolve({
        name: options.name,
        pid: child.pid!,
        info,
        exited,
        get exitInfo() {
          return exitInfo;
        },
        stderrTail: () => stderr.text(),
        stdoutTail: () => stdout.text(),
        stop: (graceMs = 5_000) => terminate('SIGTERM', graceMs),
        kill9: () => terminate('SIGKILL', 0),
      });
    };
    const timer = setTimeout(() => fail(`printed no ready line within ${readyTimeoutMs} ms`), readyTimeoutMs);
    child.once('error', (err) => fail(`could not be started: ${err.message}`));
    void exited.then((info) => {
      // Let the pipes drain so the error message carries the child's last words.
      setImmediate(() => fail(`exited (code ${info.code}, signal ${info.signal}) before it was ready`));
    });
  });
}

// A real nats-server for integration tests: spawned from PATH on loopback with a random port and a
// private JetStream store directory, ready once it logs "Server is ready". `kill()` is a crash
// (SIGKILL by default; the store is kept), `restart()` brings it back on the same port and store, and
// `stop()` shuts it down gracefully and deletes the store.
import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { cancelRemoveOnExit, removeOnExit, track } from './children.ts';
import { LineRing } from './util.ts';

export interface NatsServerOptions {
  /** Enable JetStream with a temporary store directory. Default true. */
  readonly jetstream?: boolean;
  /** Fixed port; default lets the server pick a free one (no reuse race). */
  readonly port?: number;
  /** Extra nats-server arguments. */
  readonly args?: readonly string[];
  /** Default 10 s. */
  readonly readyTimeoutMs?: number;
  /** nats-server binary. Default 'nats-server' from PATH. */
  readonly binary?: string;
}

export interface NatsServerHandle {
  /** nats://127.0.0.1:<port> */
  readonly url: string;
  readonly port: number;
  /** Undefined without JetStream. */
  readonly storeDir: string | undefined;
  readonly pid: number | undefined;
  /** SIGTERM, wait for exit (SIGKILL after 5 s), delete the store directory. */
  stop(): Promise<void>;
  /**
   * Stops the server without deleting its store, for `restart()`: SIGKILL (default) is a crash,
   * SIGTERM an orderly outage with everything flushed to the store.
   */
  kill(signal?: NodeJS.Signals): Promise<void>;
  /** Starts the server again on the same port and store (after `kill()`). */
  restart(): Promise<void>;
  /** Last lines of the server's log. */
  logTail(): string;
}

const READY = 'Server is ready';
const LISTENING = /Listening for client connections on [^\s]*:(\d+)/;

interface Running {
  child: ChildProcess;
  port: number;
  exited: Promise<void>;
}

function launch(binary: string, args: string[], log: LineRing, readyTimeoutMs: number): Promise<Running> {
  return new Promise((resolve, reject) => {
    let port: number | undefined;
    let settled = false;
    const child = spawn(binary, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    track(child);
    const exited = new Promise<void>((r) => child.once('exit', () => r()));
    const fail = (err: Error): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      child.kill('SIGKILL');
      reject(err);
    };
    const timer = setTimeout(
      () => fail(new Error(`nats-server not ready within ${readyTimeoutMs} ms; log:\n${log.text()}`)),
      readyTimeoutMs,
    );
    // NOTE: readiness is read from this launch's output only; the shared log still holds the
    // previous run's "Server is ready" after a restart.
    const own = new LineRing(300);
    const onData = (chunk: Buffer): void => {
      log.push(chunk);
      if (settled) return;
      own.push(chunk);
      const text = own.text();
      const m = LISTENING.exec(text);
      if (m !== null) port = Number(m[1]);
      if (port !== undefined && text.includes(READY)) {
        settled = true;
        clearTimeout(timer);
        resolve({ child, port, exited });
      }
    };
    child.stdout!.on('data', onData);
    child.stderr!.on('data', onData);
    child.once('error', (err) =>
      fail(
        new Error(
          `cannot start ${binary}: ${err.message} (install it with scripts/setup.sh or apt-get install nats-server)`,
        ),
      ),
    );
    child.once('exit', (code, signal) =>
      fail(
        new Error(
          `nats-server exited (code ${code}, signal ${signal}) before it was ready; log:\n${log.text()}`,
        ),
      ),
    );
  });
}

export async function startNatsServer(options: NatsServerOptions = {}): Promise<NatsServerHandle> {
  const jetstream = options.jetstream ?? true;
  const binary = options.binary ?? 'nats-server';
  const readyTimeoutMs = options.readyTimeoutMs ?? 10_000;
  const storeDir = jetstream ? mkdtempSync(join(tmpdir(), 'kvmesh-nats-')) : undefined;
  if (storeDir !== undefined) removeOnExit(storeDir);
  const log = new LineRing(300);
  const argsFor = (port: number): string[] => [
    '-a',
    '127.0.0.1',
    '-p',
    String(port),
    ...(storeDir !== undefined ? ['-js', '-sd', storeDir] : []),
    ...(options.args ?? []),
  ];
  let running: Running | undefined;
  try {
    running = await launch(binary, argsFor(options.port ?? -1), log, readyTimeoutMs);
  } catch (err) {
    if (storeDir !== undefined) {
      rmSync(storeDir, { recursive: true, force: true });
      cancelRemoveOnExit(storeDir);
    }
    throw err;
  }
  const port = running.port;

  const terminate = async (signal: NodeJS.Signals): Promise<void> => {
    const current = running;
    running = undefined;
    if (current === undefined || current.child.exitCode !== null || current.child.signalCode !== null) return;
    current.child.kill(signal);
    const timer = setTimeout(() => current.child.kill('SIGKILL'), 5_000);
    await current.exited;
    clearTimeout(timer);
  };

  return {
    url: `nats://127.0.0.1:${port}`,
    port,
    storeDir,
    get pid() {
      return running?.child.pid;
    },
    async stop() {
      await terminate('SIGTERM');
      if (storeDir !== undefined) {
        rmSync(storeDir, { recursive: true, force: true });
        cancelRemoveOnExit(storeDir);
      }
    },
    kill: (signal = 'SIGKILL') => terminate(signal),
    async restart() {
      await terminate('SIGTERM');
      running = await launch(binary, argsFor(port), log, readyTimeoutMs);
    },
    logTail: () => log.text(),
  };
}

// How a service process stops: its shutdown steps (CleanupStack) run last-in first-out; SIGTERM /
// SIGINT close it gracefully (a second signal exits at once), and, when its starter asks for it with
// KVMESH_EXIT_WITH_PARENT=1, so does the end of its stdin.
// Why stdin: a starter that dies without stopping its children (SIGKILL, a crash) cannot signal
// them, and Linux's parent-death signal is out of Node's reach; but the kernel closes the write end
// of a pipe when its only holder dies, so a child reading that pipe learns of it at once. The local
// launcher (`kvmesh up`) and the test harness spawn services with stdin as such a pipe. Anything
// else (a container, a shell) leaves the variable unset and stdin alone.

import type { Logger } from './logger.ts';

export const EXIT_WITH_PARENT_ENV = 'KVMESH_EXIT_WITH_PARENT';
const PARENT_GONE_GRACE_MS = 10_000;

export interface StopOptions {
  /** Names the process in its last words on stderr. */
  readonly role: string;
  /** Graceful shutdown; the process exits 0 once it resolves, 1 if it rejects. */
  readonly close: () => Promise<void>;
  readonly env?: NodeJS.ProcessEnv;
}

const message = (err: unknown): string => (err instanceof Error ? err.message : String(err));

/** Installs the signal handlers (and the stdin watch, when asked for); returns the stop function. */
export function stopOnSignals(options: StopOptions): (reason: string) => void {
  const { role, close } = options;
  let stopping = false;
  const stop = (reason: string): void => {
    if (stopping) {
      process.stderr.write(`${role}: ${reason} again, exiting now\n`);
      process.exit(1);
    }
    stopping = true;
    close().then(
      () => process.exit(0),
      (err: unknown) => {
        process.stderr.write(`${role}: shutdown failed: ${message(err)}\n`);
        process.exit(1);
      },
    );
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
  if ((options.env ?? process.env)[EXIT_WITH_PARENT_ENV] === '1') {
    let gone = false;
    const parentGone = (): void => {
      if (gone || stopping) return;
      gone = true;
      process.stderr.write(`${role}: stdin closed (the process that started this one is gone), stopping\n`);
      stop('parent exit');
      // No one is left to send the second signal: a shutdown that hangs (on peers that died with the
      // parent) is cut short.
      setTimeout(() => {
        process.stderr.write(`${role}: shutdown took over ${PARENT_GONE_GRACE_MS} ms, exiting now\n`);
        process.exit(1);
      }, PARENT_GONE_GRACE_MS).unref();
    };
    process.stdin.on('end', parentGone);
    process.stdin.on('close', parentGone);
    process.stdin.on('error', parentGone);
    // Nothing is ever written to the pipe; reading it is only how its end is noticed.
    process.stdin.on('data', () => undefined);
    process.stdin.resume();
  }
  return stop;
}

/** Shutdown steps, run last-in first-out; a failing step is logged and the rest still run. */
export class CleanupStack {
  private readonly steps: (() => Promise<unknown> | void)[] = [];

  constructor(private readonly logger: Logger) {}

  push(step: () => Promise<unknown> | void): void {
    this.steps.push(step);
  }

  async run(): Promise<void> {
    for (const step of this.steps.splice(0).reverse()) {
      try {
        await step();
      } catch (err) {
        this.logger.warn('shutdown step failed', { err });
      }
    }
  }
}

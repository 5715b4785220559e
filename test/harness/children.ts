// Every child process the harness starts is registered here and killed (SIGKILL) when the test
// process exits or is told to stop, so a failed or cancelled test never leaves nats-server or a
// service running; temporary directories registered here are deleted then too. A child that exits
// on its own unregisters itself.
import type { ChildProcess } from 'node:child_process';
import { rmSync } from 'node:fs';

const live = new Set<ChildProcess>();
const tempDirs = new Set<string>();
let hooked = false;

function killAll(): void {
  for (const child of live) {
    try {
      child.kill('SIGKILL');
    } catch {
      // Already gone.
    }
  }
  live.clear();
  for (const dir of tempDirs) rmSync(dir, { recursive: true, force: true });
  tempDirs.clear();
}

function hook(): void {
  if (hooked) return;
  hooked = true;
  process.on('exit', killAll);
  for (const [signal, code] of [
    ['SIGINT', 130],
    ['SIGTERM', 143],
  ] as const) {
    // NOTE: a listener replaces Node's default "exit on signal", so this one exits explicitly.
    process.once(signal, () => {
      killAll();
      process.exit(code);
    });
  }
}

export function track(child: ChildProcess): void {
  hook();
  live.add(child);
  child.once('exit', () => live.delete(child));
}

/** Deletes `dir` when the test process exits, unless `cancelRemoveOnExit(dir)` is called first. */
export function removeOnExit(dir: string): void {
  hook();
  tempDirs.add(dir);
}

export function cancelRemoveOnExit(dir: string): void {
  tempDirs.delete(dir);
}

/** Number of harness children still running (for tests of the harness itself). */
export function liveChildren(): number {
  return live.size;
}

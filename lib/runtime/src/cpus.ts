// The CPUs this process may compute on, for sizing compute thread pools: the scheduler affinity,
// capped by a cgroup v2 CPU quota when one is set.
import { readFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';

/**
 * CPUs this process may use: its scheduler affinity, capped by the cgroup v2 CPU quota (`cpu.max`,
 * quota / period rounded up) when one is set, e.g. a Kubernetes CPU limit, which OpenBLAS's own
 * default (every core of the host) ignores.
 */
export function usableCpus(
  readCpuMax: () => string = () => readFileSync('/sys/fs/cgroup/cpu.max', 'utf8'),
): number {
  const affinity = availableParallelism();
  let text: string;
  try {
    text = readCpuMax();
  } catch {
    return affinity; // no cgroup v2 CPU controller here: the affinity is the limit
  }
  const [quota, period] = text.trim().split(/\s+/).map(Number);
  if (quota === undefined || period === undefined || !(quota > 0) || !(period > 0)) return affinity;
  return Math.max(1, Math.min(affinity, Math.ceil(quota / period)));
}

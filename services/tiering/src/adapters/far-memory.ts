// The far-memory pool's backing bytes. With the native module: a MAP_SHARED mapping of a DAX device
// (CXL memory exposed as /dev/daxX.Y), or of a shared-memory file (default /dev/shm/kvmesh-far-<id>),
// optionally bound to a NUMA node (a CPU-less node is CXL memory exposed as system RAM); same-host
// readers map the same path. Without the native module: a plain in-process ArrayBuffer, which works
// but cannot be mapped by anyone else (and says so).
// Lifetime: the pool does not outlive the service. A shared-memory file is unlinked and created anew
// at start (a reader still mapping an older one keeps its stale pages, and sees the pool id change),
// and unlinked at close; the SSD tier is the one that survives a restart.
import { randomBytes } from 'node:crypto';
import { existsSync, readdirSync, readFileSync, rmSync, statfsSync, statSync } from 'node:fs';

import { InvalidArgumentError } from '@kvmesh/errors';
import { nativeMemory, nativeMemoryStatus, type NativeMemory } from '@kvmesh/kernels';

export type FarBackingKind = 'dax' | 'shm' | 'process';

export interface FarBackingOptions {
  /** 'auto' maps `path` (a DAX device when it names one, else a shared-memory file). */
  readonly backing: 'auto' | 'shm' | 'dax' | 'process';
  /** File or device to map; empty means /dev/shm/kvmesh-far-<serviceId>. */
  readonly path: string;
  readonly bytesCapacity: number;
  /** NUMA node to bind the pages to; -1 picks the first CPU-less node if any, -2 never binds. */
  readonly numaNode: number;
  readonly serviceId: string;
  readonly prefault: boolean;
}

export interface FarBacking {
  readonly kind: FarBackingKind;
  readonly region: Uint8Array;
  /** Mappable by same-host readers (empty for 'process'). */
  readonly path: string;
  /** Changes whenever the pool is created anew. */
  readonly poolId: string;
  readonly numaNode: number | null;
  /** One line for logs and the ready line: what backs far memory and why. */
  readonly description: string;
  close(): void;
}

const DAX_PATH = /^\/dev\/dax\d+\.\d+$/;

/** CPU-less NUMA nodes (memory-only: how CXL memory shows up when onlined as system RAM). */
export function cpulessNumaNodes(): number[] {
  const base = '/sys/devices/system/node';
  if (!existsSync(base)) return [];
  const out: number[] = [];
  for (const name of readdirSync(base)) {
    const match = /^node(\d+)$/.exec(name);
    if (match === null) continue;
    try {
      if (readFileSync(`${base}/${name}/cpulist`, 'utf8').trim() === '') out.push(Number(match[1]));
    } catch {
      // A node that vanished while listing is not one to bind to.
    }
  }
  return out.sort((a, b) => a - b);
}

/** DAX character devices present (/dev/daxX.Y). */
export function daxDevices(): string[] {
  try {
    return readdirSync('/dev')
      .filter((d) => /^dax\d+\.\d+$/.test(d))
      .map((d) => `/dev/${d}`)
      .sort();
  } catch {
    return [];
  }
}

/** Bytes free on the filesystem holding `dir` (e.g. /dev/shm), or null. */
export function filesystemFreeBytes(dir: string): number | null {
  try {
    const fs = statfsSync(dir);
    return fs.bavail * fs.bsize;
  } catch {
    return null;
  }
}

function processBacking(bytes: number, reason: string): FarBacking {
  return {
    kind: 'process',
    region: new Uint8Array(new ArrayBuffer(bytes)),
    path: '',
    poolId: randomBytes(8).toString('hex'),
    numaNode: null,
    description: `in-process memory (${reason}); same-host readers cannot map it`,
    close() {},
  };
}

export function openFarBacking(options: FarBackingOptions): FarBacking {
  const bytes = options.bytesCapacity;
  if (options.backing === 'process') return processBacking(bytes, 'configured');
  const memory: NativeMemory | null = nativeMemory();
  const path = options.path === '' ? `/dev/shm/kvmesh-far-${options.serviceId}` : options.path;
  const dax = options.backing === 'dax' || (options.backing === 'auto' && DAX_PATH.test(path));
  if (memory === null) {
    if (options.backing !== 'auto')
      throw new InvalidArgumentError(
        `far memory backing '${options.backing}' needs the native module: ${nativeMemoryStatus()}`,
        { backing: options.backing },
      );
    return processBacking(bytes, `no native module: ${nativeMemoryStatus()}`);
  }
  if (dax) {
    if (!existsSync(path) || !statSync(path).isCharacterDevice())
      throw new InvalidArgumentError(`far memory backing dax: ${path} is not a DAX character device`, {
        path,
      });
    // NOTE: a DAX device's memory is the device's own: NUMA binding does not apply, and its content
    // is not cleared (the index starts empty, so nothing stale is ever served).
    const buffer = memory.mapSharedFile(path, bytes, { create: false });
    return {
      kind: 'dax',
      region: new Uint8Array(buffer),
      path,
      poolId: randomBytes(8).toString('hex'),
      numaNode: null,
      description: `DAX device ${path}`,
      close: () => void memory.unmap(buffer),
    };
  }
  const cpuless = cpulessNumaNodes();
  const numaNode =
    options.numaNode >= 0 ? options.numaNode : options.numaNode === -1 ? (cpuless[0] ?? null) : null;
  // A fresh inode each start: readers of an earlier pool keep their (stale) pages, never new ones.
  rmSync(path, { force: true });
  const buffer = memory.mapSharedFile(path, bytes, {
    create: true,
    ...(numaNode === null ? {} : { numaNode }),
    prefault: options.prefault,
  });
  const region = new Uint8Array(buffer);
  // NOTE: madvise(WILLNEED) does not map a shared-memory file's pages into this process; writing
  // them does, so the first demotes into each page do not pay for the fault.
  if (options.prefault) region.fill(0);
  return {
    kind: 'shm',
    region,
    path,
    poolId: randomBytes(8).toString('hex'),
    numaNode,
    description:
      numaNode === null
        ? `shared-memory file ${path}`
        : `shared-memory file ${path} bound to NUMA node ${numaNode}${cpuless.includes(numaNode) ? ' (CPU-less: CXL)' : ''}`,
    close() {
      memory.unmap(buffer);
      rmSync(path, { force: true });
    },
  };
}

// Shared mappings and aligned allocations from the native module (kernels/cpu/memory.cc), behind a
// facade that validates every argument first (typed InvalidArgumentError naming the value) and turns
// the addon's system-call failures into MemoryMapError with the path and errno text. There is no
// TypeScript reference: Node cannot map a file, so callers ask nativeMemory() and fall back
// themselves (the far-memory tier uses an in-process ArrayBuffer and says so).
import { InvalidArgumentError, KvmeshError } from '@kvmesh/errors';

/** The functions kernels/cpu/memory.cc registers on the addon (absent on an older build). */
export interface NativeMemoryAddon {
  mapSharedFile?(
    path: string,
    bytes: number,
    create: boolean,
    numaNode: number,
    readOnly: boolean,
    prefault: boolean,
  ): ArrayBuffer;
  unmapMemory?(buffer: ArrayBuffer): boolean;
  allocAligned?(bytes: number, align: number): ArrayBuffer;
  pageBytes?(): number;
}

export interface MapSharedFileOptions {
  /** Create (or resize) the file and reserve its blocks; false maps an existing file or device. */
  readonly create?: boolean;
  /** Bind the mapping's pages to this NUMA node (mbind MPOL_BIND); unset leaves the default policy. */
  readonly numaNode?: number;
  /** Map PROT_READ only (a same-host reader of the pool); excludes `create`. */
  readonly readOnly?: boolean;
  /** Ask the kernel to fault the pages in now (MADV_WILLNEED) instead of on first touch. */
  readonly prefault?: boolean;
}

export interface NativeMemory {
  /**
   * A MAP_SHARED mapping of `bytes` of `path` as an external ArrayBuffer: writes are visible to
   * every process mapping the same file. Released by the ArrayBuffer's finalizer or by unmap().
   */
  mapSharedFile(path: string, bytes: number, options?: MapSharedFileOptions): ArrayBuffer;
  /** Unmaps now and detaches `buffer` (its views read as empty); false when it was not a live mapping. */
  unmap(buffer: ArrayBuffer): boolean;
  /** `bytes` of zeroed memory whose address is a multiple of `align` (a power of two), e.g. for O_DIRECT. */
  allocAligned(bytes: number, align: number): ArrayBuffer;
  /** The system page size in bytes. */
  pageBytes(): number;
}

/** A mapping or allocation the operating system refused (missing file, ENOSPC, mbind, ...). */
export class MemoryMapError extends KvmeshError {
  constructor(message: string, details: Record<string, unknown> = {}) {
    super('MEMORY_MAP_FAILED', 'failed-precondition', message, details);
  }
}

export const NUMA_NODES_MAX = 1024;
/** Largest single mapping or allocation accepted (1 TiB): a bound, not a hardware limit. */
export const MAPPING_BYTES_MAX = 2 ** 40;

function checkBytes(bytes: number, what: string): void {
  if (!Number.isSafeInteger(bytes) || bytes < 1 || bytes > MAPPING_BYTES_MAX)
    throw new InvalidArgumentError(`${what} must be an integer in [1, ${MAPPING_BYTES_MAX}], got ${bytes}`, {
      bytes,
      bytesMax: MAPPING_BYTES_MAX,
    });
}

function systemCall<T>(what: string, details: Record<string, unknown>, body: () => T): T {
  try {
    return body();
  } catch (err) {
    throw new MemoryMapError(`${what}: ${(err as Error).message}`, details);
  }
}

/** The facade, or null when the addon predates the memory functions. */
export function nativeMemoryOf(addon: NativeMemoryAddon): NativeMemory | null {
  const { mapSharedFile, unmapMemory, allocAligned, pageBytes } = addon;
  if (
    mapSharedFile === undefined ||
    unmapMemory === undefined ||
    allocAligned === undefined ||
    pageBytes === undefined
  )
    return null;
  return {
    mapSharedFile(path, bytes, options = {}) {
      if (typeof path !== 'string' || path === '' || path.includes('\0'))
        throw new InvalidArgumentError('mapSharedFile: path must be a non-empty string', { path });
      checkBytes(bytes, 'mapSharedFile: bytes');
      const numaNode = options.numaNode ?? -1;
      if (!Number.isInteger(numaNode) || numaNode < -1 || numaNode >= NUMA_NODES_MAX)
        throw new InvalidArgumentError(`mapSharedFile: numaNode must be in [0, ${NUMA_NODES_MAX})`, {
          numaNode,
        });
      const create = options.create ?? false;
      const readOnly = options.readOnly ?? false;
      if (create && readOnly)
        throw new InvalidArgumentError('mapSharedFile: create and readOnly exclude each other', { path });
      return systemCall('cannot map shared memory', { path, bytes, numaNode }, () =>
        mapSharedFile.call(addon, path, bytes, create, numaNode, readOnly, options.prefault ?? false),
      );
    },
    unmap(buffer) {
      if (!(buffer instanceof ArrayBuffer))
        throw new InvalidArgumentError('unmap: buffer must be an ArrayBuffer from mapSharedFile');
      return unmapMemory.call(addon, buffer);
    },
    allocAligned(bytes, align) {
      checkBytes(bytes, 'allocAligned: bytes');
      if (!Number.isSafeInteger(align) || align < 8 || align > 2 ** 30 || (align & (align - 1)) !== 0)
        throw new InvalidArgumentError(
          `allocAligned: align must be a power of two in [8, 2^30], got ${align}`,
          {
            align,
          },
        );
      return systemCall('cannot allocate aligned memory', { bytes, align }, () =>
        allocAligned.call(addon, bytes, align),
      );
    },
    pageBytes: () => pageBytes.call(addon),
  };
}

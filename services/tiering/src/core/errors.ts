// Typed errors of the tiering service. Each carries what the caller needs to act (the bytes a block
// needed and what the tier holds, the tier that refused it), and its `kind` maps it to a gRPC status
// at the service edge (RESOURCE_EXHAUSTED, FAILED_PRECONDITION, ...) without parsing messages.
import { KvmeshError } from '@kvmesh/errors';

export interface FarMemoryFullDetails {
  hash: string;
  /** Bytes the block's record needs in the pool (header, metadata, payload, alignment). */
  bytesNeeded: number;
  bytesUsed: number;
  bytesCapacity: number;
  blocks: number;
  /** Why no room could be made: nothing evictable, no SSD tier, or the SSD refused the spill. */
  reason: string;
}

/**
 * A block that does not fit in far memory even after demoting its coldest blocks to the SSD tier
 * (the SSD is full or absent, or every block is leased by a same-host reader). Nothing was stored;
 * far memory keeps serving what it holds.
 */
export class FarMemoryFullError extends KvmeshError {
  constructor(details: FarMemoryFullDetails) {
    super(
      'FAR_MEMORY_FULL',
      'resource-exhausted',
      `far memory full: block ${details.hash} needs ${details.bytesNeeded} bytes, ${details.bytesUsed} of ${details.bytesCapacity} in use by ${details.blocks} blocks (${details.reason})`,
      { ...details },
    );
  }
}

/** LocateFar on a pool same-host readers cannot map (the in-process fallback without native code). */
export class FarMemoryNotMappableError extends KvmeshError {
  constructor(backing: string, reason: string) {
    super(
      'FAR_MEMORY_NOT_MAPPABLE',
      'failed-precondition',
      `far memory is ${backing}, which other processes cannot map (${reason}); read through the service instead`,
      { backing, reason },
    );
  }
}

/** A request names a tier this service does not hold (only TIER_FAR and TIER_SSD take blocks). */
export class TierUnavailableError extends KvmeshError {
  constructor(tier: string, reason: string) {
    super('TIER_UNAVAILABLE', 'failed-precondition', `tier ${tier} is not available: ${reason}`, {
      tier,
      reason,
    });
  }
}

// --- SSD segment log (adapters/segment-log.ts, core/segment-records.ts) ---

/**
 * A manifest or record written by a newer kvmesh (its format version is above the one this build
 * reads). Nothing was changed on disk; run a newer build or point the tier at another directory.
 */
export class SegmentFormatVersionError extends KvmeshError {
  constructor(what: string, version: number, supported: number, details: Record<string, unknown> = {}) {
    super(
      'UNSUPPORTED_FORMAT_VERSION',
      'failed-precondition',
      `segment ${what} has format version ${version}, this build reads up to ${supported}; refusing to open (nothing was modified)`,
      { what, version, supported, ...details },
    );
  }
}

/**
 * The filesystem refused a write (ENOSPC or EDQUOT). The partial record was truncated away, so the
 * log keeps serving reads, and appends succeed again once space is freed.
 */
export class DiskFullError extends KvmeshError {
  constructor(path: string, errno: string, bytesNeeded: number) {
    super(
      'DISK_FULL',
      'resource-exhausted',
      `SSD tier: ${errno} writing ${bytesNeeded} bytes to ${path}; nothing was stored`,
      { path, errno, bytesNeeded },
    );
  }
}

/** Any other system-call failure of the SSD tier (EIO, EACCES, ...), with the call and the path. */
export class StorageIoError extends KvmeshError {
  constructor(operation: string, path: string, cause: unknown) {
    const err = cause as { message?: string; code?: string } | null;
    super(
      'STORAGE_IO',
      'unavailable',
      `SSD tier: ${operation} ${path} failed: ${err?.message ?? String(cause)}`,
      { operation, path, errno: err?.code },
    );
  }
}

/** The segment directory is held by another live process (its lock file names the pid). */
export class SegmentDirectoryLockedError extends KvmeshError {
  constructor(dir: string, pid: number) {
    super(
      'SEGMENT_DIRECTORY_LOCKED',
      'failed-precondition',
      `SSD tier directory ${dir} is in use by process ${pid}`,
      { dir, pid },
    );
  }
}

/** An operation on a segment log after close(). */
export class SegmentLogClosedError extends KvmeshError {
  constructor(dir: string) {
    super('SEGMENT_LOG_CLOSED', 'failed-precondition', `SSD tier ${dir} is closed`, { dir });
  }
}

// LocateFar, served both as a gRPC method and on the data channel (TIERING_DATA_METHODS.locateFar,
// where a call costs far less than a gRPC unary call: same-host readers make one per batch of blocks
// they read in place). Where far-memory records (and, with stage_ssd, staged copies of SSD blocks)
// lie in the mapping same-host readers map, each leased.
import type { LocateFarRequest, LocateFarResponse } from '@kvmesh/protocol';

import { FarMemoryNotMappableError, type StageOutcome, type TierPolicy } from '../core/index.ts';
import { blockOf, hashesOf, tierToProto } from './wire.ts';

export interface LocateFarOptions {
  /** The pool same-host readers map; null when far memory is absent or not mappable (with why). */
  readonly farPool:
    { path: string; bytes: number; poolId: string } | { unmappable: string; backing: string } | null;
  readonly hashesPerRequestMax: number;
  readonly leaseMsDefault: number;
}

/** The LocateFar answer for `request`; throws FarMemoryNotMappableError without a mappable pool. */
export async function locateFar(
  policy: TierPolicy,
  options: LocateFarOptions,
  request: LocateFarRequest,
): Promise<LocateFarResponse> {
  const pool = options.farPool;
  if (pool === null) throw new FarMemoryNotMappableError('absent', 'this service runs without far memory');
  if ('unmappable' in pool) throw new FarMemoryNotMappableError(pool.backing, pool.unmappable);
  const hashes = hashesOf(request.hashes, options.hashesPerRequestMax);
  const leaseMs = request.leaseMs === 0 ? options.leaseMsDefault : request.leaseMs;
  // NOTE: staged reads start together, so the SSD tier merges reads of neighbouring records; the
  // number is bounded by hashesPerRequestMax and the SSD tier's own read queue.
  const outcomes: (StageOutcome | Promise<StageOutcome>)[] = hashes.map((hash) =>
    request.stageSsd
      ? policy.stage(hash, leaseMs, request.withBlock)
      : policy.locate(hash, leaseMs, request.withBlock),
  );
  const response: LocateFarResponse = {
    poolPath: pool.path,
    poolBytes: BigInt(pool.bytes),
    poolId: pool.poolId,
    leaseMs: 0,
    locations: [],
    missingHashes: [],
    unstagedHashes: [],
  };
  let granted = Number.POSITIVE_INFINITY;
  const settled = await Promise.allSettled(outcomes);
  const failed = settled.find((r) => r.status === 'rejected');
  if (failed !== undefined) throw failed.reason;
  for (const [i, result] of settled.entries()) {
    const location = (result as PromiseFulfilledResult<StageOutcome>).value;
    const hash = request.hashes[i] as Buffer;
    if (location === undefined) response.missingHashes.push(hash);
    else if (location === 'unstaged') response.unstagedHashes.push(hash);
    else {
      granted = Math.min(granted, location.leaseMs);
      response.locations.push({
        hash,
        block: location.meta === undefined ? undefined : blockOf(location.meta, false),
        payloadOffset: BigInt(location.payloadOffset),
        payloadBytes: BigInt(location.payloadBytes),
        tier: tierToProto(location.tier),
      });
    }
  }
  response.leaseMs = Number.isFinite(granted) ? granted : 0;
  return response;
}

// The Tiering gRPC service of one host. Every handler runs under the runtime's wrappers, so any throw
// becomes a precise status (toGrpcStatus) and never reaches grpc-js. Demote stores up to
// `demoteStreamConcurrency` blocks of a stream at once but acknowledges in arrival order; the first
// block that fails fails the call with a message naming its index and hash and how many blocks
// before it were acknowledged (those stay stored). Read and Promote answer every hash in request
// order, a block or `missing_hash`, with the reads of up to `readAheadBlocks` hashes running ahead
// together (the SSD tier merges reads of neighbouring records); LocateFar serves same-host readers
// of the mapped pool (locate-far.ts, also on the data channel).
import {
  blockHashToBytes,
  type BlockHash,
  type DemoteRequest,
  type DemoteResponse,
  type TierBlockResponse,
  type TieringServer,
  type TieringStatsResponse,
  Tier,
} from '@kvmesh/protocol';
import {
  runBlockStream,
  wrapClientStream,
  wrapServerStream,
  wrapUnary,
  type WrapOptions,
} from '@kvmesh/runtime';

import type { TierHit, TierPolicy } from '../core/index.ts';
import { locateFar, type LocateFarOptions } from './locate-far.ts';
import { blockOf, hashesOf, targetTierOf, tierBlockOf, tierToProto } from './wire.ts';

export interface TieringServiceOptions extends LocateFarOptions {
  readonly demoteMessagesPerStreamMax: number;
  readonly demoteStreamConcurrency: number;
  /** host:port, token and protocol version OpenDataChannel hands out. */
  readonly dataAddress: string;
  readonly dataToken: string;
  readonly dataProtocolVersion: number;
  readonly blockBytesMax: number;
  /**
   * Blocks of one Read / Promote whose reads run ahead of the one being sent (default 16): started
   * together so the SSD tier merges reads of neighbouring records; bounds the memory they hold.
   */
  readonly readAheadBlocks?: number;
  readonly wrap?: WrapOptions;
}

const READ_AHEAD_BLOCKS_DEFAULT = 16;

/**
 * The hits of `hashes` in order, reading up to `window` ahead: the first window's reads start in one
 * go (so they are planned together), then one more as each is handed on. Reads still running when
 * the caller stops are left to finish; their errors are dropped with them.
 */
async function* readAhead(
  policy: TierPolicy,
  hashes: readonly BlockHash[],
  window: number,
): AsyncGenerator<TierHit | undefined> {
  const started: (Promise<TierHit | undefined> | undefined)[] = [];
  let next = 0;
  const startUpTo = (end: number): void => {
    const batch = hashes.slice(next, Math.min(end, hashes.length));
    for (const reading of policy.readMany(batch)) {
      reading.catch(() => undefined);
      started.push(reading);
    }
    next += batch.length;
  };
  for (let i = 0; i < hashes.length; i++) {
    startUpTo(i + window);
    const reading = started[i] as Promise<TierHit | undefined>;
    started[i] = undefined; // NOTE: the payload is not held here once handed on.
    yield await reading;
  }
}

async function demoteStream(
  policy: TierPolicy,
  requests: AsyncIterable<DemoteRequest>,
  options: TieringServiceOptions,
): Promise<DemoteResponse> {
  const acknowledged = await runBlockStream<DemoteRequest, Buffer>(requests, {
    rpc: 'Demote',
    limitName: 'demoteMessagesPerStreamMax',
    messagesMax: options.demoteMessagesPerStreamMax,
    concurrency: options.demoteStreamConcurrency,
    hashOf: (message) => message.block?.hash.toString('hex') ?? '',
    start: (message) => {
      const block = tierBlockOf(message.block);
      const hash = Buffer.from(blockHashToBytes(block.hash));
      return policy.demote(block, targetTierOf(message.target)).then(() => hash);
    },
  });
  return { acknowledged };
}

function blockMessage(hashBytes: Buffer, hit: TierHit | undefined): TierBlockResponse {
  if (hit === undefined)
    return { result: { $case: 'missingHash', value: hashBytes }, tier: Tier.TIER_UNSPECIFIED };
  let block = hit.block;
  if (hit.tier === 'ssd') {
    // NOTE: an SSD payload is lent from the tier's read buffers and gRPC gives no word on when it
    // is done with a message's bytes: the message takes a copy and the buffer goes back at once.
    block = { ...block, payload: Buffer.from(block.payload) };
    hit.releasePayload();
  }
  return { result: { $case: 'block', value: blockOf(block, true) }, tier: tierToProto(hit.tier) };
}

export function tieringGrpcService(policy: TierPolicy, options: TieringServiceOptions): TieringServer {
  const wrap = options.wrap;
  const hashesMax = options.hashesPerRequestMax;
  const readAheadBlocks = Math.max(1, Math.floor(options.readAheadBlocks ?? READ_AHEAD_BLOCKS_DEFAULT));
  return {
    demote: wrapClientStream<DemoteRequest, DemoteResponse>(
      (requests) => demoteStream(policy, requests, options),
      wrap,
    ),
    read: wrapServerStream(async function* (request) {
      const hashes = hashesOf(request.hashes, hashesMax);
      let i = 0;
      for await (const hit of readAhead(policy, hashes, readAheadBlocks))
        yield blockMessage(request.hashes[i++] as Buffer, hit);
    }, wrap),
    promote: wrapServerStream(async function* (request) {
      const hashes = hashesOf(request.hashes, hashesMax);
      // Reads run ahead, but each block leaves its tier only right before it is sent (as one
      // promote after another did), so a call that fails part way removed nothing it had not yet
      // reached. A hash asked twice is sent once.
      const released = new Set<BlockHash>();
      let i = 0;
      for await (const read of readAhead(policy, hashes, readAheadBlocks)) {
        const hash = hashes[i] as BlockHash;
        const hit = released.has(hash) ? undefined : read;
        if (hit !== undefined) {
          await policy.release(hash, hit);
          released.add(hash);
        }
        yield blockMessage(request.hashes[i++] as Buffer, hit);
      }
    }, wrap),
    stats: wrapUnary(
      (): TieringStatsResponse => ({
        tiers: policy.stats().map((s) => ({
          tier: tierToProto(s.tier),
          blocks: BigInt(s.blocks),
          bytesUsed: BigInt(s.bytesUsed),
          bytesCapacity: BigInt(s.bytesCapacity),
          reads: BigInt(s.reads),
          writes: BigInt(s.writes),
          checksumFailures: BigInt(s.checksumFailures),
        })),
      }),
      wrap,
    ),
    locateFar: wrapUnary((request) => locateFar(policy, options, request), wrap),
    openDataChannel: wrapUnary(
      () => ({
        address: options.dataAddress,
        token: options.dataToken,
        protocolVersion: options.dataProtocolVersion,
        blockBytesMax: BigInt(options.blockBytesMax),
      }),
      wrap,
    ),
  };
}

// Handlers of the tiering data channel methods (TIERING_DATA_METHODS): demoteBlock, readBlock and
// promoteBlock, one block per call with protobuf headers and the payload as the frame body, and
// locateFar (request and answer as the bodies). A header
// that does not decode, or decodes to something outside the contract, is INVALID_ARGUMENT for that
// request only; the connection and the service go on. Errors keep their codes (a full tier is
// RESOURCE_EXHAUSTED, a bad block INVALID_ARGUMENT), so a client can tell which to retry.
// A block read from SSD is sent from the tier's read buffer without a copy; the buffer goes back to
// the tier once the socket took the bytes (DataResponse.releaseBody).
import { InvalidArgumentError } from '@kvmesh/errors';
import {
  decodeDataHeader,
  type DataHandler,
  type DataResponse,
  type RequestBodyAllocator,
} from '@kvmesh/dataplane';
import {
  DemoteRequest,
  DemoteResponse,
  LocateFarRequest,
  LocateFarResponse,
  PromoteRequest,
  ReadRequest,
  Tier,
  TierBlockResponse,
  blockHashToBytes,
} from '@kvmesh/protocol';

import type { ReusableBuffers, TierHit, TierPolicy } from '../core/index.ts';
import { TIERING_DATA_METHODS } from './data-methods.ts';
import { locateFar, type LocateFarOptions } from './locate-far.ts';
import { blockOf, hashOf, targetTierOf, tierBlockOf, tierToProto } from './wire.ts';

function singleHash(hashes: readonly Buffer[], method: string): Buffer {
  if (hashes.length !== 1)
    throw new InvalidArgumentError(`${method} takes exactly one hash, got ${hashes.length}`, {
      hashes: hashes.length,
    });
  return hashes[0] as Buffer;
}

function blockResponse(hashBytes: Buffer, hit: TierHit | undefined): DataResponse {
  if (hit === undefined) {
    const header = TierBlockResponse.encode({
      result: { $case: 'missingHash', value: hashBytes },
      tier: Tier.TIER_UNSPECIFIED,
    }).finish();
    return { header };
  }
  let header: Uint8Array;
  try {
    header = TierBlockResponse.encode({
      result: { $case: 'block', value: blockOf(hit.block, false) },
      tier: tierToProto(hit.tier),
    }).finish();
  } catch (err) {
    hit.releasePayload();
    throw err;
  }
  // NOTE: the payload is lent (an SSD read buffer): the channel releases it once the socket took it.
  return { header, body: hit.block.payload, releaseBody: hit.releasePayload };
}

/** Registers the methods on a data channel server. */
export function registerTieringDataHandlers(
  server: { handle(methodId: number, handler: DataHandler): unknown },
  policy: TierPolicy,
  locate: LocateFarOptions,
  /** Where demoted payloads were received (see demoteBodyAllocator): each goes back after its demote. */
  bodies?: ReusableBuffers,
): void {
  server.handle(TIERING_DATA_METHODS.locateFar, async (request) => {
    let message: LocateFarRequest;
    try {
      message = LocateFarRequest.decode(request.body);
    } catch (err) {
      throw new InvalidArgumentError(
        `locateFar body is not a valid LocateFarRequest message: ${(err as Error).message}`,
        { bodyBytes: request.body.length },
      );
    }
    const response = await locateFar(policy, locate, message);
    return { body: LocateFarResponse.encode(response).finish() };
  });
  server.handle(TIERING_DATA_METHODS.demoteBlock, async (request) => {
    const message = decodeDataHeader('DemoteRequest', (b) => DemoteRequest.decode(b), request);
    if (message.block !== undefined && message.block.payload.length > 0)
      throw new InvalidArgumentError(
        'demoteBlock carries the payload in the frame body; block.payload in the header must be empty',
        { headerPayloadBytes: message.block.payload.length },
      );
    const block = tierBlockOf(message.block, request.body);
    try {
      await policy.demote(block, targetTierOf(message.target));
    } finally {
      // NOTE: both tiers copy the payload (into the pool, into the SSD record): nothing keeps it.
      bodies?.giveBack(request.body);
    }
    return {
      header: DemoteResponse.encode({ acknowledged: [Buffer.from(blockHashToBytes(block.hash))] }).finish(),
    };
  });
  server.handle(TIERING_DATA_METHODS.readBlock, async (request) => {
    const message = decodeDataHeader('ReadRequest', (b) => ReadRequest.decode(b), request);
    const hashBytes = singleHash(message.hashes, 'readBlock');
    return blockResponse(hashBytes, await policy.read(hashOf(hashBytes, 'hashes[0]')));
  });
  server.handle(TIERING_DATA_METHODS.promoteBlock, async (request) => {
    const message = decodeDataHeader('PromoteRequest', (b) => PromoteRequest.decode(b), request);
    const hashBytes = singleHash(message.hashes, 'promoteBlock');
    return blockResponse(hashBytes, await policy.promote(hashOf(hashBytes, 'hashes[0]')));
  });
}

/** Receives demoted payloads into `bodies` (the demote handler hands each back once stored). */
export function demoteBodyAllocator(bodies: ReusableBuffers): RequestBodyAllocator {
  return {
    allocate: ({ methodId, bytes }) =>
      methodId === TIERING_DATA_METHODS.demoteBlock ? bodies.take(bytes) : undefined,
    abandon: (memory) => bodies.giveBack(memory),
  };
}

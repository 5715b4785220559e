// Handlers of the kvstore data channel methods (@kvmesh/protocol KVSTORE_DATA_METHODS): putBlock
// and getBlock, with protobuf headers and the payload as the frame body. A header that does not
// decode, or decodes to something outside the contract, is INVALID_ARGUMENT for that request only;
// the connection and the node go on. Errors keep their codes, so a peer coordinator can tell a
// full node (try another) from a bad block (give up).
import { InvalidArgumentError } from '@kvmesh/errors';
import { decodeDataHeader, type DataHandler } from '@kvmesh/dataplane';
import {
  GetBlocksRequest,
  GetBlocksResponse,
  KVSTORE_DATA_METHODS,
  PutBlocksRequest,
  PutBlocksResponse,
  Tier,
  type Block,
} from '@kvmesh/protocol';

import { tierToProto, type KvNode, type PutBlockInput } from '../core/index.ts';
import type { PayloadPool } from './payload-pool.ts';
import { encodePutAck, readPutHeader } from './put-header.ts';
import { blockOf, hashOf, namespaceOf, ownedPayload, putInputOf } from './wire.ts';

export function putBlockHandler(node: KvNode, pool?: PayloadPool): DataHandler {
  const keep = pool === undefined ? undefined : (bytes: Uint8Array): boolean => pool.owns(bytes);
  return async (request) => {
    // NOTE: the common encoding is read in one pass; any other header takes the generated decoder,
    // so its errors (and its view of odd encodings) stay exactly those of the general path.
    const fast = readPutHeader(request.header);
    if (fast !== undefined) {
      const input: PutBlockInput = {
        hash: fast.hash,
        parentHash: fast.parentHash,
        namespace: fast.namespace,
        modelFingerprint: fast.modelFingerprint,
        tokenIds: fast.tokenIds,
        payload: keep !== undefined && keep(request.body) ? request.body : ownedPayload(request.body),
      };
      const status = fast.replica ? node.putReplica(input) : (await node.putClient(input)).status;
      return { header: encodePutAck(request.header, fast.hashAt, status) };
    }
    const message = decodeDataHeader('PutBlocksRequest', (b) => PutBlocksRequest.decode(b), request);
    if (message.block !== undefined && message.block.payload.length > 0) {
      throw new InvalidArgumentError(
        'putBlock carries the payload in the frame body; block.payload in the header must be empty',
        { headerPayloadBytes: message.block.payload.length },
      );
    }
    const input = putInputOf(message.block, request.body, keep);
    const status = message.replica ? node.putReplica(input) : (await node.putClient(input)).status;
    const response = PutBlocksResponse.encode({
      // NOTE: the request's own hash bytes: putInputOf checked them (16 bytes, input.hash is their hex).
      acknowledged: [(message.block as Block).hash],
      stored: status === 'stored' ? 1 : 0,
      deduplicated: status === 'deduplicated' ? 1 : 0,
    }).finish();
    return { header: response };
  };
}

export function getBlockHandler(node: KvNode): DataHandler {
  return async (request) => {
    const message = decodeDataHeader('GetBlocksRequest', (b) => GetBlocksRequest.decode(b), request);
    if (message.hashes.length !== 1) {
      throw new InvalidArgumentError(`getBlock takes exactly one hash, got ${message.hashes.length}`, {
        hashes: message.hashes.length,
      });
    }
    const hashBytes = message.hashes[0] as Buffer;
    const hash = hashOf(hashBytes, 'hashes[0]');
    const read = await node.read(namespaceOf(message.namespace), hash, message.leaseMs);
    if (read === undefined) {
      const header = GetBlocksResponse.encode({
        result: { $case: 'missingHash', value: hashBytes },
        tier: Tier.TIER_UNSPECIFIED,
      }).finish();
      return { header };
    }
    const header = GetBlocksResponse.encode({
      result: { $case: 'block', value: blockOf(read.record, false) },
      tier: tierToProto(read.tier),
    }).finish();
    return { header, body: read.record.payload };
  };
}

/** Registers both methods on a data channel server; PUT bodies land in `pool` when given. */
export function registerDataHandlers(
  server: { handle(methodId: number, handler: DataHandler): unknown },
  node: KvNode,
  pool?: PayloadPool,
): void {
  server.handle(KVSTORE_DATA_METHODS.putBlock, putBlockHandler(node, pool));
  server.handle(KVSTORE_DATA_METHODS.getBlock, getBlockHandler(node));
}

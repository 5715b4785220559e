// The KvStore gRPC service of one node. Every handler runs under the runtime's wrappers, so any
// throw becomes a precise status (toGrpcStatus) and never reaches grpc-js. PutBlocks places up to
// `putStreamConcurrency` blocks of a stream at once but acknowledges in arrival order; the first bad
// block fails the call with a message naming its index and hash and how many blocks before it were
// acknowledged (those stay stored). Reads, probes and DistAttention answer from this node only.
import {
  blockHashToBytes,
  type GetBlocksResponse,
  type KvStoreServer,
  type MatchPrefixResponse,
  type PutBlocksRequest,
  type PutBlocksResponse,
  type StatsResponse,
} from '@kvmesh/protocol';
import {
  runBlockStream,
  wrapClientStream,
  wrapServerStream,
  wrapUnary,
  type WrapOptions,
} from '@kvmesh/runtime';

import {
  codecToProto,
  f32ToLittleEndian,
  tierToProto,
  type KvNode,
  type ReplicaOutcome,
} from '../core/index.ts';
import { blockOf, hashesOf, namespaceOf, putInputOf } from './wire.ts';

/** Pin holder used when a request names none. */
export const ANONYMOUS_PIN_HOLDER = 'anonymous';

export interface KvStoreServiceOptions {
  /** host:port, token and protocol version OpenDataChannel hands out. */
  readonly dataAddress: string;
  readonly dataToken: string;
  readonly dataProtocolVersion: number;
  readonly putMessagesPerStreamMax: number;
  readonly putStreamConcurrency: number;
  readonly wrap?: WrapOptions;
}

async function putStream(
  node: KvNode,
  requests: AsyncIterable<PutBlocksRequest>,
  options: KvStoreServiceOptions,
): Promise<PutBlocksResponse> {
  const placed = await runBlockStream<PutBlocksRequest, { hash: Buffer; status: ReplicaOutcome }>(requests, {
    rpc: 'PutBlocks',
    limitName: 'putMessagesPerStreamMax',
    messagesMax: options.putMessagesPerStreamMax,
    concurrency: options.putStreamConcurrency,
    hashOf: (message) => message.block?.hash.toString('hex') ?? '',
    start: (message) => {
      const input = putInputOf(message.block);
      const hash = Buffer.from(blockHashToBytes(input.hash));
      const placing = message.replica
        ? Promise.resolve().then(() => node.putReplica(input))
        : node.putClient(input).then((outcome) => outcome.status);
      return placing.then((status) => ({ hash, status }));
    },
  });
  return {
    acknowledged: placed.map((p) => p.hash),
    stored: placed.filter((p) => p.status === 'stored').length,
    deduplicated: placed.filter((p) => p.status !== 'stored').length,
  };
}

export function kvStoreGrpcService(node: KvNode, options: KvStoreServiceOptions): KvStoreServer {
  const store = node.store;
  const hashesMax = store.config.hashesPerRequestMax;
  const wrap = options.wrap;
  return {
    putBlocks: wrapClientStream<PutBlocksRequest, PutBlocksResponse>(
      (requests) => putStream(node, requests, options),
      wrap,
    ),
    getBlocks: wrapServerStream(async function* (request): AsyncIterable<GetBlocksResponse> {
      const hashes = hashesOf(request.hashes, hashesMax);
      const namespace = namespaceOf(request.namespace);
      for (const [i, hash] of hashes.entries()) {
        // NOTE: a block below DRAM is read back from the tier here; `tier` says where it came from.
        const read = await node.read(namespace, hash, request.leaseMs);
        if (read === undefined) {
          yield { result: { $case: 'missingHash', value: request.hashes[i] as Buffer }, tier: 0 };
        } else {
          yield {
            result: { $case: 'block', value: blockOf(read.record, true) },
            tier: tierToProto(read.tier),
          };
        }
      }
    }, wrap),
    matchPrefix: wrapUnary((request): MatchPrefixResponse => {
      const hashes = hashesOf(request.hashes, hashesMax);
      const match = node.matchPrefix(namespaceOf(request.namespace), hashes);
      return {
        matchedBlocks: match.matchedBlocks,
        locations: match.held.map((held) => ({
          hash: request.hashes[held.index] as Buffer,
          nodeIds: [node.self],
          tier: tierToProto(held.tier),
          codec: codecToProto(held.codec),
        })),
      };
    }, wrap),
    partialAttention: wrapUnary(async (request) => {
      const hashes = hashesOf(request.hashes, hashesMax);
      const result = await node.partialAttention({
        layer: request.layer,
        queryHeads: request.queryHeads,
        headDim: request.headDim,
        query: request.query,
        scale: request.scale,
        namespace: namespaceOf(request.namespace),
        hashes,
      });
      return {
        o: f32ToLittleEndian(result.o),
        m: f32ToLittleEndian(result.m),
        l: f32ToLittleEndian(result.l),
        blocksUsed: result.blocksUsed,
        missingHashes: result.missing.map((h) => Buffer.from(blockHashToBytes(h))),
      };
    }, wrap),
    pin: wrapUnary((request) => {
      const result = store.pin(
        namespaceOf(request.namespace),
        hashesOf(request.hashes, hashesMax),
        request.holder === '' ? ANONYMOUS_PIN_HOLDER : request.holder,
        request.ttlMs,
      );
      return {
        pinned: result.pinned,
        missingHashes: result.missing.map((h) => Buffer.from(blockHashToBytes(h))),
      };
    }, wrap),
    unpin: wrapUnary(
      (request) => ({
        unpinned: store.unpin(
          namespaceOf(request.namespace),
          hashesOf(request.hashes, hashesMax),
          request.holder === '' ? ANONYMOUS_PIN_HOLDER : request.holder,
        ),
      }),
      wrap,
    ),
    stats: wrapUnary((): StatsResponse => {
      const stats = store.stats();
      const hitsByTier: Record<string, bigint> = {};
      for (const [tier, hits] of Object.entries(stats.hitsByTier)) hitsByTier[tier] = BigInt(hits);
      return {
        nodeId: node.self,
        blocks: BigInt(stats.blocks),
        bytesUsed: BigInt(stats.bytesUsed),
        bytesBudget: BigInt(stats.bytesBudget),
        hits: BigInt(stats.hits),
        misses: BigInt(stats.misses),
        evictions: BigInt(stats.evictions),
        deduplicated: BigInt(stats.deduplicated),
        hitsByTier,
      };
    }, wrap),
    openDataChannel: wrapUnary(
      () => ({
        address: options.dataAddress,
        token: options.dataToken,
        protocolVersion: options.dataProtocolVersion,
        blockBytesMax: BigInt(store.config.blockBytesMax),
      }),
      wrap,
    ),
  };
}

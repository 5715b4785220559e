// Fixtures of the SDK tests: valid blocks with real hashes and random K/V (small dims), and an
// in-process fake kvstore node (real gRPC server and real data channel on loopback) whose storage
// is a plain map and whose misbehaviours are switches, so the client's retry and verification rules
// can be tested exactly without the kvstore service.
import { randomBytes } from 'node:crypto';
import { createServer } from 'node:net';

import { attendPayloads, encodeBlockPayload, type BlockDims } from '@kvmesh/block';
import { DataChannelServer } from '@kvmesh/dataplane';
import type { KvmeshError } from '@kvmesh/errors';
import { loadKernels, type CodecName, type Kernels } from '@kvmesh/kernels';
import {
  GetBlocksRequest,
  GetBlocksResponse,
  KVSTORE_DATA_METHODS,
  KvStoreService,
  PutBlocksRequest,
  PutBlocksResponse,
  Tier,
  blockHashFromBytes,
  parseModelFingerprint,
  type Block,
  type BlockHash,
  type GetBlocksResponse as GetBlocksResponseMessage,
  type KvStoreServer,
} from '@kvmesh/protocol';
import {
  createGrpcServer,
  wrapClientStream,
  wrapServerStream,
  wrapUnary,
  type GrpcServer,
} from '@kvmesh/runtime';

import { chainBlocks, type ChainedBlock, type StaticNode } from '../src/index.ts';

export const kernels: Kernels = loadKernels();
export const DIMS: BlockDims = { layers: 2, kvHeads: 2, blockTokens: 16, headDim: 32, groupSize: 16 };
export const FINGERPRINT = parseModelFingerprint(randomBytes(16).toString('hex'));

function randn(count: number): Float32Array {
  const out = new Float32Array(count);
  for (let i = 0; i < count; i++) {
    // Box-Muller: normal values, so attention scores are spread like real keys.
    const u = 1 - Math.random();
    out[i] = Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * Math.random());
  }
  return out;
}

/**
 * A loopback port nothing listens on (bound by the OS, then closed), for a node that is down.
 * NOTE: not @kvmesh/test-harness's freePort: the harness package depends on the SDK (integration
 * tests), so the SDK's tests must not depend on the harness.
 */
export function closedPort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      const port = typeof address === 'object' && address !== null ? address.port : 0;
      server.close(() => resolve(port));
    });
  });
}

export function randomPayload(codec: CodecName = 'f32', dims: BlockDims = DIMS): Uint8Array {
  const n = dims.kvHeads * dims.blockTokens * dims.headDim;
  const layers = Array.from({ length: dims.layers }, () => ({ k: randn(n), v: randn(n) }));
  return encodeBlockPayload(kernels, codec, dims, layers);
}

export function randomTokens(count: number): Uint32Array {
  const out = new Uint32Array(count);
  for (let i = 0; i < count; i++) out[i] = Math.floor(Math.random() * 32_000);
  return out;
}

/** A chain of `count` blocks with random tokens and K/V, optionally continuing after `parentHash`. */
export function makeChain(
  count: number,
  options: { namespace?: string; codec?: CodecName; parentHash?: BlockHash | null } = {},
): ChainedBlock[] {
  return chainBlocks(
    {
      modelFingerprint: FINGERPRINT,
      namespace: options.namespace ?? '',
      blockTokens: DIMS.blockTokens,
      tokens: randomTokens(count * DIMS.blockTokens),
      payloads: Array.from({ length: count }, () => randomPayload(options.codec ?? 'f32')),
      parentHash: options.parentHash ?? null,
    },
    kernels,
  );
}

export interface FakeNodeBehaviour {
  /** List put blocks as acknowledged (default true). */
  ackPuts: boolean;
  /** Serve every block with its first token id changed (a wrong copy). */
  corruptReads: boolean;
  /** MatchPrefix claims these, PartialAttention then reports them missing. */
  phantom: Set<BlockHash>;
  /** PartialAttention fails with this error. */
  attentionError: KvmeshError | undefined;
}

/** A kvstore stand-in: map storage behind the real gRPC service definition and data channel methods. */
export class FakeNode {
  readonly blocks = new Map<string, { block: Block; payload: Uint8Array }>();
  /** Method names in call order. */
  readonly calls: string[] = [];
  readonly behaviour: FakeNodeBehaviour = {
    ackPuts: true,
    corruptReads: false,
    phantom: new Set(),
    attentionError: undefined,
  };
  endpoint!: StaticNode;
  private grpc!: GrpcServer;
  private data!: DataChannelServer;

  private constructor(readonly nodeId: string) {}

  static async start(nodeId: string, token?: string): Promise<FakeNode> {
    const node = new FakeNode(nodeId);
    await node.listen(token);
    return node;
  }

  private key(namespace: string, hash: Uint8Array): string {
    return `${namespace}/${blockHashFromBytes(hash)}`;
  }

  private store(block: Block, payload: Uint8Array): PutBlocksResponse {
    this.blocks.set(this.key(block.namespace, block.hash), {
      block: { ...block, payload: Buffer.alloc(0) },
      payload,
    });
    return { acknowledged: this.behaviour.ackPuts ? [block.hash] : [], stored: 1, deduplicated: 0 };
  }

  private read(namespace: string, hash: Buffer): GetBlocksResponseMessage {
    const held = this.blocks.get(this.key(namespace, hash));
    if (held === undefined)
      return { result: { $case: 'missingHash', value: hash }, tier: Tier.TIER_UNSPECIFIED };
    const tokenIds = this.behaviour.corruptReads
      ? [held.block.tokenIds[0]! + 1, ...held.block.tokenIds.slice(1)]
      : held.block.tokenIds;
    return { result: { $case: 'block', value: { ...held.block, tokenIds } }, tier: Tier.TIER_DRAM };
  }

  private async listen(token: string | undefined): Promise<void> {
    this.data = new DataChannelServer();
    this.data.handle(KVSTORE_DATA_METHODS.putBlock, async (req) => {
      this.calls.push('data.putBlock');
      const { block } = PutBlocksRequest.decode(req.header);
      return { header: PutBlocksResponse.encode(this.store(block!, Buffer.from(req.body))).finish() };
    });
    this.data.handle(KVSTORE_DATA_METHODS.getBlock, async (req) => {
      this.calls.push('data.getBlock');
      const { hashes, namespace } = GetBlocksRequest.decode(req.header);
      const response = this.read(namespace, hashes[0]!);
      const payload =
        response.result?.$case === 'block'
          ? this.blocks.get(this.key(namespace, hashes[0]!))!.payload
          : undefined;
      return {
        header: GetBlocksResponse.encode(response).finish(),
        ...(payload === undefined ? {} : { body: payload }),
      };
    });
    const { port: dataPort } = await this.data.listen({
      host: '127.0.0.1',
      port: 0,
      ...(token === undefined ? {} : { token }),
    });
    const dataAddress = `127.0.0.1:${dataPort}`;

    const has = (namespace: string, hash: Buffer): boolean => this.blocks.has(this.key(namespace, hash));
    const impl: KvStoreServer = {
      putBlocks: wrapClientStream(async (requests) => {
        this.calls.push('grpc.putBlocks');
        let response: PutBlocksResponse = { acknowledged: [], stored: 0, deduplicated: 0 };
        for await (const { block } of requests) response = this.store(block!, block!.payload);
        return response;
      }),
      getBlocks: wrapServerStream(async function* (this: void, request) {
        for (const hash of request.hashes) {
          const response = node.read(request.namespace, hash);
          if (response.result?.$case === 'block')
            response.result.value = {
              ...response.result.value,
              payload: Buffer.from(node.blocks.get(node.key(request.namespace, hash))!.payload),
            };
          yield response;
        }
      }),
      matchPrefix: wrapUnary((request) => {
        this.calls.push('grpc.matchPrefix');
        const held = request.hashes.filter(
          (h) => has(request.namespace, h) || this.behaviour.phantom.has(blockHashFromBytes(h)),
        );
        let matchedBlocks = 0;
        while (matchedBlocks < request.hashes.length && held.includes(request.hashes[matchedBlocks]!))
          matchedBlocks++;
        return {
          matchedBlocks,
          locations: held.map((hash) => ({ hash, nodeIds: [this.nodeId], tier: Tier.TIER_DRAM, codec: 1 })),
        };
      }),
      partialAttention: wrapUnary(async (request) => {
        this.calls.push(`grpc.partialAttention:${request.hashes.length}`);
        if (this.behaviour.attentionError !== undefined) throw this.behaviour.attentionError;
        const present = request.hashes.filter((h) => has(request.namespace, h));
        const missingHashes = request.hashes.filter((h) => !has(request.namespace, h));
        const query = new Float32Array(request.queryHeads * request.headDim);
        new Uint8Array(query.buffer).set(request.query);
        const partial = await attendPayloads(kernels, {
          layer: request.layer,
          queryHeads: request.queryHeads,
          headDim: request.headDim,
          query,
          scale: request.scale,
          payloads: present.map((h) => this.blocks.get(this.key(request.namespace, h))!.payload),
        });
        const bytes = (f: Float32Array): Buffer => Buffer.from(f.buffer, f.byteOffset, f.byteLength);
        return {
          o: bytes(partial.o),
          m: bytes(partial.m),
          l: bytes(partial.l),
          blocksUsed: present.length,
          missingHashes,
        };
      }),
      pin: wrapUnary((request) => {
        const missingHashes = request.hashes.filter((h) => !has(request.namespace, h));
        return { pinned: request.hashes.length - missingHashes.length, missingHashes };
      }),
      unpin: wrapUnary((request) => ({
        unpinned: request.hashes.filter((h) => has(request.namespace, h)).length,
      })),
      stats: wrapUnary(() => ({
        nodeId: this.nodeId,
        blocks: BigInt(this.blocks.size),
        bytesUsed: 0n,
        bytesBudget: 0n,
        hits: 0n,
        misses: 0n,
        evictions: 0n,
        deduplicated: 0n,
        hitsByTier: {},
      })),
      openDataChannel: wrapUnary(() => {
        this.calls.push('grpc.openDataChannel');
        return { address: dataAddress, token: token ?? '', protocolVersion: 1, blockBytesMax: 1n << 26n };
      }),
    };
    const node = this as FakeNode;
    this.grpc = createGrpcServer();
    this.grpc.server.addService(KvStoreService, impl);
    const grpcPort = await this.grpc.bind('127.0.0.1:0');
    this.grpc.setServing(true);
    this.endpoint = { nodeId: this.nodeId, grpcAddress: `127.0.0.1:${grpcPort}` };
  }

  async stop(): Promise<void> {
    await Promise.all([this.grpc.shutdown(100), this.data.close()]);
  }
}

// Fixtures for the kvstore node tests: chains of real blocks (spec v1 hashes, payloads encoded from
// fresh random f32 data), and thin promise wrappers over the generated gRPC client and the data
// channel client, so tests read as requests and answers. Errors from gRPC stay raw ServiceErrors so
// tests can assert the exact status code the node chose.
import assert from 'node:assert/strict';

import { credentials, Metadata, type ServiceError, status as GrpcStatus } from '@grpc/grpc-js';
import type { BlockDims } from '@kvmesh/block';
import { DataChannelClient, parseDataAddress } from '@kvmesh/dataplane';
import { loadKernels, type CodecName } from '@kvmesh/kernels';
import {
  GetBlocksRequest,
  GetBlocksResponse,
  KVSTORE_DATA_METHODS,
  KvStoreClient,
  PutBlocksRequest,
  PutBlocksResponse,
  blockHashToBytes,
  modelFingerprintToBytes,
  parseModelFingerprint,
  parseNamespace,
  type Block,
  type BlockHash,
  type ModelFingerprint,
  type Namespace,
} from '@kvmesh/protocol';
import { grpcClientOptions } from '@kvmesh/runtime';

import { chain as coreChain, randomPayload as coreRandomPayload } from './core/helpers.ts';

export const kernels = loadKernels();
export const DIMS: BlockDims = { layers: 2, kvHeads: 2, blockTokens: 16, headDim: 32, groupSize: 16 };
export const FINGERPRINT: ModelFingerprint = parseModelFingerprint('5eed0123456789abcdef0123456789ab');
export const NS = parseNamespace('');

export interface TestBlock {
  namespace: Namespace;
  hash: BlockHash;
  parentHash: BlockHash | null;
  modelFingerprint: ModelFingerprint;
  tokenIds: Uint32Array;
  payload: Uint8Array;
}

/** A random payload in `codec` (argument order of the node tests: dims first). */
export function randomPayload(dims: BlockDims = DIMS, codec: CodecName = 'f32'): Uint8Array {
  return coreRandomPayload(codec, dims);
}

/** `count` chained blocks of one random token sequence, parent first (the core tests' builder). */
export function chain(count: number, options: { namespace?: Namespace; dims?: BlockDims } = {}): TestBlock[] {
  return coreChain(count, {
    namespace: options.namespace ?? NS,
    dims: options.dims ?? DIMS,
    fingerprint: FINGERPRINT,
    tokens: Uint32Array.from({ length: count * (options.dims ?? DIMS).blockTokens }, () =>
      Math.floor(Math.random() * 50_000),
    ),
  }) as TestBlock[];
}

export function hashBytes(hash: BlockHash): Buffer {
  return Buffer.from(blockHashToBytes(hash));
}

export function hex(bytes: Uint8Array): string {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('hex');
}

export function wireBlock(block: TestBlock, withPayload = true): Block {
  return {
    hash: hashBytes(block.hash),
    parentHash: block.parentHash === null ? Buffer.alloc(0) : hashBytes(block.parentHash),
    namespace: block.namespace,
    modelFingerprint: Buffer.from(modelFingerprintToBytes(block.modelFingerprint)),
    tokenIds: Array.from(block.tokenIds),
    payload: withPayload ? Buffer.from(block.payload) : Buffer.alloc(0),
  };
}

// ---------------------------------------------------------------------------------------------
// gRPC

export function grpcClient(address: string): KvStoreClient {
  return new KvStoreClient(address, credentials.createInsecure(), grpcClientOptions());
}

export function unary<Res>(
  invoke: (cb: (err: ServiceError | null, res: Res) => void) => unknown,
): Promise<Res> {
  return new Promise((resolve, reject) => {
    invoke((err, res) => (err !== null ? reject(err) : resolve(res)));
  });
}

export function putBlocks(
  client: KvStoreClient,
  blocks: readonly (TestBlock | Block)[],
  replica = false,
): Promise<PutBlocksResponse> {
  return new Promise((resolve, reject) => {
    const call = client.putBlocks(new Metadata(), (err, res) => (err !== null ? reject(err) : resolve(res)));
    for (const b of blocks) {
      const block = 'payload' in b && Buffer.isBuffer(b.payload) ? (b as Block) : wireBlock(b as TestBlock);
      call.write({ block, replica });
    }
    call.end();
  });
}

export function getBlocks(
  client: KvStoreClient,
  request: Partial<GetBlocksRequest> & { hashes: Buffer[] },
): Promise<GetBlocksResponse[]> {
  return new Promise((resolve, reject) => {
    const out: GetBlocksResponse[] = [];
    const stream = client.getBlocks({ namespace: '', leaseMs: 0, ...request });
    stream.on('data', (r: GetBlocksResponse) => out.push(r));
    stream.on('error', reject);
    stream.on('end', () => resolve(out));
  });
}

/** Awaits a gRPC failure with status `code` whose message matches `message`; returns the error. */
export async function rejectsWith(
  promise: Promise<unknown>,
  code: GrpcStatus,
  message?: RegExp,
): Promise<ServiceError> {
  try {
    await promise;
  } catch (err) {
    const e = err as ServiceError;
    assert.equal(
      e.code,
      code,
      `expected status ${GrpcStatus[code]}, got ${GrpcStatus[e.code] ?? e.code}: ${e.details ?? e.message}`,
    );
    if (message !== undefined) assert.match(e.details, message);
    return e;
  }
  assert.fail(`expected status ${GrpcStatus[code]}, but the call succeeded`);
}

export function errorCodeOf(err: ServiceError): string | undefined {
  const value = err.metadata?.get('kvmesh-error-code')[0];
  return typeof value === 'string' ? value : undefined;
}

// ---------------------------------------------------------------------------------------------
// Data channel

export async function dataClient(address: string, token?: string): Promise<DataChannelClient> {
  const { host, port } = parseDataAddress(address);
  return DataChannelClient.connect({
    host,
    port,
    ...(token === undefined ? {} : { token }),
    timeoutMs: 5_000,
  });
}

export async function dataPut(
  client: DataChannelClient,
  block: TestBlock,
  replica = false,
): Promise<PutBlocksResponse> {
  const header = PutBlocksRequest.encode({ block: wireBlock(block, false), replica }).finish();
  const result = await client.call(KVSTORE_DATA_METHODS.putBlock, header, block.payload);
  return PutBlocksResponse.decode(result.header);
}

export async function dataGet(
  client: DataChannelClient,
  hash: BlockHash,
  namespace: Namespace = NS,
): Promise<{ response: GetBlocksResponse; body: Uint8Array }> {
  const header = GetBlocksRequest.encode({ hashes: [hashBytes(hash)], namespace, leaseMs: 0 }).finish();
  const result = await client.call(KVSTORE_DATA_METHODS.getBlock, header);
  return { response: GetBlocksResponse.decode(result.header), body: result.body };
}

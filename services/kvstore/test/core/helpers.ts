// Fixtures for the block store tests: a fake clock, an event recorder, and chains of real blocks
// (spec v1 hashes from blockSeed / computeBlockHashes, payloads encoded from fresh random f32 data),
// so every test exercises the same identity and header checks a production put does.
import { blockSeed, computeBlockHashes, encodeBlockPayload, type BlockDims } from '@kvmesh/block';
import { loadKernels, type CodecName } from '@kvmesh/kernels';
import {
  modelFingerprintFromBytes,
  parseNamespace,
  parseNodeId,
  type BlockHash,
  type KvEvent,
  type ModelFingerprint,
  type Namespace,
} from '@kvmesh/protocol';

import {
  BlockStore,
  ENTRY_OVERHEAD_BYTES,
  type BlockStoreConfig,
  type PutBlockInput,
} from '../../src/core/index.ts';

export const kernels = loadKernels();
export const NODE_ID = parseNodeId('kvstore-test-0');
export const DIMS: BlockDims = { layers: 2, kvHeads: 2, blockTokens: 16, headDim: 16, groupSize: 16 };
export const NS = parseNamespace('');
export const NS_A = parseNamespace('tenant-a');
export const NS_B = parseNamespace('tenant-b');
export const FINGERPRINT: ModelFingerprint = modelFingerprintFromBytes(
  Uint8Array.from({ length: 16 }, (_, i) => (i * 37 + 11) & 0xff),
);

export class FakeClock {
  constructor(public nowMs = 1_000) {}
  readonly now = (): number => this.nowMs;
  advance(ms: number): void {
    this.nowMs += ms;
  }
}

export function randomPayload(codec: CodecName = 'f32', dims: BlockDims = DIMS): Uint8Array {
  const n = dims.kvHeads * dims.blockTokens * dims.headDim;
  const fill = (): Float32Array => Float32Array.from({ length: n }, () => Math.random() * 4 - 2);
  return encodeBlockPayload(
    kernels,
    codec,
    dims,
    Array.from({ length: dims.layers }, () => ({ k: fill(), v: fill() })),
  );
}

export function randomTokens(count: number): Uint32Array {
  return Uint32Array.from({ length: count }, () => Math.floor(Math.random() * 50_000));
}

export interface ChainOptions {
  namespace?: Namespace;
  codec?: CodecName;
  dims?: BlockDims;
  fingerprint?: ModelFingerprint;
  tokens?: Uint32Array;
}

/** A put input whose token ids are always a Uint32Array. */
export type ChainBlock = PutBlockInput & { tokenIds: Uint32Array };

/** `blocks` chained blocks of one random sequence, ready to put (parent first). */
export function chain(blocks: number, options: ChainOptions = {}): ChainBlock[] {
  const namespace = options.namespace ?? NS;
  const dims = options.dims ?? DIMS;
  const fingerprint = options.fingerprint ?? FINGERPRINT;
  const tokens = options.tokens ?? randomTokens(blocks * dims.blockTokens);
  const seed = blockSeed(
    { modelFingerprint: fingerprint, blockTokens: dims.blockTokens, namespace },
    kernels,
  );
  const hashes = computeBlockHashes(seed, tokens, dims.blockTokens, kernels);
  return hashes.map((hash, i) => ({
    namespace,
    hash,
    parentHash: i === 0 ? null : (hashes[i - 1] as BlockHash),
    modelFingerprint: fingerprint,
    tokenIds: tokens.slice(i * dims.blockTokens, (i + 1) * dims.blockTokens),
    payload: randomPayload(options.codec ?? 'f32', dims),
  }));
}

/** Bytes an input is charged in the store. */
export function entryBytes(input: PutBlockInput): number {
  return input.payload.byteLength + input.tokenIds.length * 4 + ENTRY_OVERHEAD_BYTES;
}

/** Bytes of one block built with DIMS in f32 (every chain() block unless told otherwise). */
export const BLOCK_BYTES = entryBytes(chain(1)[0] as PutBlockInput);

export interface Harness {
  store: BlockStore;
  clock: FakeClock;
  events: KvEvent[];
}

export function makeStore(config: Partial<BlockStoreConfig> = {}, clock = new FakeClock()): Harness {
  const events: KvEvent[] = [];
  const store = new BlockStore(
    { nodeId: NODE_ID, ...config },
    { now: clock.now, sink: (event) => events.push(event), kernels },
  );
  return { store, clock, events };
}

/** The hashes held, in the store's iteration order. */
export function heldHashes(store: BlockStore): BlockHash[] {
  return [...store.entries()].map((record) => record.hash);
}

export function hex(buffer: Uint8Array): string {
  return Buffer.from(buffer).toString('hex');
}

/**
 * A tiering store with room for `dramBlocks` blocks, `blocks` put in order 10 ms apart on `clock`
 * (watermarks at 1: each put past the room claims the oldest for demotion). Nothing is demoted yet.
 */
export function tieredStoreWith(
  blocks: readonly ChainBlock[],
  dramBlocks: number,
  clock: FakeClock,
): BlockStore {
  const { store } = makeStore(
    {
      bytesBudget: dramBlocks * BLOCK_BYTES,
      highWatermark: 1,
      lowWatermark: 1,
      tiering: true,
      demotingBytesMax: 100 * BLOCK_BYTES,
    },
    clock,
  );
  for (const block of blocks) {
    store.put(block);
    clock.advance(10);
  }
  return store;
}

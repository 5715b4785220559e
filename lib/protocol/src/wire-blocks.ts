// Checked conversions between wire Block messages (and hash lists) and branded fields, shared by
// every service that takes blocks: each decode validates (16-byte hashes and fingerprints,
// namespace bounds, the hash-count bound) and throws InvalidArgumentError / LimitExceededError
// naming the field, so a handler never passes unchecked bytes on.
import { InvalidArgumentError, LimitExceededError } from '@kvmesh/errors';

import type { Block } from './gen/kvmesh/v1/common.js';
import {
  blockHashFromBytes,
  blockHashToBytes,
  modelFingerprintFromBytes,
  modelFingerprintToBytes,
  parseNamespace,
  type BlockHash,
  type ModelFingerprint,
  type Namespace,
} from './ids.ts';

/** A block's identity fields, checked. */
export interface BlockFields {
  readonly hash: BlockHash;
  readonly parentHash: BlockHash | null;
  readonly namespace: Namespace;
  readonly modelFingerprint: ModelFingerprint;
  readonly tokenIds: Uint32Array;
}

/** Runs `parse(bytes)`, turning a failure into an InvalidArgumentError naming the field. */
export function wireField<T>(what: string, parse: (bytes: Uint8Array) => T, bytes: Uint8Array): T {
  try {
    return parse(bytes);
  } catch (err) {
    throw new InvalidArgumentError(`${what}: ${(err as Error).message}`, {
      field: what,
      bytes: bytes.length,
    });
  }
}

export function hashFromWire(bytes: Uint8Array, what = 'hash'): BlockHash {
  return wireField(what, blockHashFromBytes, bytes);
}

/** The request's hashes, each checked, after checking the count against `hashesMax`. */
export function hashesFromWire(list: readonly Uint8Array[], hashesMax: number): BlockHash[] {
  if (list.length > hashesMax)
    throw new LimitExceededError(`request lists ${list.length} hashes, limit is ${hashesMax}`, {
      hashes: list.length,
      hashesPerRequestMax: hashesMax,
    });
  return list.map((bytes, i) => hashFromWire(bytes, `hashes[${i}]`));
}

/** The identity fields of a wire block (`what` names the request in the error when it is absent). */
export function blockFieldsFromWire(block: Block | undefined, what: string): BlockFields {
  if (block === undefined) throw new InvalidArgumentError(`${what} carries no block`, { field: 'block' });
  return {
    hash: hashFromWire(block.hash, 'block.hash'),
    parentHash: block.parentHash.length === 0 ? null : hashFromWire(block.parentHash, 'block.parent_hash'),
    namespace: wireField('block.namespace', () => parseNamespace(block.namespace), block.hash),
    modelFingerprint: wireField('block.model_fingerprint', modelFingerprintFromBytes, block.modelFingerprint),
    tokenIds: Uint32Array.from(block.tokenIds),
  };
}

function asBuffer(bytes: Uint8Array): Buffer {
  return Buffer.isBuffer(bytes) ? bytes : Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

/** A block as a wire Block; the payload is shared (not copied), or left empty. */
export function blockToWire(
  block: Omit<BlockFields, 'namespace' | 'tokenIds'> & {
    readonly namespace: string;
    readonly tokenIds: ArrayLike<number>;
    readonly payload?: Uint8Array;
  },
  withPayload: boolean,
): Block {
  return {
    hash: Buffer.from(blockHashToBytes(block.hash)),
    parentHash: block.parentHash === null ? Buffer.alloc(0) : Buffer.from(blockHashToBytes(block.parentHash)),
    namespace: block.namespace,
    modelFingerprint: Buffer.from(modelFingerprintToBytes(block.modelFingerprint)),
    tokenIds: Array.from(block.tokenIds),
    payload: withPayload && block.payload !== undefined ? asBuffer(block.payload) : Buffer.alloc(0),
  };
}

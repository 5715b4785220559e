// Conversions between the wire messages of kvstore.proto and the BlockStore's branded shapes. Every
// decode validates (16-byte hashes and fingerprints, namespace bounds) and throws
// InvalidArgumentError naming the field and position, so a handler never passes unchecked bytes on.
import { InvalidArgumentError, LimitExceededError } from '@kvmesh/errors';
import {
  blockHashFromBytes,
  blockHashToBytes,
  modelFingerprintFromBytes,
  modelFingerprintToBytes,
  parseNamespace,
  type Block,
  type BlockHash,
  type Namespace,
} from '@kvmesh/protocol';

import type { BlockRecord, PutBlockInput } from '../core/index.ts';

function bytesField<T>(what: string, parse: (bytes: Uint8Array) => T, bytes: Uint8Array): T {
  try {
    return parse(bytes);
  } catch (err) {
    throw new InvalidArgumentError(`${what}: ${(err as Error).message}`, {
      field: what,
      bytes: bytes.length,
    });
  }
}

export function hashOf(bytes: Uint8Array, what = 'hash'): BlockHash {
  return bytesField(what, blockHashFromBytes, bytes);
}

/** The request's hashes, each checked, after checking the count against `hashesMax`. */
export function hashesOf(list: readonly Uint8Array[], hashesMax: number): BlockHash[] {
  if (list.length > hashesMax) {
    // Same error the BlockStore raises for its own request bounds.
    throw new LimitExceededError(`request lists ${list.length} hashes, limit is ${hashesMax}`, {
      hashes: list.length,
      hashesPerRequestMax: hashesMax,
    });
  }
  return list.map((bytes, i) => hashOf(bytes, `hashes[${i}]`));
}

export function namespaceOf(text: string): Namespace {
  return parseNamespace(text);
}

/**
 * A payload the store may keep: small frame bodies can be views into a shared allocation pool, and
 * holding one would pin (and under-count) the whole slab, so those are copied.
 */
export function ownedPayload(bytes: Uint8Array): Uint8Array {
  return bytes.byteOffset === 0 && bytes.byteLength === bytes.buffer.byteLength ? bytes : bytes.slice();
}

/**
 * A wire block as a put input; `payload` overrides block.payload (the data channel sends it apart).
 * `keep` says a view may be held as is (memory from the node's payload pool).
 */
export function putInputOf(
  block: Block | undefined,
  payload?: Uint8Array,
  keep?: (bytes: Uint8Array) => boolean,
): PutBlockInput {
  if (block === undefined) throw new InvalidArgumentError('put carries no block', { field: 'block' });
  return {
    namespace: namespaceOf(block.namespace),
    hash: hashOf(block.hash, 'block.hash'),
    parentHash: block.parentHash.length === 0 ? null : hashOf(block.parentHash, 'block.parent_hash'),
    modelFingerprint: bytesField(
      'block.model_fingerprint',
      modelFingerprintFromBytes,
      block.modelFingerprint,
    ),
    tokenIds: Uint32Array.from(block.tokenIds),
    payload:
      keep !== undefined && payload !== undefined && keep(payload)
        ? payload
        : ownedPayload(payload ?? block.payload),
  };
}

function asBuffer(bytes: Uint8Array): Buffer {
  return Buffer.isBuffer(bytes) ? bytes : Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

/** A stored block (or put input) as a wire Block; the payload is shared, not copied, or left empty. */
export function blockOf(record: BlockRecord | PutBlockInput, withPayload: boolean): Block {
  return {
    hash: Buffer.from(blockHashToBytes(record.hash)),
    parentHash:
      record.parentHash === null ? Buffer.alloc(0) : Buffer.from(blockHashToBytes(record.parentHash)),
    namespace: record.namespace,
    modelFingerprint: Buffer.from(modelFingerprintToBytes(record.modelFingerprint)),
    tokenIds: Array.from(record.tokenIds),
    payload: withPayload ? asBuffer(record.payload) : Buffer.alloc(0),
  };
}

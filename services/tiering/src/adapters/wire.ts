// Conversions between the wire messages of tiering.proto and the core's shapes. Every decode
// validates (16-byte hashes and fingerprints, namespace bounds, a known target tier, the hash-count
// bound) and throws InvalidArgumentError / LimitExceededError naming the field, so a handler never
// passes unchecked bytes on.
import { InvalidArgumentError, LimitExceededError } from '@kvmesh/errors';
import {
  Tier,
  blockHashFromBytes,
  blockHashToBytes,
  modelFingerprintFromBytes,
  modelFingerprintToBytes,
  parseNamespace,
  type Block,
  type BlockHash,
} from '@kvmesh/protocol';

import type { TierBlock, TierName } from '../core/index.ts';

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
  if (list.length > hashesMax)
    throw new LimitExceededError(`request lists ${list.length} hashes, limit is ${hashesMax}`, {
      hashes: list.length,
      hashesPerRequestMax: hashesMax,
    });
  return list.map((bytes, i) => hashOf(bytes, `hashes[${i}]`));
}

/** The tier a Demote names; only TIER_FAR and TIER_SSD take blocks. */
export function targetTierOf(tier: Tier): TierName {
  if (tier === Tier.TIER_FAR) return 'far';
  if (tier === Tier.TIER_SSD) return 'ssd';
  throw new InvalidArgumentError(
    `demote target must be TIER_FAR (${Tier.TIER_FAR}) or TIER_SSD (${Tier.TIER_SSD}), got ${Tier[tier] ?? tier}`,
    { target: tier },
  );
}

export function tierToProto(tier: TierName): Tier {
  return tier === 'far' ? Tier.TIER_FAR : Tier.TIER_SSD;
}

/** A wire block as a tier block; `payload` overrides block.payload (the data channel sends it apart). */
export function tierBlockOf(block: Block | undefined, payload?: Uint8Array): TierBlock {
  if (block === undefined) throw new InvalidArgumentError('demote carries no block', { field: 'block' });
  return {
    hash: hashOf(block.hash, 'block.hash'),
    parentHash: block.parentHash.length === 0 ? null : hashOf(block.parentHash, 'block.parent_hash'),
    namespace: bytesField('block.namespace', () => parseNamespace(block.namespace), block.hash),
    modelFingerprint: bytesField(
      'block.model_fingerprint',
      modelFingerprintFromBytes,
      block.modelFingerprint,
    ),
    tokenIds: Uint32Array.from(block.tokenIds),
    payload: payload ?? block.payload,
  };
}

function asBuffer(bytes: Uint8Array): Buffer {
  return Buffer.isBuffer(bytes) ? bytes : Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

/** A tier block as a wire Block; the payload is shared (not copied) or left empty. */
export function blockOf(
  block: Omit<TierBlock, 'payload'> & { payload?: Uint8Array },
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

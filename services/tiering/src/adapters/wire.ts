// Conversions between the wire messages of tiering.proto and the core's shapes. Every decode
// validates (16-byte hashes and fingerprints, namespace bounds, a known target tier, the hash-count
// bound) and throws InvalidArgumentError / LimitExceededError naming the field, so a handler never
// passes unchecked bytes on.
import { InvalidArgumentError } from '@kvmesh/errors';
import { Tier, blockFieldsFromWire, blockToWire, type Block } from '@kvmesh/protocol';

import type { TierBlock, TierName } from '../core/index.ts';

export { hashFromWire as hashOf, hashesFromWire as hashesOf } from '@kvmesh/protocol';

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
  const fields = blockFieldsFromWire(block, 'demote');
  return { ...fields, payload: payload ?? (block as Block).payload };
}

/** A tier block as a wire Block; the payload is shared (not copied) or left empty. */
export function blockOf(
  block: Omit<TierBlock, 'payload'> & { payload?: Uint8Array },
  withPayload: boolean,
): Block {
  return blockToWire(block, withPayload);
}

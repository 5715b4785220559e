// Fixtures for the router core tests: readable block hashes numbered 1, 2, 3…, node ids, and a
// builder of wire-shaped KvEvents (the same type the kvstore nodes publish), so expectations read
// like the scenario ("node A stores 1→2→3").
import {
  Codec,
  Tier,
  parseBlockHash,
  parseNamespace,
  parseNodeId,
  type BlockHash,
  type KvEvent,
  type Namespace,
  type NodeId,
} from '@kvmesh/protocol';

export const NS = parseNamespace('');
export const NS_A = parseNamespace('tenant-a');
export const A = parseNodeId('kv-a');
export const B = parseNodeId('kv-b');
export const C = parseNodeId('kv-c');

/** Block hash number n (n >= 1) as a fixed 32-hex-digit string. */
export function h(n: number): BlockHash {
  return parseBlockHash(n.toString(16).padStart(32, '0'));
}

/** The inverse of h(), so results can be compared as numbers. */
export function n(hash: BlockHash): number {
  return Number.parseInt(hash, 16);
}

export function hs(...numbers: number[]): BlockHash[] {
  return numbers.map(h);
}

export interface StoredSpec {
  block: number;
  parent?: number;
  namespace?: Namespace;
  tier?: Tier;
  codec?: Codec;
  bytes?: bigint;
}

/** A chain of stored specs: blocks[i]'s parent is blocks[i-1] (the first has `root` or none). */
export function chainOf(blocks: number[], root?: number): StoredSpec[] {
  return blocks.map((block, i) => {
    const parent = i === 0 ? root : blocks[i - 1];
    return parent === undefined ? { block } : { block, parent };
  });
}

export function event(
  nodeId: NodeId,
  seq: number,
  change: {
    stored?: StoredSpec[];
    removed?: number[];
    removedNamespaces?: Namespace[];
    cleared?: boolean;
  } = {},
): KvEvent {
  const removed = change.removed ?? [];
  return {
    nodeId,
    seq: BigInt(seq),
    stored: (change.stored ?? []).map((s) => ({
      hash: Buffer.from(h(s.block), 'hex'),
      parentHash: s.parent === undefined ? Buffer.alloc(0) : Buffer.from(h(s.parent), 'hex'),
      tier: s.tier ?? Tier.TIER_DRAM,
      codec: s.codec ?? Codec.CODEC_F16,
      bytes: s.bytes ?? 4096n,
      namespace: s.namespace ?? NS,
    })),
    removed: removed.map((b) => Buffer.from(h(b), 'hex')),
    removedNamespaces: change.removedNamespaces ?? removed.map(() => NS),
    cleared: change.cleared ?? false,
    timestampMs: 0n,
  };
}

/** Deterministic PRNG (mulberry32) for the randomized model tests; the seed is printed on failure. */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

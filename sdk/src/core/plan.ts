// Pure decisions of the client: which node to try for a block (rendezvous order over the live
// nodes, nodes that just failed last), how per-node MatchPrefix answers merge into one cluster view,
// how DistAttention spreads hashes over their holders, and the checks on attention inputs and
// outputs. No transport here, so every rule is unit-tested with exact expected values.
import { CorruptDataError, InvalidArgumentError } from '@kvmesh/errors';
import type { CodecName, PartialAttention } from '@kvmesh/kernels';
import { rankNodes } from '@kvmesh/runtime';
import { blockHashFromBytes, type BlockHash, type MatchPrefixResponse, type NodeId } from '@kvmesh/protocol';

import { codecName, tierName, type TierName } from './blocks.ts';

/**
 * Every live node in the order a block's reads and writes should try them: rendezvous rank (the
 * owners first, then the nodes that would take over), with suspects (nodes that just failed a call
 * and may be dead but not yet out of membership) moved behind the rest in their rank order.
 */
export function candidateNodes(
  hash: BlockHash,
  live: readonly NodeId[],
  isSuspect: (node: NodeId) => boolean,
): NodeId[] {
  // One live node (a standalone store) is its own rank: no scores to compute on every call.
  if (live.length === 1) return [live[0] as NodeId];
  const ranked = rankNodes(hash, live);
  const healthy = ranked.filter((n) => !isSuspect(n));
  return healthy.length === ranked.length ? healthy : [...healthy, ...ranked.filter(isSuspect)];
}

export interface BlockLocationView {
  readonly hash: BlockHash;
  /** Nodes holding a copy, sorted by id. */
  readonly nodeIds: NodeId[];
  readonly tier: TierName;
  readonly codec: CodecName | undefined;
}

export interface PrefixMatchResult {
  /** Leading requested hashes held by at least one reachable node. */
  readonly matchedBlocks: number;
  /** Every requested hash held somewhere, in request order. */
  readonly locations: BlockLocationView[];
  /** Live nodes that could not be asked (their blocks are not counted). */
  readonly unreachable: NodeId[];
}

const TIER_PREFERENCE: readonly TierName[] = ['dram', 'far', 'ssd', 'unspecified'];

/**
 * Merges per-node MatchPrefix answers: a block counts if any node holds it. Locations a node reports
 * for hashes that were not requested are ignored, so a misbehaving node cannot grow the result.
 */
export function mergeMatches(
  hashes: readonly BlockHash[],
  answers: readonly { nodeId: NodeId; response: MatchPrefixResponse }[],
  unreachable: readonly NodeId[] = [],
): PrefixMatchResult {
  const indexOf = new Map<BlockHash, number>();
  hashes.forEach((h, i) => {
    if (!indexOf.has(h)) indexOf.set(h, i);
  });
  const merged = new Map<number, { nodes: Set<NodeId>; tier: TierName; codec: CodecName | undefined }>();
  for (const { nodeId, response } of answers) {
    for (const location of response.locations) {
      if (location.hash.length !== 16) continue;
      const index = indexOf.get(blockHashFromBytes(location.hash));
      if (index === undefined) continue;
      const entry = merged.get(index) ?? { nodes: new Set<NodeId>(), tier: 'unspecified', codec: undefined };
      const holders = location.nodeIds.length > 0 ? (location.nodeIds as NodeId[]) : [nodeId];
      for (const holder of holders) entry.nodes.add(holder);
      const tier = tierName(location.tier);
      if (TIER_PREFERENCE.indexOf(tier) < TIER_PREFERENCE.indexOf(entry.tier)) entry.tier = tier;
      entry.codec ??= codecName(location.codec);
      merged.set(index, entry);
    }
  }
  const locations: BlockLocationView[] = [];
  let matchedBlocks = 0;
  hashes.forEach((hash, index) => {
    const entry = merged.get(indexOf.get(hash) as number);
    if (entry === undefined) return;
    if (matchedBlocks === index) matchedBlocks++;
    locations.push({ hash, nodeIds: [...entry.nodes].sort(), tier: entry.tier, codec: entry.codec });
  });
  return { matchedBlocks, locations, unreachable: [...unreachable] };
}

/**
 * Assigns each hash to one of its candidate nodes, spreading the work: the candidate with the fewest
 * hashes so far wins, ties going to the better rendezvous rank (deterministic for a given input).
 * `load` carries counts from earlier rounds and is updated. Hashes without candidates are returned
 * in `unassigned`.
 */
export function assignHolders(
  hashes: readonly BlockHash[],
  candidatesOf: (hash: BlockHash) => readonly NodeId[],
  load: Map<NodeId, number> = new Map(),
): { byNode: Map<NodeId, BlockHash[]>; unassigned: BlockHash[] } {
  const byNode = new Map<NodeId, BlockHash[]>();
  const unassigned: BlockHash[] = [];
  for (const hash of hashes) {
    const candidates = rankNodes(hash, candidatesOf(hash));
    let best: NodeId | undefined;
    for (const node of candidates) {
      if (best === undefined || (load.get(node) ?? 0) < (load.get(best) ?? 0)) best = node;
    }
    if (best === undefined) {
      unassigned.push(hash);
      continue;
    }
    load.set(best, (load.get(best) ?? 0) + 1);
    const list = byNode.get(best) ?? [];
    list.push(hash);
    byNode.set(best, list);
  }
  return { byNode, unassigned };
}

export interface AttentionQuery {
  readonly layer: number;
  readonly queryHeads: number;
  readonly headDim: number;
  /** f32 [queryHeads][headDim]. */
  readonly query: Float32Array;
  /** Multiplier on q·k; 0 or undefined means 1/sqrt(headDim). */
  readonly scale?: number;
}

/** Largest query (heads × head dim) accepted; far above any real model, it bounds the request. */
export const QUERY_FLOATS_MAX = 1 << 20;

/** Checks the query's shape (the nodes check it against the blocks' dims). */
export function checkAttentionQuery(args: AttentionQuery): void {
  const { layer, queryHeads, headDim, query, scale } = args;
  if (!Number.isSafeInteger(layer) || layer < 0)
    throw new InvalidArgumentError(`layer must be a non-negative integer, got ${layer}`, { layer });
  if (!Number.isSafeInteger(queryHeads) || queryHeads < 1)
    throw new InvalidArgumentError(`queryHeads must be a positive integer, got ${queryHeads}`, {
      queryHeads,
    });
  if (!Number.isSafeInteger(headDim) || headDim < 1)
    throw new InvalidArgumentError(`headDim must be a positive integer, got ${headDim}`, { headDim });
  if (queryHeads * headDim > QUERY_FLOATS_MAX)
    throw new InvalidArgumentError(`queryHeads × headDim exceeds ${QUERY_FLOATS_MAX}`, {
      queryHeads,
      headDim,
      floatsMax: QUERY_FLOATS_MAX,
    });
  if (!(query instanceof Float32Array) || query.length !== queryHeads * headDim)
    throw new InvalidArgumentError(
      `query must be a Float32Array of queryHeads × headDim = ${queryHeads * headDim} floats`,
      { floats: query instanceof Float32Array ? query.length : undefined, expected: queryHeads * headDim },
    );
  if (scale !== undefined && !(Number.isFinite(scale) && scale >= 0))
    throw new InvalidArgumentError(`scale must be a finite number >= 0, got ${scale}`, { scale });
}

/** The query as little-endian f32 bytes (the wire form); a copy, so the caller may reuse its array. */
export function queryBytes(query: Float32Array): Buffer {
  return Buffer.from(new Uint8Array(query.buffer, query.byteOffset, query.byteLength));
}

function floats(bytes: Uint8Array, count: number, what: string, nodeId: string): Float32Array {
  if (bytes.byteLength !== count * 4)
    throw new CorruptDataError(
      `partial attention from node ${nodeId}: ${what} has ${bytes.byteLength} bytes, expected ${count * 4}`,
      { nodeId, field: what, bytes: bytes.byteLength, expected: count * 4 },
    );
  // NOTE: copied into a fresh array: protobuf bytes are not 4-byte aligned in general.
  const out = new Float32Array(count);
  new Uint8Array(out.buffer).set(bytes);
  return out;
}

/** One node's (o, m, l) triple from its wire form, shape-checked. */
export function decodePartial(
  wire: { o: Uint8Array; m: Uint8Array; l: Uint8Array },
  queryHeads: number,
  headDim: number,
  nodeId: string,
): PartialAttention {
  return {
    o: floats(wire.o, queryHeads * headDim, 'o', nodeId),
    m: floats(wire.m, queryHeads, 'm', nodeId),
    l: floats(wire.l, queryHeads, 'l', nodeId),
  };
}

/** The partial over no tokens: o = 0, m = -Infinity, l = 0 (the merge's neutral element). */
export function emptyPartial(queryHeads: number, headDim: number): PartialAttention {
  return {
    o: new Float32Array(queryHeads * headDim),
    m: new Float32Array(queryHeads).fill(-Infinity),
    l: new Float32Array(queryHeads),
  };
}

// The router's global block index: which kvstore (or worker) nodes hold each (namespace, block hash),
// built only from the nodes' KvEvents. It may under-report (a lost event, an eviction here) but never
// keeps a block a node reported removed, so a plan built on it can miss a cache hit, never rely on a
// block that is known to be gone. Pure and synchronous: no clock, no transport.
//
// Invariants (checked by the tests):
// - Per node, events apply in seq order: seq = last + 1 applies; seq <= last is a duplicate and is
//   ignored (so replaying an overlapping stretch of the JetStream stream is harmless); seq > last + 1
//   is a gap: the node's entries are dropped, then the event applies and the gap is reported so the
//   caller can resync. A node's first event is expected to be seq 1 (any higher is a gap).
// - A `cleared` event with seq 1 from a node already seen is a restart (kvstore nodes publish
//   `cleared` as event 1 on start): the node's entries drop and its sequence restarts at 1.
// - entries (node-block pairs) = Σ holders over blocks <= entriesMax after every call. Past the
//   bound, whole blocks (with all their holders) are evicted least recently matched or stored first.
import { LimitExceededError } from '@kvmesh/errors';
import {
  blockHashFromBytes,
  parseNamespace,
  parseNodeId,
  type BlockHash,
  type Codec,
  type KvEvent,
  type Namespace,
  type NodeId,
  type Tier,
} from '@kvmesh/protocol';

import { resolveBlockIndexConfig, type BlockIndexConfig, type ResolvedBlockIndexConfig } from './config.ts';

/** One node's copy of a block, as its last `stored` event described it. */
export interface BlockHolder {
  readonly nodeId: NodeId;
  readonly tier: Tier;
  readonly codec: Codec;
  /** Payload length of that copy (what a fetch moves). */
  readonly bytes: bigint;
}

export interface IndexedBlock {
  readonly namespace: Namespace;
  readonly hash: BlockHash;
  /** null for the first block of a sequence (or when no event named a parent). */
  readonly parentHash: BlockHash | null;
  /** Sorted by node id. */
  readonly holders: readonly BlockHolder[];
}

export interface PrefixPosition {
  readonly hash: BlockHash;
  /** Nodes holding this block, sorted by node id; never empty. */
  readonly holders: readonly BlockHolder[];
}

export interface IndexMatch {
  /** Length of the longest prefix of the asked hashes held by at least one node (each block by any). */
  readonly blocks: number;
  /** One entry per block of that prefix. */
  readonly positions: readonly PrefixPosition[];
  /**
   * For each node holding the first block: how many leading blocks it holds without a hole
   * (the prefix that node alone can serve). Nodes holding no leading block are absent.
   */
  readonly leadingBlocksByNode: ReadonlyMap<NodeId, number>;
}

export type ApplyResult =
  | { readonly kind: 'applied'; readonly nodeId: NodeId; readonly seq: bigint }
  | { readonly kind: 'duplicate'; readonly nodeId: NodeId; readonly seq: bigint; readonly lastSeq: bigint }
  | {
      readonly kind: 'gap';
      readonly nodeId: NodeId;
      readonly seq: bigint;
      /** The seq that should have come next; events expectedSeq..seq-1 were lost. */
      readonly expectedSeq: bigint;
      /** Pairs dropped because the lost events may have removed them. */
      readonly droppedEntries: number;
    }
  | { readonly kind: 'restart'; readonly nodeId: NodeId; readonly droppedEntries: number }
  | {
      readonly kind: 'rejected';
      /** 'malformed': the event breaks the wire contract; 'nodes-max': one node too many. */
      readonly reason: 'malformed' | 'nodes-max';
      readonly message: string;
    };

export interface NodeSequence {
  readonly nodeId: NodeId;
  readonly lastSeq: bigint;
}

export interface BlockIndexStats {
  readonly nodes: number;
  /** Distinct (namespace, hash) blocks. */
  readonly blocks: number;
  /** (node, block) pairs. */
  readonly entries: number;
  readonly entriesMax: number;
  readonly eventsApplied: number;
  readonly eventsDuplicate: number;
  readonly eventsRejected: number;
  readonly gaps: number;
  readonly restarts: number;
  /** Pairs evicted to stay within entriesMax. */
  readonly entriesEvicted: number;
  readonly matches: number;
  /** Σ matched prefix length over all matches. */
  readonly blocksMatched: number;
}

interface Holding {
  tier: Tier;
  codec: Codec;
  bytes: bigint;
}

class BlockEntry {
  readonly holders = new Map<NodeId, Holding>();
  constructor(
    readonly namespace: Namespace,
    readonly hash: BlockHash,
    public parentHash: BlockHash | null,
  ) {}
}

interface NodeState {
  lastSeq: bigint;
  /** Keys of the blocks this node holds, so a gap, clear or leave drops them without a scan. */
  readonly keys: Set<string>;
}

interface ParsedStored {
  readonly namespace: Namespace;
  readonly hash: BlockHash;
  readonly parentHash: BlockHash | null;
  readonly holding: Holding;
}

interface ParsedEvent {
  readonly nodeId: NodeId;
  readonly seq: bigint;
  readonly cleared: boolean;
  readonly removed: readonly { namespace: Namespace; hash: BlockHash }[];
  readonly stored: readonly ParsedStored[];
}

/** Map key of a block: the fixed-width hash first makes the concatenation unambiguous. */
function keyOf(namespace: Namespace, hash: BlockHash): string {
  return hash + namespace;
}

const byNodeId = (a: BlockHolder, b: BlockHolder): number =>
  a.nodeId < b.nodeId ? -1 : a.nodeId > b.nodeId ? 1 : 0;

function holdersOf(entry: BlockEntry, live: ReadonlySet<NodeId> | undefined): BlockHolder[] {
  const out: BlockHolder[] = [];
  for (const [nodeId, h] of entry.holders) {
    if (live === undefined || live.has(nodeId))
      out.push({ nodeId, tier: h.tier, codec: h.codec, bytes: h.bytes });
  }
  return out.sort(byNodeId);
}

/** Validates the whole event before anything changes, so a malformed event changes nothing. */
function parseEvent(event: KvEvent): ParsedEvent {
  const nodeId = parseNodeId(event.nodeId);
  if (typeof event.seq !== 'bigint' || event.seq < 1n) {
    throw new RangeError(`seq must be >= 1, got ${String(event.seq)}`);
  }
  const namespaces = event.removedNamespaces;
  // NOTE: producers older than removed_namespaces send none; their removals are in the default namespace.
  if (namespaces.length !== 0 && namespaces.length !== event.removed.length) {
    throw new RangeError(
      `removed_namespaces has ${namespaces.length} entries for ${event.removed.length} removed hashes`,
    );
  }
  const removed = event.removed.map((hash, i) => ({
    namespace: parseNamespace(namespaces[i] ?? ''),
    hash: blockHashFromBytes(hash),
  }));
  const stored = event.stored.map((block) => ({
    namespace: parseNamespace(block.namespace),
    hash: blockHashFromBytes(block.hash),
    parentHash: block.parentHash.length === 0 ? null : blockHashFromBytes(block.parentHash),
    holding: { tier: block.tier, codec: block.codec, bytes: block.bytes },
  }));
  return { nodeId, seq: event.seq, cleared: event.cleared, removed, stored };
}

export class BlockIndex {
  readonly config: ResolvedBlockIndexConfig;
  // NOTE: Map iteration order is the recency order (least recent first): a touch re-inserts the key.
  private readonly blocks = new Map<string, BlockEntry>();
  private readonly nodes = new Map<NodeId, NodeState>();
  private entries = 0;
  private counters = {
    eventsApplied: 0,
    eventsDuplicate: 0,
    eventsRejected: 0,
    gaps: 0,
    restarts: 0,
    entriesEvicted: 0,
    matches: 0,
    blocksMatched: 0,
  };

  constructor(config: BlockIndexConfig = {}) {
    this.config = resolveBlockIndexConfig(config);
  }

  /** Applies one node's event (see the sequence rules at the top of this file). Never throws. */
  apply(event: KvEvent): ApplyResult {
    let parsed: ParsedEvent;
    try {
      parsed = parseEvent(event);
    } catch (err) {
      this.counters.eventsRejected++;
      return { kind: 'rejected', reason: 'malformed', message: (err as Error).message };
    }
    const { nodeId, seq } = parsed;
    let node = this.nodes.get(nodeId);
    if (node === undefined) {
      if (this.nodes.size >= this.config.nodesMax) {
        this.counters.eventsRejected++;
        return {
          kind: 'rejected',
          reason: 'nodes-max',
          message: `index tracks ${this.nodes.size} nodes, limit is ${this.config.nodesMax}; event from '${nodeId}' dropped`,
        };
      }
      node = { lastSeq: 0n, keys: new Set() };
      this.nodes.set(nodeId, node);
    }

    let result: ApplyResult;
    if (seq === 1n && parsed.cleared && node.lastSeq >= 1n) {
      result = { kind: 'restart', nodeId, droppedEntries: this.dropNodeEntries(nodeId, node) };
      this.counters.restarts++;
    } else if (seq <= node.lastSeq) {
      this.counters.eventsDuplicate++;
      return { kind: 'duplicate', nodeId, seq, lastSeq: node.lastSeq };
    } else if (seq === node.lastSeq + 1n) {
      result = { kind: 'applied', nodeId, seq };
    } else {
      const expectedSeq = node.lastSeq + 1n;
      result = { kind: 'gap', nodeId, seq, expectedSeq, droppedEntries: this.dropNodeEntries(nodeId, node) };
      this.counters.gaps++;
    }

    // Same order as the producer: cleared, then removed, then stored.
    if (parsed.cleared) this.dropNodeEntries(nodeId, node);
    for (const { namespace, hash } of parsed.removed) this.removePair(nodeId, node, keyOf(namespace, hash));
    for (const block of parsed.stored) this.addPair(nodeId, node, block);
    node.lastSeq = seq;
    this.counters.eventsApplied++;
    return result;
  }

  /** The node left the membership: forget its blocks and its sequence. Returns the pairs dropped. */
  removeNode(nodeId: NodeId): number {
    const node = this.nodes.get(nodeId);
    if (node === undefined) return 0;
    const dropped = this.dropNodeEntries(nodeId, node);
    this.nodes.delete(nodeId);
    return dropped;
  }

  /**
   * The longest prefix of `hashes` held by at least one node (restricted to `live` when given), with
   * the holders of each position and each node's own leading run. Matched blocks become the most
   * recently used ones. Throws LimitExceededError past hashesPerMatchMax.
   */
  match(namespace: Namespace, hashes: readonly BlockHash[], live?: ReadonlySet<NodeId>): IndexMatch {
    if (hashes.length > this.config.hashesPerMatchMax) {
      throw new LimitExceededError(
        `match asks about ${hashes.length} blocks, limit is ${this.config.hashesPerMatchMax}`,
        { hashes: hashes.length, limit: this.config.hashesPerMatchMax },
      );
    }
    const positions: PrefixPosition[] = [];
    const matched: string[] = [];
    const leading = new Map<NodeId, number>();
    for (const [i, hash] of hashes.entries()) {
      const key = keyOf(namespace, hash);
      const entry = this.blocks.get(key);
      const holders = entry === undefined ? [] : holdersOf(entry, live);
      if (holders.length === 0) break;
      positions.push({ hash, holders });
      matched.push(key);
      // A node's run is i exactly when it held every block before this one.
      for (const { nodeId } of holders) {
        if ((leading.get(nodeId) ?? 0) === i) leading.set(nodeId, i + 1);
      }
    }
    // NOTE: touch deepest first so a chain's root ends up most recent: eviction then takes a matched
    // chain's tail before its head, and the head is what every longer prompt needs first.
    for (let i = matched.length - 1; i >= 0; i--) this.touch(matched[i]!);
    this.counters.matches++;
    this.counters.blocksMatched += positions.length;
    return { blocks: positions.length, positions, leadingBlocksByNode: leading };
  }

  /** One block's holders and parent link, without touching its recency; undefined when unknown. */
  lookup(namespace: Namespace, hash: BlockHash): IndexedBlock | undefined {
    const entry = this.blocks.get(keyOf(namespace, hash));
    if (entry === undefined) return undefined;
    return { namespace, hash, parentHash: entry.parentHash, holders: holdersOf(entry, undefined) };
  }

  /**
   * Per-node last applied seq, sorted by node id. Together with the JetStream stream sequence the
   * adapter tracks, it says how far the index has caught up; replaying from an earlier stream
   * sequence is harmless because events at or below a node's lastSeq are ignored.
   */
  snapshot(): NodeSequence[] {
    return [...this.nodes]
      .map(([nodeId, node]) => ({ nodeId, lastSeq: node.lastSeq }))
      .sort((a, b) => (a.nodeId < b.nodeId ? -1 : a.nodeId > b.nodeId ? 1 : 0));
  }

  stats(): BlockIndexStats {
    return {
      nodes: this.nodes.size,
      blocks: this.blocks.size,
      entries: this.entries,
      entriesMax: this.config.entriesMax,
      ...this.counters,
    };
  }

  private touch(key: string): void {
    const entry = this.blocks.get(key);
    if (entry === undefined) return;
    this.blocks.delete(key);
    this.blocks.set(key, entry);
  }

  private addPair(nodeId: NodeId, node: NodeState, block: ParsedStored): void {
    const key = keyOf(block.namespace, block.hash);
    let entry = this.blocks.get(key);
    if (entry === undefined) {
      entry = new BlockEntry(block.namespace, block.hash, block.parentHash);
      this.blocks.set(key, entry);
    } else {
      this.touch(key);
      // The parent is a function of the hash (spec v1 chains), so the first non-null one stands.
      if (entry.parentHash === null) entry.parentHash = block.parentHash;
    }
    const isNew = !entry.holders.has(nodeId);
    // A re-store (e.g. after a tier move) replaces the copy's description.
    entry.holders.set(nodeId, { ...block.holding });
    if (!isNew) return;
    node.keys.add(key);
    this.entries++;
    while (this.entries > this.config.entriesMax && this.blocks.size > 0) this.evictLeastRecent();
  }

  private removePair(nodeId: NodeId, node: NodeState, key: string): void {
    const entry = this.blocks.get(key);
    if (entry === undefined || !entry.holders.delete(nodeId)) return;
    node.keys.delete(key);
    this.entries--;
    if (entry.holders.size === 0) this.blocks.delete(key);
  }

  private dropNodeEntries(nodeId: NodeId, node: NodeState): number {
    const dropped = node.keys.size;
    for (const key of node.keys) {
      const entry = this.blocks.get(key);
      if (entry === undefined) continue;
      entry.holders.delete(nodeId);
      if (entry.holders.size === 0) this.blocks.delete(key);
    }
    node.keys.clear();
    this.entries -= dropped;
    return dropped;
  }

  /** Evicts the least recently matched or stored block with all its holders. */
  private evictLeastRecent(): void {
    const first = this.blocks.entries().next();
    if (first.done === true) return;
    const [key, entry] = first.value;
    for (const nodeId of entry.holders.keys()) this.nodes.get(nodeId)?.keys.delete(key);
    this.entries -= entry.holders.size;
    this.counters.entriesEvicted += entry.holders.size;
    this.blocks.delete(key);
  }
}

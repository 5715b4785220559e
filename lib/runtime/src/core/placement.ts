// Block placement by rendezvous (highest-random-weight) hashing: every node gets a pseudo-random score
// per block and the R highest-scoring nodes own it. Pure and deterministic: the same hash and node set
// give the same owners in the same order on every process, and a node joining or leaving moves only
// the blocks whose owner set that node enters or leaves.
import { InvalidArgumentError } from '@kvmesh/errors';
import type { BlockHash, NodeId } from '@kvmesh/protocol';

/** Per-node seeds, derived once from the node id. */
interface NodeSeeds {
  readonly id: NodeId;
  readonly seedHi: number;
  readonly seedLo: number;
}

const C1 = 0xcc9e2d51;
const C2 = 0x1b873593;
const TWO_POW_21 = 2 ** 21;

function fmix32(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

function mixWord(h: number, k: number): number {
  k = Math.imul(k, C1);
  k = (k << 15) | (k >>> 17);
  k = Math.imul(k, C2);
  h ^= k;
  h = (h << 13) | (h >>> 19);
  return (Math.imul(h, 5) + 0xe6546b64) | 0;
}

/** MurmurHash3 x86_32 of two 32-bit words under `seed`: a well-studied mix that needs only Math.imul. */
function murmur2Words(w0: number, w1: number, seed: number): number {
  let h = seed | 0;
  h = mixWord(h, w0);
  h = mixWord(h, w1);
  return fmix32(h ^ 8);
}

/** FNV-1a over the id's UTF-16 code units (node ids are ASCII), finalized so every bit is mixed. */
function stringHash32(text: string, basis: number): number {
  let h = basis;
  for (let i = 0; i < text.length; i++) {
    h ^= text.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return fmix32(h);
}

// NOTE: bounded memo of node seeds; node ids are few and long-lived, so clearing on overflow costs
// only a re-hash and keeps memory flat if ids churn (e.g. a test creating thousands of names).
const SEED_CACHE_MAX = 4096;
const seedCache = new Map<string, NodeSeeds>();

function seedsOf(id: NodeId): NodeSeeds {
  let seeds = seedCache.get(id);
  if (seeds === undefined) {
    if (seedCache.size >= SEED_CACHE_MAX) seedCache.clear();
    seeds = { id, seedHi: stringHash32(id, 0x811c9dc5), seedLo: stringHash32(id, 0x050c5d1f) };
    seedCache.set(id, seeds);
  }
  return seeds;
}

function hexWord(hash: string, offset: number): number {
  const word = Number.parseInt(hash.slice(offset, offset + 8), 16);
  if (!Number.isFinite(word))
    throw new InvalidArgumentError(`block hash '${hash}' is not hex`, { value: hash });
  return word;
}

/**
 * The first 8 bytes of a block hash as two big-endian 32-bit words. Hashes are XXH3-128 output,
 * already uniform, so 64 of their bits are plenty to place them. Bytes and hex give the same words.
 */
function hashWords(hash: Uint8Array | BlockHash): [number, number] {
  if (typeof hash === 'string') {
    if (hash.length !== 32)
      throw new InvalidArgumentError(`block hash must be 32 hex characters, got ${hash.length}`, {
        length: hash.length,
      });
    return [hexWord(hash, 0), hexWord(hash, 8)];
  }
  if (hash.length !== 16)
    throw new InvalidArgumentError(`block hash must be 16 bytes, got ${hash.length}`, {
      length: hash.length,
    });
  const w0 = ((hash[0]! << 24) | (hash[1]! << 16) | (hash[2]! << 8) | hash[3]!) >>> 0;
  const w1 = ((hash[4]! << 24) | (hash[5]! << 16) | (hash[6]! << 8) | hash[7]!) >>> 0;
  return [w0, w1];
}

/**
 * Score of one (block, node) pair: two independent 32-bit murmur outputs packed into 53 bits so a
 * single float comparison orders them; ties (probability ~2^-53) fall back to the node id.
 */
function score(w0: number, w1: number, node: NodeSeeds): number {
  const hi = murmur2Words(w0, w1, node.seedHi);
  const lo = murmur2Words(w1, w0, node.seedLo);
  return hi * TWO_POW_21 + (lo >>> 11);
}

function checkReplicas(replicas: number): void {
  if (!Number.isInteger(replicas) || replicas < 1)
    throw new InvalidArgumentError(`replicas must be an integer >= 1, got ${replicas}`, { replicas });
}

interface Scored {
  node: NodeId;
  score: number;
}

const byScoreDesc = (a: Scored, b: Scored): number =>
  b.score - a.score || (a.node < b.node ? -1 : a.node > b.node ? 1 : 0);

function scoreAll(hash: Uint8Array | BlockHash, nodes: readonly NodeId[]): Scored[] {
  const [w0, w1] = hashWords(hash);
  const seen = new Set<NodeId>();
  const scored: Scored[] = [];
  for (const node of nodes) {
    if (seen.has(node)) continue; // a duplicate in the input must not take two replica slots
    seen.add(node);
    scored.push({ node, score: score(w0, w1, seedsOf(node)) });
  }
  return scored;
}

/**
 * Every distinct node in rendezvous order for `hash` (best first). The first R entries are the owners;
 * the rest is the order in which further nodes would take over as owners fail.
 */
export function rankNodes(hash: Uint8Array | BlockHash, nodes: readonly NodeId[]): NodeId[] {
  return scoreAll(hash, nodes)
    .sort(byScoreDesc)
    .map((s) => s.node);
}

/**
 * The min(replicas, distinct nodes) owners of `hash`, best first. Independent of the order of `nodes`.
 * Runs in O(nodes × replicas) by keeping only the current top R.
 */
export function ownersOf(hash: Uint8Array | BlockHash, nodes: readonly NodeId[], replicas: number): NodeId[] {
  checkReplicas(replicas);
  const scored = scoreAll(hash, nodes);
  if (scored.length <= replicas) return scored.sort(byScoreDesc).map((s) => s.node);
  const top: Scored[] = [];
  for (const s of scored) {
    if (top.length === replicas && byScoreDesc(s, top[replicas - 1]!) >= 0) continue;
    let i = Math.min(top.length, replicas - 1);
    if (top.length < replicas) top.push(s);
    else top[i] = s;
    // Insertion step: bubble the new entry up to its place (R is small, usually 1–3).
    while (i > 0 && byScoreDesc(top[i]!, top[i - 1]!) < 0) {
      const t = top[i - 1]!;
      top[i - 1] = top[i]!;
      top[i] = t;
      i--;
    }
  }
  return top.map((s) => s.node);
}

/** A block this node holds, as `planReplication` sees it; `key` is whatever the caller indexes by. */
export interface HeldBlock<K> {
  readonly key: K;
  readonly hash: Uint8Array | BlockHash;
}

export interface ReplicationInput<K> {
  readonly self: NodeId;
  readonly held: Iterable<HeldBlock<K>>;
  /** The live membership now (self included or not; self is added, since it is evidently alive). */
  readonly live: readonly NodeId[];
  readonly replicas: number;
  /**
   * Nodes known to hold the block (e.g. from the kv event index). When absent, the block is presumed
   * held by its owners under `previousLive` (where placement put it), restricted to nodes still live.
   */
  readonly holdersOf?: (hash: Uint8Array | BlockHash) => Iterable<NodeId>;
  /** Membership before the change; used only for the presumption above. Defaults to `live`. */
  readonly previousLive?: readonly NodeId[];
}

export interface ReplicationPush<K> {
  readonly key: K;
  readonly hash: Uint8Array | BlockHash;
  /** Owners under `live` that do not hold the block yet, in rendezvous order. */
  readonly targets: NodeId[];
}

export interface ReplicationPlan<K> {
  /** Copies this node must send. Pushes are idempotent (content-addressed), so a rare duplicate is harmless. */
  readonly pushes: ReplicationPush<K>[];
  /**
   * Blocks this node holds but no longer owns. They may be released once every owner holds them
   * (after the pushes above are acknowledged); until then they are the copy that keeps the data alive.
   */
  readonly surplus: HeldBlock<K>[];
}

/**
 * What this node must re-replicate after a membership change. The rule, identical on every node so
 * that exactly one holder pushes each block:
 *   1. holders = known (or presumed) holders that are live, plus self;
 *   2. rank all live nodes for the block; the owners are the first R;
 *   3. the pusher is the first node in that rank that is a holder — an owner holding the block if
 *      there is one, else the best-ranked live holder outside the owner set;
 *   4. if the pusher is self, it sends the block to every owner that is not a holder.
 * NOTE: the rule is only as good as the holder knowledge. A presumed holder that lost the block (a
 * restart) makes nobody push until its `cleared` event reaches `holdersOf`; an unknown extra holder
 * may push a copy someone else also pushes, which the receiver deduplicates.
 */
export function planReplication<K>(input: ReplicationInput<K>): ReplicationPlan<K> {
  checkReplicas(input.replicas);
  const live = input.live.includes(input.self) ? input.live : [...input.live, input.self];
  const liveSet = new Set(live);
  const previous = input.previousLive ?? live;
  const pushes: ReplicationPush<K>[] = [];
  const surplus: HeldBlock<K>[] = [];
  for (const block of input.held) {
    const rank = rankNodes(block.hash, live);
    const owners = rank.slice(0, input.replicas);
    const known = input.holdersOf
      ? input.holdersOf(block.hash)
      : ownersOf(block.hash, previous, input.replicas);
    const holders = new Set<NodeId>([input.self]);
    for (const node of known) if (liveSet.has(node)) holders.add(node);
    const pusher = rank.find((node) => holders.has(node));
    if (pusher === input.self) {
      const targets = owners.filter((node) => !holders.has(node));
      if (targets.length > 0) pushes.push({ key: block.key, hash: block.hash, targets });
    }
    if (!owners.includes(input.self)) surplus.push(block);
  }
  return { pushes, surplus };
}

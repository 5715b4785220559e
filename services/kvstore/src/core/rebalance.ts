// Re-replication decisions: which held blocks this node must copy where after the membership
// changed, or after an anti-entropy probe found an owner without its copy. The rule itself is the
// runtime's planReplication (every node applies it identically, so one holder pushes each block);
// this module feeds it holder knowledge: presumed from the membership the blocks were placed under
// (minus nodes that left or restarted since), or learned from owners that were asked. Pure.
//
// Planning is per (namespace, hash) and blind to tiers: a block this node holds only in the host's
// tier (demoted) is as much a copy as one in DRAM, so it is planned alike; the adapter reads its
// payload back from the tier right before pushing it.
import type { BlockHash, Namespace, NodeId } from '@kvmesh/protocol';
import { ownersOf, planReplication } from '@kvmesh/runtime';

import type { DemotedRecord, HeldRecord } from './types.ts';

/** What planning needs of a held block, whatever its tier. */
export interface PlannedBlock {
  readonly namespace: Namespace;
  readonly hash: BlockHash;
  readonly storedAtMs: number;
}

/** Whether a held record is demoted metadata (its payload lives in the host's tier). */
export function isDemoted(record: HeldRecord): record is DemotedRecord {
  return record.tier !== 'dram';
}

export interface BlockPush<R extends PlannedBlock = HeldRecord> {
  readonly record: R;
  /** Owners that lack the block, best ranked first. */
  readonly targets: NodeId[];
}

export interface PlanPushesInput<R extends PlannedBlock = HeldRecord> {
  readonly self: NodeId;
  readonly live: readonly NodeId[];
  readonly replicas: number;
  readonly records: Iterable<R>;
  /** Nodes believed to hold the block besides self (only live ones count). */
  readonly holdersOf: (record: R) => Iterable<NodeId>;
}

/** The copies this node must push; blocks another holder is responsible for are left out. */
export function planPushes<R extends PlannedBlock>(input: PlanPushesInput<R>): BlockPush<R>[] {
  const pushes: BlockPush<R>[] = [];
  for (const record of input.records) {
    const plan = planReplication({
      self: input.self,
      held: [{ key: record, hash: record.hash }],
      live: input.live,
      replicas: input.replicas,
      holdersOf: () => input.holdersOf(record),
    });
    for (const push of plan.pushes) pushes.push({ record: push.key, targets: push.targets });
  }
  return pushes;
}

export interface PresumptionInput {
  /** Membership the earlier blocks were placed under (the one of the previous pass). */
  readonly placedLive: readonly NodeId[];
  /** Nodes that left or restarted since: they hold nothing of what was placed before. */
  readonly departed: ReadonlySet<NodeId>;
  readonly replicas: number;
  /** Membership now, and when it started to change: blocks stored since were placed under it. */
  readonly live: readonly NodeId[];
  readonly changedAtMs: number;
}

/**
 * Holder presumption after a membership change: a block stored before the change is held by its
 * owners under the membership it was placed under, except nodes that left since (a node that
 * restarted lost everything, so it counts as departed even though it is live again); a block
 * stored since was placed by a coordinator that already saw the change, on its current owners.
 */
export function presumedHolders(input: PresumptionInput): (record: PlannedBlock) => NodeId[] {
  const { placedLive, departed, replicas, live, changedAtMs } = input;
  return (record) =>
    record.storedAtMs >= changedAtMs
      ? ownersOf(record.hash, live, replicas)
      : ownersOf(record.hash, placedLive, replicas).filter((node) => !departed.has(node));
}

/** What to ask one owner: hashes per namespace. */
export type OwnerProbe = Map<Namespace, BlockHash[]>;

/** For each other owner of each record, the records to ask it about (anti-entropy). */
export function probesFor(
  self: NodeId,
  live: readonly NodeId[],
  replicas: number,
  records: Iterable<PlannedBlock>,
): Map<NodeId, OwnerProbe> {
  const probes = new Map<NodeId, OwnerProbe>();
  for (const record of records) {
    for (const owner of ownersOf(record.hash, live, replicas)) {
      if (owner === self) continue;
      let byNamespace = probes.get(owner);
      if (byNamespace === undefined) probes.set(owner, (byNamespace = new Map()));
      let hashes = byNamespace.get(record.namespace);
      if (hashes === undefined) byNamespace.set(record.namespace, (hashes = []));
      hashes.push(record.hash);
    }
  }
  return probes;
}

/** Key of a (namespace, hash) pair in probe answers; the fixed-width hash first keeps it unambiguous. */
export function blockKey(namespace: Namespace, hash: BlockHash): string {
  return hash + namespace;
}

/**
 * Holder knowledge from probe answers: an owner holds a block if it said so, or if it could not be
 * asked (`unknown`), since pushing to a node that cannot be reached is pointless and a later pass
 * retries.
 */
export function learnedHolders(
  self: NodeId,
  live: readonly NodeId[],
  replicas: number,
  held: ReadonlyMap<NodeId, ReadonlySet<string>>,
  unknown: ReadonlySet<NodeId>,
): (record: PlannedBlock) => NodeId[] {
  return (record) =>
    ownersOf(record.hash, live, replicas).filter(
      (owner) =>
        owner !== self &&
        (unknown.has(owner) || held.get(owner)?.has(blockKey(record.namespace, record.hash)) === true),
    );
}

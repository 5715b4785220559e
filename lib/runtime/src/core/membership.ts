// Membership from heartbeats: a tracker fed decoded `NodeHeartbeat`s and the current time decides
// which nodes are live and reports joins and leaves. Pure: time is always a parameter (the receiver's
// clock, never the sender's, so clock skew between hosts cannot keep a dead node alive). The tracked
// set is bounded; a heartbeat whose seq does not advance is stale and ignored.
import { InvalidArgumentError } from '@kvmesh/errors';
import type { NodeHeartbeat, NodeId } from '@kvmesh/protocol';

export interface MembershipOptions {
  /** How often nodes publish heartbeats. */
  readonly heartbeatIntervalMs: number;
  /** A node that misses this many intervals in a row is out. Default 3. */
  readonly missedHeartbeatsMax?: number;
  /** Most nodes tracked at once; heartbeats from further new nodes are rejected. Default 1024. */
  readonly nodesMax?: number;
}

export interface Member {
  readonly nodeId: NodeId;
  readonly role: string;
  /** The latest accepted heartbeat (load, addresses). */
  readonly heartbeat: NodeHeartbeat;
  /** Receiver time of the latest accepted heartbeat. */
  readonly lastSeenMs: number;
  readonly joinedAtMs: number;
}

export type LeaveReason = 'timeout' | 'restarted' | 'removed';

export type MembershipChange =
  | { readonly type: 'join'; readonly member: Member }
  | { readonly type: 'leave'; readonly member: Member; readonly reason: LeaveReason };

export interface MembershipStats {
  readonly live: number;
  /** Heartbeats ignored because their seq did not advance (duplicates, reordering). */
  readonly staleDropped: number;
  /** Heartbeats from new nodes refused because `nodesMax` nodes were already tracked. */
  readonly rejectedFull: number;
  /** Heartbeats without a node id or role. */
  readonly invalidDropped: number;
}

const NODES_MAX_DEFAULT = 1024;

export class MembershipTracker {
  readonly heartbeatIntervalMs: number;
  readonly missedHeartbeatsMax: number;
  readonly nodesMax: number;
  private readonly members = new Map<NodeId, Member>();
  private staleDropped = 0;
  private rejectedFull = 0;
  private invalidDropped = 0;

  constructor(options: MembershipOptions) {
    const { heartbeatIntervalMs } = options;
    const missed = options.missedHeartbeatsMax ?? 3;
    const nodesMax = options.nodesMax ?? NODES_MAX_DEFAULT;
    if (!(Number.isFinite(heartbeatIntervalMs) && heartbeatIntervalMs > 0))
      throw new InvalidArgumentError(`heartbeatIntervalMs must be > 0, got ${heartbeatIntervalMs}`, {
        heartbeatIntervalMs,
      });
    if (!Number.isInteger(missed) || missed < 1)
      throw new InvalidArgumentError(`missedHeartbeatsMax must be an integer >= 1, got ${missed}`, {
        missedHeartbeatsMax: missed,
      });
    if (!Number.isInteger(nodesMax) || nodesMax < 1)
      throw new InvalidArgumentError(`nodesMax must be an integer >= 1, got ${nodesMax}`, { nodesMax });
    this.heartbeatIntervalMs = heartbeatIntervalMs;
    this.missedHeartbeatsMax = missed;
    this.nodesMax = nodesMax;
  }

  /** How long a node may stay silent before it is out. */
  get timeoutMs(): number {
    return this.heartbeatIntervalMs * this.missedHeartbeatsMax;
  }

  /**
   * Accepts one heartbeat received at `nowMs`. Returns a join for a new node; a restarted node (seq went
   * back while its own timestamp moved forward) yields a leave followed by a join, because its cache
   * state started over.
   */
  observe(heartbeat: NodeHeartbeat, nowMs: number): MembershipChange[] {
    if (heartbeat.nodeId === '' || heartbeat.role === '') {
      this.invalidDropped++;
      return [];
    }
    const nodeId = heartbeat.nodeId as NodeId;
    const current = this.members.get(nodeId);
    if (current === undefined) {
      if (this.members.size >= this.nodesMax) {
        this.rejectedFull++;
        return [];
      }
      const member: Member = {
        nodeId,
        role: heartbeat.role,
        heartbeat,
        lastSeenMs: nowMs,
        joinedAtMs: nowMs,
      };
      this.members.set(nodeId, member);
      return [{ type: 'join', member }];
    }
    if (heartbeat.seq > current.heartbeat.seq) {
      this.members.set(nodeId, { ...current, role: heartbeat.role, heartbeat, lastSeenMs: nowMs });
      return [];
    }
    // NOTE: seq restarts at 1 in a new process. A lower seq with a newer sender timestamp is that
    // restart; anything else (duplicate, reordered delivery) is stale.
    if (heartbeat.seq < current.heartbeat.seq && heartbeat.timestampMs > current.heartbeat.timestampMs) {
      const member: Member = {
        nodeId,
        role: heartbeat.role,
        heartbeat,
        lastSeenMs: nowMs,
        joinedAtMs: nowMs,
      };
      this.members.set(nodeId, member);
      return [
        { type: 'leave', member: current, reason: 'restarted' },
        { type: 'join', member },
      ];
    }
    this.staleDropped++;
    return [];
  }

  /** Expires nodes silent for longer than `timeoutMs`; call it periodically with the current time. */
  tick(nowMs: number): MembershipChange[] {
    const changes: MembershipChange[] = [];
    const deadlineMs = nowMs - this.timeoutMs;
    for (const [nodeId, member] of this.members) {
      if (member.lastSeenMs < deadlineMs) {
        this.members.delete(nodeId);
        changes.push({ type: 'leave', member, reason: 'timeout' });
      }
    }
    return changes;
  }

  /** Removes a node at once (e.g. it announced a graceful shutdown). */
  remove(nodeId: NodeId): MembershipChange[] {
    const member = this.members.get(nodeId);
    if (member === undefined) return [];
    this.members.delete(nodeId);
    return [{ type: 'leave', member, reason: 'removed' }];
  }

  get(nodeId: NodeId): Member | undefined {
    return this.members.get(nodeId);
  }

  /** Live members sorted by node id, optionally of one role. */
  live(role?: string): Member[] {
    const out: Member[] = [];
    for (const m of this.members.values()) if (role === undefined || m.role === role) out.push(m);
    return out.sort((a, b) => (a.nodeId < b.nodeId ? -1 : a.nodeId > b.nodeId ? 1 : 0));
  }

  /** Live node ids sorted, optionally of one role: the input `ownersOf` wants. */
  liveIds(role?: string): NodeId[] {
    return this.live(role).map((m) => m.nodeId);
  }

  stats(): MembershipStats {
    return {
      live: this.members.size,
      staleDropped: this.staleDropped,
      rejectedFull: this.rejectedFull,
      invalidDropped: this.invalidDropped,
    };
  }
}

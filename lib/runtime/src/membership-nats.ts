// The NATS side of membership: publishes this node's NodeHeartbeat (protobuf) on
// kvmesh.nodes.<role>.<id>.heartbeat every interval, and feeds received heartbeats plus a periodic
// tick into a MembershipTracker. Decisions stay in core/membership.ts; this file only moves bytes and
// owns the timers. Garbage on the subject is counted and dropped, never thrown into NATS callbacks.
import { NodeHeartbeat } from '@kvmesh/protocol';
import type { NatsConnection, Subscription } from '@nats-io/transport-node';

import type { MembershipChange, MembershipTracker } from './core/membership.ts';
import { heartbeatSubject, heartbeatWildcard } from './core/subjects.ts';

/** What the caller fills in; the publisher stamps `seq` (from 1) and `timestampMs`. */
export type HeartbeatFields = Partial<Omit<NodeHeartbeat, 'seq' | 'timestampMs'>> & {
  readonly nodeId: string;
  readonly role: string;
};

export interface HeartbeatOptions {
  readonly clock?: () => number;
  /** Called when building or publishing a heartbeat fails (e.g. the connection closed). */
  readonly onError?: (err: unknown) => void;
}

export interface HeartbeatPublisher {
  /** Publishes one heartbeat now (e.g. right after load changed a lot). */
  beat(): void;
  /** Heartbeats sent so far (the last seq). */
  readonly sent: number;
  stop(): void;
}

/**
 * Publishes a heartbeat immediately and then every `intervalMs`. The timer is unref'd: heartbeats
 * alone never keep a process alive.
 */
export function startHeartbeats(
  nc: NatsConnection,
  getHeartbeat: () => HeartbeatFields,
  intervalMs: number,
  options: HeartbeatOptions = {},
): HeartbeatPublisher {
  const clock = options.clock ?? Date.now;
  let seq = 0n;
  let stopped = false;
  const beat = (): void => {
    if (stopped) return;
    try {
      const fields = getHeartbeat();
      const message = NodeHeartbeat.fromPartial({
        ...fields,
        seq: seq + 1n,
        timestampMs: BigInt(Math.trunc(clock())),
      });
      nc.publish(heartbeatSubject(message.role, message.nodeId), NodeHeartbeat.encode(message).finish());
      seq++;
    } catch (err) {
      options.onError?.(err);
    }
  };
  beat();
  const timer = setInterval(beat, intervalMs);
  timer.unref();
  return {
    beat,
    get sent() {
      return Number(seq);
    },
    stop() {
      stopped = true;
      clearInterval(timer);
    },
  };
}

export interface WatchMembershipOptions {
  /** Every join and leave, in the order the tracker reported them. */
  readonly onChange?: (change: MembershipChange) => void;
  /** Period of the expiry tick. Default: half the tracker's heartbeat interval. */
  readonly tickIntervalMs?: number;
  /** Called for undecodable messages. */
  readonly onInvalid?: (err: unknown, subject: string) => void;
  /** Every valid heartbeat of the role, once the tracker has taken it (and reported its changes). */
  readonly onHeartbeat?: (heartbeat: NodeHeartbeat) => void;
}

export interface MembershipWatch {
  readonly tracker: MembershipTracker;
  /** Messages on the subject that were not a valid heartbeat. */
  readonly invalidMessages: number;
  stop(): void;
}

/**
 * Subscribes to the heartbeats of `role` (every role when undefined) and keeps `tracker` current.
 * A node is reported out at most `tickIntervalMs` after its silence passes `tracker.timeoutMs`.
 */
export function watchMembership(
  nc: NatsConnection,
  role: string | undefined,
  tracker: MembershipTracker,
  clock: () => number,
  options: WatchMembershipOptions = {},
): MembershipWatch {
  let invalidMessages = 0;
  const emit = (changes: MembershipChange[]): void => {
    for (const change of changes) {
      try {
        options.onChange?.(change);
      } catch {
        // A throwing listener must not stop the tracker from seeing further heartbeats.
      }
    }
  };
  const sub: Subscription = nc.subscribe(heartbeatWildcard(role), {
    callback: (err, msg) => {
      if (err !== null || !msg.subject.endsWith('.heartbeat')) return;
      let heartbeat: NodeHeartbeat;
      try {
        heartbeat = NodeHeartbeat.decode(msg.data);
      } catch (decodeErr) {
        invalidMessages++;
        options.onInvalid?.(decodeErr, msg.subject);
        return;
      }
      if (role !== undefined && heartbeat.role !== role) return;
      emit(tracker.observe(heartbeat, clock()));
      try {
        options.onHeartbeat?.(heartbeat);
      } catch {
        // As for onChange: a throwing listener must not stop the watch.
      }
    },
  });
  const tickIntervalMs = options.tickIntervalMs ?? Math.max(1, tracker.heartbeatIntervalMs / 2);
  const timer = setInterval(() => emit(tracker.tick(clock())), tickIntervalMs);
  timer.unref();
  return {
    tracker,
    get invalidMessages() {
      return invalidMessages;
    },
    stop() {
      clearInterval(timer);
      sub.unsubscribe();
    },
  };
}

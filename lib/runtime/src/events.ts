// Cache events on JetStream: `ensureKvEventStream` creates (or updates the limits of) the bounded
// stream behind kvmesh.kv.events.>, `KvEventPublisher` publishes one node's KvEvents in seq order
// through a bounded queue, and `replayKvEvents` reads them back for routers and tests.
//
// Overflow policy (NATS down for longer than the queue covers): the publisher never blocks its caller
// and never grows past `queueMax` events / `queueBytesMax` bytes. It drops the oldest queued events
// and puts one resync marker in their place: a KvEvent with `cleared: true` whose seq is the newest
// dropped seq. A consumer therefore sees a seq gap that always ends at a `cleared` event, forgets what
// it knew about the node (an index that under-reports is safe; one that over-reports is not), and
// applies the later events on top. `onResync` tells the owner so it can re-announce its blocks.
import { randomBytes } from 'node:crypto';

import { InvalidArgumentError, KvmeshError, LimitExceededError } from '@kvmesh/errors';
import { KvEvent } from '@kvmesh/protocol';
import {
  DeliverPolicy,
  DiscardPolicy,
  JetStreamApiError,
  RetentionPolicy,
  StorageType,
  jetstream,
  jetstreamManager,
} from '@nats-io/jetstream';
import type {
  Consumer,
  JetStreamClient,
  JetStreamManager,
  StreamConfig,
  StreamInfo,
} from '@nats-io/jetstream';

import { KV_EVENTS_STREAM_DEFAULT, KV_EVENTS_SUBJECT_PREFIX, kvEventsSubject } from './core/subjects.ts';
import { UnavailableError } from './errors.ts';
import type { Logger } from './logger.ts';
import type { NatsConnection } from './nats.ts';

const MS_TO_NS = 1_000_000;
const STREAM_NOT_FOUND = 10059;

export interface KvEventStreamOptions {
  readonly streamName?: string;
  /** Oldest messages are discarded beyond these; a router replaying from earlier must resync. */
  readonly msgsMax?: number;
  readonly bytesMax?: number;
  readonly ageMaxMs?: number;
  /** Largest single event message. Default 1 MiB. */
  readonly msgBytesMax?: number;
  readonly storage?: 'file' | 'memory';
  readonly replicas?: number;
  /** Window in which a retried publish (same msg id) is deduplicated. Default 2 min. */
  readonly duplicateWindowMs?: number;
}

const STREAM_DEFAULTS = {
  msgsMax: 1_000_000,
  bytesMax: 1024 ** 3,
  ageMaxMs: 24 * 3_600_000,
  msgBytesMax: 1024 ** 2,
  duplicateWindowMs: 120_000,
} as const;

function streamConfig(options: KvEventStreamOptions): StreamConfig {
  const ageMaxMs = options.ageMaxMs ?? STREAM_DEFAULTS.ageMaxMs;
  const duplicateWindowMs = options.duplicateWindowMs ?? STREAM_DEFAULTS.duplicateWindowMs;
  return {
    name: options.streamName ?? KV_EVENTS_STREAM_DEFAULT,
    subjects: [`${KV_EVENTS_SUBJECT_PREFIX}.>`],
    retention: RetentionPolicy.Limits,
    storage: options.storage === 'memory' ? StorageType.Memory : StorageType.File,
    discard: DiscardPolicy.Old,
    max_msgs: options.msgsMax ?? STREAM_DEFAULTS.msgsMax,
    max_bytes: options.bytesMax ?? STREAM_DEFAULTS.bytesMax,
    max_age: ageMaxMs * MS_TO_NS,
    max_msg_size: options.msgBytesMax ?? STREAM_DEFAULTS.msgBytesMax,
    num_replicas: options.replicas ?? 1,
    // The server refuses a duplicate window longer than the retention age.
    duplicate_window: Math.min(duplicateWindowMs, ageMaxMs) * MS_TO_NS,
  } as StreamConfig;
}

/** Creates the kv event stream, or brings an existing one's subjects and limits to `options`. */
export async function ensureKvEventStream(
  jsm: JetStreamManager,
  options: KvEventStreamOptions = {},
): Promise<StreamInfo> {
  const config = streamConfig(options);
  try {
    await jsm.streams.info(config.name);
  } catch (err) {
    if (err instanceof JetStreamApiError && err.code === STREAM_NOT_FOUND) {
      try {
        return await jsm.streams.add(config);
      } catch (addErr) {
        throw unavailable(`cannot create JetStream stream ${config.name}`, addErr);
      }
    }
    throw unavailable(`cannot read JetStream stream ${config.name}`, err);
  }
  const { name, storage: _storage, retention: _retention, ...updatable } = config;
  try {
    return await jsm.streams.update(name, updatable);
  } catch (err) {
    throw unavailable(`cannot update JetStream stream ${name}`, err);
  }
}

function unavailable(what: string, err: unknown): UnavailableError {
  const message = err instanceof Error ? err.message : String(err);
  const code = err instanceof JetStreamApiError ? err.code : undefined;
  return new UnavailableError(`${what}: ${message}`, code === undefined ? {} : { jetStreamCode: code });
}

const STREAM_ATTEMPTS_MAX = 3;

/**
 * Makes sure the kv event stream exists and opens `nodeId`'s publisher on `nc`, logging failed
 * publishes (retried) and resync markers. NOTE: services starting together race to create the
 * stream; a lost race succeeds on retry.
 */
export async function openKvEventPublisher(
  nc: NatsConnection,
  options: { nodeId: string; logger: Logger },
): Promise<KvEventPublisher> {
  const jsm = await jetstreamManager(nc);
  for (let attempt = 1; ; attempt++) {
    try {
      await ensureKvEventStream(jsm);
      break;
    } catch (err) {
      if (attempt >= STREAM_ATTEMPTS_MAX) throw err;
      options.logger.warn('kv event stream not ready, retrying', { attempt, err });
      await new Promise((resolve) => setTimeout(resolve, 100 * attempt));
    }
  }
  return new KvEventPublisher(jetstream(nc), {
    nodeId: options.nodeId,
    onError: (err) => options.logger.warn('kv event publish failed; retrying', { err }),
    onResync: (markerSeq, dropped) =>
      options.logger.warn('kv event queue overflowed; published a resync marker', { markerSeq, dropped }),
  });
}

// ---------------------------------------------------------------------------------------------
// Publisher

export interface KvEventPublisherOptions {
  /** The node whose events these are; the subject is kvmesh.kv.events.<nodeId>. */
  readonly nodeId: string;
  /** Stream the messages must land in (checked by the server). Default KVMESH_KV_EVENTS. */
  readonly streamName?: string;
  /** Most events waiting to be published. Default 10000, minimum 2. */
  readonly queueMax?: number;
  /** Most encoded bytes waiting to be published. Default 64 MiB. */
  readonly queueBytesMax?: number;
  /** Largest encoded event accepted by `publish`. Default 1 MiB minus 4 KiB of header room. */
  readonly eventBytesMax?: number;
  /** Timeout of one JetStream publish (until its ack). Default 5 s. */
  readonly publishTimeoutMs?: number;
  /** Backoff between retries of a failed publish: doubles from min to max. Default 50 ms .. 2 s. */
  readonly retryDelayMinMs?: number;
  readonly retryDelayMaxMs?: number;
  /** Distinguishes this process from earlier ones in the msg id (seq restarts at 1). Default random. */
  readonly incarnation?: string;
  readonly clock?: () => number;
  /** A resync marker was queued (events were dropped); `markerSeq` is its current seq. */
  readonly onResync?: (markerSeq: bigint, droppedEvents: number) => void;
  /** A publish attempt failed; it will be retried. */
  readonly onError?: (err: unknown) => void;
}

export interface KvEventPublisherStats {
  readonly queued: number;
  readonly queuedBytes: number;
  readonly published: number;
  readonly dropped: number;
  readonly resyncMarkers: number;
  readonly failedAttempts: number;
  /** Seq of the newest event JetStream acknowledged; 0n before the first. */
  readonly lastPublishedSeq: bigint;
  /** JetStream stream sequence of that event. */
  readonly lastStreamSeq: number;
}

/** One queued event: its encoded bytes, or null for the resync marker (encoded when sent). */
interface Entry {
  seq: bigint;
  data: Uint8Array | null;
}

/** A FIFO with O(1) push/shift and positional access, compacted as the head advances. */
class Deque<T> {
  private items: T[] = [];
  private head = 0;
  get length(): number {
    return this.items.length - this.head;
  }
  at(i: number): T | undefined {
    return this.items[this.head + i];
  }
  set(i: number, value: T): void {
    this.items[this.head + i] = value;
  }
  push(value: T): void {
    this.items.push(value);
  }
  shift(): T | undefined {
    if (this.head >= this.items.length) return undefined;
    const value = this.items[this.head++];
    if (this.head > 1024 && this.head * 2 > this.items.length) {
      this.items = this.items.slice(this.head);
      this.head = 0;
    }
    return value;
  }
  /** Puts `value` back in front; O(1) right after a shift. */
  unshift(value: T): void {
    if (this.head > 0) this.items[--this.head] = value;
    else this.items.unshift(value);
  }
}

const CLOSED_CODE = 'PUBLISHER_CLOSED';

export class KvEventPublisher {
  private readonly js: JetStreamClient;
  private readonly nodeId: string;
  private readonly subject: string;
  private readonly streamName: string;
  private readonly queueMax: number;
  private readonly queueBytesMax: number;
  private readonly eventBytesMax: number;
  private readonly publishTimeoutMs: number;
  private readonly retryDelayMinMs: number;
  private readonly retryDelayMaxMs: number;
  private readonly incarnation: string;
  private readonly clock: () => number;
  private readonly options: KvEventPublisherOptions;

  private readonly queue = new Deque<Entry>();
  private queuedBytes = 0;
  private inFlight: Entry | null = null;
  private lastEnqueuedSeq = 0n;
  private pumping = false;
  private closed = false;
  private stopped = false;
  private retryTimer: NodeJS.Timeout | null = null;
  private wakeRetry: (() => void) | null = null;
  private idleWaiters: Array<() => void> = [];
  private counters = { published: 0, dropped: 0, resyncMarkers: 0, failedAttempts: 0, lastStreamSeq: 0 };
  private lastPublishedSeq = 0n;

  constructor(js: JetStreamClient, options: KvEventPublisherOptions) {
    this.js = js;
    this.options = options;
    this.nodeId = options.nodeId;
    this.subject = kvEventsSubject(options.nodeId);
    this.streamName = options.streamName ?? KV_EVENTS_STREAM_DEFAULT;
    this.queueMax = options.queueMax ?? 10_000;
    this.queueBytesMax = options.queueBytesMax ?? 64 * 1024 ** 2;
    this.eventBytesMax = options.eventBytesMax ?? 1024 ** 2 - 4096;
    this.publishTimeoutMs = options.publishTimeoutMs ?? 5_000;
    this.retryDelayMinMs = options.retryDelayMinMs ?? 50;
    this.retryDelayMaxMs = options.retryDelayMaxMs ?? 2_000;
    this.incarnation = options.incarnation ?? randomBytes(6).toString('hex');
    this.clock = options.clock ?? Date.now;
    if (!Number.isInteger(this.queueMax) || this.queueMax < 2)
      throw new InvalidArgumentError(`queueMax must be an integer >= 2, got ${this.queueMax}`, {
        queueMax: this.queueMax,
      });
    if (this.eventBytesMax > this.queueBytesMax)
      throw new InvalidArgumentError('eventBytesMax must not exceed queueBytesMax', {
        eventBytesMax: this.eventBytesMax,
        queueBytesMax: this.queueBytesMax,
      });
  }

  /**
   * Queues one event; returns at once. The caller numbers events (seq strictly increasing, from 1 in
   * a new process). Throws InvalidArgumentError for a foreign node id or a non-increasing seq, and
   * LimitExceededError for an event larger than `eventBytesMax` (split it into several events).
   */
  publish(event: KvEvent): void {
    if (this.closed)
      throw new KvmeshError(CLOSED_CODE, 'failed-precondition', 'kv event publisher is closed');
    if (event.nodeId !== '' && event.nodeId !== this.nodeId)
      throw new InvalidArgumentError(
        `event of node '${event.nodeId}' given to the publisher of '${this.nodeId}'`,
        {
          eventNodeId: event.nodeId,
          nodeId: this.nodeId,
        },
      );
    if (event.seq <= this.lastEnqueuedSeq)
      throw new InvalidArgumentError(`event seq ${event.seq} does not follow ${this.lastEnqueuedSeq}`, {
        seq: event.seq,
        previousSeq: this.lastEnqueuedSeq,
      });
    const data = KvEvent.encode(event.nodeId === '' ? { ...event, nodeId: this.nodeId } : event).finish();
    if (data.length > this.eventBytesMax)
      throw new LimitExceededError(`kv event is ${data.length} bytes, limit is ${this.eventBytesMax}`, {
        bytes: data.length,
        limit: this.eventBytesMax,
        seq: event.seq,
      });
    this.lastEnqueuedSeq = event.seq;
    this.queue.push({ seq: event.seq, data });
    this.queuedBytes += data.length;
    this.enforceBounds();
    this.pump();
  }

  /** Resolves once every queued event is acknowledged; UnavailableError after `timeoutMs`. */
  flush(timeoutMs = 10_000): Promise<void> {
    if (this.isIdle()) return Promise.resolve();
    return new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.idleWaiters = this.idleWaiters.filter((w) => w !== done);
        reject(
          new UnavailableError(`kv events not published within ${timeoutMs} ms`, {
            queued: this.queue.length + (this.inFlight ? 1 : 0),
            timeoutMs,
          }),
        );
      }, timeoutMs);
      const done = (): void => {
        clearTimeout(timer);
        resolve();
      };
      this.idleWaiters.push(done);
    });
  }

  /**
   * Stops accepting events, tries to publish what is queued for up to `drainTimeoutMs`, then stops.
   * Returns how many events were left unpublished.
   */
  async close(drainTimeoutMs = 5_000): Promise<number> {
    this.closed = true;
    try {
      await this.flush(drainTimeoutMs);
    } catch {
      // Reported through the return value.
    }
    this.stopped = true;
    if (this.retryTimer !== null) clearTimeout(this.retryTimer);
    this.wakeRetry?.();
    return this.queue.length + (this.inFlight ? 1 : 0);
  }

  stats(): KvEventPublisherStats {
    return {
      queued: this.queue.length + (this.inFlight ? 1 : 0),
      queuedBytes: this.queuedBytes,
      published: this.counters.published,
      dropped: this.counters.dropped,
      resyncMarkers: this.counters.resyncMarkers,
      failedAttempts: this.counters.failedAttempts,
      lastPublishedSeq: this.lastPublishedSeq,
      lastStreamSeq: this.counters.lastStreamSeq,
    };
  }

  private isIdle(): boolean {
    return this.inFlight === null && this.queue.length === 0;
  }

  /** Drops oldest events into a resync marker at the head until both bounds hold (see file header). */
  private enforceBounds(): void {
    let dropped = 0;
    while (this.queue.length > this.queueMax || this.queuedBytes > this.queueBytesMax) {
      const head = this.queue.at(0)!;
      if (head.data === null) {
        // NOTE: the queue holds at least [marker, newest] here because queueMax >= 2 and one event
        // never exceeds queueBytesMax, so a victim after the marker exists.
        this.queue.shift();
        const victim = this.queue.shift()!;
        this.queue.unshift(head);
        this.queuedBytes -= victim.data?.length ?? 0;
        head.seq = victim.seq;
      } else {
        this.queuedBytes -= head.data.length;
        this.queue.set(0, { seq: head.seq, data: null });
        this.counters.resyncMarkers++;
      }
      this.counters.dropped++;
      dropped++;
    }
    if (dropped > 0) this.options.onResync?.(this.queue.at(0)!.seq, dropped);
  }

  private encodeMarker(seq: bigint): Uint8Array {
    return KvEvent.encode(
      KvEvent.fromPartial({
        nodeId: this.nodeId,
        seq,
        cleared: true,
        timestampMs: BigInt(Math.trunc(this.clock())),
      }),
    ).finish();
  }

  private pump(): void {
    if (this.pumping || this.stopped) return;
    this.pumping = true;
    void this.run().finally(() => {
      this.pumping = false;
      if (!this.stopped && !this.isIdle()) this.pump();
    });
  }

  private async run(): Promise<void> {
    let delayMs = this.retryDelayMinMs;
    while (!this.stopped) {
      if (this.inFlight === null) {
        const next = this.queue.shift();
        if (next === undefined) break;
        if (next.data === null) next.data = this.encodeMarker(next.seq);
        else this.queuedBytes -= next.data.length;
        this.inFlight = next;
      }
      const entry = this.inFlight;
      try {
        const ack = await this.js.publish(this.subject, entry.data!, {
          // NOTE: retries reuse the msg id, so an attempt whose ack was lost is not stored twice.
          msgID: `${this.nodeId}:${this.incarnation}:${entry.seq}`,
          timeout: this.publishTimeoutMs,
          expect: { streamName: this.streamName },
        });
        this.inFlight = null;
        this.counters.published++;
        this.lastPublishedSeq = entry.seq;
        this.counters.lastStreamSeq = ack.seq;
        delayMs = this.retryDelayMinMs;
      } catch (err) {
        this.counters.failedAttempts++;
        try {
          this.options.onError?.(err);
        } catch {
          // The listener's failure must not stop publishing.
        }
        await new Promise<void>((resolve) => {
          this.wakeRetry = resolve;
          this.retryTimer = setTimeout(resolve, delayMs);
          // A publisher nobody closed must not keep a finished process alive retrying forever.
          this.retryTimer.unref();
        });
        this.retryTimer = null;
        this.wakeRetry = null;
        delayMs = Math.min(delayMs * 2, this.retryDelayMaxMs);
      }
    }
    if (this.isIdle()) {
      const waiters = this.idleWaiters;
      this.idleWaiters = [];
      for (const w of waiters) w();
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Replay

export interface ReplayOptions {
  /** First JetStream stream sequence to read. Default 1. */
  readonly fromSeq?: number;
  /** Only this node's events. */
  readonly nodeId?: string;
  /** Keep following new events after catching up (until `signal` aborts). Default false. */
  readonly follow?: boolean;
  readonly signal?: AbortSignal;
  readonly streamName?: string;
  /** Called for a message that is not a valid KvEvent; the message is skipped. */
  readonly onInvalid?: (err: unknown, streamSeq: number) => void;
}

export interface ReplayedKvEvent {
  /** JetStream stream sequence: where a restarted reader resumes (`fromSeq: streamSeq + 1`). */
  readonly streamSeq: number;
  readonly event: KvEvent;
}

/**
 * Reads kv events in stream order through an ordered (ephemeral, in-memory) consumer. Without
 * `follow`, it ends once it has delivered everything that was in the stream when it started.
 */
export async function* replayKvEvents(
  js: JetStreamClient,
  options: ReplayOptions = {},
): AsyncGenerator<ReplayedKvEvent, void, undefined> {
  const streamName = options.streamName ?? KV_EVENTS_STREAM_DEFAULT;
  const filter =
    options.nodeId === undefined ? `${KV_EVENTS_SUBJECT_PREFIX}.>` : kvEventsSubject(options.nodeId);
  let consumer: Consumer;
  try {
    consumer = await js.consumers.get(streamName, {
      filter_subjects: filter,
      deliver_policy: DeliverPolicy.StartSequence,
      opt_start_seq: Math.max(1, options.fromSeq ?? 1),
    });
  } catch (err) {
    throw unavailable(`cannot replay JetStream stream ${streamName}`, err);
  }
  const follow = options.follow ?? false;
  if (!follow && (await consumer.info(true)).num_pending === 0) {
    await consumer.delete().catch(() => undefined);
    return;
  }
  const messages = await consumer.consume({ max_messages: 256 });
  const abort = (): void => void messages.stop();
  options.signal?.addEventListener('abort', abort, { once: true });
  // NOTE: an abort that came while the consumer was being created fires no event: stop now.
  if (options.signal?.aborted === true) abort();
  try {
    for await (const msg of messages) {
      let event: KvEvent | undefined;
      try {
        event = KvEvent.decode(msg.data);
      } catch (err) {
        options.onInvalid?.(err, msg.seq);
      }
      if (event !== undefined) yield { streamSeq: msg.seq, event };
      if (!follow && msg.info.pending === 0) break;
      if (options.signal?.aborted) break;
    }
  } finally {
    options.signal?.removeEventListener('abort', abort);
    messages.stop();
    await consumer.delete().catch(() => undefined);
  }
}

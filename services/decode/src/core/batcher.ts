// Continuous batching over ONE engine: sequences join and leave between steps, and a step loop runs
// while any sequence is admitted. Each step is scheduled through an injected `schedule` (the
// worker passes setImmediate), so I/O, new requests and cancellations are served between steps.
// Invariants: a sequence's events go only to its own listener, in order; a sequence that finishes
// in the engine is exported and removed in the same step, before its last event is delivered, so
// its blocks are freed whatever the listener does; an engine failure fails every sequence it held.
// While a sequence attends to far blocks (DistAttention) a step is asynchronous: at most one runs
// at a time, and admissions, cancellations and demotions made meanwhile join the next one.
import type { SequenceRequest, TokenEvent } from '@kvmesh/engine';

/** The part of Engine the batcher drives; tests may pass a scripted double. */
export interface BatchEngine {
  addSequence(request: SequenceRequest): number;
  step(): TokenEvent[];
  /** Whether step() would refuse (some sequence has far blocks): stepAsync() runs instead. */
  readonly needsAsyncStep?: boolean;
  stepAsync?(): Promise<TokenEvent[]>;
  removeSequence(id: number): void;
  exportBlocks(id: number): Uint8Array[];
  sequenceInfo(id: number): {
    tokens: readonly number[];
    promptTokens: number;
    reusedTokens: number;
    farBlocks?: number;
  };
  demoteBlocks?(id: number, count: number): void;
  retainBlocks?(id: number): number[];
}

/** What is left of a sequence once it leaves the engine: what write-back and usage need. */
export interface FinishedSequence {
  /** Prompt and generated tokens. */
  readonly tokens: readonly number[];
  readonly promptTokens: number;
  readonly reusedTokens: number;
  /** Leading full blocks left in the store (DistAttention); `blocks` starts after them. */
  readonly firstBlock: number;
  /** Payloads of its local full blocks, in order (blocks[i] holds block firstBlock + i). */
  readonly blocks: readonly Uint8Array[];
  /** With keepPoolBlocks: the pool ids of `blocks`, one reference each that the listener owns. */
  readonly poolBlocks: readonly number[];
}

export type SequenceEvent =
  | {
      readonly kind: 'token';
      readonly token: number;
      readonly logprob: number;
      readonly finishReason: 'stop' | 'length' | null;
      /** Set with the last token: the sequence has left the engine. */
      readonly finished?: FinishedSequence;
      /** The most likely tokens at this position, when the sequence asked for them. */
      readonly top?: TokenEvent['top'];
    }
  | { readonly kind: 'error'; readonly error: unknown };

export interface BatcherOptions {
  /** Runs `step` later, after pending I/O (setImmediate in the worker, a manual queue in tests). */
  readonly schedule: (step: () => void) => void;
  /** Called when a listener throws (it must not stop the loop for the other sequences). */
  readonly onListenerError?: (err: unknown) => void;
  /** Every step through stepAsync (pauses between prefill chunks); else only while one is needed. */
  readonly asyncSteps?: boolean;
  /** Hand a finished sequence's pool blocks (retained) to its listener, for a local prefix cache. */
  readonly keepPoolBlocks?: boolean;
}

export interface BatcherStats {
  readonly active: number;
  readonly steps: number;
  /** Most sequences that one step advanced. */
  readonly batchPeak: number;
}

export class DecodeBatcher {
  private readonly listeners = new Map<number, (event: SequenceEvent) => void>();
  private scheduled = false;
  /** An async step is in flight. */
  private running = false;
  private steps = 0;
  private batchPeak = 0;

  constructor(
    private readonly engine: BatchEngine,
    private readonly options: BatcherOptions,
  ) {}

  get active(): number {
    return this.listeners.size;
  }

  stats(): BatcherStats {
    return { active: this.listeners.size, steps: this.steps, batchPeak: this.batchPeak };
  }

  /** Admits a sequence (the engine's errors are thrown here); it joins the next step. */
  admit(request: SequenceRequest, listener: (event: SequenceEvent) => void): number {
    const id = this.engine.addSequence(request);
    this.listeners.set(id, listener);
    this.kick();
    return id;
  }

  /** Ends a sequence early (a stop string) and returns what write-back needs; undefined if gone. */
  finish(id: number): FinishedSequence | undefined {
    if (!this.listeners.has(id)) return undefined;
    return this.leave(id);
  }

  /** Leaves a running sequence's `count` oldest local blocks to the store; no-op if it left. */
  demote(id: number, count: number): void {
    if (!this.listeners.has(id) || count <= 0) return;
    if (this.engine.demoteBlocks === undefined) throw new Error('this engine cannot demote blocks');
    this.engine.demoteBlocks(id, count);
    this.kick();
  }

  /** Drops a sequence (client cancelled); frees its blocks. No-op if it already left. */
  cancel(id: number): void {
    if (!this.listeners.delete(id)) return;
    this.engine.removeSequence(id);
  }

  private kick(): void {
    if (this.scheduled || this.running || this.listeners.size === 0) return;
    this.scheduled = true;
    this.options.schedule(() => this.runStep());
  }

  private leave(id: number): FinishedSequence {
    const info = this.engine.sequenceInfo(id);
    const finished: FinishedSequence = {
      tokens: [...info.tokens],
      promptTokens: info.promptTokens,
      reusedTokens: info.reusedTokens,
      firstBlock: info.farBlocks ?? 0,
      blocks: this.engine.exportBlocks(id),
      poolBlocks: this.options.keepPoolBlocks === true ? (this.engine.retainBlocks?.(id) ?? []) : [],
    };
    this.listeners.delete(id);
    this.engine.removeSequence(id);
    return finished;
  }

  private deliver(listener: (event: SequenceEvent) => void, event: SequenceEvent): void {
    try {
      listener(event);
    } catch (err) {
      this.options.onListenerError?.(err);
    }
  }

  private runStep(): void {
    this.scheduled = false;
    if (this.listeners.size === 0) return;
    if (
      this.engine.stepAsync !== undefined &&
      (this.options.asyncSteps === true || this.engine.needsAsyncStep === true)
    ) {
      this.running = true;
      this.engine.stepAsync().then(
        (events) => {
          this.running = false;
          this.delivered(events);
        },
        (err: unknown) => {
          this.running = false;
          this.failAll(err);
        },
      );
      return;
    }
    let events: TokenEvent[];
    try {
      events = this.engine.step();
    } catch (err) {
      this.failAll(err);
      return;
    }
    this.delivered(events);
  }

  /** NOTE: a failed step may have left any sequence half-advanced; none of them can continue. */
  private failAll(err: unknown): void {
    const failed = [...this.listeners];
    this.listeners.clear();
    for (const [id, listener] of failed) {
      try {
        this.engine.removeSequence(id);
      } catch {
        // Already gone: nothing to free.
      }
      this.deliver(listener, { kind: 'error', error: err });
    }
  }

  private delivered(events: TokenEvent[]): void {
    this.steps++;
    this.batchPeak = Math.max(this.batchPeak, events.length);
    for (const event of events) {
      // A listener may have cancelled or finished another sequence earlier in this loop.
      const listener = this.listeners.get(event.sequenceId);
      if (listener === undefined) continue;
      const { token, logprob, finishReason, top } = event;
      const delivered = { kind: 'token', token, logprob, finishReason, ...(top ? { top } : {}) } as const;
      if (finishReason === null) this.deliver(listener, delivered);
      else this.deliver(listener, { ...delivered, finished: this.leave(event.sequenceId) });
    }
    this.kick();
  }
}

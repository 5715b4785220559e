// The decode worker's pure core, without sockets or a model: the step loop batches every admitted
// sequence into each step, delivers each sequence's events to its own listener in order, exports
// and removes a finished sequence before its last event, frees cancelled ones, and fails every
// sequence when a step throws; the event channel wakes a waiting reader on close; slots bound
// admission; the fetch / write-back plan and usage; request validation names the proto field.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import type { SequenceRequest, TokenEvent } from '@kvmesh/engine';
import { Codec, DecodeRequest, SamplingParams, type BlockHash } from '@kvmesh/protocol';

import {
  CodecMismatchError,
  DecodeBatcher,
  EventChannel,
  ModelMismatchError,
  LocalPrefixCache,
  SequenceSlots,
  TooManySequencesError,
  blocksToDemote,
  blocksToFetch,
  blocksToWriteBack,
  decodeUsage,
  farBlocksAtAdmission,
  importableBlocks,
  parseDecodeRequest,
  usablePrefix,
  type BatchEngine,
  type DecodeLimits,
  type SequenceEvent,
} from '../src/core/index.ts';

const B = 16;

/** An engine double: sequence n emits tokens 100n, 100n+1, … and finishes after maxTokens. */
class ScriptedEngine implements BatchEngine {
  readonly log: string[] = [];
  failNextStep: Error | undefined;
  private readonly seqs = new Map<number, { tokens: number[]; prompt: number; max: number }>();
  private nextId = 1;

  addSequence(request: SequenceRequest): number {
    const id = this.nextId++;
    this.seqs.set(id, {
      tokens: [...request.promptTokens],
      prompt: request.promptTokens.length,
      max: request.maxTokens,
    });
    this.log.push(`add ${id}`);
    return id;
  }
  step(): TokenEvent[] {
    if (this.failNextStep !== undefined) throw this.failNextStep;
    const events: TokenEvent[] = [];
    for (const [id, seq] of this.seqs) {
      const generated = seq.tokens.length - seq.prompt;
      if (generated >= seq.max) continue;
      const token = 100 * id + generated;
      seq.tokens.push(token);
      events.push({
        sequenceId: id,
        token,
        logprob: -generated,
        finishReason: generated + 1 >= seq.max ? 'length' : null,
      });
    }
    this.log.push(`step ${events.map((e) => e.sequenceId).join(',')}`);
    return events;
  }
  removeSequence(id: number): void {
    if (!this.seqs.delete(id)) throw new Error(`no sequence ${id}`);
    this.log.push(`remove ${id}`);
  }
  exportBlocks(id: number): Uint8Array[] {
    const seq = this.seqs.get(id);
    assert.ok(seq);
    return Array.from({ length: Math.floor((seq.tokens.length - 1) / B) }, (_, i) => Uint8Array.of(id, i));
  }
  sequenceInfo(id: number): { tokens: readonly number[]; promptTokens: number; reusedTokens: number } {
    const seq = this.seqs.get(id);
    assert.ok(seq);
    return { tokens: seq.tokens, promptTokens: seq.prompt, reusedTokens: 0 };
  }
}

/** A manual scheduler: steps run only when the test says so. */
function manualSchedule(): { schedule: (step: () => void) => void; runAll: () => void } {
  const queue: (() => void)[] = [];
  return {
    schedule: (step) => queue.push(step),
    runAll: () => {
      while (queue.length > 0) (queue.shift() as () => void)();
    },
  };
}

describe('batcher - continuous batching over one engine', () => {
  it('batcher - a sequence is stepped until it finishes, then exported and removed before its last event', () => {
    const engine = new ScriptedEngine();
    const clock = manualSchedule();
    const batcher = new DecodeBatcher(engine, { schedule: clock.schedule });
    const seen = new Map<number, SequenceEvent[]>();
    const listen = (id: number) => (e: SequenceEvent) => seen.set(id, [...(seen.get(id) ?? []), e]);
    const a = batcher.admit({ promptTokens: Array(20).fill(7), maxTokens: 3 }, (e) => listen(1)(e));
    assert.equal(a, 1);
    clock.runAll();
    assert.equal(engine.log.join(' | '), 'add 1 | step 1 | step 1 | step 1 | remove 1');
    const events = seen.get(1) ?? [];
    assert.deepEqual(
      events.map((e) => (e.kind === 'token' ? [e.token, e.finishReason] : e.kind)),
      [
        [100, null],
        [101, null],
        [102, 'length'],
      ],
    );
    const last = events.at(-1);
    assert.ok(last?.kind === 'token' && last.finished !== undefined);
    assert.deepEqual(last.finished.tokens.slice(20), [100, 101, 102]);
    assert.equal(last.finished.blocks.length, 1, '22 tokens with KV: one full block');
    assert.equal(batcher.active, 0);
  });

  it('batcher - sequences admitted between steps share later steps; the loop stops when none is left', () => {
    const engine = new ScriptedEngine();
    const queue: (() => void)[] = [];
    const batcher = new DecodeBatcher(engine, { schedule: (step) => queue.push(step) });
    const tokens: string[] = [];
    const listener = (e: SequenceEvent): void => {
      if (e.kind === 'token') tokens.push(String(e.token));
    };
    batcher.admit({ promptTokens: [1], maxTokens: 3 }, listener);
    (queue.shift() as () => void)();
    batcher.admit({ promptTokens: [1], maxTokens: 3 }, listener);
    assert.equal(queue.length, 1, 'one pending step, not two');
    while (queue.length > 0) (queue.shift() as () => void)();
    assert.deepEqual(engine.log, [
      'add 1',
      'step 1',
      'add 2',
      'step 1,2',
      'step 1,2',
      'remove 1',
      'step 2',
      'remove 2',
    ]);
    assert.deepEqual(tokens, ['100', '101', '200', '102', '201', '202']);
    assert.equal(batcher.stats().batchPeak, 2);
    assert.equal(batcher.stats().steps, 4);
  });

  it('batcher - cancel frees at once; finish exports; events of a gone sequence are dropped', () => {
    const engine = new ScriptedEngine();
    const clock = manualSchedule();
    const batcher = new DecodeBatcher(engine, { schedule: clock.schedule });
    const got: number[] = [];
    let b = 0;
    // Sequence 1's listener cancels sequence 2 while the step's events are being delivered.
    batcher.admit({ promptTokens: [1], maxTokens: 5 }, (e) => {
      if (e.kind === 'token') got.push(e.token);
      batcher.cancel(b);
    });
    b = batcher.admit({ promptTokens: [1], maxTokens: 5 }, (e) => {
      if (e.kind === 'token') got.push(e.token);
    });
    const firstStep = engine.log.length;
    clock.runAll();
    assert.equal(engine.log[firstStep], 'step 1,2');
    assert.ok(engine.log.includes('remove 2'));
    assert.ok(!got.includes(200), "sequence 2's event in the same step is dropped after its cancel");
    assert.equal(batcher.finish(b), undefined);
    batcher.cancel(b); // no-op
    assert.equal(batcher.active, 0);
  });

  it('batcher - finish() on a running sequence returns its tokens and blocks and removes it', () => {
    const engine = new ScriptedEngine();
    const queue: (() => void)[] = [];
    const batcher = new DecodeBatcher(engine, { schedule: (step) => queue.push(step) });
    const id = batcher.admit({ promptTokens: Array(16).fill(3), maxTokens: 10 }, () => undefined);
    (queue.shift() as () => void)();
    (queue.shift() as () => void)();
    const finished = batcher.finish(id);
    assert.ok(finished);
    assert.deepEqual(finished.tokens.slice(16), [100, 101]);
    assert.equal(finished.blocks.length, 1);
    assert.equal(engine.log.at(-1), `remove ${id}`);
    (queue.shift() as () => void)();
    assert.equal(queue.length, 0, 'no step is scheduled once nothing is admitted');
  });

  it('batcher - a failing step fails and removes every sequence; a throwing listener does not stop the loop', () => {
    const engine = new ScriptedEngine();
    const clock = manualSchedule();
    const listenerErrors: unknown[] = [];
    const batcher = new DecodeBatcher(engine, {
      schedule: clock.schedule,
      onListenerError: (err) => listenerErrors.push(err),
    });
    const kinds: string[] = [];
    batcher.admit({ promptTokens: [1], maxTokens: 2 }, () => {
      throw new Error('listener broke');
    });
    batcher.admit({ promptTokens: [1], maxTokens: 2 }, (e) => kinds.push(e.kind));
    clock.runAll();
    assert.deepEqual(kinds, ['token', 'token']);
    assert.equal(listenerErrors.length, 2);
    const failure = new Error('KV pool full');
    batcher.admit({ promptTokens: [1], maxTokens: 2 }, (e) =>
      kinds.push(e.kind === 'error' ? `error ${String((e.error as Error).message)}` : e.kind),
    );
    engine.failNextStep = failure;
    clock.runAll();
    assert.equal(kinds.at(-1), 'error KV pool full');
    assert.equal(batcher.active, 0);
    assert.equal(engine.log.at(-1), 'remove 3');
  });
});

describe('batcher - asynchronous steps (DistAttention)', () => {
  /** The scripted engine whose steps resolve only when the test releases them. */
  class AsyncEngine extends ScriptedEngine {
    readonly needsAsyncStep = true;
    inFlight = 0;
    private release: (() => void)[] = [];
    /** Like the engine: the step covers the sequences present when it starts. */
    stepAsync(): Promise<TokenEvent[]> {
      this.inFlight++;
      const events = this.step();
      return new Promise((resolve) =>
        this.release.push(() => {
          this.inFlight--;
          resolve(events);
        }),
      );
    }
    demoteBlocks(id: number, count: number): void {
      this.log.push(`demote ${id} ${count}`);
    }
    finishStep(): void {
      (this.release.shift() as () => void)();
    }
  }

  it('batcher - one async step at a time; admissions and demotions meanwhile join the next step', async () => {
    const engine = new AsyncEngine();
    const clock = manualSchedule();
    const batcher = new DecodeBatcher(engine, { schedule: clock.schedule });
    const got: number[] = [];
    const listen = (event: { kind: string; token?: number }): void => {
      if (event.kind === 'token') got.push(event.token as number);
    };
    batcher.admit({ promptTokens: [1], maxTokens: 2 }, listen);
    clock.runAll();
    assert.equal(engine.inFlight, 1);
    const second = batcher.admit({ promptTokens: [1], maxTokens: 1 }, listen);
    batcher.demote(second, 1);
    clock.runAll();
    assert.equal(engine.inFlight, 1, 'no second step while one is in flight');
    engine.finishStep();
    await new Promise((resolve) => setImmediate(resolve));
    clock.runAll();
    assert.equal(engine.inFlight, 1, 'the next step starts once the first ended');
    engine.finishStep();
    await new Promise((resolve) => setImmediate(resolve));
    clock.runAll();
    assert.deepEqual(got, [100, 101, 200]);
    assert.ok(engine.log.includes('demote 2 1'));
    assert.equal(batcher.active, 0);
  });
});

describe('local prefix cache - bounded LRU that evicts leaves first', () => {
  const h = (n: number): BlockHash => n.toString(16).padStart(32, '0') as BlockHash;
  const chain = (ids: number[], poolBase: number) =>
    ids.map((n, i) => ({
      hash: h(n),
      parent: i === 0 ? null : h(ids[i - 1] as number),
      poolId: poolBase + i,
      namespace: '',
      bytes: 100,
    }));

  it('local cache - matches the leading held blocks and stops at the first miss', () => {
    const cache = new LocalPrefixCache(8);
    const { added, refused, evicted } = cache.insert(chain([1, 2, 3], 10));
    assert.equal(added.length, 3);
    assert.deepEqual([refused, evicted], [[], []]);
    assert.deepEqual(cache.match([h(1), h(2), h(9), h(3)]), [10, 11]);
    assert.deepEqual(cache.match([h(2)]), [11]);
    assert.deepEqual(cache.match([h(9)]), []);
  });

  it('local cache - over the bound it evicts the least recently used leaf first, then its parent', () => {
    const cache = new LocalPrefixCache(4);
    cache.insert(chain([1, 2, 3], 10));
    // A second chain sharing block 1: 1 is refused (held), 4 and 5 are added; 3 then 2 go.
    const second = cache.insert(chain([1, 4, 5], 20));
    assert.deepEqual(
      second.refused.map((b) => b.poolId),
      [20],
    );
    assert.deepEqual(
      second.evicted.map((b) => b.hash),
      [h(3)],
    );
    assert.equal(cache.size, 4);
    assert.deepEqual(cache.evictOne()?.hash, h(2));
    assert.deepEqual(cache.match([h(1), h(4), h(5)]), [10, 21, 22]);
    assert.deepEqual(
      cache.clear().map((b) => b.poolId),
      [22, 21, 10],
    );
  });

  it('local cache - blocksMax 0 refuses everything; a negative bound is refused', () => {
    const cache = new LocalPrefixCache(0);
    assert.equal(cache.insert(chain([1, 2], 10)).refused.length, 2);
    assert.equal(cache.size, 0);
    assert.throws(() => new LocalPrefixCache(-1), /non-negative/);
  });
});

describe('channel and slots', () => {
  it('channel - items arrive in order; close wakes a waiting reader and drops later pushes', async () => {
    const channel = new EventChannel<number>();
    channel.push(1);
    channel.push(2);
    assert.equal(await channel.next(), 1);
    assert.equal(await channel.next(), 2);
    const waiting = channel.next();
    channel.push(3);
    assert.equal(await waiting, 3);
    const pending = channel.next();
    channel.close();
    channel.push(4);
    assert.equal(await pending, undefined);
    assert.equal(await channel.next(), undefined);
  });

  it('slots - refuse past the bound with RESOURCE_EXHAUSTED; a release counts once', () => {
    const slots = new SequenceSlots(2);
    const first = slots.acquire();
    slots.acquire();
    assert.throws(
      () => slots.acquire(),
      (err: unknown) => err instanceof TooManySequencesError && err.kind === 'resource-exhausted',
    );
    first();
    first();
    assert.equal(slots.used, 1);
    slots.acquire();
    assert.equal(slots.used, 2);
    assert.throws(() => new SequenceSlots(0), /sequencesMax must be a positive integer/);
  });
});

describe('plan - fetch, write-back and usage', () => {
  const h = (n: number): BlockHash => n.toString(16).padStart(32, '0') as BlockHash;

  it('plan - importable blocks never include the block holding the last prompt token', () => {
    assert.equal(importableBlocks(1, B), 0);
    assert.equal(importableBlocks(16, B), 0);
    assert.equal(importableBlocks(17, B), 1);
    assert.equal(importableBlocks(48, B), 2);
    assert.equal(importableBlocks(49, B), 3);
  });

  it("plan - requested hashes must be the prompt's own; they are cut to the importable blocks", () => {
    const computed = [h(1), h(2), h(3)];
    assert.deepEqual(blocksToFetch([h(1), h(2), h(3)], computed, 48, B), [h(1), h(2)]);
    assert.deepEqual(blocksToFetch([h(1)], computed, 60, B), [h(1)]);
    assert.deepEqual(blocksToFetch([], computed, 60, B), []);
    assert.throws(
      () => blocksToFetch([h(1), h(9)], computed, 60, B),
      /: block_hashes\[1\] is 0+9, but block 1 of the prompt hashes to 0+2 /,
    );
  });

  it('plan - usable prefix stops at the first failure; write-back puts exactly the unheld blocks', () => {
    assert.equal(usablePrefix([true, true, false, true]), 2);
    assert.equal(usablePrefix([true, true]), 2);
    assert.equal(usablePrefix([false, true]), 0);
    assert.deepEqual(blocksToWriteBack([true, true, false, true, false]), [2, 4]);
    assert.deepEqual(blocksToWriteBack([true, true]), []);
    assert.deepEqual(decodeUsage(40, 7, 32), { promptTokens: 40, completionTokens: 7, cachedTokens: 32 });
    assert.throws(() => decodeUsage(10, 1, 16), /exceeds promptTokens/);
  });

  it('plan - DistAttention keeps the newest budget blocks local and demotes only stored ones', () => {
    assert.equal(farBlocksAtAdmission(6, 2), 4);
    assert.equal(farBlocksAtAdmission(2, 2), 0);
    assert.equal(farBlocksAtAdmission(6, 0), 0, 'budget 0 is off');
    // 4 far + 3 local with a budget of 2: one to demote, and it is stored.
    assert.equal(blocksToDemote({ farBlocks: 4, fullBlocks: 7, storedBlocks: 7, budget: 2 }), 1);
    // Not yet acknowledged by the store: nothing moves.
    assert.equal(blocksToDemote({ farBlocks: 4, fullBlocks: 7, storedBlocks: 4, budget: 2 }), 0);
    assert.equal(blocksToDemote({ farBlocks: 0, fullBlocks: 9, storedBlocks: 5, budget: 2 }), 5);
    assert.equal(blocksToDemote({ farBlocks: 4, fullBlocks: 6, storedBlocks: 6, budget: 2 }), 0);
    assert.equal(blocksToDemote({ farBlocks: 0, fullBlocks: 9, storedBlocks: 9, budget: 0 }), 0);
  });
});

describe('request - validation names the proto field', () => {
  const limits: DecodeLimits = {
    modelName: 'tiny',
    vocabSize: 100,
    maxContextTokens: 64,
    codec: 'f32',
    blockTokens: B,
    maxTokensDefault: 32,
  };
  const request = (overrides: Partial<DecodeRequest> = {}): DecodeRequest => ({
    ...DecodeRequest.fromPartial({ promptTokenIds: [1, 2, 3] }),
    ...overrides,
  });
  const sampling = (overrides: Partial<SamplingParams>): SamplingParams => ({
    ...SamplingParams.fromPartial({}),
    ...overrides,
  });
  const refuses = (r: DecodeRequest, pattern: RegExp): void =>
    assert.throws(
      () => parseDecodeRequest(r, limits),
      (err: Error) => {
        assert.match(err.message, pattern);
        return true;
      },
    );

  it('request - defaults: greedy, max_tokens from config, model EOS, no logprobs', () => {
    const input = parseDecodeRequest(request(), limits);
    assert.deepEqual(input.sampling, { temperature: 0, topK: 0, topP: 1 });
    assert.equal(input.maxTokens, 32);
    assert.equal(input.stopTokenIds, undefined);
    assert.deepEqual(input.stop, []);
    assert.equal(input.logprobs, false);
    assert.equal(input.firstTokenId, undefined);
    const full = parseDecodeRequest(
      request({
        requestId: 'r-1',
        firstTokenId: 5,
        blockHashes: [],
        sampling: sampling({
          temperature: 0.5,
          topP: 0.9,
          maxTokens: 4,
          stop: ['\n', ''],
          stopTokenIds: [9],
          logprobs: true,
          seed: 7n,
        }),
      }),
      limits,
    );
    assert.deepEqual(full.sampling, { temperature: 0.5, topK: 0, topP: 0.9, seed: 7 });
    assert.equal(full.maxTokens, 4);
    assert.deepEqual(full.stop, ['\n']);
    assert.deepEqual(full.stopTokenIds, [9]);
    assert.equal(full.firstTokenId, 5);
  });

  it('request - each bad field is refused by name', () => {
    refuses(request({ promptTokenIds: [] }), /^prompt_token_ids is empty/);
    refuses(request({ promptTokenIds: Array(64).fill(1) }), /^prompt_token_ids holds 64 tokens/);
    refuses(request({ promptTokenIds: [1, 100] }), /^prompt_token_ids\[1\] is 100/);
    refuses(request({ requestId: 'bad id!' }), /^request_id: /);
    refuses(request({ firstTokenId: 100 }), /^first_token_id is 100/);
    refuses(
      request({ blockHashes: [Buffer.alloc(16)] }),
      /^block_hashes lists 1 blocks; the prompt has 0 full ones/,
    );
    refuses(
      request({ promptTokenIds: Array(20).fill(1), blockHashes: [Buffer.alloc(15)] }),
      /^block_hashes\[0\]: /,
    );
    refuses(request({ sampling: sampling({ topK: 1.5 }) }), /^sampling\.top_k/);
    refuses(request({ sampling: sampling({ topP: 2 }) }), /^sampling\.top_p/);
    refuses(request({ sampling: sampling({ seed: 1n << 32n }) }), /^sampling\.seed/);
    refuses(request({ sampling: sampling({ topLogprobs: 21 }) }), /^sampling\.top_logprobs/);
    // ignore_eos: no stop token at all, unless some are listed (they replace EOS either way).
    assert.deepEqual(
      parseDecodeRequest(request({ sampling: sampling({ ignoreEos: true }) }), limits).stopTokenIds,
      [],
    );
    assert.deepEqual(
      parseDecodeRequest(request({ sampling: sampling({ ignoreEos: true, stopTokenIds: [4] }) }), limits)
        .stopTokenIds,
      [4],
    );
    refuses(request({ sampling: sampling({ presencePenalty: -2.5 }) }), /^sampling\.presence_penalty/);
    refuses(
      request({ sampling: sampling({ stopTokenIds: Array(65).fill(1) }) }),
      /^sampling\.stop_token_ids lists 65/,
    );
    refuses(request({ sampling: sampling({ stop: Array(17).fill('x') }) }), /^sampling\.stop: at most 16/);
    refuses(request({ namespace: '\uD800' }), /^namespace: /);
    refuses(request({ codec: 99 as Codec }), /^codec: unknown codec value 99/);
    assert.throws(
      () => parseDecodeRequest(request({ codec: Codec.CODEC_KIVI2 }), limits),
      CodecMismatchError,
    );
    assert.throws(() => parseDecodeRequest(request({ model: 'other' }), limits), ModelMismatchError);
    assert.equal(
      parseDecodeRequest(request({ model: 'tiny', codec: Codec.CODEC_F32 }), limits).promptTokens.length,
      3,
    );
  });
});

// The prefill worker's pure core: which leading blocks are imported (never the block holding the
// last prompt token, never past the first missing one), which full blocks are written back,
// reused / computed token counts, request validation naming the proto field, and the bounded
// serial queue (order, one at a time, refusal when full).
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { Codec, PrefillRequest, SamplingParams } from '@kvmesh/protocol';

import {
  CodecMismatchError,
  ModelMismatchError,
  QueueFullError,
  SerialQueue,
  blocksToPut,
  parsePrefillRequest,
  planPrefill,
  prefillUsage,
  usablePrefix,
  type PrefillLimits,
} from '../src/core/index.ts';

const B = 16;
const held = (pattern: string): boolean[] => [...pattern].map((c) => c === '1');

describe('plan - imports and puts', () => {
  it('plan - a cold prompt imports nothing and puts every full block', () => {
    const plan = planPrefill({ promptTokens: 50, blockTokens: B, matchedBlocks: 0, held: held('000') });
    assert.equal(plan.fullBlocks, 3);
    assert.equal(plan.importBlocks, 0);
    assert.deepEqual(blocksToPut(plan, 0), [0, 1, 2]);
    assert.deepEqual(prefillUsage(plan, 0), { reusedTokens: 0, computedTokens: 50 });
  });

  it('plan - a block-aligned prompt fully held still computes its last block', () => {
    // 48 tokens = 3 full blocks; the last token is in block 2, so at most blocks 0 and 1 are imported.
    const plan = planPrefill({ promptTokens: 48, blockTokens: B, matchedBlocks: 3, held: held('111') });
    assert.equal(plan.importableBlocks, 2);
    assert.equal(plan.importBlocks, 2);
    assert.deepEqual(blocksToPut(plan, 2), []);
    assert.deepEqual(prefillUsage(plan, 2), { reusedTokens: 32, computedTokens: 16 });
  });

  it('plan - a held block past a gap is neither imported nor put again', () => {
    const plan = planPrefill({ promptTokens: 70, blockTokens: B, matchedBlocks: 1, held: held('1011') });
    assert.equal(plan.importBlocks, 1);
    assert.deepEqual(blocksToPut(plan, 1), [1]);
  });

  it('plan - a planned import whose fetch failed is recomputed and offered to the store', () => {
    const plan = planPrefill({ promptTokens: 70, blockTokens: B, matchedBlocks: 3, held: held('1110') });
    assert.equal(plan.importBlocks, 3);
    const imported = usablePrefix([true, false, true]);
    assert.equal(imported, 1);
    assert.deepEqual(blocksToPut(plan, imported), [1, 2, 3]);
    assert.deepEqual(prefillUsage(plan, imported), { reusedTokens: 16, computedTokens: 54 });
  });

  it('plan - a prompt shorter than a block has no full blocks', () => {
    const plan = planPrefill({ promptTokens: 5, blockTokens: B, matchedBlocks: 0, held: [] });
    assert.equal(plan.fullBlocks, 0);
    assert.deepEqual(blocksToPut(plan, 0), []);
  });

  it('plan - inconsistent inputs are refused', () => {
    assert.throws(() => planPrefill({ promptTokens: 0, blockTokens: B, matchedBlocks: 0, held: [] }));
    assert.throws(() => planPrefill({ promptTokens: 40, blockTokens: B, matchedBlocks: 0, held: held('0') }));
    assert.throws(() =>
      planPrefill({ promptTokens: 40, blockTokens: B, matchedBlocks: 3, held: held('11') }),
    );
  });

  it('plan - usablePrefix stops at the first failure', () => {
    assert.equal(usablePrefix([]), 0);
    assert.equal(usablePrefix([true, true]), 2);
    assert.equal(usablePrefix([false, true]), 0);
  });
});

describe('request - validation names the field', () => {
  const limits: PrefillLimits = { modelName: 'tiny', vocabSize: 100, maxContextTokens: 64, codec: 'f32' };
  const request = (overrides: Partial<PrefillRequest> = {}): PrefillRequest =>
    PrefillRequest.fromPartial({ promptTokenIds: [1, 2, 3], ...overrides });
  const rejects = (req: PrefillRequest, code: string, pattern: RegExp): void =>
    assert.throws(
      () => parsePrefillRequest(req, limits),
      (err: Error & { code?: string }) => err.code === code && pattern.test(err.message),
    );

  it('request - a plain request parses to greedy sampling', () => {
    const input = parsePrefillRequest(request({ codec: Codec.CODEC_F32, model: 'tiny' }), limits);
    assert.deepEqual(input.promptTokens, [1, 2, 3]);
    assert.deepEqual(input.sampling, { temperature: 0, topK: 0, topP: 1 });
    assert.equal(input.requestId, undefined);
  });

  it('request - empty, too long and out-of-vocabulary prompts are INVALID_ARGUMENT', () => {
    rejects(request({ promptTokenIds: [] }), 'INVALID_ARGUMENT', /^prompt_token_ids is empty/);
    rejects(
      request({ promptTokenIds: Array.from({ length: 64 }, () => 1) }),
      'INVALID_ARGUMENT',
      /^prompt_token_ids holds 64 tokens/,
    );
    rejects(request({ promptTokenIds: [1, 100] }), 'INVALID_ARGUMENT', /^prompt_token_ids\[1\] is 100/);
  });

  it('request - another codec is FAILED_PRECONDITION, an unknown one INVALID_ARGUMENT', () => {
    assert.throws(
      () => parsePrefillRequest(request({ codec: Codec.CODEC_KIVI4 }), limits),
      CodecMismatchError,
    );
    rejects(request({ codec: 42 as Codec }), 'INVALID_ARGUMENT', /^codec: unknown/);
  });

  it('request - another model, a bad request id, namespace or sampling are refused', () => {
    assert.throws(() => parsePrefillRequest(request({ model: 'big' }), limits), ModelMismatchError);
    rejects(request({ requestId: 'has space' }), 'INVALID_ARGUMENT', /^request_id:/);
    rejects(request({ namespace: 'x'.repeat(300) }), 'INVALID_ARGUMENT', /^namespace:/);
    rejects(request({ namespace: '\ud800' }), 'INVALID_ARGUMENT', /^namespace:/);
    const greedy = SamplingParams.fromPartial({ topP: 1, maxTokens: 1 });
    rejects(
      request({ sampling: { ...greedy, temperature: -1 } }),
      'INVALID_ARGUMENT',
      /^sampling\.temperature/,
    );
    rejects(
      request({ sampling: { ...greedy, temperature: 1, seed: 1n << 40n } }),
      'INVALID_ARGUMENT',
      /^sampling\.seed/,
    );
    for (const [name, bad] of [
      ['presence_penalty', { presencePenalty: 2.5 }],
      ['frequency_penalty', { frequencyPenalty: Number.NaN }],
      ['repetition_penalty', { repetitionPenalty: -1 }],
    ] as const)
      rejects(
        request({ sampling: { ...greedy, ...bad } }),
        'INVALID_ARGUMENT',
        new RegExp(`^sampling\\.${name}`),
      );
    // Penalties in range reach the engine; 0 on the wire is "off" for the repetition penalty.
    const parsed = parsePrefillRequest(
      request({ sampling: { ...greedy, presencePenalty: -1, repetitionPenalty: 1.2 } }),
      limits,
    );
    assert.deepEqual(parsed.sampling, {
      temperature: 0,
      topK: 0,
      topP: 1,
      presencePenalty: -1,
      repetitionPenalty: 1.2,
    });
    assert.deepEqual(parsePrefillRequest(request({ sampling: greedy }), limits).sampling, {
      temperature: 0,
      topK: 0,
      topP: 1,
    });
  });
});

describe('queue - serial and bounded', () => {
  it('queue - runs tasks one at a time in arrival order', async () => {
    const queue = new SerialQueue(4);
    const log: string[] = [];
    let release: () => void = () => undefined;
    const gate = new Promise<void>((resolve) => (release = resolve));
    const first = queue.run(async () => {
      log.push('a start');
      await gate;
      log.push('a end');
      return 'a';
    });
    const second = queue.run(() => {
      log.push('b');
      return 'b';
    });
    const third = queue.run(() => {
      log.push('c');
      return 'c';
    });
    await Promise.resolve();
    assert.equal(queue.active, 1);
    assert.equal(queue.waiting, 2);
    release();
    assert.deepEqual(await Promise.all([first, second, third]), ['a', 'b', 'c']);
    assert.deepEqual(log, ['a start', 'a end', 'b', 'c']);
    assert.equal(queue.active, 0);
    assert.equal(queue.waiting, 0);
  });

  it('queue - refuses with QueueFullError beyond the bound and recovers after', async () => {
    const queue = new SerialQueue(1);
    let release: () => void = () => undefined;
    const gate = new Promise<void>((resolve) => (release = resolve));
    const running = queue.run(() => gate);
    const waiting = queue.run(() => 'second');
    await assert.rejects(
      queue.run(() => 'third'),
      QueueFullError,
    );
    release();
    await running;
    assert.equal(await waiting, 'second');
    assert.equal(await queue.run(() => 'later'), 'later');
  });

  it('queue - a failing task does not stall the ones behind it', async () => {
    const queue = new SerialQueue(2);
    const failing = queue.run(() => Promise.reject(new Error('boom')));
    const next = queue.run(() => 'ok');
    await assert.rejects(failing, /boom/);
    assert.equal(await next, 'ok');
  });
});

// End to end through the router's OpenAI-compatible HTTP API with plain fetch: a real nats-server,
// two kvstore nodes as child processes (R = 2), a tiny generated model, one prefill and two decode
// worker and the router in-process. A greedy completion through the mesh equals an in-process
// engine's continuation (f32); a streamed chat completion is SSE ending with [DONE]; a request that
// shares a long prefix with an earlier one reports cached tokens; bad requests get OpenAI error bodies.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';

import { decodeConfig, startDecodeWorker, type DecodeWorker } from '@kvmesh/decode';
import {
  Engine,
  NO_PROGRESS,
  TextStream,
  generateModel,
  loadModel,
  type LoadedModel,
  type SamplingOptions,
} from '@kvmesh/engine';
import { prefillConfig, startPrefillWorker, type PrefillWorker } from '@kvmesh/prefill';
import { createLogger } from '@kvmesh/runtime';
import {
  spawnKvStoreNodes,
  startNatsServer,
  waitFor,
  type NatsServerHandle,
  type ServiceHandle,
} from '@kvmesh/test-harness';

import { routerConfig } from '../src/config.ts';
import { createAdmission, startHttpServer, type GenerationBackend } from '../src/http.ts';
import { startRouter, type Router } from '../src/router.ts';

const B = 16;
const TOKEN = 'router-test-token';
const HEARTBEAT_MS = 100;
const MISSED_HEARTBEATS_MAX = 5;

interface Usage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
  prompt_tokens_details: { cached_tokens: number };
}
interface CompletionBody {
  object: string;
  model: string;
  choices: { text: string; finish_reason: string }[];
  usage: Usage;
}
interface ErrorBody {
  error: { message: string; type: string; param: string | null; code: string | null };
}

describe('router - OpenAI HTTP API over prefill and decode workers and a 2-node kvstore', () => {
  let dir = '';
  let model: LoadedModel;
  let nats: NatsServerHandle;
  const kvNodes: ServiceHandle[] = [];
  let prefill: PrefillWorker;
  let decode: DecodeWorker;
  let decode1: DecodeWorker;
  let router: Router;
  let base = '';

  const post = (path: string, body: unknown): Promise<Response> =>
    fetch(`${base}${path}`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: typeof body === 'string' ? body : JSON.stringify(body),
    });

  /** The JSON events of an SSE response (the [DONE] line left out). */
  const sseEvents = async <T>(res: Response): Promise<T[]> =>
    (await res.text())
      .split('\n\n')
      .filter((e) => e.startsWith('data: {'))
      .map((e) => JSON.parse(e.slice(6)) as T);

  /** The tokens and their logprobs a fresh in-process engine generates greedily from `prompt`. */
  const referenceTokens = (
    prompt: string,
    maxTokens: number,
    penalties: Pick<SamplingOptions, 'presencePenalty' | 'frequencyPenalty' | 'repetitionPenalty'> = {},
  ): { ids: number[]; logprobs: number[]; top: number[][] } => {
    const tokens = model.tokenizer.encode(prompt, { addSpecialTokens: true });
    const engine = new Engine(model, { codec: 'f32', blockTokens: B });
    const sampling = { temperature: 0, topK: 0, topP: 1, ...penalties };
    const id = engine.addSequence({ promptTokens: tokens, maxTokens, sampling, topLogprobs: 3 });
    const out = { ids: [] as number[], logprobs: [] as number[], top: [] as number[][] };
    for (;;) {
      const event = engine.step().find((e) => e.sequenceId === id);
      assert.ok(event?.top);
      out.ids.push(event.token);
      out.logprobs.push(event.logprob);
      out.top.push(event.top.tokenIds);
      if (event.finishReason != null) return out;
    }
  };

  /** The text a fresh in-process engine generates greedily from `prompt` (model EOS, f32). */
  const reference = (prompt: string, maxTokens: number): string => {
    const tokens = model.tokenizer.encode(prompt, { addSpecialTokens: true });
    const engine = new Engine(model, { codec: 'f32', blockTokens: B });
    // NOTE: the engine's default sampling is greedy.
    const id = engine.addSequence({ promptTokens: tokens, maxTokens });
    const stream = new TextStream(model.tokenizer);
    let text = '';
    for (;;) {
      const event = engine.step().find((e) => e.sequenceId === id);
      assert.ok(event);
      text += stream.push(event.token).text;
      if (event.finishReason != null) return text + stream.finish();
    }
  };

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'kvmesh-router-'));
    const modelDir = join(dir, 'tiny');
    generateModel({ outDir: modelDir, preset: 'tiny', seed: 5, progress: NO_PROGRESS });
    model = loadModel(modelDir);
    nats = await startNatsServer({ jetstream: true });
    kvNodes.push(
      ...(await spawnKvStoreNodes({
        natsUrl: nats.url,
        nodeIds: ['kv-a', 'kv-b'],
        heartbeatIntervalMs: HEARTBEAT_MS,
        missedHeartbeatsMax: MISSED_HEARTBEATS_MAX,
        dataToken: TOKEN,
      })),
    );
    const store = {
      modelDir,
      blockTokens: B,
      codec: 'f32',
      natsUrl: nats.url,
      replicas: 2,
      dataToken: TOKEN,
      storeNodesMin: 2,
      storeHeartbeatIntervalMs: HEARTBEAT_MS,
      storeMissedHeartbeatsMax: MISSED_HEARTBEATS_MAX,
      heartbeatIntervalMs: HEARTBEAT_MS,
    };
    const quiet = (service: string) => createLogger({ service, level: 'error' });
    [prefill, decode, decode1] = await Promise.all([
      startPrefillWorker(prefillConfig({ ...store, nodeId: 'prefill-0' }), {
        model,
        logger: quiet('prefill'),
      }),
      startDecodeWorker(decodeConfig({ ...store, nodeId: 'decode-0' }), { model, logger: quiet('decode') }),
      startDecodeWorker(decodeConfig({ ...store, nodeId: 'decode-1' }), { model, logger: quiet('decode') }),
    ]);
    router = await startRouter(
      routerConfig({
        modelDir,
        httpPort: 0,
        natsUrl: nats.url,
        policy: 'kv-aware',
        blockTokens: B,
        codec: 'f32',
        prefillUncachedTokensMin: 2 * B,
        workerHeartbeatIntervalMs: HEARTBEAT_MS,
        workerMissedHeartbeatsMax: MISSED_HEARTBEATS_MAX,
      }),
      { model, logger: quiet('router') },
    );
    base = `http://${router.httpAddress}`;
    await waitFor(
      () => {
        const live = router.stats().liveWorkers;
        return live.prefill === 1 && live.decode === 2 && live.kvstore === 2;
      },
      { timeoutMs: 10_000, message: 'the router sees both workers and both kvstore nodes' },
    );
    // The nodes refuse puts until each sees the other, and a prefill fails until then: warm up with
    // a prompt long enough to be prefilled, unrelated to the tests' prompts.
    const warmup = 'warm up the store '.repeat(8);
    await waitFor(
      async () =>
        (await post('/v1/completions', { model: model.name, prompt: warmup, max_tokens: 1 })).status === 200,
      { timeoutMs: 15_000, message: 'a prefilled completion through the router' },
    );
  });

  after(async () => {
    await router?.close();
    await prefill?.close();
    await decode?.close();
    await decode1?.close();
    for (const node of kvNodes) await node.stop();
    await nats?.stop();
    if (dir !== '') rmSync(dir, { recursive: true, force: true });
  });

  it('router - /v1/models lists the served model and /health is ok', async () => {
    const res = await fetch(`${base}/v1/models`);
    assert.equal(res.status, 200);
    const body = (await res.json()) as { object: string; data: { id: string; object: string }[] };
    assert.equal(body.object, 'list');
    assert.deepEqual(
      body.data.map((m) => [m.id, m.object]),
      [[model.name, 'model']],
    );
    assert.equal((await fetch(`${base}/health`)).status, 200);
  });

  it('router - a greedy completion equals an in-process engine continuation (f32)', async () => {
    const prompt = 'The mesh computes every prefix once';
    const res = await post('/v1/completions', { model: model.name, prompt, max_tokens: 12, temperature: 0 });
    assert.equal(res.status, 200);
    const body = (await res.json()) as CompletionBody;
    assert.equal(body.object, 'text_completion');
    assert.equal(body.choices.length, 1);
    assert.equal(body.choices[0]?.text, reference(prompt, 12));
    const promptTokens = model.tokenizer.encode(prompt, { addSpecialTokens: true }).length;
    assert.equal(body.usage.prompt_tokens, promptTokens);
    assert.equal(body.usage.total_tokens, promptTokens + body.usage.completion_tokens);
  });

  it('router - a streamed chat completion is SSE chunks ending with [DONE]', async () => {
    const res = await post('/v1/chat/completions', {
      model: model.name,
      messages: [{ role: 'user', content: 'hello there' }],
      max_tokens: 6,
      temperature: 0,
      stream: true,
      stream_options: { include_usage: true },
    });
    assert.equal(res.status, 200);
    assert.match(res.headers.get('content-type') ?? '', /^text\/event-stream/);
    const events = (await res.text()).split('\n\n').filter((e) => e !== '');
    assert.ok(events.every((e) => e.startsWith('data: ')));
    assert.equal(events.at(-1), 'data: [DONE]');
    const chunks = events.slice(0, -1).map(
      (e) =>
        JSON.parse(e.slice('data: '.length)) as {
          object: string;
          choices: { delta: { role?: string; content?: string }; finish_reason: string | null }[];
          usage?: Usage;
        },
    );
    assert.ok(chunks.length >= 2);
    assert.ok(chunks.every((c) => c.object === 'chat.completion.chunk'));
    assert.equal(chunks[0]?.choices[0]?.delta.role, 'assistant');
    const withChoice = chunks.filter((c) => c.choices.length > 0);
    assert.ok(withChoice.at(-1)?.choices[0]?.finish_reason !== null);
    assert.equal(chunks.at(-1)?.usage?.completion_tokens, withChoice.length);
  });

  it('router - a second request sharing a long prefix reports cached tokens', async () => {
    const prefix = 'Shared system prompt: answer briefly and precisely. '.repeat(4);
    const ask = async (question: string): Promise<Usage> => {
      const res = await post('/v1/completions', {
        model: model.name,
        prompt: prefix + question,
        max_tokens: 2,
        temperature: 0,
      });
      assert.equal(res.status, 200);
      return ((await res.json()) as CompletionBody).usage;
    };
    const first = await ask('What is a block?');
    assert.ok(first.prompt_tokens >= 4 * B, `prompt has ${first.prompt_tokens} tokens`);
    assert.equal(first.prompt_tokens_details.cached_tokens, 0);
    const second = await ask('Where do blocks live?');
    assert.ok(second.prompt_tokens_details.cached_tokens >= 2 * B, JSON.stringify(second));
    assert.equal(second.prompt_tokens_details.cached_tokens % B, 0);
    assert.ok(router.stats().plans['prefill-then-decode'] >= 2, 'the warm-up and the first were prefilled');
  });

  it('router - kv-aware sends the next turn to the decode worker whose local cache holds the conversation', async () => {
    const workers = { 'decode-0': decode, 'decode-1': decode1 } as const;
    const seqOf = (id: keyof typeof workers): bigint => router.stats().indexSeqs[id] ?? 0n;
    const served = (before: Record<string, number>): keyof typeof workers => {
      const grew = (Object.keys(workers) as (keyof typeof workers)[]).filter(
        (id) => workers[id].stats().requests > (before[id] ?? 0),
      );
      assert.equal(grew.length, 1, `one decode worker served the request, got ${grew.join(',')}`);
      return grew[0] as keyof typeof workers;
    };
    const requestsNow = (): Record<string, number> => ({
      'decode-0': decode.stats().requests,
      'decode-1': decode1.stats().requests,
    });
    const prompt = 'A conversation that continues on the worker that holds it. '.repeat(3);
    const tokens = model.tokenizer.encode(prompt, { addSpecialTokens: true });
    let before = requestsNow();
    const seqsBefore = { 'decode-0': seqOf('decode-0'), 'decode-1': seqOf('decode-1') };
    const res = await post('/v1/completions', {
      model: model.name,
      prompt: tokens,
      max_tokens: 20,
      temperature: 0,
    });
    assert.equal(res.status, 200);
    const first = served(before);
    assert.ok(workers[first].stats().localCacheBlocks > 0, 'the decode worker cached the finished sequence');
    // The worker's cache event reaches the router's index through JetStream.
    await waitFor(() => seqOf(first) > seqsBefore[first], {
      timeoutMs: 10_000,
      message: "the router's index applies the worker's cache event",
    });
    const output = model.tokenizer.encode(((await res.json()) as CompletionBody).choices[0]?.text ?? '', {
      addSpecialTokens: false,
    });
    const turn = [...tokens, ...output, ...model.tokenizer.encode(' And then?', { addSpecialTokens: false })];
    before = requestsNow();
    const localBefore = workers[first].stats().localCachedTokens;
    const next = await post('/v1/completions', {
      model: model.name,
      prompt: turn,
      max_tokens: 4,
      temperature: 0,
    });
    assert.equal(next.status, 200);
    assert.equal(served(before), first, 'the next turn goes where its prefix is cached');
    assert.ok(workers[first].stats().localCachedTokens > localBefore, 'served from the local cache');
  });

  it('router - a client that disconnects mid-stream has its sequence cancelled and freed', async () => {
    const cancelled = (): number => decode.stats().cancelled + decode1.stats().cancelled;
    const before = cancelled();
    const controller = new AbortController();
    const res = await fetch(`${base}/v1/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({
        model: model.name,
        prompt: 'Keep talking for a long while about caches.',
        max_tokens: 1500,
        temperature: 0,
        stream: true,
        stop: ['\u0000'],
      }),
      signal: controller.signal,
    });
    assert.equal(res.status, 200);
    const reader = (res.body as ReadableStream<Uint8Array>).getReader();
    let events = 0;
    while (events < 3) {
      const { done, value } = await reader.read();
      if (done) break;
      events += new TextDecoder()
        .decode(value)
        .split('\n\n')
        .filter((e) => e.startsWith('data: ')).length;
    }
    controller.abort();
    await waitFor(() => cancelled() > before, {
      timeoutMs: 10_000,
      message: 'the decode worker cancels the sequence of the gone client',
    });
    await waitFor(() => decode.stats().active + decode1.stats().active === 0, {
      timeoutMs: 10_000,
      message: 'no sequence is left running',
    });
  });

  it('router - logprobs: a greedy completion reports the engine’s own; chat reports one per token, streamed too', async () => {
    const prompt = 'Report the logprob of every token';
    const res = await post('/v1/completions', {
      model: model.name,
      prompt,
      max_tokens: 8,
      temperature: 0,
      logprobs: 0,
    });
    assert.equal(res.status, 200);
    const body = (await res.json()) as {
      choices: {
        text: string;
        logprobs: {
          tokens: string[];
          token_logprobs: number[];
          top_logprobs: Record<string, number>[];
          text_offset: number[];
        };
      }[];
    };
    const lp = body.choices[0]?.logprobs;
    assert.ok(lp);
    const expected = referenceTokens(prompt, 8);
    assert.deepEqual(
      lp.tokens,
      expected.ids.map((id) => model.tokenizer.decode([id])),
    );
    assert.equal(lp.token_logprobs.length, expected.logprobs.length);
    lp.token_logprobs.forEach((p, i) =>
      assert.ok(Math.abs(p - (expected.logprobs[i] as number)) < 1e-4, `token ${i}: ${p}`),
    );
    assert.deepEqual(
      lp.top_logprobs,
      lp.tokens.map((t, i) => ({ [t]: lp.token_logprobs[i] })),
    );
    assert.deepEqual(
      lp.text_offset,
      lp.tokens.map((_, i) => lp.tokens.slice(0, i).join('').length),
    );

    const chat = {
      model: model.name,
      messages: [{ role: 'user', content: 'logprobs please' }],
      max_tokens: 6,
    };
    const whole = await post('/v1/chat/completions', { ...chat, logprobs: true });
    assert.equal(whole.status, 200);
    const chatBody = (await whole.json()) as {
      choices: { logprobs: { content: { token: string; logprob: number; bytes: number[] }[] } }[];
      usage: Usage;
    };
    const content = chatBody.choices[0]?.logprobs.content ?? [];
    assert.equal(content.length, chatBody.usage.completion_tokens);
    for (const entry of content) {
      assert.ok(Number.isFinite(entry.logprob) && entry.logprob <= 0, JSON.stringify(entry));
      assert.deepEqual(entry.bytes, [...Buffer.from(entry.token, 'utf8')]);
    }
    const streamed = await post('/v1/chat/completions', {
      ...chat,
      logprobs: true,
      stream: true,
      stream_options: { include_usage: true },
    });
    const events = await sseEvents<{ choices: { logprobs: { content: unknown[] } }[]; usage?: Usage }>(
      streamed,
    );
    const perChunk = events.flatMap((e) => e.choices.map((c) => c.logprobs.content.length));
    assert.equal(
      perChunk.reduce((a, b) => a + b, 0),
      events.at(-1)?.usage?.completion_tokens,
    );
    // Alternatives: completions list the 3 most likely tokens (and the chosen one) per position,
    // those the engine lists; chat lists top_logprobs most likely first.
    const withTop = (await (
      await post('/v1/completions', { model: model.name, prompt, max_tokens: 8, temperature: 0, logprobs: 3 })
    ).json()) as { choices: { logprobs: { tokens: string[]; top_logprobs: Record<string, number>[] } }[] };
    const tops = withTop.choices[0]?.logprobs.top_logprobs ?? [];
    assert.equal(tops.length, expected.ids.length);
    tops.forEach((top, i) =>
      assert.deepEqual(
        new Set(Object.keys(top)),
        new Set((expected.top[i] as number[]).map((id) => model.tokenizer.decode([id]))),
        `position ${i}`,
      ),
    );
    const chatTop = (await (
      await post('/v1/chat/completions', { ...chat, logprobs: true, top_logprobs: 2 })
    ).json()) as {
      choices: {
        logprobs: { content: { token: string; logprob: number; top_logprobs: { logprob: number }[] }[] };
      }[];
    };
    for (const entry of chatTop.choices[0]?.logprobs.content ?? []) {
      assert.equal(entry.top_logprobs.length, 2);
      assert.ok((entry.top_logprobs[0]?.logprob as number) >= (entry.top_logprobs[1]?.logprob as number));
    }
    const tooMany = await post('/v1/chat/completions', { ...chat, logprobs: true, top_logprobs: 21 });
    assert.equal(tooMany.status, 400);
    assert.equal(((await tooMany.json()) as ErrorBody).error.param, 'top_logprobs');
    const noLogprobs = await post('/v1/chat/completions', { ...chat, top_logprobs: 2 });
    assert.equal(((await noLogprobs.json()) as ErrorBody).error.param, 'top_logprobs');

    // Not asked: null, as before.
    const plain = (await (await post('/v1/chat/completions', chat)).json()) as {
      choices: { logprobs: unknown }[];
    };
    assert.equal(plain.choices[0]?.logprobs, null);
  });

  it('router - penalized greedy output equals the engine’s, prefilled on a prefill worker or not', async () => {
    const penalties = { presencePenalty: -1, frequencyPenalty: 0.5, repetitionPenalty: 0.5 };
    const short = 'Penalties on a short prompt';
    const long = 'A prompt long enough for the prefill worker to compute, with penalties. '.repeat(3);
    for (const prompt of [short, long]) {
      const res = await post('/v1/completions', {
        model: model.name,
        prompt,
        max_tokens: 10,
        temperature: 0,
        presence_penalty: penalties.presencePenalty,
        frequency_penalty: penalties.frequencyPenalty,
        repetition_penalty: penalties.repetitionPenalty,
        logprobs: 0,
      });
      assert.equal(res.status, 200);
      const body = (await res.json()) as { choices: { logprobs: { tokens: string[] } }[] };
      const expected = referenceTokens(prompt, 10, penalties);
      assert.deepEqual(
        body.choices[0]?.logprobs.tokens,
        expected.ids.map((id) => model.tokenizer.decode([id])),
        prompt,
      );
      assert.notDeepEqual(expected.ids, referenceTokens(prompt, 10).ids, 'the penalties change the output');
    }
    // A +100 bias makes greedy take that token every time, prefilled or not; -100 bans the one it took.
    for (const prompt of [short, long]) {
      const forced = 77;
      const res = await post('/v1/completions', {
        model: model.name,
        prompt,
        max_tokens: 5,
        temperature: 0,
        logit_bias: { [forced]: 100 },
        logprobs: 0,
      });
      const body = (await res.json()) as { choices: { logprobs: { tokens: string[] } }[] };
      assert.deepEqual(
        body.choices[0]?.logprobs.tokens,
        Array(5).fill(model.tokenizer.decode([forced])),
        prompt,
      );
      const plain = referenceTokens(prompt, 1).ids[0] as number;
      const banned = (await (
        await post('/v1/completions', {
          model: model.name,
          prompt,
          max_tokens: 1,
          temperature: 0,
          logit_bias: { [plain]: -100 },
          logprobs: 0,
        })
      ).json()) as { choices: { logprobs: { tokens: string[] } }[] };
      assert.notEqual(banned.choices[0]?.logprobs.tokens[0], model.tokenizer.decode([plain]));
    }
    for (const bad of [{ '-1': 5 }, { '99999': 5 }, { '3': 101 }, { x: 1 }]) {
      const res = await post('/v1/completions', { model: model.name, prompt: short, logit_bias: bad });
      assert.equal(res.status, 400, JSON.stringify(bad));
      assert.equal(((await res.json()) as ErrorBody).error.param, 'logit_bias');
    }
    const outOfRange = await post('/v1/completions', {
      model: model.name,
      prompt: short,
      presence_penalty: 3,
    });
    assert.equal(outOfRange.status, 400);
    assert.equal(((await outOfRange.json()) as ErrorBody).error.param, 'presence_penalty');
  });

  it('router - n choices: each its own seeded sequence, the prompt counted once, streamed by index', async () => {
    const prompt = 'Three different continuations of one prompt';
    const ask = async (body: Record<string, unknown>) => {
      const res = await post('/v1/completions', { model: model.name, prompt, max_tokens: 6, ...body });
      assert.equal(res.status, 200);
      return (await res.json()) as {
        choices: { index: number; text: string; logprobs: { tokens: string[] } }[];
        usage: Usage;
      };
    };
    const sampled = { temperature: 1, seed: 11, logprobs: 0 };
    const three = await ask({ ...sampled, n: 3 });
    assert.deepEqual(
      three.choices.map((c) => c.index),
      [0, 1, 2],
    );
    // Choice i is the request with seed 11 + i on its own: same tokens.
    for (const choice of three.choices) {
      const alone = await ask({ ...sampled, seed: 11 + choice.index });
      assert.deepEqual(choice.logprobs.tokens, alone.choices[0]?.logprobs.tokens, `choice ${choice.index}`);
    }
    assert.equal(new Set(three.choices.map((c) => c.logprobs.tokens.join('|'))).size, 3, 'seeds differ');
    const tokens = three.choices.reduce((sum, c) => sum + c.logprobs.tokens.length, 0);
    assert.equal(three.usage.completion_tokens, tokens);
    assert.equal(
      three.usage.prompt_tokens,
      model.tokenizer.encode(prompt, { addSpecialTokens: true }).length,
      'the prompt is counted once',
    );

    const streamed = await post('/v1/chat/completions', {
      model: model.name,
      messages: [{ role: 'user', content: 'two streamed choices' }],
      max_tokens: 5,
      n: 2,
      stream: true,
      stream_options: { include_usage: true },
    });
    const events = await sseEvents<{
      choices: { index: number; delta: { role?: string }; finish_reason: string | null }[];
      usage?: Usage | null;
    }>(streamed);
    for (const index of [0, 1]) {
      const mine = events.flatMap((e) => e.choices.filter((c) => c.index === index));
      assert.equal(mine[0]?.delta.role, 'assistant', `choice ${index} opens with the role`);
      assert.equal(mine.filter((c) => c.delta.role !== undefined).length, 1);
      assert.ok(mine.at(-1)?.finish_reason, `choice ${index} finishes`);
    }
    assert.equal(events.at(-1)?.usage?.completion_tokens, 10);

    const tooMany = await post('/v1/completions', { model: model.name, prompt, n: 17 });
    assert.equal(tooMany.status, 400);
    assert.equal(((await tooMany.json()) as ErrorBody).error.param, 'n');
  });

  it('router - stop_token_ids add to the model’s EOS; ignore_eos runs to max_tokens', async () => {
    const prompt = 'Where does this generation stop';
    type Body = { choices: { finish_reason: string; logprobs: { tokens: string[] } }[]; usage: Usage };
    const complete = async (extra: Record<string, unknown>): Promise<Body> => {
      const res = await post('/v1/completions', {
        model: model.name,
        prompt,
        max_tokens: 5,
        temperature: 0,
        logprobs: 0,
        ...extra,
      });
      assert.equal(res.status, 200, JSON.stringify(extra));
      return (await res.json()) as Body;
    };
    const eos = model.config.eosTokenIds[0] as number;
    // EOS made certain by a bias: it ends the generation at once, unless ignore_eos.
    const atEos = await complete({ logit_bias: { [eos]: 100 } });
    assert.deepEqual([atEos.usage.completion_tokens, atEos.choices[0]?.finish_reason], [1, 'stop']);
    const pastEos = await complete({ logit_bias: { [eos]: 100 }, ignore_eos: true });
    assert.deepEqual([pastEos.usage.completion_tokens, pastEos.choices[0]?.finish_reason], [5, 'length']);
    // A stop token id ends it at that token, and EOS still would (it is added, not replaced).
    const third = referenceTokens(prompt, 5).ids[2] as number;
    const early = await complete({ stop_token_ids: [third] });
    assert.equal(early.choices[0]?.finish_reason, 'stop');
    assert.equal(early.choices[0]?.logprobs.tokens.at(-1), model.tokenizer.decode([third]));
    const both = await complete({ stop_token_ids: [third], logit_bias: { [eos]: 100 } });
    assert.equal(both.usage.completion_tokens, 1);
    for (const bad of [{ stop_token_ids: [-1] }, { stop_token_ids: [1 << 20] }, { ignore_eos: 'yes' }]) {
      const res = await post('/v1/completions', { model: model.name, prompt, ...bad });
      assert.equal(res.status, 400, JSON.stringify(bad));
      assert.equal(((await res.json()) as ErrorBody).error.param, Object.keys(bad)[0]);
    }
  });

  it('router - parameters it does not implement are refused unless at their defaults', async () => {
    const refused = async (path: string, body: Record<string, unknown>, param: string): Promise<void> => {
      const res = await post(path, { model: model.name, max_tokens: 2, ...body });
      assert.equal(res.status, 400, param);
      const error = ((await res.json()) as ErrorBody).error;
      assert.equal(error.param, param);
      assert.equal(error.code, 'unsupported_parameter');
    };
    const messages = [{ role: 'user', content: 'hi' }];
    await refused('/v1/completions', { prompt: 'hi', echo: true }, 'echo');
    await refused(
      '/v1/chat/completions',
      { messages, response_format: { type: 'json_object' } },
      'response_format',
    );
    const defaults = await post('/v1/chat/completions', {
      model: model.name,
      messages,
      max_tokens: 2,
      presence_penalty: 0,
      frequency_penalty: 0,
      logit_bias: {},
      response_format: { type: 'text' },
      top_logprobs: 0,
    });
    assert.equal(defaults.status, 200);
  });

  it('router - bad requests get OpenAI error bodies', async () => {
    const expectError = async (res: Response, status: number, param: string | null): Promise<ErrorBody> => {
      assert.equal(res.status, status);
      const body = (await res.json()) as ErrorBody;
      assert.equal(typeof body.error.message, 'string');
      assert.equal(typeof body.error.type, 'string');
      assert.equal(body.error.param, param);
      return body;
    };
    const malformed = await expectError(await post('/v1/completions', '{"model": '), 400, null);
    assert.equal(malformed.error.code, 'invalid_json');
    const unknown = await expectError(
      await post('/v1/completions', { model: 'nope', prompt: 'hi' }),
      404,
      'model',
    );
    assert.equal(unknown.error.code, 'model_not_found');
    await expectError(
      await post('/v1/completions', { model: model.name, prompt: 'hi', max_tokens: 0 }),
      400,
      'max_tokens',
    );
    const long = await expectError(
      await post('/v1/completions', {
        model: model.name,
        prompt: Array.from({ length: model.config.maxContextTokens }, () => 5),
      }),
      400,
      'prompt',
    );
    assert.equal(long.error.code, 'context_length_exceeded');
  });
});

/** One token per character code: what the scripted backends below tokenize with. */
const CHAR_TOKENIZER: GenerationBackend['tokenizer'] = {
  encode: (text) => [...text].map((c) => c.charCodeAt(0)),
  decode: (ids) => String.fromCharCode(...ids),
  applyChatTemplate: () => 'chat',
};

describe('router - HTTP edge limits', () => {
  it('router - n takes one admission slot per choice, and a failing choice ends its siblings', async () => {
    const signals: AbortSignal[] = [];
    const failing: GenerationBackend = {
      modelName: 'fake',
      maxContextTokens: 64,
      blockTokens: 16,
      tokenizer: CHAR_TOKENIZER,
      async *generate(input) {
        signals.push(input.signal);
        yield { text: 'a', tokenIds: [97], finishReason: null };
        // The second choice fails after its first chunk; the others would run until aborted.
        if (input.requestId.endsWith('-1')) throw new Error('worker lost');
        await new Promise<void>((resolve) => input.signal.addEventListener('abort', () => resolve()));
      },
      health: () => ({ ok: true }),
    };
    const admission = createAdmission(3);
    const server = await startHttpServer(failing, {
      admission,
      host: '127.0.0.1',
      port: 0,
      requestBytesMax: 1024,
      requestsInFlightMax: 3,
      maxTokensDefault: 4,
      maxTokensMax: 16,
      apiKey: '',
      logger: createLogger({ service: 'router', level: 'error' }),
    });
    try {
      const url = `http://127.0.0.1:${server.port}/v1/completions`;
      const ask = (body: Record<string, unknown>): Promise<Response> =>
        fetch(url, { method: 'POST', body: JSON.stringify({ model: 'fake', prompt: 'hi', ...body }) });
      const never = await ask({ n: 4 });
      assert.equal(never.status, 400, 'four choices never fit three slots');
      assert.equal(((await never.json()) as ErrorBody).error.param, 'n');
      // One slot held by a stream: three more choices do not fit now.
      const held = await ask({ stream: true });
      assert.equal(held.status, 200);
      const refused = await ask({ n: 3 });
      assert.equal(refused.status, 429);
      assert.match(((await refused.json()) as ErrorBody).error.message, /asks 3/);
      await held.body?.cancel();
      await waitFor(() => admission.inFlight === 0, { message: 'the held stream gave its slot back' });
      signals.length = 0;
      const failed = await ask({ n: 3 });
      assert.equal(failed.status, 500);
      assert.equal(signals.length, 3);
      assert.ok(
        signals.every((signal) => signal.aborted),
        'every sibling was cancelled',
      );
      // The slots came back: a streamed request with n = 3 starts, then ends with an error event.
      const stream = await ask({ n: 3, stream: true });
      assert.equal(stream.status, 200);
      const text = await stream.text();
      assert.match(text, /"error"/);
      assert.ok(text.trimEnd().endsWith('data: [DONE]'));
      assert.ok(signals.slice(3).every((signal) => signal.aborted));
    } finally {
      await server.close(100);
    }
  });

  const backend: GenerationBackend = {
    modelName: 'fake',
    maxContextTokens: 64,
    blockTokens: 16,
    tokenizer: CHAR_TOKENIZER,
    async *generate() {
      await Promise.resolve();
      yield {
        text: 'ok',
        tokenIds: [1],
        finishReason: 'stop',
        usage: { promptTokens: 1, completionTokens: 1, cachedTokens: 0 },
      };
    },
    health: () => ({ ok: true }),
  };

  it('router - an API key is required when configured, and an oversized body is refused with 413', async () => {
    const server = await startHttpServer(backend, {
      host: '127.0.0.1',
      port: 0,
      requestBytesMax: 1024,
      requestsInFlightMax: 4,
      maxTokensDefault: 4,
      maxTokensMax: 16,
      apiKey: 'sekret',
      logger: createLogger({ service: 'router', level: 'error' }),
    });
    try {
      const url = `http://127.0.0.1:${server.port}`;
      const body = JSON.stringify({ model: 'fake', prompt: 'hi' });
      const denied = await fetch(`${url}/v1/completions`, { method: 'POST', body });
      assert.equal(denied.status, 401);
      assert.equal(((await denied.json()) as ErrorBody).error.code, 'invalid_api_key');
      const wrong = await fetch(`${url}/v1/models`, { headers: { authorization: 'Bearer nope' } });
      assert.equal(wrong.status, 401);
      await wrong.body?.cancel();
      const auth = { authorization: 'Bearer sekret' };
      const ok = await fetch(`${url}/v1/completions`, { method: 'POST', body, headers: auth });
      assert.equal(ok.status, 200);
      assert.equal(((await ok.json()) as CompletionBody).choices[0]?.text, 'ok');
      const big = await fetch(`${url}/v1/completions`, {
        method: 'POST',
        headers: auth,
        body: JSON.stringify({ model: 'fake', prompt: 'x'.repeat(4096) }),
      });
      assert.equal(big.status, 413);
      assert.equal(((await big.json()) as ErrorBody).error.code, 'request_too_large');
      assert.equal((await fetch(`${url}/health`)).status, 200, 'health needs no key');
    } finally {
      await server.close(100);
    }
  });
});

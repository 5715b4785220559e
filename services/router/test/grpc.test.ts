// The router's gRPC front door (kvmesh.v1.Router) end to end: a real nats-server, one kvstore node as a
// child process, a tiny generated model, prefill and decode workers and the router in-process, driven
// by the raw generated client (exact status codes) and by @kvmesh/sdk's MeshClient. Greedy Generate
// equals the HTTP API and an in-process engine; chat and prompt_token_ids inputs; bad input and a
// missing key get precise statuses; a client cancel or a passed deadline frees the worker's sequence;
// /metrics parses and moves. A second suite covers the edge over a scripted backend (UNAVAILABLE, the
// shared in-flight bound, abort reaching the backend, health).
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';

import { Metadata, credentials, status as GrpcStatus, type ServiceError } from '@grpc/grpc-js';
import { decodeConfig, startDecodeWorker, type DecodeWorker } from '@kvmesh/decode';
import { Engine, NO_PROGRESS, generateModel, loadModel, type LoadedModel } from '@kvmesh/engine';
import { prefillConfig, startPrefillWorker, type PrefillWorker } from '@kvmesh/prefill';
import {
  Codec,
  FinishReason,
  RouterClient,
  SamplingParams,
  modelFingerprintToBytes,
  type GenerateRequest,
  type GenerateResponse,
  type ListModelsResponse,
} from '@kvmesh/protocol';
import { checkHealth, createLogger, MetricsRegistry } from '@kvmesh/runtime';
import {
  DeadlineExceededError,
  MeshClient,
  RequestCancelledError,
  UnauthenticatedError,
  type MeshGenerateChunk,
} from '@kvmesh/sdk';
import {
  spawnKvStoreNodes,
  startNatsServer,
  waitFor,
  type NatsServerHandle,
  type ServiceHandle,
} from '@kvmesh/test-harness';

import { ROUTER_SERVICE_NAME, startRouterGrpcServer } from '../src/adapters/grpc-service.ts';
import { routerConfig } from '../src/config.ts';
import { NoWorkerAvailableError } from '../src/core/index.ts';
import {
  createAdmission,
  startHttpServer,
  type GenerationBackend,
  type GenerationInput,
} from '../src/http.ts';
import { startRouter, type Router } from '../src/router.ts';

const B = 16;
const TOKEN = 'router-grpc-test-token';
const API_KEY = 'grpc-test-key';
const HEARTBEAT_MS = 100;
const MISSED_HEARTBEATS_MAX = 5;
/** A token the long greedy generation below does not produce, so only a cancel can end it early. */
const LONG_STOP_TOKEN = 2047;
const LONG_PROMPT = 'Cancel me in the middle of a long answer';

const quiet = (service: string) => createLogger({ service, level: 'error' });

const withKey = (key = API_KEY): Metadata => {
  const metadata = new Metadata();
  metadata.set('authorization', `Bearer ${key}`);
  return metadata;
};

function request(overrides: Partial<GenerateRequest> = {}): GenerateRequest {
  return {
    requestId: '',
    model: '',
    input: { $case: 'prompt', value: 'hello' },
    sampling: SamplingParams.fromPartial({ maxTokens: 4 }),
    namespace: '',
    codec: Codec.CODEC_UNSPECIFIED,
    ...overrides,
  };
}

interface Outcome {
  readonly responses: GenerateResponse[];
  readonly code: GrpcStatus;
  readonly details: string;
  readonly kvmeshCode: string | undefined;
}

/** Runs one Generate to its end and reports every response and the final status. */
async function generate(client: RouterClient, req: GenerateRequest, metadata = withKey()): Promise<Outcome> {
  const responses: GenerateResponse[] = [];
  try {
    for await (const message of client.generate(req, metadata) as AsyncIterable<GenerateResponse>)
      responses.push(message);
    return { responses, code: GrpcStatus.OK, details: '', kvmeshCode: undefined };
  } catch (err) {
    const e = err as ServiceError;
    const kvmeshCode = e.metadata?.get('kvmesh-error-code')[0];
    return {
      responses,
      code: e.code,
      details: e.details,
      kvmeshCode: typeof kvmeshCode === 'string' ? kvmeshCode : undefined,
    };
  }
}

const tokensOf = (responses: readonly { tokenIds: readonly number[] }[]): number[] =>
  responses.flatMap((r) => [...r.tokenIds]);

/** Samples of the text exposition format, keyed `name{a="x",b="y"}` with labels sorted by name. */
function parseMetrics(text: string): Map<string, number> {
  const samples = new Map<string, number>();
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    assert.ok(m !== null, `not a sample line: ${line}`);
    const labels = [...(m[2] ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)]
      .map((l) => `${l[1]}="${l[2]}"`)
      .sort();
    const value = m[3] === '+Inf' ? Infinity : Number(m[3]);
    assert.ok(!Number.isNaN(value), `bad value in ${line}`);
    samples.set(labels.length === 0 ? (m[1] as string) : `${m[1]}{${labels.join(',')}}`, value);
  }
  return samples;
}

describe('router grpc - Router.Generate and ListModels over prefill and decode workers', () => {
  let dir = '';
  let model: LoadedModel;
  let nats: NatsServerHandle;
  const kvNodes: ServiceHandle[] = [];
  let prefill: PrefillWorker;
  let decode: DecodeWorker;
  let router: Router;
  let client: RouterClient;
  let mesh: MeshClient;
  let base = '';

  const post = async (path: string, body: unknown): Promise<Response> =>
    fetch(`${base}${path}`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${API_KEY}` },
      body: JSON.stringify(body),
    });
  const metrics = async (): Promise<Map<string, number>> => {
    const res = await fetch(`${base}/metrics`);
    assert.equal(res.status, 200);
    assert.match(res.headers.get('content-type') ?? '', /^text\/plain; version=0\.0\.4/);
    return parseMetrics(await res.text());
  };
  const cancelledCount = (count: number): Promise<boolean> =>
    waitFor(() => decode.stats().cancelled === count, {
      timeoutMs: 10_000,
      message: `the decode worker counted ${count} cancelled sequences`,
    });
  const idle = (): Promise<boolean> =>
    waitFor(() => decode.stats().active === 0 && decode.stats().waiting === 0, {
      timeoutMs: 10_000,
      message: 'the decode worker has no sequence left',
    });

  /** Token ids a fresh in-process engine generates greedily from `prompt` (model EOS, f32). */
  const reference = (promptTokens: readonly number[], maxTokens: number): number[] => {
    const engine = new Engine(model, { codec: 'f32', blockTokens: B });
    const id = engine.addSequence({ promptTokens, maxTokens });
    const out: number[] = [];
    for (;;) {
      const event = engine.step().find((e) => e.sequenceId === id);
      assert.ok(event);
      out.push(event.token);
      if (event.finishReason != null) return out;
    }
  };

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'kvmesh-router-grpc-'));
    const modelDir = join(dir, 'tiny');
    generateModel({ outDir: modelDir, preset: 'tiny', seed: 5, progress: NO_PROGRESS });
    model = loadModel(modelDir);
    nats = await startNatsServer({ jetstream: true });
    kvNodes.push(
      ...(await spawnKvStoreNodes({
        natsUrl: nats.url,
        nodeIds: ['kv-a'],
        replicas: 1,
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
      replicas: 1,
      dataToken: TOKEN,
      storeNodesMin: 1,
      storeHeartbeatIntervalMs: HEARTBEAT_MS,
      storeMissedHeartbeatsMax: MISSED_HEARTBEATS_MAX,
      heartbeatIntervalMs: HEARTBEAT_MS,
    };
    [prefill, decode] = await Promise.all([
      startPrefillWorker(prefillConfig({ ...store, nodeId: 'prefill-0' }), {
        model,
        logger: quiet('prefill'),
      }),
      startDecodeWorker(decodeConfig({ ...store, nodeId: 'decode-0' }), { model, logger: quiet('decode') }),
    ]);
    router = await startRouter(
      routerConfig({
        modelDir,
        httpPort: 0,
        grpcPort: 0,
        natsUrl: nats.url,
        policy: 'kv-aware',
        blockTokens: B,
        codec: 'f32',
        apiKey: API_KEY,
        prefillUncachedTokensMin: 2 * B,
        workerHeartbeatIntervalMs: HEARTBEAT_MS,
        workerMissedHeartbeatsMax: MISSED_HEARTBEATS_MAX,
      }),
      { model, logger: quiet('router') },
    );
    base = `http://${router.httpAddress}`;
    client = new RouterClient(router.grpcAddress, credentials.createInsecure());
    mesh = await MeshClient.connect({ address: router.grpcAddress, apiKey: API_KEY, retries: 20 });
    await waitFor(
      () => {
        const live = router.stats().liveWorkers;
        return live.prefill === 1 && live.decode === 1 && live.kvstore === 1;
      },
      { timeoutMs: 10_000, message: 'the router sees both workers and the kvstore node' },
    );
    // A prompt long enough to be prefilled proves the whole path before the tests start.
    const warmup = 'warm up the store '.repeat(8);
    await waitFor(
      async () =>
        (await generate(client, request({ input: { $case: 'prompt', value: warmup }, sampling: undefined })))
          .code === GrpcStatus.OK,
      { timeoutMs: 15_000, message: 'a prefilled generation through the router' },
    );
  });

  after(async () => {
    await mesh?.close();
    client?.close();
    await router?.close();
    await prefill?.close();
    await decode?.close();
    for (const node of kvNodes) await node.stop();
    await nats?.stop();
    if (dir !== '') rmSync(dir, { recursive: true, force: true });
  });

  it('router grpc - the ready handle names the gRPC address and health is SERVING', async () => {
    assert.match(router.grpcAddress, /^127\.0\.0\.1:\d+$/);
    assert.equal(await checkHealth(router.grpcAddress), 'SERVING');
    assert.equal(await checkHealth(router.grpcAddress, { service: ROUTER_SERVICE_NAME }), 'SERVING');
  });

  it('router grpc - ListModels reports the model, its context, block size and fingerprint', async () => {
    const models = await mesh.listModels();
    assert.deepEqual(models, [
      {
        id: model.name,
        contextTokens: model.config.maxContextTokens,
        blockTokens: B,
        modelFingerprint: Buffer.from(modelFingerprintToBytes(model.fingerprint)).toString('hex'),
      },
    ]);
    const raw = await new Promise<ListModelsResponse>((resolve, reject) =>
      client.listModels({}, withKey(), (err, res) => (err === null ? resolve(res) : reject(err))),
    );
    assert.equal(raw.models[0]?.id, model.name);
  });

  it('router grpc - greedy Generate streams the tokens of the HTTP API and of an in-process engine', async () => {
    const prompt = 'The mesh computes every prefix once';
    const promptTokens = model.tokenizer.encode(prompt, { addSpecialTokens: true });
    const { responses, code } = await generate(
      client,
      request({
        input: { $case: 'prompt', value: prompt },
        sampling: { ...request().sampling!, maxTokens: 12 },
      }),
    );
    assert.equal(code, GrpcStatus.OK);
    assert.ok(responses.length >= 1);
    assert.deepEqual(tokensOf(responses), reference(promptTokens, 12));
    const last = responses.at(-1);
    assert.ok(
      last?.finishReason === FinishReason.FINISH_REASON_LENGTH ||
        last?.finishReason === FinishReason.FINISH_REASON_STOP,
    );
    assert.ok(responses.slice(0, -1).every((r) => r.finishReason === FinishReason.FINISH_REASON_UNSPECIFIED));
    assert.equal(last?.usage?.promptTokens, promptTokens.length);
    assert.equal(last?.usage?.completionTokens, tokensOf(responses).length);

    const res = await post('/v1/completions', { model: model.name, prompt, max_tokens: 12, temperature: 0 });
    assert.equal(res.status, 200);
    const body = (await res.json()) as { choices: { text: string }[]; usage: { completion_tokens: number } };
    assert.equal(responses.map((r) => r.text).join(''), body.choices[0]?.text);
    assert.equal(body.usage.completion_tokens, tokensOf(responses).length);

    // The same prompt as token ids gives the same tokens; logprobs come one per token when asked.
    const byIds = await generate(
      client,
      request({
        input: { $case: 'promptTokenIds', value: { ids: promptTokens } },
        sampling: { ...request().sampling!, maxTokens: 12, logprobs: true },
      }),
    );
    assert.equal(byIds.code, GrpcStatus.OK);
    assert.deepEqual(tokensOf(byIds.responses), tokensOf(responses));
    for (const r of byIds.responses) {
      assert.equal(r.logprobs.length, r.tokenIds.length);
      assert.ok(r.logprobs.every((p) => Number.isFinite(p) && p <= 0));
    }
    assert.ok(
      responses.every((r) => r.logprobs.length === 0),
      'no logprobs unless asked',
    );
  });

  it('router grpc - chat input uses the chat template of the HTTP API', async () => {
    const messages = [
      { role: 'system', content: 'Be brief.' },
      { role: 'user', content: 'hello there' },
    ];
    const chunks: MeshGenerateChunk[] = [];
    for await (const chunk of mesh.generate({
      messages: messages as { role: 'system' | 'user'; content: string }[],
      maxTokens: 6,
    }))
      chunks.push(chunk);
    const res = await post('/v1/chat/completions', {
      model: model.name,
      messages,
      max_tokens: 6,
      temperature: 0,
    });
    assert.equal(res.status, 200);
    const body = (await res.json()) as {
      choices: { message: { content: string } }[];
      usage: { prompt_tokens: number; completion_tokens: number };
    };
    assert.equal(chunks.map((c) => c.text).join(''), body.choices[0]?.message.content);
    assert.deepEqual(chunks.at(-1)?.usage?.promptTokens, body.usage.prompt_tokens);
    assert.equal(chunks.at(-1)?.usage?.completionTokens, body.usage.completion_tokens);
    assert.ok(chunks.at(-1)?.finishReason === 'length' || chunks.at(-1)?.finishReason === 'stop');
  });

  it('router grpc - bad input, unknown model, over-context and a bad key get precise statuses', async () => {
    const sampling = request().sampling!;
    const cases: [string, GenerateRequest, GrpcStatus, string | undefined][] = [
      ['no input', request({ input: undefined }), GrpcStatus.INVALID_ARGUMENT, 'INVALID_ARGUMENT'],
      [
        'empty prompt',
        request({ input: { $case: 'prompt', value: '' } }),
        GrpcStatus.INVALID_ARGUMENT,
        undefined,
      ],
      [
        'empty chat',
        request({ input: { $case: 'chat', value: { messages: [] } } }),
        GrpcStatus.INVALID_ARGUMENT,
        undefined,
      ],
      [
        'bad role',
        request({ input: { $case: 'chat', value: { messages: [{ role: 'robot', content: 'x' }] } } }),
        GrpcStatus.INVALID_ARGUMENT,
        undefined,
      ],
      [
        'token outside the vocabulary',
        request({ input: { $case: 'promptTokenIds', value: { ids: [1, model.config.vocabSize] } } }),
        GrpcStatus.INVALID_ARGUMENT,
        undefined,
      ],
      [
        'temperature',
        request({ sampling: { ...sampling, temperature: 7 } }),
        GrpcStatus.INVALID_ARGUMENT,
        undefined,
      ],
      ['top_p', request({ sampling: { ...sampling, topP: 1.5 } }), GrpcStatus.INVALID_ARGUMENT, undefined],
      [
        'max_tokens above the bound',
        request({ sampling: { ...sampling, maxTokens: 1_000_000 } }),
        GrpcStatus.INVALID_ARGUMENT,
        undefined,
      ],
      [
        'empty stop',
        request({ sampling: { ...sampling, stop: [''] } }),
        GrpcStatus.INVALID_ARGUMENT,
        undefined,
      ],
      ['request id', request({ requestId: 'no spaces allowed' }), GrpcStatus.INVALID_ARGUMENT, undefined],
      ['namespace', request({ namespace: 'x'.repeat(10_000) }), GrpcStatus.INVALID_ARGUMENT, undefined],
      ['unknown codec value', request({ codec: 42 as Codec }), GrpcStatus.INVALID_ARGUMENT, undefined],
      ['unknown model', request({ model: 'nope' }), GrpcStatus.NOT_FOUND, 'MODEL_NOT_FOUND'],
      [
        'over the context',
        request({
          input: { $case: 'promptTokenIds', value: { ids: Array.from({ length: 2000 }, () => 5) } },
          sampling: { ...sampling, maxTokens: 100 },
        }),
        GrpcStatus.RESOURCE_EXHAUSTED,
        'CONTEXT_LENGTH_EXCEEDED',
      ],
      [
        'a prompt that fills the context',
        request({
          input: { $case: 'promptTokenIds', value: { ids: Array.from({ length: 2048 }, () => 5) } },
          sampling: { ...sampling, maxTokens: 0 },
        }),
        GrpcStatus.RESOURCE_EXHAUSTED,
        'CONTEXT_LENGTH_EXCEEDED',
      ],
      [
        'another codec than the workers compute in',
        request({ codec: Codec.CODEC_KIVI4 }),
        GrpcStatus.FAILED_PRECONDITION,
        'CODEC_MISMATCH',
      ],
    ];
    for (const [what, req, code, kvmeshCode] of cases) {
      const outcome = await generate(client, req);
      assert.equal(outcome.code, code, `${what}: ${outcome.details}`);
      assert.equal(outcome.responses.length, 0, what);
      if (kvmeshCode !== undefined) assert.equal(outcome.kvmeshCode, kvmeshCode, what);
    }
    const missing = await generate(client, request(), new Metadata());
    assert.equal(missing.code, GrpcStatus.UNAUTHENTICATED);
    const wrong = await generate(client, request(), withKey('wrong'));
    assert.equal(wrong.code, GrpcStatus.UNAUTHENTICATED);
    const listing = await new Promise<ServiceError | null>((resolve) =>
      client.listModels({}, new Metadata(), (err) => resolve(err)),
    );
    assert.equal(listing?.code, GrpcStatus.UNAUTHENTICATED);
    // The SDK turns the status into a typed error.
    const keyless = await MeshClient.connect({ address: router.grpcAddress });
    try {
      await assert.rejects(keyless.listModels(), UnauthenticatedError);
    } finally {
      await keyless.close();
    }
    // The health service needs no key.
    assert.equal(await checkHealth(router.grpcAddress), 'SERVING');
  });

  const longRequest = (): GenerateRequest =>
    request({
      input: { $case: 'prompt', value: LONG_PROMPT },
      sampling: { ...request().sampling!, maxTokens: 1000, stopTokenIds: [LONG_STOP_TOKEN] },
    });

  it('router grpc - a client cancel mid-stream frees the sequence on the decode worker', async () => {
    await idle();
    const before = decode.stats();
    const beforeMetrics = await metrics();
    const call = client.generate(longRequest(), withKey());
    const received: GenerateResponse[] = [];
    const ended = new Promise<ServiceError>((resolve) =>
      call.on('error', (err: ServiceError) => resolve(err)),
    );
    await new Promise<void>((resolve) =>
      call.on('data', (message: GenerateResponse) => {
        received.push(message);
        if (received.length === 2) {
          call.cancel();
          resolve();
        }
      }),
    );
    assert.equal((await ended).code, GrpcStatus.CANCELLED);
    await cancelledCount(before.cancelled + 1);
    await idle();
    assert.equal(decode.stats().completed, before.completed, 'the generation did not run to its end');
    const grpcCancelled =
      'kvmesh_router_requests_total{endpoint="/kvmesh.v1.Router/Generate",status="CANCELLED"}';
    await waitFor(async () => (await metrics()).get('kvmesh_router_active_requests') === 0, {
      message: 'no request active on the router',
    });
    const afterMetrics = await metrics();
    assert.equal(afterMetrics.get(grpcCancelled), (beforeMetrics.get(grpcCancelled) ?? 0) + 1);
  });

  it('router grpc - SDK generate: AbortSignal and a passed deadline both free the sequence', async () => {
    await idle();
    const before = decode.stats();
    const controller = new AbortController();
    let seen = 0;
    await assert.rejects(
      (async () => {
        for await (const chunk of mesh.generate(
          { prompt: LONG_PROMPT, maxTokens: 1000, stopTokenIds: [LONG_STOP_TOKEN] },
          { signal: controller.signal },
        )) {
          seen += chunk.tokenIds.length;
          if (seen >= 2) controller.abort();
        }
      })(),
      RequestCancelledError,
    );
    await cancelledCount(before.cancelled + 1);

    // Breaking out of the loop cancels too.
    for await (const chunk of mesh.generate({
      prompt: LONG_PROMPT,
      maxTokens: 1000,
      stopTokenIds: [LONG_STOP_TOKEN],
    })) {
      assert.equal(chunk.tokenIds.length, 1);
      break;
    }
    await cancelledCount(before.cancelled + 2);

    // A deadline far shorter than 1000 decode steps: the router sees the call end and cancels.
    await assert.rejects(
      (async () => {
        for await (const _chunk of mesh.generate(
          { prompt: LONG_PROMPT, maxTokens: 1000, stopTokenIds: [LONG_STOP_TOKEN] },
          { deadlineMs: 50 },
        ));
      })(),
      (err: unknown) => {
        assert.ok(err instanceof DeadlineExceededError, String(err));
        assert.equal(err.code, 'DEADLINE_EXCEEDED');
        return true;
      },
    );
    await idle();
    assert.equal(decode.stats().completed, before.completed, 'none of the three ran to its end');
  });

  it('router grpc - /metrics parses and its counters move after a request', async () => {
    const beforeMetrics = await metrics();
    const prompt = 'Count this request in the metrics';
    const res = await post('/v1/completions', { model: model.name, prompt, max_tokens: 5, temperature: 0 });
    assert.equal(res.status, 200);
    const usage = ((await res.json()) as { usage: { prompt_tokens: number; completion_tokens: number } })
      .usage;
    const afterMetrics = await metrics();
    const delta = (key: string): number => (afterMetrics.get(key) ?? 0) - (beforeMetrics.get(key) ?? 0);
    assert.equal(delta('kvmesh_router_requests_total{endpoint="/v1/completions",status="200"}'), 1);
    assert.equal(delta('kvmesh_router_prompt_tokens_total'), usage.prompt_tokens);
    assert.equal(delta('kvmesh_router_generated_tokens_total'), usage.completion_tokens);
    assert.equal(delta('kvmesh_router_time_to_first_token_seconds_count'), 1);
    assert.equal(delta('kvmesh_router_inter_token_latency_seconds_count'), usage.completion_tokens - 1);
    assert.equal(
      delta('kvmesh_router_routing_decisions_total{policy="kv-aware",pool="decode",worker="decode-0"}'),
      1,
    );
    assert.equal(afterMetrics.get('kvmesh_router_active_requests'), 0);
    assert.equal(afterMetrics.get('kvmesh_router_live_nodes{role="decode"}'), 1);
    assert.ok((afterMetrics.get('kvmesh_router_cached_prompt_tokens_total') ?? -1) >= 0);
    // Cumulative buckets end in +Inf == count.
    assert.equal(
      afterMetrics.get('kvmesh_router_time_to_first_token_seconds_bucket{le="+Inf"}'),
      afterMetrics.get('kvmesh_router_time_to_first_token_seconds_count'),
    );
    // /metrics needs no key, like /health.
    assert.equal((await fetch(`${base}/metrics`)).status, 200);
    // The worker computed the prompt: its next heartbeat carries its measured rate, and /metrics shows it.
    const prefillRate =
      'kvmesh_router_worker_rate_ms{pool="decode",rate="prefill_ms_per_token",worker="decode-0"}';
    await waitFor(async () => ((await metrics()).get(prefillRate) ?? 0) > 0, {
      message: "the decode worker's measured prefill rate in /metrics",
    });
    const rates = [...(await metrics()).keys()].filter((k) => k.startsWith('kvmesh_router_worker_rate_ms{'));
    assert.ok(
      rates.every((k) => /pool="(decode|prefill)",rate="[a-z_]+",worker="\1-0"/.test(k)),
      `only live workers have rates: ${rates.join(', ')}`,
    );
  });

  it('router grpc - a repeated chat message is tokenized from the piece cache', async () => {
    const messages = [
      { role: 'system', content: 'A system prompt that every turn of this chat repeats.' },
      { role: 'user', content: 'First question?' },
    ];
    const chat = async (): Promise<void> => {
      const res = await post('/v1/chat/completions', { model: model.name, messages, max_tokens: 2 });
      assert.equal(res.status, 200);
      await res.json();
    };
    await chat();
    const before = await metrics();
    messages.push({ role: 'assistant', content: 'An answer.' }, { role: 'user', content: 'Second?' });
    await chat();
    const after = await metrics();
    const delta = (result: string): number => {
      const key = `kvmesh_router_tokenizer_piece_lookups{result="${result}"}`;
      return (after.get(key) ?? 0) - (before.get(key) ?? 0);
    };
    // The system and first user pieces are held; the assistant turn and the new question are not.
    assert.ok(delta('hit') >= 2, `hits ${delta('hit')}`);
    assert.ok(delta('miss') >= 1, `misses ${delta('miss')}`);
  });
});

describe('router grpc - edge over a scripted backend', () => {
  /** Scripted backend: 'ok' answers two chunks; 'hold' waits for the abort; 'none' has no worker. */
  let mode: 'ok' | 'hold' | 'none' = 'ok';
  const inputs: GenerationInput[] = [];
  const aborted: string[] = [];
  const backend: GenerationBackend = {
    modelName: 'fake',
    maxContextTokens: 64,
    blockTokens: 16,
    vocabSize: 1000,
    modelFingerprint: new Uint8Array(16).fill(7),
    tokenizer: {
      encode: (text) => [...text].map((c) => c.charCodeAt(0)),
      decode: (ids) => String.fromCharCode(...ids),
      applyChatTemplate: () => 'chat',
    },
    async *generate(input) {
      inputs.push(input);
      if (mode === 'none') throw new NoWorkerAvailableError('decode');
      if (mode === 'hold') {
        yield { text: 'a', tokenIds: [1], finishReason: null };
        await new Promise<void>((resolve) =>
          input.signal.addEventListener('abort', () => {
            aborted.push(input.requestId);
            resolve();
          }),
        );
        return;
      }
      yield { text: 'o', tokenIds: [1], finishReason: null, logprobs: [-1] };
      yield {
        text: 'k',
        tokenIds: [2],
        finishReason: 'stop',
        logprobs: [-2],
        usage: { promptTokens: 2, completionTokens: 2, cachedTokens: 0 },
      };
    },
    health: () => ({ ok: true }),
  };

  it('router grpc - UNAVAILABLE without a worker, a shared in-flight bound, and cancel aborting the backend', async () => {
    const admission = createAdmission(1);
    const metricsRegistry = new MetricsRegistry();
    const server = await startRouterGrpcServer(backend, {
      host: '127.0.0.1',
      port: 0,
      requestBytesMax: 1 << 20,
      maxTokensDefault: 8,
      maxTokensMax: 16,
      apiKey: '',
      admission,
      codec: Codec.CODEC_F32,
      metrics: metricsRegistry,
      logger: quiet('router'),
    });
    const http = await startHttpServer(backend, {
      host: '127.0.0.1',
      port: 0,
      requestBytesMax: 1 << 20,
      requestsInFlightMax: 1,
      maxTokensDefault: 8,
      maxTokensMax: 16,
      apiKey: '',
      logger: quiet('router'),
      admission,
      metrics: metricsRegistry,
    });
    const address = `127.0.0.1:${server.port}`;
    const client = new RouterClient(address, credentials.createInsecure());
    try {
      const ok = await generate(
        client,
        request({ requestId: 'req-ok', sampling: { ...request().sampling!, maxTokens: 0, logprobs: true } }),
        new Metadata(),
      );
      assert.equal(ok.code, GrpcStatus.OK);
      assert.deepEqual(
        ok.responses.map((r) => [r.text, r.tokenIds, r.logprobs, r.finishReason]),
        [
          ['o', [1], [-1], FinishReason.FINISH_REASON_UNSPECIFIED],
          ['k', [2], [-2], FinishReason.FINISH_REASON_STOP],
        ],
      );
      assert.equal(inputs.at(-1)?.requestId, 'req-ok');
      assert.equal(inputs.at(-1)?.logprobs, true);
      // An unset max_tokens is the default (8), cut to the room the context has left.
      assert.equal(inputs.at(-1)?.maxTokens, 8);
      const nearlyFull = await generate(
        client,
        request({
          input: { $case: 'promptTokenIds', value: { ids: Array.from({ length: 61 }, () => 3) } },
          sampling: { ...request().sampling!, maxTokens: 0 },
        }),
        new Metadata(),
      );
      assert.equal(nearlyFull.code, GrpcStatus.OK);
      assert.equal(inputs.at(-1)?.maxTokens, 3);
      // Penalties reach the backend; an unset (0) repetition penalty is off (left out); out of range is refused.
      const penalized = await generate(
        client,
        request({ sampling: { ...request().sampling!, presencePenalty: 0.5, frequencyPenalty: -0.25 } }),
        new Metadata(),
      );
      assert.equal(penalized.code, GrpcStatus.OK);
      assert.deepEqual(
        [
          inputs.at(-1)?.sampling.presencePenalty,
          inputs.at(-1)?.sampling.frequencyPenalty,
          inputs.at(-1)?.sampling.repetitionPenalty,
        ],
        [0.5, -0.25, undefined],
      );
      // Top logprobs reach the backend and imply the chosen tokens' logprobs.
      const withTop = await generate(
        client,
        request({ sampling: { ...request().sampling!, topLogprobs: 3 } }),
        new Metadata(),
      );
      assert.equal(withTop.code, GrpcStatus.OK);
      assert.deepEqual([inputs.at(-1)?.topLogprobs, inputs.at(-1)?.logprobs], [3, true]);
      const pastEos = await generate(
        client,
        request({ sampling: { ...request().sampling!, ignoreEos: true } }),
        new Metadata(),
      );
      assert.equal(pastEos.code, GrpcStatus.OK);
      assert.equal(inputs.at(-1)?.ignoreEos, true);
      const biased = await generate(
        client,
        request({ sampling: { ...request().sampling!, logitBias: { 5: -100, 7: 2.5 } } }),
        new Metadata(),
      );
      assert.equal(biased.code, GrpcStatus.OK);
      assert.deepEqual(
        [...(inputs.at(-1)?.sampling.logitBias ?? [])],
        [
          [5, -100],
          [7, 2.5],
        ],
      );
      for (const bad of [
        { presencePenalty: 2.5 } as Partial<SamplingParams>,
        { frequencyPenalty: -3 },
        { repetitionPenalty: 11 },
        { topLogprobs: 21 },
        { logitBias: { 5: 101 } },
        { logitBias: { 1000: 1 } },
      ]) {
        const refused = await generate(
          client,
          request({ sampling: { ...request().sampling!, ...bad } }),
          new Metadata(),
        );
        assert.equal(refused.code, GrpcStatus.INVALID_ARGUMENT, JSON.stringify(bad));
      }

      mode = 'none';
      const none = await generate(client, request(), new Metadata());
      assert.equal(none.code, GrpcStatus.UNAVAILABLE);
      assert.equal(none.kvmeshCode, 'NO_WORKER_AVAILABLE');
      assert.equal(admission.inFlight, 0, 'a refused request gives its slot back');

      mode = 'hold';
      const held = client.generate(request({ requestId: 'req-held' }), new Metadata());
      const heldEnded = new Promise<ServiceError>((resolve) =>
        held.on('error', (err: ServiceError) => resolve(err)),
      );
      await new Promise<void>((resolve) => held.once('data', () => resolve()));
      // The one slot is taken, by gRPC: gRPC and HTTP both refuse the next request.
      const refused = await generate(client, request(), new Metadata());
      assert.equal(refused.code, GrpcStatus.RESOURCE_EXHAUSTED);
      assert.equal(refused.kvmeshCode, 'LIMIT_EXCEEDED');
      const httpRefused = await fetch(`http://127.0.0.1:${http.port}/v1/completions`, {
        method: 'POST',
        body: JSON.stringify({ model: 'fake', prompt: 'hi' }),
      });
      assert.equal(httpRefused.status, 429);
      await httpRefused.body?.cancel();
      held.cancel();
      assert.equal((await heldEnded).code, GrpcStatus.CANCELLED);
      await waitFor(() => aborted.includes('req-held'), { message: 'the backend saw the abort' });
      await waitFor(() => admission.inFlight === 0, { message: 'the slot is free again' });

      mode = 'ok';
      assert.equal((await generate(client, request(), new Metadata())).code, GrpcStatus.OK);

      assert.equal(await checkHealth(address, { service: ROUTER_SERVICE_NAME }), 'SERVING');
      server.setServing(false);
      assert.equal(await checkHealth(address, { service: ROUTER_SERVICE_NAME }), 'NOT_SERVING');

      const text = metricsRegistry.render();
      const samples = parseMetrics(text);
      const key = (status: string): string =>
        `kvmesh_router_requests_total{endpoint="/kvmesh.v1.Router/Generate",status="${status}"}`;
      assert.equal(samples.get(key('OK')), 7);
      assert.equal(samples.get(key('UNAVAILABLE')), 1);
      assert.equal(samples.get(key('RESOURCE_EXHAUSTED')), 1);
      assert.equal(samples.get(key('CANCELLED')), 1);
      assert.equal(samples.get('kvmesh_router_requests_total{endpoint="/v1/completions",status="429"}'), 1);
    } finally {
      client.close();
      await server.close(100);
      await http.close(100);
    }
  });
});

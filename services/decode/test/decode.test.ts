// Integration: a decode worker (in-process, real gRPC server on loopback) over two kvstore nodes
// running as child processes (R = 2) on a real nats-server, with a tiny generated model. A greedy
// decode streams exactly the tokens (and logprobs) of an in-process engine (f32); its finished full
// blocks are written back, so the next turn (prompt + output) reuses them and still continues
// exactly like a full computation; concurrent requests share engine steps; cancellation and the
// sequence bound free and refuse slots; bad input is refused naming the field; the worker answers
// Worker.Health and the standard health check and heartbeats with role 'decode'.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';

import { credentials, status as GrpcStatus, type ServiceError } from '@grpc/grpc-js';
import { blockSeed, computeBlockHashes } from '@kvmesh/block';
import {
  Engine,
  NO_PROGRESS,
  generateModel,
  loadModel,
  Xoshiro128,
  type LoadedModel,
  type TokenEvent,
} from '@kvmesh/engine';
import {
  Codec,
  DecodeRequest,
  FinishReason,
  NodeHeartbeat,
  SamplingParams,
  WorkerClient,
  blockHashToBytes,
  parseNamespace,
  type BlockHash,
  type DecodeResponse,
  type WorkerHealthResponse,
} from '@kvmesh/protocol';
import {
  checkHealth,
  connectNats,
  createLogger,
  heartbeatWildcard,
  type NatsConnection,
} from '@kvmesh/runtime';
import { KvStoreClient } from '@kvmesh/sdk';
import {
  rejectsWithStatus,
  spawnKvStoreNodes,
  startNatsServer,
  waitFor,
  type NatsServerHandle,
  type ServiceHandle,
} from '@kvmesh/test-harness';

import { decodeConfig } from '../src/config.ts';
import { startDecodeWorker, type DecodeWorker } from '../src/worker.ts';

const B = 16;
const TOKEN = 'decode-test-token';
const HEARTBEAT_MS = 100;
const MISSED_HEARTBEATS_MAX = 5;
const SEQUENCES_MAX = 3;

type DecodeRequestInput = Omit<Partial<DecodeRequest>, 'sampling'> & { sampling?: Partial<SamplingParams> };

/** A full request from the fields a test sets (proto3 defaults elsewhere). */
function decodeRequest(input: DecodeRequestInput): DecodeRequest {
  const { sampling, ...rest } = input;
  return {
    ...DecodeRequest.fromPartial({}),
    ...rest,
    sampling: sampling === undefined ? undefined : { ...SamplingParams.fromPartial({}), ...sampling },
  };
}

describe('decode worker - over a 2-node kvstore cluster (R = 2) on a real nats-server', () => {
  let dir = '';
  let model: LoadedModel;
  let nats: NatsServerHandle;
  let nc: NatsConnection;
  const kvNodes: ServiceHandle[] = [];
  let worker: DecodeWorker;
  let client: WorkerClient;
  /** A second worker that keeps at most two blocks of a sequence locally (DistAttention). */
  let farWorker: DecodeWorker;
  let farClient: WorkerClient;
  let store: KvStoreClient;
  const heartbeats: NodeHeartbeat[] = [];

  const open = (request: DecodeRequestInput, via = client) => via.decode(decodeRequest(request));
  const decode = (request: DecodeRequestInput, via = client): Promise<DecodeResponse[]> =>
    new Promise((resolve, reject) => {
      const out: DecodeResponse[] = [];
      const stream = open(request, via);
      stream.on('data', (message: DecodeResponse) => out.push(message));
      stream.on('error', reject);
      stream.on('end', () => resolve(out));
    });
  const health = (): Promise<WorkerHealthResponse> =>
    new Promise((resolve, reject) =>
      client.health({}, (err, res) => (err !== null ? reject(err) : resolve(res as WorkerHealthResponse))),
    );

  /** Every token event of a fresh engine generating from `prompt` alone (greedy, model EOS). */
  const reference = (prompt: readonly number[], maxTokens: number): TokenEvent[] => {
    const engine = new Engine(model, { codec: 'f32', blockTokens: B });
    const id = engine.addSequence({ promptTokens: prompt, maxTokens });
    const out: TokenEvent[] = [];
    while (out.at(-1)?.finishReason == null) {
      const event = engine.step().find((e) => e.sequenceId === id);
      assert.ok(event);
      out.push(event);
    }
    return out;
  };
  const hashesOf = (tokens: readonly number[], namespace = ''): BlockHash[] =>
    computeBlockHashes(
      blockSeed({
        modelFingerprint: model.fingerprint,
        blockTokens: B,
        namespace: parseNamespace(namespace),
      }),
      tokens,
      B,
    );
  const wireHashes = (hashes: readonly BlockHash[]): Buffer[] =>
    hashes.map((h) => Buffer.from(blockHashToBytes(h)));
  const tokensOf = (messages: readonly DecodeResponse[]): number[] => messages.flatMap((m) => m.tokenIds);

  const rng = new Xoshiro128(20251122);
  const randomTokens = (count: number): number[] =>
    Array.from({ length: count }, () => 3 + Math.floor(rng.nextUnit() * (model.config.vocabSize - 3)));

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'kvmesh-decode-'));
    generateModel({ outDir: join(dir, 'tiny'), preset: 'tiny', seed: 5, progress: NO_PROGRESS });
    model = loadModel(join(dir, 'tiny'));
    nats = await startNatsServer({ jetstream: true });
    nc = await connectNats({ servers: nats.url, name: 'decode-test' });
    nc.subscribe(heartbeatWildcard('decode'), {
      callback: (err, msg) => {
        if (err !== null) return;
        // The latest 100, so a late test still sees current ones.
        heartbeats.push(NodeHeartbeat.decode(msg.data));
        if (heartbeats.length > 100) heartbeats.shift();
      },
    });
    const spawned = await spawnKvStoreNodes({
      natsUrl: nats.url,
      nodeIds: ['kv-a', 'kv-b'],
      heartbeatIntervalMs: HEARTBEAT_MS,
      missedHeartbeatsMax: MISSED_HEARTBEATS_MAX,
      dataToken: TOKEN,
    });
    kvNodes.push(...spawned);
    const workerConfig = (nodeId: string, sequenceKvBlocksMax: number) =>
      decodeConfig({
        nodeId,
        modelDir: join(dir, 'tiny'),
        blockTokens: B,
        codec: 'f32',
        natsUrl: nats.url,
        replicas: 2,
        dataToken: TOKEN,
        storeNodesMin: 2,
        storeHeartbeatIntervalMs: HEARTBEAT_MS,
        storeMissedHeartbeatsMax: MISSED_HEARTBEATS_MAX,
        heartbeatIntervalMs: HEARTBEAT_MS,
        sequencesMax: SEQUENCES_MAX,
        sequenceKvBlocksMax,
      });
    // NOTE: 'error', because warm-up write-backs fail (logged as warnings) until the nodes meet.
    const quiet = { model, logger: createLogger({ service: 'decode', level: 'error' }) };
    worker = await startDecodeWorker(workerConfig('decode-0', 0), quiet);
    client = new WorkerClient(worker.grpcAddress, credentials.createInsecure());
    farWorker = await startDecodeWorker(workerConfig('decode-far', 2), quiet);
    farClient = new WorkerClient(farWorker.grpcAddress, credentials.createInsecure());
    store = await KvStoreClient.connect({
      natsUrl: nats.url,
      replicas: 2,
      dataToken: TOKEN,
      heartbeatIntervalMs: HEARTBEAT_MS,
      missedHeartbeatsMax: MISSED_HEARTBEATS_MAX,
      waitForNodes: 2,
    });
    // The nodes refuse puts until each sees the other; warm up in a namespace of its own until a
    // decode's write-back lands, so the tests' namespace starts empty.
    const warmup = randomTokens(2 * B + 1);
    await waitFor(
      async () => {
        await decode({ promptTokenIds: warmup, namespace: 'warmup', sampling: { maxTokens: 1 } });
        await worker.writeBacksSettled();
        return (await store.matchPrefix(hashesOf(warmup, 'warmup'), 'warmup')).matchedBlocks === 2;
      },
      { timeoutMs: 15_000, message: "the kvstore cluster acknowledges a decode's write-back" },
    );
  });

  after(async () => {
    client?.close();
    farClient?.close();
    await store?.close();
    await worker?.close();
    await farWorker?.close();
    for (const node of kvNodes) await node.stop();
    await nc?.close();
    await nats?.stop();
    if (dir !== '') rmSync(dir, { recursive: true, force: true });
  });

  let promptA: number[] = [];
  let outputA: number[] = [];

  it('decode - a cold greedy decode streams the tokens and logprobs of an in-process engine', async () => {
    promptA = randomTokens(2 * B + 5);
    const messages = await decode({
      requestId: 'req-a',
      promptTokenIds: promptA,
      codec: Codec.CODEC_F32,
      sampling: { maxTokens: 24, logprobs: true },
    });
    const expected = reference(promptA, 24);
    outputA = tokensOf(messages);
    assert.deepEqual(
      outputA,
      expected.map((e) => e.token),
    );
    assert.deepEqual(
      messages.flatMap((m) => m.logprobs),
      expected.map((e) => Math.fround(e.logprob)),
    );
    assert.ok(messages.length === expected.length, 'one message per token');
    const last = messages.at(-1) as DecodeResponse;
    const wantReason =
      expected.at(-1)?.finishReason === 'stop'
        ? FinishReason.FINISH_REASON_STOP
        : FinishReason.FINISH_REASON_LENGTH;
    assert.equal(last.finishReason, wantReason);
    assert.deepEqual(last.usage, {
      promptTokens: promptA.length,
      completionTokens: outputA.length,
      cachedTokens: 0,
    });
    for (const m of messages.slice(0, -1)) {
      assert.equal(m.finishReason, FinishReason.FINISH_REASON_UNSPECIFIED);
      assert.equal(m.usage, undefined);
    }
    assert.equal(
      messages.map((m) => m.text).join(''),
      model.tokenizer.decode(outputA, { skipSpecialTokens: true }),
    );
  });

  it('decode - a stop string ends the text right before it with finish_reason STOP', async () => {
    const full = model.tokenizer.decode(outputA, { skipSpecialTokens: true });
    const stop = full.slice(Math.floor(full.length / 2), Math.floor(full.length / 2) + 3);
    assert.ok(stop.length === 3, `output text long enough: ${JSON.stringify(full)}`);
    const messages = await decode({ promptTokenIds: promptA, sampling: { maxTokens: 24, stop: [stop] } });
    assert.equal(messages.map((m) => m.text).join(''), full.slice(0, full.indexOf(stop)));
    assert.equal(messages.at(-1)?.finishReason, FinishReason.FINISH_REASON_STOP);
    const tokens = tokensOf(messages);
    assert.ok(tokens.length < outputA.length);
    assert.deepEqual(tokens, outputA.slice(0, tokens.length));
    assert.equal(messages.at(-1)?.usage?.completionTokens, tokens.length);
  });

  it('decode - finished blocks are written back and the next turn reuses them, continuing exactly', async () => {
    await worker.writeBacksSettled();
    const turn = [...promptA, ...outputA];
    // The last generated token has no KV yet: the sequence's full blocks cover (len - 1) tokens.
    const written = Math.floor((turn.length - 1) / B);
    const hashes = hashesOf(turn);
    assert.equal((await store.matchPrefix(hashes.slice(0, written), '')).matchedBlocks, written);

    const messages = await decode({
      promptTokenIds: turn,
      blockHashes: wireHashes(hashes),
      sampling: { maxTokens: 12 },
    });
    const usage = messages.at(-1)?.usage;
    assert.ok(usage);
    assert.equal(usage.cachedTokens, Math.floor((turn.length - 1) / B) * B);
    assert.ok(usage.cachedTokens > 0);
    assert.deepEqual(
      tokensOf(messages),
      reference(turn, 12).map((e) => e.token),
    );
  });

  it('decode - a context over the KV budget completes through DistAttention with the unconstrained greedy output', async () => {
    // Six prompt blocks in the store (a decode computes and writes them back), then a worker that
    // keeps two blocks per sequence decodes three more blocks' worth of tokens.
    const prompt = randomTokens(6 * B + 3);
    await decode({ promptTokenIds: prompt, sampling: { maxTokens: 1 } });
    await worker.writeBacksSettled();
    const hashes = hashesOf(prompt);
    assert.equal((await store.matchPrefix(hashes, '')).matchedBlocks, 6);
    const expected = reference(prompt, 3 * B).map((e) => e.token);
    const before = farWorker.stats();
    const messages = await decode(
      { promptTokenIds: prompt, blockHashes: wireHashes(hashes), sampling: { maxTokens: 3 * B } },
      farClient,
    );
    assert.deepEqual(tokensOf(messages), expected);
    assert.equal(messages.at(-1)?.usage?.cachedTokens, 6 * B);
    const stats = farWorker.stats();
    assert.ok(stats.farAttentionCalls > before.farAttentionCalls, 'attention went to the store');
    // Four prompt blocks left at admission, and generated blocks demoted once stored.
    assert.ok(stats.farBlocks - before.farBlocks >= 4 + Math.min(2, expected.length / B - 1));
    // The generated blocks were written back as they were sealed: the next turn can reuse them.
    await farWorker.writeBacksSettled();
    const turn = [...prompt, ...expected];
    const written = Math.floor((turn.length - 1) / B);
    assert.equal((await store.matchPrefix(hashesOf(turn).slice(0, written), '')).matchedBlocks, written);
  });

  it('decode - a finished sequence stays in the local prefix cache: the next turn reuses it without the store', async () => {
    const prompt = randomTokens(3 * B + 5);
    const first = await decode({ promptTokenIds: prompt, sampling: { maxTokens: B } });
    const turn = [...prompt, ...tokensOf(first), ...randomTokens(7)];
    const before = worker.stats();
    assert.ok(before.localCacheBlocks >= 4, `cache holds ${before.localCacheBlocks} blocks`);
    // No block_hashes: the worker is not told the store has anything; the cache alone serves it.
    const messages = await decode({ promptTokenIds: turn, sampling: { maxTokens: 6 } });
    assert.deepEqual(
      tokensOf(messages),
      reference(turn, 6).map((e) => e.token),
    );
    const reused = Math.floor((prompt.length + B - 1) / B) * B;
    assert.equal(messages.at(-1)?.usage?.cachedTokens, reused);
    assert.equal(worker.stats().localCachedTokens - before.localCachedTokens, reused);
  });

  it('decode - concurrent requests share engine steps and both match a lone engine', async () => {
    const prompts = [randomTokens(B + 3), randomTokens(2 * B + 9)];
    const stepsBefore = worker.stats().steps;
    const results = await Promise.all(
      prompts.map((p) => decode({ promptTokenIds: p, sampling: { maxTokens: 20 } })),
    );
    results.forEach((messages, i) =>
      assert.deepEqual(
        tokensOf(messages),
        reference(prompts[i] as number[], 20).map((e) => e.token),
        `request ${i}`,
      ),
    );
    const total = results.reduce((n, m) => n + m.length, 0);
    assert.ok(worker.stats().batchPeak >= 2, 'one step advanced both sequences');
    assert.ok(worker.stats().steps - stepsBefore < total, 'fewer steps than tokens: steps were shared');
  });

  it('decode - cancelled streams free their sequences; past sequencesMax a request is RESOURCE_EXHAUSTED', async () => {
    const freeBefore = (await health()).freeKvBlocks;
    const streams = Array.from({ length: SEQUENCES_MAX }, () =>
      open({ promptTokenIds: randomTokens(B + 1), sampling: { maxTokens: 1000, stopTokenIds: [0] } }),
    );
    const errors: ServiceError[] = [];
    await Promise.all(
      streams.map(
        (s) =>
          new Promise<void>((resolve) => {
            s.on('error', (err: ServiceError) => errors.push(err));
            s.once('data', () => resolve());
          }),
      ),
    );
    assert.equal((await health()).activeSequences, SEQUENCES_MAX);
    await rejectsWithStatus(
      decode({ promptTokenIds: [5, 6, 7], sampling: { maxTokens: 2 } }),
      GrpcStatus.RESOURCE_EXHAUSTED,
      /decode worker is full \(3 sequences admitted\)/,
    );
    const cancelledBefore = worker.stats().cancelled;
    for (const s of streams) s.cancel();
    await waitFor(async () => (await health()).activeSequences === 0, {
      message: 'sequences removed after cancel',
    });
    const after = await health();
    assert.equal(after.queueDepth, 0);
    assert.equal(after.freeKvBlocks, freeBefore, 'their KV blocks went back to the pool');
    assert.ok(errors.every((e) => e.code === GrpcStatus.CANCELLED));
    await waitFor(() => worker.stats().cancelled - cancelledBefore === SEQUENCES_MAX, {
      message: 'cancellations counted',
    });
  });

  it('decode - bad input is refused naming the field', async () => {
    await rejectsWithStatus(
      decode({ promptTokenIds: [] }),
      GrpcStatus.INVALID_ARGUMENT,
      /^prompt_token_ids is empty/,
    );
    await rejectsWithStatus(
      decode({ promptTokenIds: [1, 2, model.config.vocabSize] }),
      GrpcStatus.INVALID_ARGUMENT,
      /^prompt_token_ids\[2\] is 2048, outside the vocabulary/,
    );
    await rejectsWithStatus(
      decode({ promptTokenIds: randomTokens(B + 1), blockHashes: [Buffer.alloc(3)] }),
      GrpcStatus.INVALID_ARGUMENT,
      /^block_hashes\[0\]: /,
    );
    const prompt = randomTokens(2 * B + 1);
    await rejectsWithStatus(
      decode({ promptTokenIds: prompt, blockHashes: wireHashes(hashesOf(prompt, 'other')) }),
      GrpcStatus.INVALID_ARGUMENT,
      /^block_hashes\[0\] is [0-9a-f]{32}, but block 0 of the prompt hashes to/,
    );
    await rejectsWithStatus(
      decode({ promptTokenIds: prompt, firstTokenId: model.config.vocabSize }),
      GrpcStatus.INVALID_ARGUMENT,
      /^first_token_id is 2048/,
    );
    await rejectsWithStatus(
      decode({ promptTokenIds: prompt, sampling: { topK: 0, temperature: -1 } }),
      GrpcStatus.INVALID_ARGUMENT,
      /^sampling\.temperature must be in/,
    );
    await rejectsWithStatus(
      decode({ promptTokenIds: prompt, sampling: { stopTokenIds: [1, 99999] } }),
      GrpcStatus.INVALID_ARGUMENT,
      /^sampling\.stop_token_ids\[1\] is 99999/,
    );
    await rejectsWithStatus(
      decode({ promptTokenIds: prompt, codec: Codec.CODEC_KIVI4 }),
      GrpcStatus.FAILED_PRECONDITION,
      /^codec: this worker decodes KV in f32/,
    );
    assert.equal((await health()).activeSequences, 0);
  });

  it('decode - the stream goes on from first_token_id, as one process would after that token', async () => {
    const prompt = randomTokens(B + 4);
    const first = reference(prompt, 1)[0] as TokenEvent;
    const ok = await decode({
      promptTokenIds: prompt,
      firstTokenId: first.token,
      sampling: { maxTokens: 3 },
    });
    assert.deepEqual(
      tokensOf(ok),
      reference(prompt, 3).map((e) => e.token),
    );
    // Another first token (a prefill worker's sample): it is emitted, and the rest follows from it.
    const other = (first.token + 1) % model.config.vocabSize;
    const forced = await decode({
      promptTokenIds: prompt,
      firstTokenId: other,
      sampling: { maxTokens: 3 },
    });
    assert.equal(forced[0]?.tokenIds[0], other);
    assert.deepEqual(
      tokensOf(forced).slice(1),
      reference([...prompt, other], 2).map((e) => e.token),
    );
  });

  it('decode - Worker.Health, the standard health check and heartbeats report the worker', async () => {
    const h = await health();
    assert.equal(h.nodeId, 'decode-0');
    assert.equal(h.role, 'decode');
    assert.equal(h.activeSequences, 0);
    assert.ok(h.freeKvBlocks > 0n);
    assert.equal(await checkHealth(worker.grpcAddress, { service: 'kvmesh.v1.Worker' }), 'SERVING');
    await waitFor(() => heartbeats.some((b) => b.nodeId === 'decode-0'), {
      timeoutMs: 5_000,
      message: 'a decode heartbeat',
    });
    const beat = heartbeats.find((b) => b.nodeId === 'decode-0') as NodeHeartbeat;
    assert.equal(beat.role, 'decode');
    assert.equal(beat.grpcAddress, worker.grpcAddress);
    // The earlier tests computed prompts and decoded here: the worker reports what they cost.
    await waitFor(
      () =>
        heartbeats.some(
          (b) => b.nodeId === 'decode-0' && b.prefillMsPerToken > 0 && b.decodeMsPerSequence > 0,
        ),
      {
        timeoutMs: 5_000,
        message: 'a heartbeat with measured rates',
      },
    );
  });
});

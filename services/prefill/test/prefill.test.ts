// Integration: a prefill worker (in-process, real gRPC server on loopback) over two kvstore nodes
// running as child processes (R = 2) on a real nats-server, with a tiny generated model. A cold
// prompt is computed in full and every full block lands in the store; a prompt sharing its first
// blocks imports them and still yields exactly the first token (and logprob) of an engine that
// computed everything (f32: bit-identical); bad input is refused naming the field; the worker
// heartbeats with role 'prefill' and answers Worker.Health and the standard health check.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';

import { credentials, status as GrpcStatus, type ServiceError } from '@grpc/grpc-js';
import { Engine, NO_PROGRESS, generateModel, loadModel, Xoshiro128, type LoadedModel } from '@kvmesh/engine';
import {
  Codec,
  NodeHeartbeat,
  PrefillRequest,
  WorkerClient,
  blockHashFromBytes,
  type PrefillResponse,
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

import { prefillConfig } from '../src/config.ts';
import { startPrefillWorker, type PrefillWorker } from '../src/worker.ts';

const B = 16;
const TOKEN = 'prefill-test-token';
const HEARTBEAT_MS = 100;
const MISSED_HEARTBEATS_MAX = 5;

function unary<Res>(invoke: (cb: (err: ServiceError | null, res?: Res) => void) => void): Promise<Res> {
  return new Promise((resolve, reject) =>
    invoke((err, res) => (err !== null ? reject(err) : resolve(res as Res))),
  );
}

describe('prefill worker - over a 2-node kvstore cluster (R = 2) on a real nats-server', () => {
  let dir = '';
  let model: LoadedModel;
  let nats: NatsServerHandle;
  let nc: NatsConnection;
  const kvNodes: ServiceHandle[] = [];
  let worker: PrefillWorker;
  let client: WorkerClient;
  let store: KvStoreClient;
  const heartbeats: NodeHeartbeat[] = [];

  const prefill = (request: Partial<PrefillRequest>): Promise<PrefillResponse> =>
    unary((cb) => client.prefill(PrefillRequest.fromPartial(request), cb));

  /** The first token and logprob of a fresh engine computing the whole prompt itself. */
  const reference = (prompt: readonly number[]): { token: number; logprob: number } => {
    const engine = new Engine(model, { codec: 'f32', blockTokens: B });
    const id = engine.addSequence({ promptTokens: prompt, maxTokens: 1, stopTokenIds: [] });
    const event = engine.step().find((e) => e.sequenceId === id);
    assert.ok(event);
    return event;
  };

  const rng = new Xoshiro128(20251121);
  const randomTokens = (count: number): number[] =>
    Array.from({ length: count }, () => 3 + Math.floor(rng.nextUnit() * (model.config.vocabSize - 3)));

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'kvmesh-prefill-'));
    generateModel({ outDir: join(dir, 'tiny'), preset: 'tiny', seed: 5, progress: NO_PROGRESS });
    model = loadModel(join(dir, 'tiny'));
    nats = await startNatsServer({ jetstream: true });
    nc = await connectNats({ servers: nats.url, name: 'prefill-test' });
    nc.subscribe(heartbeatWildcard('prefill'), {
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
    worker = await startPrefillWorker(
      prefillConfig({
        nodeId: 'prefill-0',
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
        queueDepthMax: 4,
      }),
      { model, logger: createLogger({ service: 'prefill', level: 'warn' }) },
    );
    client = new WorkerClient(worker.grpcAddress, credentials.createInsecure());
    store = await KvStoreClient.connect({
      natsUrl: nats.url,
      replicas: 2,
      dataToken: TOKEN,
      heartbeatIntervalMs: HEARTBEAT_MS,
      missedHeartbeatsMax: MISSED_HEARTBEATS_MAX,
      waitForNodes: 2,
    });
    // The nodes refuse puts (UNAVAILABLE) until each sees the other; warm up in a namespace of its
    // own, so no block of the tests' namespace exists before the first test.
    const warmup = randomTokens(2 * B + 1);
    await waitFor(
      async () => {
        try {
          await prefill({ promptTokenIds: warmup, namespace: 'warmup' });
          return true;
        } catch (err) {
          assert.equal((err as ServiceError).code, GrpcStatus.UNAVAILABLE, (err as ServiceError).details);
          return false;
        }
      },
      { timeoutMs: 15_000, message: 'the kvstore cluster acknowledges the warm-up prefill' },
    );
  });

  after(async () => {
    client?.close();
    await store?.close();
    await worker?.close();
    for (const node of kvNodes) await node.stop();
    await nc?.close();
    await nats?.stop();
    if (dir !== '') rmSync(dir, { recursive: true, force: true });
  });

  let promptA: number[] = [];
  let hashesA: string[] = [];

  it('prefill - a cold prompt is computed in full and its full blocks land in the store', async () => {
    promptA = randomTokens(3 * B + 5);
    const response = await prefill({ requestId: 'req-a', promptTokenIds: promptA, codec: Codec.CODEC_F32 });
    assert.equal(response.reusedTokens, 0);
    assert.equal(response.computedTokens, promptA.length);
    assert.equal(response.blockHashes.length, 3);
    hashesA = response.blockHashes.map((h) => blockHashFromBytes(h));
    const match = await store.matchPrefix(hashesA, '');
    assert.equal(match.matchedBlocks, 3);
    for (const location of match.locations) assert.equal(location.nodeIds.length, 2, 'both replicas hold it');
    const expected = reference(promptA);
    assert.equal(response.firstTokenId, expected.token);
    assert.equal(response.firstTokenLogprob, Math.fround(expected.logprob));
  });

  it('prefill - a prompt sharing 2 blocks imports them and matches a full computation bit for bit', async () => {
    const promptB = [...promptA.slice(0, 2 * B), ...randomTokens(B + 7)];
    const response = await prefill({ promptTokenIds: promptB });
    assert.equal(response.reusedTokens, 2 * B);
    assert.equal(response.computedTokens, promptB.length - 2 * B);
    const hashesB = response.blockHashes.map((h) => blockHashFromBytes(h));
    assert.deepEqual(hashesB.slice(0, 2), hashesA.slice(0, 2));
    assert.notEqual(hashesB[2], hashesA[2]);
    assert.equal((await store.matchPrefix(hashesB, '')).matchedBlocks, 3, 'its new block was stored');
    const expected = reference(promptB);
    assert.equal(response.firstTokenId, expected.token);
    assert.equal(response.firstTokenLogprob, Math.fround(expected.logprob));
  });

  it('prefill - a block-aligned prompt fully held still computes its last block', async () => {
    const promptC = promptA.slice(0, 3 * B);
    const response = await prefill({ promptTokenIds: promptC });
    assert.equal(response.reusedTokens, 2 * B);
    assert.equal(response.computedTokens, B);
    const expected = reference(promptC);
    assert.equal(response.firstTokenId, expected.token);
    assert.equal(response.firstTokenLogprob, Math.fround(expected.logprob));
  });

  it('prefill - another namespace shares nothing', async () => {
    const response = await prefill({ promptTokenIds: promptA, namespace: 'tenant-b' });
    assert.equal(response.reusedTokens, 0);
    assert.notDeepEqual(
      response.blockHashes.map((h) => blockHashFromBytes(h)),
      hashesA,
    );
  });

  it('prefill - bad input is refused naming the field', async () => {
    await rejectsWithStatus(
      prefill({ promptTokenIds: [] }),
      GrpcStatus.INVALID_ARGUMENT,
      /^prompt_token_ids is empty/,
    );
    await rejectsWithStatus(
      prefill({ promptTokenIds: [1, 2, model.config.vocabSize] }),
      GrpcStatus.INVALID_ARGUMENT,
      /^prompt_token_ids\[2\] is 2048, outside the vocabulary/,
    );
    await rejectsWithStatus(
      prefill({ promptTokenIds: randomTokens(model.config.maxContextTokens) }),
      GrpcStatus.INVALID_ARGUMENT,
      /^prompt_token_ids holds 2048 tokens/,
    );
    await rejectsWithStatus(
      prefill({ promptTokenIds: [1, 2, 3], codec: Codec.CODEC_KIVI4 }),
      GrpcStatus.FAILED_PRECONDITION,
      /^codec: this worker computes KV in f32/,
    );
  });

  it('prefill - Worker.Health, the standard health check and heartbeats report the worker', async () => {
    const health = await unary<WorkerHealthResponse>((cb) => client.health({}, cb));
    assert.equal(health.nodeId, 'prefill-0');
    assert.equal(health.role, 'prefill');
    assert.equal(health.queueDepth, 0);
    assert.ok(health.freeKvBlocks > 0n);
    assert.equal(await checkHealth(worker.grpcAddress, { service: 'kvmesh.v1.Worker' }), 'SERVING');
    await waitFor(() => heartbeats.some((h) => h.nodeId === 'prefill-0'), {
      timeoutMs: 5_000,
      message: 'a prefill heartbeat',
    });
    const beat = heartbeats.find((h) => h.nodeId === 'prefill-0') as NodeHeartbeat;
    assert.equal(beat.role, 'prefill');
    assert.equal(beat.grpcAddress, worker.grpcAddress);
    // The earlier tests computed and fetched prompts here: the worker reports what they cost.
    await waitFor(
      () =>
        heartbeats.some((h) => h.nodeId === 'prefill-0' && h.prefillMsPerToken > 0 && h.fetchMsPerToken > 0),
      {
        timeoutMs: 5_000,
        message: 'a heartbeat with measured rates',
      },
    );
  });
});

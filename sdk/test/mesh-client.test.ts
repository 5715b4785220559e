// MeshClient against an in-process scripted router (a real grpc-js server with the kvmesh.v1.Router
// service on loopback, whose answers are switches), so the client's own rules can be tested exactly:
// streaming and chunk mapping, cancellation by break / AbortSignal / close reaching the server,
// deadlines, retries only where they cannot repeat output the caller saw, typed errors, and a router
// that comes up after the client. The real router (full mesh) is driven by this client in
// services/router/test/grpc.test.ts; the SDK cannot depend on the router package (the router's tests
// depend on the SDK).
import assert from 'node:assert/strict';
import { after, afterEach, before, describe, it } from 'node:test';

import { InvalidArgumentError, KvmeshError } from '@kvmesh/errors';
import {
  FinishReason,
  RouterService,
  type GenerateRequest,
  type GenerateResponse,
  type RouterServer,
} from '@kvmesh/protocol';
import {
  UnavailableError,
  createGrpcServer,
  freePort,
  wrapServerStream,
  wrapUnary,
  type GrpcServer,
} from '@kvmesh/runtime';

import {
  ClientClosedError,
  DeadlineExceededError,
  MeshClient,
  ModelNotFoundError,
  RequestCancelledError,
  UnauthenticatedError,
  type MeshClientOptions,
  type MeshGenerateChunk,
} from '../src/index.ts';

type Mode = 'tokens' | 'hang' | 'fail-after-token';

const FINGERPRINT = Buffer.from('00112233445566778899aabbccddeeff', 'hex');

/** A scripted Router: `tokens` chunks then finish, or one chunk and hang / fail; counts what it saw. */
class ScriptedRouter {
  mode: Mode = 'tokens';
  tokens = 3;
  /** Generate calls that fail with UNAVAILABLE before sending anything. */
  unavailableFirst = 0;
  /** Thrown by every call while set. */
  error: unknown = undefined;
  generateCalls = 0;
  listCalls = 0;
  cancelled = 0;
  lastRequest: GenerateRequest | undefined;
  lastAuthorization: string | undefined;

  private constructor(
    readonly grpc: GrpcServer,
    readonly address: string,
  ) {}

  static async start(port = 0): Promise<ScriptedRouter> {
    const grpc = createGrpcServer({ healthServices: ['kvmesh.v1.Router'] });
    const bound = await grpc.bind(`127.0.0.1:${port}`);
    const router = new ScriptedRouter(grpc, `127.0.0.1:${bound}`);
    grpc.server.addService(RouterService, router.service());
    grpc.setServing(true);
    return router;
  }

  private service(): RouterServer {
    const generate = async function* (
      this: ScriptedRouter,
      request: GenerateRequest,
      call: {
        cancelled: boolean;
        metadata: { get(key: string): unknown[] };
        once(e: string, f: () => void): unknown;
      },
    ): AsyncGenerator<GenerateResponse> {
      this.generateCalls++;
      this.lastRequest = request;
      this.lastAuthorization = call.metadata.get('authorization')[0] as string | undefined;
      const cancelled = new Promise<void>((resolve) =>
        call.once('cancelled', () => {
          this.cancelled++;
          resolve();
        }),
      );
      if (this.error !== undefined) throw this.error;
      if (this.unavailableFirst > 0) {
        this.unavailableFirst--;
        throw new UnavailableError('no decode worker is live');
      }
      const logprobs = request.sampling?.logprobs === true;
      const chunk = (i: number, last: boolean): GenerateResponse => ({
        text: `t${i} `,
        tokenIds: [100 + i],
        logprobs: logprobs ? [-0.5 * (i + 1)] : [],
        topLogprobs: [],
        finishReason: last ? FinishReason.FINISH_REASON_LENGTH : FinishReason.FINISH_REASON_UNSPECIFIED,
        usage: last ? { promptTokens: 5, completionTokens: i + 1, cachedTokens: 2 } : undefined,
      });
      if (this.mode === 'tokens') {
        for (let i = 0; i < this.tokens; i++) yield chunk(i, i === this.tokens - 1);
        return;
      }
      yield chunk(0, false);
      if (this.mode === 'fail-after-token') throw new UnavailableError('decode worker went away');
      await cancelled;
    };
    return {
      generate: wrapServerStream<GenerateRequest, GenerateResponse>((request, call) =>
        generate.call(this, request, call),
      ),
      listModels: wrapUnary((_request, call) => {
        this.listCalls++;
        this.lastAuthorization = call.metadata.get('authorization')[0] as string | undefined;
        if (this.error !== undefined) throw this.error;
        return {
          models: [{ id: 'tiny', contextTokens: 2048, blockTokens: 16, modelFingerprint: FINGERPRINT }],
        };
      }),
    };
  }

  async stop(): Promise<void> {
    await this.grpc.shutdown(100);
  }
}

async function collect(stream: AsyncIterable<MeshGenerateChunk>): Promise<MeshGenerateChunk[]> {
  const out: MeshGenerateChunk[] = [];
  for await (const chunk of stream) out.push(chunk);
  return out;
}

/** Polls until `predicate` holds (fails after 5 s instead of hanging). */
async function until(predicate: () => boolean, what: string): Promise<void> {
  for (let i = 0; i < 500; i++) {
    if (predicate()) return;
    await new Promise((r) => setTimeout(r, 10));
  }
  assert.fail(`not reached: ${what}`);
}

describe('sdk mesh client - against a scripted router', () => {
  let router: ScriptedRouter;
  const clients: MeshClient[] = [];
  const connect = async (options: Partial<MeshClientOptions> = {}): Promise<MeshClient> => {
    const client = await MeshClient.connect({ address: router.address, retryBackoffMs: 5, ...options });
    clients.push(client);
    return client;
  };

  before(async () => {
    router = await ScriptedRouter.start();
  });
  afterEach(() => {
    router.mode = 'tokens';
    router.tokens = 3;
    router.unavailableFirst = 0;
    router.error = undefined;
  });
  after(async () => {
    for (const client of clients) await client.close();
    await router.stop();
  });

  it('sdk mesh client - generate streams chunks, with finish reason, usage and logprobs on request', async () => {
    const client = await connect({ apiKey: 'sekret' });
    const chunks = await collect(
      client.generate({ prompt: 'hello', maxTokens: 3, logprobs: true, namespace: 'tenant-a', codec: 'f16' }),
    );
    assert.deepEqual(
      chunks.map((c) => c.tokenIds),
      [[100], [101], [102]],
    );
    assert.equal(chunks.map((c) => c.text).join(''), 't0 t1 t2 ');
    assert.deepEqual(
      chunks.map((c) => c.logprobs),
      [[-0.5], [-1], [-1.5]],
    );
    assert.deepEqual(
      chunks.map((c) => c.finishReason),
      [undefined, undefined, 'length'],
    );
    assert.deepEqual(chunks.at(-1)?.usage, { promptTokens: 5, completionTokens: 3, cachedTokens: 2 });
    assert.equal(router.lastAuthorization, 'Bearer sekret');
    assert.equal(router.lastRequest?.input?.$case, 'prompt');
    assert.equal(router.lastRequest?.sampling?.maxTokens, 3);
    assert.equal(router.lastRequest?.namespace, 'tenant-a');
    const plain = await collect(client.generate({ messages: [{ role: 'user', content: 'hi' }] }));
    assert.equal(plain[0]?.logprobs, undefined, 'no logprobs unless asked');
    assert.deepEqual(router.lastRequest?.input, {
      $case: 'chat',
      value: { messages: [{ role: 'user', content: 'hi' }] },
    });
  });

  it('sdk mesh client - bad requests throw InvalidArgumentError before any call', async () => {
    const client = await connect();
    const before = router.generateCalls;
    assert.throws(() => client.generate({ prompt: 'a', promptTokenIds: [1] }), InvalidArgumentError);
    assert.throws(() => client.generate({}), InvalidArgumentError);
    assert.throws(() => client.generate({ prompt: 'a', maxTokens: -1 }), InvalidArgumentError);
    assert.throws(() => client.generate({ prompt: 'a', logitBias: { [-1]: 5 } }), InvalidArgumentError);
    assert.throws(() => client.generate({ prompt: 'a', logitBias: { 3: Number.NaN } }), InvalidArgumentError);
    assert.throws(() => client.generate({ promptTokenIds: [1, 2.5] }), InvalidArgumentError);
    assert.throws(() => client.generate({ prompt: 'a', temperature: NaN }), InvalidArgumentError);
    assert.throws(
      () => client.generate({ prompt: 'a', codec: 'nope' as unknown as 'f32' }),
      InvalidArgumentError,
    );
    assert.equal(router.generateCalls, before);
  });

  it('sdk mesh client - breaking out of the loop cancels the call on the router', async () => {
    router.mode = 'hang';
    const client = await connect();
    const cancelledBefore = router.cancelled;
    for await (const chunk of client.generate({ prompt: 'hello' })) {
      assert.deepEqual(chunk.tokenIds, [100]);
      break;
    }
    await until(() => router.cancelled === cancelledBefore + 1, 'the router saw the cancel');
    assert.equal(client.counters().callsInFlight, 0);
  });

  it('sdk mesh client - an AbortSignal cancels mid-stream with RequestCancelledError', async () => {
    router.mode = 'hang';
    const client = await connect();
    const cancelledBefore = router.cancelled;
    const controller = new AbortController();
    const seen: MeshGenerateChunk[] = [];
    await assert.rejects(
      (async () => {
        for await (const chunk of client.generate({ prompt: 'hello' }, { signal: controller.signal })) {
          seen.push(chunk);
          controller.abort(new Error('user pressed stop'));
        }
      })(),
      (err: unknown) => {
        assert.ok(err instanceof RequestCancelledError, String(err));
        assert.equal(err.code, 'CANCELLED');
        assert.equal((err.cause as Error).message, 'user pressed stop');
        return true;
      },
    );
    assert.equal(seen.length, 1);
    await until(() => router.cancelled === cancelledBefore + 1, 'the router saw the cancel');
    // An already aborted signal makes no call at all.
    const calls = router.generateCalls;
    await assert.rejects(
      collect(client.generate({ prompt: 'x' }, { signal: controller.signal })),
      RequestCancelledError,
    );
    assert.equal(router.generateCalls, calls);
  });

  it('sdk mesh client - a passed deadline is DeadlineExceededError (DEADLINE_EXCEEDED)', async () => {
    router.mode = 'hang';
    const client = await connect();
    const chunks: MeshGenerateChunk[] = [];
    await assert.rejects(
      (async () => {
        for await (const chunk of client.generate({ prompt: 'hello' }, { deadlineMs: 500 }))
          chunks.push(chunk);
      })(),
      (err: unknown) => {
        assert.ok(err instanceof DeadlineExceededError, String(err));
        assert.equal(err.code, 'DEADLINE_EXCEEDED');
        assert.equal(err.details.deadlineMs, 500);
        return true;
      },
    );
    assert.ok(chunks.length <= 1, 'nothing past the one chunk the router sends');
  });

  it('sdk mesh client - UNAVAILABLE before any chunk is retried; after a chunk it is not', async () => {
    const client = await connect({ retries: 3 });
    router.unavailableFirst = 2;
    let calls = router.generateCalls;
    const chunks = await collect(client.generate({ prompt: 'hello' }));
    assert.equal(chunks.length, 3);
    assert.equal(router.generateCalls - calls, 3, 'two failed attempts and the one that worked');
    assert.ok(client.counters().retries >= 2);

    router.unavailableFirst = 10;
    calls = router.generateCalls;
    await assert.rejects(collect(client.generate({ prompt: 'hello' })), { code: 'UNAVAILABLE' });
    assert.equal(router.generateCalls - calls, 4, '1 + retries attempts, then the error');

    router.unavailableFirst = 0;
    router.mode = 'fail-after-token';
    calls = router.generateCalls;
    const seen: MeshGenerateChunk[] = [];
    await assert.rejects(
      (async () => {
        for await (const chunk of client.generate({ prompt: 'hello' })) seen.push(chunk);
      })(),
      UnavailableError,
    );
    assert.equal(seen.length, 1);
    assert.equal(router.generateCalls - calls, 1, 'output was seen: no retry');
  });

  it('sdk mesh client - server errors come back as typed errors and are not retried', async () => {
    const client = await connect({ retries: 3 });
    router.error = new KvmeshError('MODEL_NOT_FOUND', 'not-found', "The model 'x' does not exist", {
      model: 'x',
      served: 'tiny',
    });
    const calls = router.generateCalls;
    await assert.rejects(collect(client.generate({ prompt: 'a', model: 'x' })), (err: unknown) => {
      assert.ok(err instanceof ModelNotFoundError, String(err));
      assert.equal(err.details.served, 'tiny');
      assert.equal(err.details.grpcCode, 5);
      return true;
    });
    assert.equal(router.generateCalls - calls, 1);
    router.error = new InvalidArgumentError('sampling.temperature: must be in [0, 2]', {
      field: 'sampling.temperature',
    });
    await assert.rejects(collect(client.generate({ prompt: 'a', temperature: 5 })), (err: unknown) => {
      assert.ok(err instanceof InvalidArgumentError);
      assert.equal(err.details.field, 'sampling.temperature');
      return true;
    });
    const status = Object.assign(new Error('missing API key'), { code: 16, details: 'missing API key' });
    router.error = status;
    await assert.rejects(client.listModels(), UnauthenticatedError);
  });

  it('sdk mesh client - close() cancels calls in flight; later calls throw CLIENT_CLOSED', async () => {
    router.mode = 'hang';
    const client = await MeshClient.connect({ address: router.address });
    const cancelledBefore = router.cancelled;
    const iterator = client.generate({ prompt: 'hello' })[Symbol.asyncIterator]();
    assert.deepEqual((await iterator.next()).value?.tokenIds, [100]);
    const pending = iterator.next();
    await client.close();
    await assert.rejects(pending, ClientClosedError);
    await until(() => router.cancelled === cancelledBefore + 1, 'the router saw the cancel');
    assert.throws(() => client.generate({ prompt: 'x' }), ClientClosedError);
    await assert.rejects(client.listModels(), ClientClosedError);
  });
});

describe('sdk mesh client - a router that comes up late', () => {
  it('sdk mesh client - listModels retries until the router listens', async () => {
    const port = await freePort();
    const client = await MeshClient.connect({
      address: `127.0.0.1:${port}`,
      retries: 200,
      retryBackoffMs: 10,
      retryBackoffMaxMs: 50,
      timeoutMs: 30_000,
    });
    let router: ScriptedRouter | undefined;
    try {
      const models = client.listModels();
      // Start the router only once the client has seen it missing at least once.
      await until(() => client.counters().retries >= 1, 'a failed first attempt');
      router = await ScriptedRouter.start(port);
      assert.deepEqual(await models, [
        { id: 'tiny', contextTokens: 2048, blockTokens: 16, modelFingerprint: FINGERPRINT.toString('hex') },
      ]);
      assert.equal(router.listCalls, 1);
    } finally {
      await client.close();
      await router?.stop();
    }
  });

  it('sdk mesh client - listModels gives up with UNAVAILABLE after its retries', async () => {
    const port = await freePort();
    const client = await MeshClient.connect({ address: `127.0.0.1:${port}`, retries: 2, retryBackoffMs: 1 });
    try {
      await assert.rejects(client.listModels(), (err: unknown) => {
        assert.ok(err instanceof KvmeshError);
        assert.equal(err.code, 'UNAVAILABLE');
        return true;
      });
      assert.equal(client.counters().retries, 2);
    } finally {
      await client.close();
    }
  });
});

// Integration: a real gRPC server on loopback built with @kvmesh/runtime answers the standard health
// check, and typed errors thrown by handlers (unary, server-streaming, client-streaming) reach a real
// client as the same KvmeshError class with the same code and details. Handler crashes never take
// the server down.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import {
  Metadata,
  credentials,
  makeGenericClientConstructor,
  type Client,
  type ServiceError,
} from '@grpc/grpc-js';
import type { ServiceDefinition } from '@grpc/grpc-js';
import { CorruptDataError, InvalidArgumentError, KvmeshError, LimitExceededError } from '@kvmesh/errors';
import {
  callUnary,
  checkHealth,
  createGrpcServer,
  deadlineIn,
  fromGrpcError,
  grpcClientOptions,
  registerErrorClass,
  wrapClientStream,
  wrapServerStream,
  wrapUnary,
  type GrpcServer,
} from '@kvmesh/runtime';

class LeaseExpiredError extends KvmeshError {
  constructor(message: string, details: Record<string, unknown> = {}) {
    super('LEASE_EXPIRED', 'failed-precondition', message, details);
  }
}
registerErrorClass('LEASE_EXPIRED', (m, d) => new LeaseExpiredError(m, d));

const raw = { serialize: (b: Buffer): Buffer => b, deserialize: (b: Buffer): Buffer => b };
const method = (name: string, requestStream: boolean, responseStream: boolean) => ({
  path: `/test.Probe/${name}`,
  requestStream,
  responseStream,
  requestSerialize: raw.serialize,
  requestDeserialize: raw.deserialize,
  responseSerialize: raw.serialize,
  responseDeserialize: raw.deserialize,
});
/** A hand-made service with raw Buffer messages: no codegen in the way of what is being tested. */
const ProbeService = {
  fail: method('Fail', false, false),
  count: method('Count', false, true),
  sum: method('Sum', true, false),
} as const satisfies ServiceDefinition;

type ProbeClient = Client & {
  fail(
    req: Buffer,
    md: Metadata,
    opts: { deadline: Date },
    cb: (e: ServiceError | null, r?: Buffer) => void,
  ): void;
  count(req: Buffer): NodeJS.ReadableStream & { on(e: 'error', l: (err: ServiceError) => void): unknown };
  sum(cb: (e: ServiceError | null, r?: Buffer) => void): { write(b: Buffer): boolean; end(): void };
};
const ProbeClient = makeGenericClientConstructor(ProbeService, 'test.Probe');

function throwFor(what: string): never {
  switch (what) {
    case 'invalid':
      throw new InvalidArgumentError('hash must be 16 bytes', { length: 3 });
    case 'limit':
      throw new LimitExceededError('too many blocks', { limit: 64, requested: 65 });
    case 'lease':
      throw new LeaseExpiredError('lease gone', { leaseId: 'l-1', expiredAtMs: 12345n });
    case 'type':
      throw new TypeError("Cannot read properties of undefined (reading 'x')");
    default:
      throw 'a thrown string';
  }
}

describe('grpc - server helpers against a real client', () => {
  let server: GrpcServer;
  let address: string;
  let client: ProbeClient;
  const reported: string[] = [];

  before(async () => {
    server = createGrpcServer({ healthServices: ['test.Probe'], messageBytesMax: 1024 * 1024 });
    const onError = (_err: unknown, info: { path: string; status: { code: number } }): void => {
      reported.push(`${info.path} ${info.status.code}`);
    };
    server.server.addService(ProbeService, {
      fail: wrapUnary<Buffer, Buffer>(
        (req) => {
          const what = req.toString();
          if (what === 'ok') return Buffer.from('fine');
          if (what === 'sync-type') throwFor('type'); // thrown synchronously inside the handler
          return Promise.reject(new Error('unreachable')).catch(() => throwFor(what));
        },
        { onError },
      ),
      count: wrapServerStream<Buffer, Buffer>(
        async function* (req) {
          const n = Number(req.toString());
          for (let i = 0; i < n; i++) yield Buffer.from(String(i));
          throw new CorruptDataError('segment checksum mismatch', { segment: 7 });
        },
        { onError },
      ),
      sum: wrapClientStream<Buffer, Buffer>(
        async (requests) => {
          let total = 0;
          for await (const chunk of requests) {
            if (chunk.length === 0) throw new InvalidArgumentError('empty chunk', { at: total });
            total += chunk.length;
          }
          return Buffer.from(String(total));
        },
        { onError },
      ),
    });
    const port = await server.bind('127.0.0.1:0');
    address = `127.0.0.1:${port}`;
    client = new ProbeClient(
      address,
      credentials.createInsecure(),
      grpcClientOptions(),
    ) as unknown as ProbeClient;
  });
  after(async () => {
    client?.close();
    await server?.shutdown(1_000);
  });

  const fail = (what: string | Buffer): Promise<Buffer> =>
    callUnary<Buffer>((cb) =>
      client.fail(
        typeof what === 'string' ? Buffer.from(what) : what,
        new Metadata(),
        { deadline: deadlineIn(5_000) },
        cb,
      ),
    );

  it('grpc - health reports NOT_SERVING until the service says it serves, per service name', async () => {
    assert.equal(await checkHealth(address), 'NOT_SERVING');
    server.setServing(true);
    assert.equal(await checkHealth(address), 'SERVING');
    assert.equal(await checkHealth(address, { service: 'test.Probe' }), 'SERVING');
    server.setServing(false, 'test.Probe');
    assert.equal(await checkHealth(address, { service: 'test.Probe' }), 'NOT_SERVING');
    assert.equal(await checkHealth(address), 'SERVING');
    await assert.rejects(
      checkHealth(address, { service: 'nope' }),
      (err: KvmeshError) => err.kind === 'not-found',
    );
  });

  it('grpc - typed errors come back as the same class with code and details', async () => {
    assert.equal((await fail('ok')).toString(), 'fine');
    await assert.rejects(fail('invalid'), (err) => {
      assert.ok(err instanceof InvalidArgumentError);
      assert.equal(err.message, 'hash must be 16 bytes');
      assert.equal(err.details['length'], 3);
      return true;
    });
    await assert.rejects(fail('limit'), (err) => {
      assert.ok(err instanceof LimitExceededError);
      assert.equal(err.details['limit'], 64);
      assert.equal(err.details['grpcCode'], 8); // RESOURCE_EXHAUSTED
      return true;
    });
    await assert.rejects(fail('lease'), (err) => {
      assert.ok(err instanceof LeaseExpiredError);
      assert.equal(err.details['expiredAtMs'], '12345', 'bigints travel as decimal strings');
      return true;
    });
  });

  it('grpc - untyped throws, sync or async, become INTERNAL and the server keeps serving', async () => {
    for (const what of ['sync-type', 'type', 'string']) {
      await assert.rejects(fail(what), (err) => {
        assert.ok(err instanceof KvmeshError);
        assert.equal(err.code, 'INTERNAL');
        assert.equal(err.kind, 'internal');
        return true;
      });
    }
    assert.equal((await fail('ok')).toString(), 'fine');
    assert.ok(reported.includes('/test.Probe/Fail 13'), 'onError saw the INTERNAL failures');
  });

  it('grpc - a server stream delivers what it yielded, then the typed error', async () => {
    const got: string[] = [];
    const error = await new Promise<KvmeshError>((resolve) => {
      const stream = client.count(Buffer.from('3'));
      stream.on('data', (b: Buffer) => got.push(b.toString()));
      stream.on('error', (err: ServiceError) => resolve(fromGrpcError(err)));
    });
    assert.deepEqual(got, ['0', '1', '2']);
    assert.ok(error instanceof CorruptDataError);
    assert.equal(error.details['segment'], 7);
  });

  it('grpc - a client stream handler sees every request and its error reaches the caller', async () => {
    const sum = (chunks: Buffer[]): Promise<Buffer> =>
      callUnary<Buffer>((cb) => {
        const call = client.sum(cb);
        for (const c of chunks) call.write(c);
        call.end();
      });
    assert.equal((await sum([Buffer.alloc(10), Buffer.alloc(5)])).toString(), '15');
    await assert.rejects(sum([Buffer.alloc(10), Buffer.alloc(0)]), (err) => {
      assert.ok(err instanceof InvalidArgumentError);
      assert.equal(err.details['at'], 10);
      return true;
    });
  });

  it('grpc - a message over the configured bound is refused with RESOURCE_EXHAUSTED', async () => {
    await assert.rejects(fail(Buffer.alloc(2 * 1024 * 1024)), (err: KvmeshError) => {
      assert.equal(err.kind, 'resource-exhausted');
      return true;
    });
    assert.equal((await fail('ok')).toString(), 'fine');
  });

  it('grpc - a server that is gone yields UnavailableError', async () => {
    const other = createGrpcServer();
    const port = await other.bind('127.0.0.1:0');
    await other.shutdown(100);
    await assert.rejects(checkHealth(`127.0.0.1:${port}`, { deadlineMs: 2_000 }), (err: KvmeshError) => {
      assert.equal(err.kind, 'unavailable');
      return true;
    });
  });
});

describe('grpc - graceful shutdown', () => {
  it('grpc - shutdown waits for an in-flight call within the grace period', async () => {
    const server = createGrpcServer();
    let release: () => void = () => undefined;
    let entered: () => void = () => undefined;
    const inHandler = new Promise<void>((resolve) => (entered = resolve));
    server.server.addService(
      { slow: method('Slow', false, false) },
      {
        slow: wrapUnary<Buffer, Buffer>(() => {
          entered();
          return new Promise<Buffer>((resolve) => (release = () => resolve(Buffer.from('done'))));
        }),
      },
    );
    const port = await server.bind('127.0.0.1:0');
    const Slow = makeGenericClientConstructor({ slow: method('Slow', false, false) }, 'test.Slow');
    const client = new Slow(`127.0.0.1:${port}`, credentials.createInsecure()) as unknown as Client & {
      slow(req: Buffer, cb: (e: ServiceError | null, r?: Buffer) => void): void;
    };
    const pending = callUnary<Buffer>((cb) => client.slow(Buffer.from('x'), cb));
    await inHandler;
    const shutdown = server.shutdown(5_000);
    release();
    assert.equal((await pending).toString(), 'done');
    assert.equal(await shutdown, 'graceful');
    client.close();
  });
});

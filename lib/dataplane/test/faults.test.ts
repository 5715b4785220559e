// Faults on a data channel, each stating what must survive: oversized frames, garbage and truncated
// streams close only the offending connection (the server keeps serving others, never throws);
// a killed or hung server fails every in-flight call as unavailable without hanging, and later
// calls reconnect; a graceful close finishes in-flight calls; every bound is a clear error.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { after, describe, it } from 'node:test';

import { type KvmeshError, LimitExceededError } from '@kvmesh/errors';

import {
  DataChannelClient,
  DataChannelProtocolError,
  DataChannelServer,
  DataChannelUnavailableError,
} from '../src/index.ts';
import { encodeFrameHead, FrameDecoder, FrameType, type Frame } from '../src/frame.ts';
import { ECHO, type Fixture, HANG, rejectsWithCode, sleep, SLOW, startServer, u32 } from './support.ts';

const cleanup: (() => Promise<unknown>)[] = [];
after(async () => {
  for (const fn of cleanup.reverse()) await fn();
});

async function setup(...args: Parameters<typeof startServer>): Promise<Fixture> {
  const f = await startServer(...args);
  cleanup.push(() => f.server.destroy());
  return f;
}

async function client(f: Fixture, o: Parameters<Fixture['connect']>[0] = {}): Promise<DataChannelClient> {
  const c = await f.connect(o);
  cleanup.push(() => c.close());
  return c;
}

const hello = (extra: Record<string, unknown> = {}): Buffer => {
  const blob = Buffer.from(JSON.stringify({ headerBytesMax: 65536, bodyBytesMax: 1 << 26, ...extra }));
  return encodeFrameHead(FrameType.hello, 0, 0, 0, blob, 0);
};

/** A raw socket that collects the frames it receives and resolves `closed` when the server hangs up. */
function raw(port: number): Promise<{ socket: Socket; frames: Frame[]; closed: Promise<void> }> {
  return new Promise((resolve, reject) => {
    const frames: Frame[] = [];
    const decoder = new FrameDecoder({ headerBytesMax: 1 << 20, bodyBytesMax: 1 << 28 }, (f) =>
      frames.push(f),
    );
    const socket = connect({ host: '127.0.0.1', port }, () => resolve({ socket, frames, closed }));
    const closed = new Promise<void>((done) => socket.on('close', () => done()));
    socket.on('data', (chunk: Buffer) => decoder.push(chunk));
    socket.on('error', () => undefined);
    socket.once('error', reject);
  });
}

function errorOf(frames: Frame[]): { code: string; message: string; details: Record<string, unknown> } {
  const e = frames.find((f) => f.type === FrameType.error);
  assert.ok(e !== undefined, `an ERROR frame among ${frames.map((f) => f.type).join(',')}`);
  return JSON.parse(e.header.toString()) as {
    code: string;
    message: string;
    details: Record<string, unknown>;
  };
}

async function stillServes(f: Fixture): Promise<void> {
  const c = await f.connect();
  const body = randomBytes(300_000);
  assert.ok(Buffer.from((await c.call(ECHO, new Uint8Array(0), body)).body).equals(body));
  await c.close();
}

describe('dataplane - faults on the server side', () => {
  it('dataplane - an oversized frame closes that connection with LIMIT_EXCEEDED; others keep working', async () => {
    const f = await setup({ limits: { bodyBytesMax: 1 << 20 } });
    const bystander = await client(f);
    const slow = bystander.call(SLOW, u32(50), randomBytes(1000));
    const r = await raw(f.port);
    r.socket.write(hello());
    r.socket.write(encodeFrameHead(FrameType.request, 42, ECHO, 0, new Uint8Array(0), (1 << 20) + 1));
    r.socket.write(randomBytes(64 * 1024)); // the start of a body the server must not buffer
    await r.closed;
    const err = errorOf(r.frames);
    assert.equal(err.code, 'LIMIT_EXCEEDED');
    assert.equal(err.message, `request frame body of ${(1 << 20) + 1} bytes exceeds bodyBytesMax ${1 << 20}`);
    assert.equal(r.frames.find((fr) => fr.type === FrameType.error)?.requestId, 42);
    assert.equal((await slow).body.length, 1000);
    await stillServes(f);
    assert.ok(f.errors.some((e) => e instanceof LimitExceededError));
  });

  it('dataplane - garbage and truncated streams are dropped without crashing the server', async () => {
    const f = await setup({ helloTimeoutMs: 200 });
    const inputs: Buffer[] = [
      Buffer.from('GET / HTTP/1.1\r\nHost: kvstore\r\n\r\n'),
      randomBytes(10_000),
      Buffer.concat([hello(), randomBytes(100)]),
      // valid HELLO, then a REQUEST whose body stops 1000 bytes short
      Buffer.concat([
        hello(),
        encodeFrameHead(FrameType.request, 1, ECHO, 0, Buffer.from('h'), 5000),
        randomBytes(4000),
      ]),
      // truncated prefix
      hello().subarray(0, 10),
      // a response frame is not something a client sends
      Buffer.concat([hello(), encodeFrameHead(FrameType.response, 1, ECHO, 0, new Uint8Array(0), 0)]),
      // HELLO that is not JSON
      encodeFrameHead(FrameType.hello, 0, 0, 0, Buffer.from('{not json'), 0),
    ];
    for (const input of inputs) {
      const r = await raw(f.port);
      r.socket.end(input);
      await r.closed;
    }
    // Silent connections are closed after helloTimeoutMs.
    const silent = await raw(f.port);
    await silent.closed;
    assert.equal(errorOf(silent.frames).code, 'DATA_CHANNEL_PROTOCOL');
    await stillServes(f);
    const reasons = f.errors.map((e) => String(e.details.reason));
    for (const reason of ['bad-magic', 'truncated', 'bad-frame-type', 'bad-hello', 'hello-timeout'])
      assert.ok(reasons.includes(reason), `${reason} in ${reasons.join(',')}`);
    assert.equal(f.server.stats().connections, 0);
  });

  it('dataplane - connections over connectionsMax are refused with LIMIT_EXCEEDED', async () => {
    const f = await setup({ limits: { connectionsMax: 2 } });
    const first = await client(f, { connections: 2 });
    await assert.rejects(
      f.connect(),
      (e: unknown) => e instanceof LimitExceededError && e.details.connectionsMax === 2,
    );
    assert.equal((await first.call(ECHO, Buffer.from('x'))).header.length, 1);
  });
});

describe('dataplane - faults on the client side', () => {
  it('dataplane - server killed mid-call: every in-flight call rejects as unavailable, later calls reconnect', async () => {
    const f = await setup();
    const c = await client(f, { connections: 2, timeoutMs: 5000 });
    const calls = Array.from({ length: 10 }, (_, i) =>
      c.call(i % 2 === 0 ? SLOW : HANG, u32(10_000), randomBytes(200_000)),
    );
    const settled = Promise.allSettled(calls);
    await sleep(50);
    const started = performance.now();
    await f.server.destroy();
    const results = await settled;
    assert.ok(performance.now() - started < 2000, 'rejections come from the reset, not from timeouts');
    for (const r of results) {
      assert.equal(r.status, 'rejected');
      const e = (r as PromiseRejectedResult).reason as KvmeshError;
      assert.ok(e instanceof DataChannelUnavailableError, String(e));
      assert.equal(e.kind, 'unavailable');
      assert.match(e.message, /connection lost with \d+ call\(s\) in flight/);
    }
    // No server: a new call fails fast with a connect error, not a hang.
    await rejectsWithCode(c.call(ECHO, new Uint8Array(0)), 'DATA_CHANNEL_UNAVAILABLE', (e) =>
      assert.equal(e.details.reason, 'connect'),
    );
    // A new server on the same port: the pool redials.
    const again = new DataChannelServer().handle(ECHO, async (req) => ({ body: req.body }));
    await again.listen({ host: '127.0.0.1', port: f.port });
    cleanup.push(() => again.close());
    const body = randomBytes(100_000);
    assert.ok(Buffer.from((await c.call(ECHO, new Uint8Array(0), body)).body).equals(body));
    assert.ok(c.stats().reconnects >= 1);
  });

  it('dataplane - a hung call times out: its connection is closed and the next call reconnects', async () => {
    const f = await setup();
    const c = await client(f, { connections: 1, timeoutMs: 300 });
    const hung = c.call(HANG, new Uint8Array(0));
    const neighbour = c.call(SLOW, u32(10_000), new Uint8Array(0));
    await rejectsWithCode(hung, 'DATA_CHANNEL_UNAVAILABLE', (e) => {
      assert.equal(e.details.reason, 'timeout');
      assert.match(e.message, /no response within 300 ms/);
    });
    await rejectsWithCode(neighbour, 'DATA_CHANNEL_UNAVAILABLE');
    assert.equal((await c.call(ECHO, Buffer.from('back'))).header.length, 4);
  });

  it('dataplane - a server that sends garbage or an oversized response fails pending calls with the cause', async () => {
    const bad: Server[] = [];
    cleanup.push(() => Promise.all(bad.map((s) => new Promise((r) => s.close(r)))));
    async function fakeServer(reply: (socket: Socket) => void): Promise<number> {
      const s = createServer((socket) => {
        socket.on('error', () => undefined);
        socket.once('data', () => {
          const ack = Buffer.from(
            JSON.stringify({ headerBytesMax: 1024, bodyBytesMax: 1 << 20, inFlightPerConnectionMax: 4 }),
          );
          socket.write(encodeFrameHead(FrameType.helloAck, 0, 0, 0, ack, 0));
          socket.once('data', () => reply(socket));
        });
      });
      bad.push(s);
      await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
      return (s.address() as { port: number }).port;
    }
    const garbage = await fakeServer((s) => s.write(randomBytes(64)));
    const huge = await fakeServer((s) =>
      s.write(encodeFrameHead(FrameType.response, 1, ECHO, 0, new Uint8Array(0), 2 << 20)),
    );
    const truncated = await fakeServer((s) =>
      s.end(
        Buffer.concat([
          encodeFrameHead(FrameType.response, 1, ECHO, 0, new Uint8Array(0), 100),
          randomBytes(50),
        ]),
      ),
    );
    for (const [port, pattern] of [
      [garbage, /bad frame magic/],
      [huge, /response frame body of 2097152 bytes exceeds bodyBytesMax 1048576/],
      [truncated, /closed the stream in the middle of a frame/],
    ] as const) {
      const c = await DataChannelClient.connect({
        host: '127.0.0.1',
        port,
        limits: { bodyBytesMax: 1 << 20 },
      });
      await rejectsWithCode(c.call(ECHO, new Uint8Array(0)), 'DATA_CHANNEL_UNAVAILABLE', (e) => {
        assert.equal(e.details.reason, 'protocol');
        assert.match(e.message, pattern);
      });
      await c.close();
    }
    // The protocol error type itself stays importable for callers that inspect causes.
    assert.equal(new DataChannelProtocolError('x').code, 'DATA_CHANNEL_PROTOCOL');
  });

  it('dataplane - graceful close: in-flight calls finish, new calls fail as unavailable', async () => {
    const f = await setup();
    const c = await client(f, { connections: 2 });
    const bodies = Array.from({ length: 6 }, () => randomBytes(150_000));
    const inFlight = bodies.map((b) => c.call(SLOW, u32(150), b));
    await sleep(30);
    const closing = f.server.close();
    const results = await Promise.all(inFlight);
    results.forEach((r, i) => assert.ok(Buffer.from(r.body).equals(bodies[i] as Buffer)));
    await closing;
    assert.equal(f.server.stats().connections, 0);
    await rejectsWithCode(c.call(ECHO, new Uint8Array(0)), 'DATA_CHANNEL_UNAVAILABLE');
  });

  it('dataplane - client close lets in-flight calls finish and refuses new ones; the wait queue is bounded', async () => {
    const f = await setup({ limits: { inFlightPerConnectionMax: 1 } });
    const c = await f.connect({ connections: 1, limits: { pendingCallsMax: 2 } });
    const first = c.call(SLOW, u32(100), Buffer.from('a'));
    const queued = [c.call(ECHO, new Uint8Array(0)), c.call(ECHO, new Uint8Array(0))].map((q) =>
      rejectsWithCode(q, 'DATA_CHANNEL_UNAVAILABLE', (e) => assert.equal(e.details.reason, 'client-closed')),
    );
    await rejectsWithCode(c.call(ECHO, new Uint8Array(0)), 'LIMIT_EXCEEDED', (e) =>
      assert.equal(e.details.pendingCallsMax, 2),
    );
    const closing = c.close();
    assert.equal((await first).body.length, 1);
    await Promise.all(queued);
    await closing;
    await rejectsWithCode(c.call(ECHO, new Uint8Array(0)), 'DATA_CHANNEL_UNAVAILABLE', (e) =>
      assert.equal(e.details.reason, 'client-closed'),
    );
  });
});

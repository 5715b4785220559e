// Data channel over real sockets on 127.0.0.1: bytes round-trip exactly at many sizes in both read
// modes, pipelined calls spread over the pool and each get their own response, bodies land in
// caller-supplied memory when asked, handler errors cross the wire with code, kind, message and
// details intact, and the token is enforced.
import assert from 'node:assert/strict';
import { randomBytes, randomInt } from 'node:crypto';
import { connect } from 'node:net';
import { after, describe, it } from 'node:test';

import { InvalidArgumentError, LimitExceededError } from '@kvmesh/errors';

import {
  DataChannelAuthError,
  DataChannelClient,
  DataChannelRemoteError,
  formatDataAddress,
  parseDataAddress,
} from '../src/index.ts';
import { encodeFrameHead, FrameDecoder, FrameType, type Frame } from '../src/frame.ts';
import { ECHO, FAIL, type Fixture, rejectsWithCode, SIZED, SLOW, startServer, u32 } from './support.ts';

const fixtures: Fixture[] = [];
const clients: DataChannelClient[] = [];
after(async () => {
  await Promise.all(clients.map((c) => c.close()));
  await Promise.all(fixtures.map((f) => f.server.close()));
});

async function setup(
  ...args: Parameters<typeof startServer>
): Promise<Fixture & { client: (o?: Parameters<Fixture['connect']>[0]) => Promise<DataChannelClient> }> {
  const f = await startServer(...args);
  fixtures.push(f);
  return {
    ...f,
    client: async (o) => {
      const c = await f.connect(o);
      clients.push(c);
      return c;
    },
  };
}

describe('dataplane - round trips', () => {
  for (const [clientDirect, serverDirect] of [
    [true, true],
    [false, false],
    [true, false],
  ] as const) {
    it(`dataplane - random bodies of many sizes come back byte for byte (direct reads: client ${clientDirect}, server ${serverDirect})`, async () => {
      const f = await setup({ directReads: serverDirect });
      const client = await f.client({ directReads: clientDirect, connections: 2 });
      const sizes = [
        0,
        1,
        23,
        24,
        25,
        4095,
        16 * 1024,
        64 * 1024 + 3,
        256 * 1024,
        1 << 20,
        4 << 20,
        4 * 1024 * 1024 + 7,
      ];
      for (const size of sizes) {
        const header = randomBytes(randomInt(0, 200));
        const body = randomBytes(size);
        const got = await client.call(ECHO, header, body);
        assert.ok(Buffer.from(got.header).equals(header), `header, size ${size}`);
        assert.equal(got.body.length, size);
        assert.ok(Buffer.from(got.body).equals(body), `body of ${size} bytes`);
      }
      // Response bodies the client did not send: the server's pattern must arrive intact too.
      for (const size of [1, 70_000, 3 << 20]) {
        const got = await client.call(SIZED, u32(size));
        assert.equal(got.body.length, size);
        for (let i = 0; i < size; i += 997) assert.equal(got.body[i], i & 0xff, `byte ${i} of ${size}`);
      }
    });
  }

  it('dataplane - many concurrent pipelined calls each get their own response', async () => {
    const f = await setup({ limits: { inFlightPerConnectionMax: 8 } });
    const client = await f.client({ connections: 3 });
    const bodies = Array.from({ length: 300 }, () => randomBytes(randomInt(0, 200_000)));
    const results = await Promise.all(
      bodies.map((body, i) =>
        i % 7 === 0 ? client.call(SLOW, u32(randomInt(0, 5)), body) : client.call(ECHO, u32(i), body),
      ),
    );
    results.forEach((r, i) => {
      assert.ok(Buffer.from(r.body).equals(bodies[i] as Buffer), `call ${i}`);
      if (i % 7 !== 0) assert.equal(Buffer.from(r.header).readUInt32LE(0), i);
    });
    const stats = f.server.stats();
    assert.equal(stats.requests, 300);
    assert.equal(stats.connections, 3);
    assert.equal(client.stats().inFlight, 0);
  });

  it('dataplane - the server in-flight bound is honoured (never more handlers than inFlightPerConnectionMax)', async () => {
    const f = await setup({ limits: { inFlightPerConnectionMax: 4 } });
    let running = 0;
    let runningMax = 0;
    f.server.handle(9, async () => {
      running++;
      runningMax = Math.max(runningMax, running);
      await new Promise((resolve) => setTimeout(resolve, 2));
      running--;
      return {};
    });
    const client = await f.client({ connections: 1, limits: { inFlightPerConnectionMax: 64 } });
    await Promise.all(Array.from({ length: 50 }, () => client.call(9, new Uint8Array(0))));
    assert.ok(runningMax <= 4, `ran ${runningMax} at once`);
    assert.ok(runningMax >= 2, 'calls were pipelined');
  });

  for (const directReads of [true, false]) {
    it(`dataplane - a client pipelining past the bound is throttled, not refused (server direct reads ${directReads})`, async () => {
      const f = await setup({ directReads, limits: { inFlightPerConnectionMax: 3 } });
      let running = 0;
      let runningMax = 0;
      f.server.handle(9, async (req) => {
        running++;
        runningMax = Math.max(runningMax, running);
        await new Promise((resolve) => setTimeout(resolve, 1));
        running--;
        return { header: req.header, body: req.body };
      });
      // A raw peer that ignores the announced bound: 40 requests in one write.
      const bodies = Array.from({ length: 40 }, () => randomBytes(randomInt(0, 40_000)));
      const frames: Frame[] = [];
      const decoder = new FrameDecoder({ headerBytesMax: 1 << 16, bodyBytesMax: 1 << 20 }, (fr) =>
        frames.push(fr),
      );
      const socket = connect({ host: '127.0.0.1', port: f.port });
      socket.on('data', (chunk: Buffer) => decoder.push(chunk));
      await new Promise((resolve) => socket.once('connect', resolve));
      const hello = Buffer.from(JSON.stringify({ headerBytesMax: 1 << 16, bodyBytesMax: 1 << 20 }));
      socket.write(
        Buffer.concat([
          encodeFrameHead(FrameType.hello, 0, 0, 0, hello, 0),
          ...bodies.flatMap((body, i) => [
            encodeFrameHead(FrameType.request, i + 1, 9, 0, u32(i), body.length),
            body,
          ]),
        ]),
      );
      while (frames.filter((fr) => fr.type === FrameType.response).length < bodies.length)
        await new Promise((resolve) => setTimeout(resolve, 5));
      socket.end();
      for (const fr of frames.filter((x) => x.type === FrameType.response)) {
        const i = fr.header.readUInt32LE(0);
        assert.equal(fr.requestId, i + 1);
        assert.ok(fr.body.equals(bodies[i] as Buffer), `response ${i}`);
      }
      assert.ok(runningMax <= 3, `ran ${runningMax} at once`);
    });
  }
});

describe('dataplane - caller-supplied memory', () => {
  it('dataplane - request bodies land in allocator memory, abandoned ones are handed back', async () => {
    const slab = Buffer.alloc(1 << 20);
    const given: Uint8Array[] = [];
    const abandoned: Uint8Array[] = [];
    const f = await setup({
      requestBodies: {
        allocate: ({ methodId, header, bytes }) => {
          if (methodId !== ECHO || header.length === 0 || bytes > 256 * 1024) return undefined;
          const memory = slab.subarray(given.length * 256 * 1024, given.length * 256 * 1024 + bytes);
          given.push(memory);
          return memory;
        },
        abandon: (memory) => abandoned.push(memory),
      },
    });
    let seen: Uint8Array | undefined;
    f.server.handle(8, async (req) => {
      seen = req.body;
      return {};
    });
    const client = await f.client();
    const body = randomBytes(200_000);
    const echoed = await client.call(ECHO, Buffer.from('slot'), body);
    assert.ok(Buffer.from(echoed.body).equals(body));
    assert.equal(given.length, 1);
    assert.ok(slab.subarray(0, body.length).equals(body), 'the bytes were received into the slab');
    // Not offered: no header, or another method, or too big.
    await client.call(ECHO, new Uint8Array(0), body);
    await client.call(8, Buffer.from('x'), body);
    assert.equal(given.length, 1);
    assert.ok(seen !== undefined && seen.buffer !== slab.buffer);
    // A body cut off by a dying client is handed back.
    const socket = connect({ host: '127.0.0.1', port: f.port });
    socket.resume();
    await new Promise((resolve) => socket.once('connect', resolve));
    const hello = Buffer.from(JSON.stringify({ headerBytesMax: 1024, bodyBytesMax: 1 << 20 }));
    socket.write(encodeFrameHead(FrameType.hello, 0, 0, 0, hello, 0));
    await new Promise((resolve) => setTimeout(resolve, 20));
    socket.write(encodeFrameHead(FrameType.request, 1, ECHO, 0, Buffer.from('k'), 100_000));
    socket.end(randomBytes(50_000));
    await new Promise((resolve) => socket.once('close', resolve));
    await new Promise((resolve) => setTimeout(resolve, 20));
    assert.equal(given.length, 2);
    assert.equal(abandoned.length, 1);
    assert.equal(abandoned[0], given[1]);
  });

  it('dataplane - responseInto receives a body that fits, a larger one gets its own buffer', async () => {
    const f = await setup();
    for (const directReads of [true, false]) {
      const client = await f.client({ directReads });
      const into = Buffer.alloc(300_000);
      const body = randomBytes(250_000);
      const got = await client.call(ECHO, new Uint8Array(0), body, { responseInto: into });
      assert.equal(got.body.buffer, into.buffer, 'the result is a view of the caller memory');
      assert.equal(got.body.length, body.length);
      assert.ok(into.subarray(0, body.length).equals(body));
      const big = randomBytes(400_000);
      const other = await client.call(ECHO, new Uint8Array(0), big, { responseInto: into });
      assert.notEqual(other.body.buffer, into.buffer);
      assert.ok(Buffer.from(other.body).equals(big));
    }
  });
});

describe('dataplane - errors', () => {
  it('dataplane - a handler KvmeshError arrives with the same code, kind, message and details', async () => {
    const f = await setup();
    const client = await f.client();
    const details = { hash: 'ab'.repeat(16), tier: 'dram', bytes: 262144 };
    const e = await rejectsWithCode(
      client.call(FAIL, Buffer.from(JSON.stringify({ code: 'BLOCK_NOT_FOUND', details }))),
      'BLOCK_NOT_FOUND',
    );
    assert.ok(e instanceof DataChannelRemoteError);
    assert.equal(e.kind, 'not-found');
    assert.equal(e.message, `block ${details.hash} not found`);
    assert.deepEqual(e.details, details);
    // Errors both sides know come back as their own class.
    const limit = await rejectsWithCode(
      client.call(FAIL, Buffer.from(JSON.stringify({ code: 'LIMIT_EXCEEDED', details: { hash: 'x' } }))),
      'LIMIT_EXCEEDED',
    );
    assert.ok(!(limit instanceof LimitExceededError), 'kind differs (not-found), so it stays remote');
    const shared = await rejectsWithCode(
      client.call(
        FAIL,
        Buffer.from(
          JSON.stringify({ code: 'LIMIT_EXCEEDED', kind: 'resource-exhausted', details: { n: 1 } }),
        ),
      ),
      'LIMIT_EXCEEDED',
    );
    assert.ok(shared instanceof LimitExceededError);
    assert.deepEqual(shared.details, { n: 1 });
    // A plain Error becomes 'internal' with its message, and the connection still works.
    const plain = await rejectsWithCode(
      client.call(FAIL, Buffer.from(JSON.stringify({ plain: true, code: '', details: {} }))),
      'INTERNAL',
    );
    assert.equal(plain.kind, 'internal');
    assert.match(plain.message, /plain failure/);
    await rejectsWithCode(client.call(77, new Uint8Array(0)), 'DATA_CHANNEL_METHOD_NOT_FOUND', (err) =>
      assert.equal(err.details.methodId, 77),
    );
    const ok = await client.call(ECHO, Buffer.from('still fine'));
    assert.equal(Buffer.from(ok.header).toString(), 'still fine');
  });

  it('dataplane - requests over the negotiated bounds are refused locally, the connection lives on', async () => {
    const f = await setup({ limits: { bodyBytesMax: 1000, headerBytesMax: 100 } });
    const client = await f.client();
    await rejectsWithCode(
      client.call(ECHO, new Uint8Array(0), new Uint8Array(1001)),
      'LIMIT_EXCEEDED',
      (e) => {
        assert.ok(e instanceof LimitExceededError);
        assert.deepEqual(e.details, { methodId: ECHO, part: 'body', bytes: 1001, bytesMax: 1000 });
      },
    );
    await rejectsWithCode(client.call(ECHO, new Uint8Array(101)), 'LIMIT_EXCEEDED');
    await assert.rejects(client.call(0, new Uint8Array(0)), InvalidArgumentError);
    assert.equal((await client.call(ECHO, new Uint8Array(0), new Uint8Array(1000))).body.length, 1000);
  });

  it('dataplane - a response over the client bound becomes a LIMIT_EXCEEDED error response', async () => {
    const f = await setup();
    const client = await f.client({ limits: { bodyBytesMax: 4096 } });
    await rejectsWithCode(client.call(SIZED, u32(5000)), 'LIMIT_EXCEEDED', (e) => {
      assert.equal(e.details.bytesMax, 4096);
      assert.equal(e.details.bytes, 5000);
    });
    assert.equal((await client.call(SIZED, u32(4096))).body.length, 4096);
  });

  it('dataplane - token: right one connects, wrong or missing one is refused with DATA_CHANNEL_AUTH', async () => {
    const f = await setup({ token: 's3cret' });
    const good = await f.client();
    assert.equal((await good.call(ECHO, Buffer.from('hi'))).header.length, 2);
    await assert.rejects(
      DataChannelClient.connect({ host: '127.0.0.1', port: f.port, token: 'wrong' }),
      (e: unknown) => e instanceof DataChannelAuthError && /does not match/.test(e.message),
    );
    await assert.rejects(
      DataChannelClient.connect({ host: '127.0.0.1', port: f.port }),
      (e: unknown) => e instanceof DataChannelAuthError && /no token/.test(e.message),
    );
    assert.equal(f.errors.filter((e) => e.code === 'DATA_CHANNEL_AUTH').length, 2);
    assert.equal((await good.call(ECHO, Buffer.from('ok'))).header.length, 2);
  });

  it('dataplane - addresses format and parse as host:port', () => {
    assert.equal(formatDataAddress({ host: '10.0.0.1', port: 7001 }), '10.0.0.1:7001');
    assert.equal(formatDataAddress({ host: '::1', port: 7001 }), '[::1]:7001');
    assert.deepEqual(parseDataAddress('[::1]:7001'), { host: '::1', port: 7001 });
    assert.deepEqual(parseDataAddress('kvstore-0.kvstore:9000'), { host: 'kvstore-0.kvstore', port: 9000 });
    for (const bad of ['nohost', ':80', 'h:0', 'h:70000', '::1:80'])
      assert.throws(() => parseDataAddress(bad), InvalidArgumentError, bad);
  });
});

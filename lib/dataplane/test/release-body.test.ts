// DataResponse.releaseBody: a handler may lend a response body from memory it reuses, and the
// server calls releaseBody once it holds no reference to the body any more. What must hold: it runs
// exactly once per response, never before the socket took the bytes (a body reused right after its
// release still arrives intact), and also when the body is never sent (refused over the client's
// bound, connection gone).
import assert from 'node:assert/strict';
import { randomInt } from 'node:crypto';
import { after, describe, it } from 'node:test';

import { DataChannelClient, DataChannelServer } from '../src/index.ts';
import { rejectsWithCode, u32 } from './support.ts';

const LENT = 1;
const closers: (() => Promise<unknown>)[] = [];
after(async () => {
  for (const close of closers.splice(0).reverse()) await close();
});

/** Fills `body` with a pattern that names `seed`, so a body overwritten by another reply shows. */
function fill(body: Uint8Array, seed: number): void {
  for (let i = 0; i < body.length; i += 4096) body[i] = (seed + i / 4096) & 0xff;
  body[body.length - 1] = seed & 0xff;
}

function matches(body: Uint8Array, seed: number): boolean {
  for (let i = 0; i < body.length; i += 4096) if (body[i] !== ((seed + i / 4096) & 0xff)) return false;
  return body[body.length - 1] === (seed & 0xff);
}

/**
 * A server whose LENT method answers from a few reused buffers: a buffer is refilled for the next
 * reply only after releaseBody gave it back. The header names the seed (u32le).
 */
async function lendingServer(buffers: number, bodyBytes: number) {
  const free: Uint8Array[] = Array.from({ length: buffers }, () => new Uint8Array(bodyBytes));
  const waiting: (() => void)[] = [];
  const stats = { released: 0, lent: 0 };
  let gate: Promise<void> = Promise.resolve();
  const server = new DataChannelServer();
  server.handle(LENT, async (request) => {
    await gate;
    while (free.length === 0) await new Promise<void>((resolve) => waiting.push(resolve));
    const body = free.pop() as Uint8Array;
    fill(body, Buffer.from(request.header).readUInt32LE(0));
    stats.lent++;
    let released = false;
    return {
      body,
      releaseBody: () => {
        assert.ok(!released, 'releaseBody runs once per response');
        released = true;
        stats.released++;
        free.push(body);
        waiting.shift()?.();
      },
    };
  });
  const { port } = await server.listen({ host: '127.0.0.1', port: 0 });
  closers.push(() => server.close());
  return {
    server,
    stats,
    hold: (until: Promise<void>) => {
      gate = until;
    },
    connect: async (o: Partial<Parameters<typeof DataChannelClient.connect>[0]> = {}) => {
      const client = await DataChannelClient.connect({ host: '127.0.0.1', port, ...o });
      closers.push(() => client.close());
      return client;
    },
  };
}

describe('dataplane - lent response bodies', () => {
  it('dataplane - a body reused right after releaseBody still arrived intact; one release per response', async () => {
    const bodyBytes = 1 << 20;
    const f = await lendingServer(2, bodyBytes);
    const client = await f.connect({ connections: 2 });
    const seeds = Array.from({ length: 48 }, () => randomInt(0, 2 ** 31));
    const got = await Promise.all(seeds.map((seed) => client.call(LENT, u32(seed))));
    for (const [i, seed] of seeds.entries()) {
      assert.equal(got[i]?.body.length, bodyBytes);
      assert.ok(matches(got[i]?.body as Uint8Array, seed), `reply ${i} came back overwritten`);
    }
    assert.equal(f.stats.lent, seeds.length);
    assert.equal(f.stats.released, seeds.length);
  });

  it('dataplane - releaseBody runs for a body refused over the client bound and for a connection gone', async () => {
    const f = await lendingServer(1, 8192);
    const small = await f.connect({ limits: { bodyBytesMax: 4096 } });
    await rejectsWithCode(small.call(LENT, u32(1)), 'LIMIT_EXCEEDED');
    assert.equal(f.stats.released, 1, 'a refused body is released');

    let open!: () => void;
    f.hold(new Promise<void>((resolve) => (open = resolve)));
    const client = await f.connect();
    const call = client.call(LENT, u32(2)).catch((err: unknown) => err);
    // The request is in the handler (held at the gate) when the server drops every connection.
    while (f.server.stats().inFlight === 0) await new Promise((resolve) => setImmediate(resolve));
    await f.server.destroy();
    open();
    assert.ok((await call) instanceof Error, 'the call fails with the connection');
    while (f.stats.lent < 2) await new Promise((resolve) => setImmediate(resolve));
    await new Promise((resolve) => setImmediate(resolve));
    assert.equal(f.stats.released, 2, 'a body for a connection gone is released');
  });
});

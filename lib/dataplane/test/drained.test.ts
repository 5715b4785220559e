// drained(): every response held back on one congested connection waits for the same 'drain'. With
// a listener pair per waiter, a busy connection passed Node's 10-listener warning (seen under the
// mesh bench); the waiters must share one pair and all wake when the socket drains or closes.
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { createServer, connect, type Socket } from 'node:net';
import { describe, it } from 'node:test';

import { drained } from '../src/wire.ts';

/** A connected pair on loopback whose reading side is paused, so the writing side congests. */
async function congestedPair(): Promise<{ writer: Socket; reader: Socket; close: () => void }> {
  const server = createServer();
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const address = server.address() as { port: number };
  const accepted = once(server, 'connection') as Promise<[Socket]>;
  const writer = connect(address.port, '127.0.0.1');
  await once(writer, 'connect');
  const [reader] = await accepted;
  reader.pause();
  const chunk = Buffer.alloc(1 << 20);
  while (writer.write(chunk)) await new Promise((r) => setImmediate(r));
  return {
    writer,
    reader,
    close: () => {
      writer.destroy();
      reader.destroy();
      server.close();
    },
  };
}

describe('dataplane - drained', () => {
  it('drained - concurrent waiters share one listener pair and all wake on drain', async () => {
    const { writer, reader, close } = await congestedPair();
    try {
      assert.equal(writer.writableNeedDrain, true);
      const drainBefore = writer.listenerCount('drain');
      const closeBefore = writer.listenerCount('close');
      const waits = Array.from({ length: 32 }, () => drained(writer));
      assert.equal(writer.listenerCount('drain'), drainBefore + 1);
      assert.equal(writer.listenerCount('close'), closeBefore + 1);
      let woken = 0;
      for (const w of waits) void w.then(() => woken++);
      reader.resume();
      await Promise.all(waits);
      assert.equal(woken, 32);
      assert.equal(writer.listenerCount('drain'), drainBefore);
      assert.equal(writer.listenerCount('close'), closeBefore);
    } finally {
      close();
    }
  });

  it('drained - waiters wake when the socket closes instead, and a new wait starts fresh', async () => {
    const { writer, close } = await congestedPair();
    try {
      const waits = [drained(writer), drained(writer)];
      writer.destroy();
      await Promise.all(waits);
      // A destroyed socket never drains: no wait at all.
      await drained(writer);
    } finally {
      close();
    }
  });
});

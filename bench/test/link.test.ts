// The mesh bench's emulated store link: on a port of its own, traffic through the shaped classes is
// counted, and removing the link leaves loopback unshaped. Needs root and tc with htb (skipped
// otherwise, and while something else shapes loopback); asserts bytes, never times.
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { connect, createServer, type AddressInfo } from 'node:net';
import { describe, it } from 'node:test';

import { loopbackRootQdisc, shapeStoreLink } from '../src/mesh/link.ts';

function loopbackRoot(): string | undefined {
  try {
    return loopbackRootQdisc();
  } catch {
    return undefined;
  }
}

const root = loopbackRoot();
const skip =
  process.getuid?.() !== 0
    ? 'needs root'
    : root === undefined
      ? 'needs tc'
      : root !== 'noqueue'
        ? `loopback is already shaped (${root})`
        : false;

describe('bench - store link', { skip }, () => {
  it('link - refuses a rate that is not above 0', () => {
    assert.throws(() => shapeStoreLink([1], 0), /above 0 Mbit\/s, got 0/);
    assert.throws(() => shapeStoreLink([1], Number.NaN), /above 0 Mbit\/s/);
  });

  it('link - counts what crosses the shaped port and removes the shaping', async () => {
    const payload = Buffer.alloc(1 << 20, 7);
    const server = createServer((socket) => {
      socket.end(payload);
    });
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    const port = (server.address() as AddressInfo).port;
    const link = shapeStoreLink([port], 1000);
    try {
      assert.equal(loopbackRoot(), 'htb');
      assert.throws(() => shapeStoreLink([port], 1000), /already has a root qdisc 'htb'/);
      const socket = connect({ host: '127.0.0.1', port });
      let received = 0;
      socket.on('data', (chunk: Buffer) => (received += chunk.length));
      await once(socket, 'end');
      assert.equal(received, payload.length);
      // The server's bytes leave from the shaped port: all of them, plus TCP/IP headers.
      assert.ok(link.bytes() >= payload.length, `shaped bytes ${link.bytes()}`);
    } finally {
      link.remove();
      server.close();
    }
    assert.equal(loopbackRoot(), 'noqueue');
    assert.equal(link.bytes(), 0);
    link.remove();
  });
});

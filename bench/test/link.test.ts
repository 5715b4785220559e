// The mesh bench's emulated store link: on a port of its own, traffic through the shaped classes is
// counted, and removing the link leaves loopback unshaped; the mesh suite calibrates it from what
// the workers measured on loopback and runs its policies behind it. Needs root and tc with htb (skipped
// otherwise, and while something else shapes loopback); asserts bytes, never times.
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { connect, createServer, type AddressInfo } from 'node:net';
import { describe, it } from 'node:test';

import { loopbackRootQdisc, shapeStoreLink, storeLinkUnavailable } from '../src/mesh/link.ts';
import { calibratedLinkMbit } from '../src/mesh/rates.ts';
import { assertMeshPolicies, bench, meshSmokeArgs, withTinyModel } from './helpers.ts';

const skip = storeLinkUnavailable() ?? false;

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
      assert.equal(loopbackRootQdisc(), 'htb');
      assert.throws(() => shapeStoreLink([port], 1000), /already shaped \(root qdisc htb\)/);
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
    assert.equal(loopbackRootQdisc(), 'noqueue');
    assert.equal(link.bytes(), 0);
    link.remove();
  });
});

// In this file, not beside the other mesh smoke test: it shapes loopback, which the link tests
// above need unshaped, and the files of one run-tests call run two at a time.
describe('bench - mesh over the calibrated store link', { skip }, () => {
  it('link - the mesh suite runs loopback, calibrates the link from the workers and runs behind it', () => {
    withTinyModel('mesh-link', (modelDir) => {
      const out = bench(
        'mesh',
        ...meshSmokeArgs(modelDir),
        '--store-link',
        'calibrated',
        '--fetch-compute',
        '2',
      );
      assert.equal(loopbackRootQdisc(), 'noqueue', 'the link is gone after the run');
      const link = out.storeLink as {
        regime: string;
        mbit: number;
        calibration: { fetchComputeRatio: number; kvBytesPerToken: number; computeMsPerToken: number };
        workerRates: { computeMsPerToken: number };
      };
      assert.equal(link.regime, 'network');
      assert.equal(link.calibration.fetchComputeRatio, 2);
      // f32 KV of the tiny model: K and V × 2 layers × 2 kv heads × 32 dims × 4 B, plus the payload's
      // header and alignment spread over a 16-token block.
      const kvBytes = link.calibration.kvBytesPerToken;
      assert.ok(kvBytes >= 1024 && kvBytes < 1024 + 64, `${kvBytes} B a token`);
      assert.ok(link.calibration.computeMsPerToken > 0);
      const expected = calibratedLinkMbit(
        link.calibration.kvBytesPerToken,
        link.calibration.computeMsPerToken,
        2,
      );
      assert.ok(Math.abs(link.mbit - expected) <= 1e-3 * expected, `${link.mbit} vs ${expected} Mbit/s`);
      assert.ok(link.workerRates.computeMsPerToken > 0, 'the workers measured the network rounds too');
      assertMeshPolicies(out.policies, out.ratio);
      for (const [policy, figures] of Object.entries(
        out.policies as Record<string, { storeLinkBytes: number }>,
      ))
        assert.ok(figures.storeLinkBytes > 0, `${policy} moved blocks over the link`);
      const loopback = out.loopback as { policies: unknown; ratio: unknown };
      assertMeshPolicies(loopback.policies, loopback.ratio);
    });
  });
});

// The harness itself: spawnService's ready-line protocol (success, crash before ready, silence,
// stop/kill9 escalation) against a fixture service, plus waitFor and freePort.
import assert from 'node:assert/strict';
import { connect } from 'node:net';
import { describe, it } from 'node:test';

import { freePort, liveChildren, spawnService, waitFor } from '@kvmesh/test-harness';

const FIXTURE = 'test/harness-tests/fixtures/ready-service.ts';

function readGreeting(port: number): Promise<string> {
  return new Promise((resolve, reject) => {
    let text = '';
    const socket = connect(port, '127.0.0.1');
    socket.on('data', (b) => (text += b.toString()));
    socket.on('end', () => resolve(text));
    socket.on('error', reject);
  });
}

describe('harness - spawnService', () => {
  it('harness - resolves with the ready line info; stop() ends the child with SIGTERM', async () => {
    const svc = await spawnService({ name: 'fixture', entry: FIXTURE, env: { KVMESH_NODE_ID: 'fx-1' } });
    assert.equal(svc.info['nodeId'], 'fx-1');
    assert.equal(svc.info['seq'], '7', 'bigints in the ready info arrive as decimal strings');
    assert.equal('ready' in svc.info, false);
    const port = svc.info['port'];
    assert.equal(typeof port, 'number');
    assert.equal(await readGreeting(port as number), 'hello\n');
    assert.match(svc.stdoutTail(), /an ordinary stdout line/);
    await waitFor(() => svc.stderrTail().includes(`listening on ${String(port)}`));
    assert.deepEqual(await svc.stop(), { code: 0, signal: null });
    assert.deepEqual(svc.exitInfo, { code: 0, signal: null });
  });

  it('harness - a child that exits before ready rejects with its stderr', async () => {
    await assert.rejects(
      spawnService({ name: 'crasher', entry: FIXTURE, args: ['--mode', 'crash'] }),
      /crasher .* exited \(code 3, signal null\) before it was ready; stderr tail:\nfixture: cannot open the model directory/s,
    );
  });

  it('harness - a child that never prints the ready line is killed at the timeout', async () => {
    const before = liveChildren();
    await assert.rejects(
      spawnService({ name: 'mute', entry: FIXTURE, args: ['--mode', 'silent'], readyTimeoutMs: 3_000 }),
      /mute .* printed no ready line within 3000 ms; stderr tail:\nfixture: listening on/s,
    );
    await waitFor(() => liveChildren() === before, { message: 'the silent child is gone' });
  });

  it('harness - stop() escalates to SIGKILL for a child that ignores SIGTERM; kill9 is immediate', async () => {
    const stubborn = await spawnService({ name: 'stubborn', entry: FIXTURE, args: ['--mode', 'stubborn'] });
    assert.deepEqual(await stubborn.stop(300), { code: null, signal: 'SIGKILL' });
    const crashed = await spawnService({ name: 'victim', entry: FIXTURE });
    assert.deepEqual(await crashed.kill9(), { code: null, signal: 'SIGKILL' });
    assert.deepEqual(await crashed.exited, { code: null, signal: 'SIGKILL' });
  });
});

describe('harness - helpers', () => {
  it('harness - freePort gives distinct usable ports', async () => {
    const [a, b] = await Promise.all([freePort(), freePort()]);
    assert.ok(a! > 0 && b! > 0);
  });

  it('harness - waitFor returns the first truthy value and times out with the last error', async () => {
    let n = 0;
    assert.equal(
      await waitFor(() => (++n >= 3 ? `done after ${n}` : undefined), { intervalMs: 1 }),
      'done after 3',
    );
    await assert.rejects(
      waitFor(
        () => {
          throw new Error('still booting');
        },
        { timeoutMs: 50, intervalMs: 5, message: 'service up' },
      ),
      /waitFor: service up not met within 50 ms; last error: still booting/,
    );
  });
});

// Unit tests of the client's concurrency bounds: the semaphore never lends more permits than it
// has, hands a released permit to the oldest waiter, and refuses waiters beyond its bound; the
// bounded map keeps order, never runs more than its concurrency, and rethrows the first failure.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { Semaphore, mapBounded } from '../src/index.ts';

const tick = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

describe('sdk bounded - semaphore and bounded map', () => {
  it('semaphore - permits are bounded, FIFO on release, and waiters beyond the bound are LIMIT_EXCEEDED', async () => {
    const sem = new Semaphore(2, 2);
    const r1 = await sem.acquire();
    await sem.acquire();
    const order: number[] = [];
    const w1 = sem.acquire().then((release) => (order.push(1), release));
    const w2 = sem.acquire().then((release) => (order.push(2), release));
    await assert.rejects(sem.acquire(), { code: 'LIMIT_EXCEEDED', kind: 'resource-exhausted' });
    assert.equal(sem.inUse, 2);
    assert.equal(sem.waiting, 2);
    r1();
    r1(); // a second release of the same permit is a no-op
    const release1 = await w1;
    await tick();
    assert.deepEqual(order, [1]);
    assert.equal(sem.inUse, 2);
    release1();
    (await w2)();
    assert.deepEqual(order, [1, 2]);
    assert.equal(sem.inUse, 1);
  });

  it('bounded map - results keep item order and at most `concurrency` run at once', async () => {
    let running = 0;
    let peak = 0;
    const out = await mapBounded([5, 1, 4, 2, 3, 0, 6], 3, async (n) => {
      running++;
      peak = Math.max(peak, running);
      for (let i = 0; i < n; i++) await tick();
      running--;
      return n * 10;
    });
    assert.deepEqual(out, [50, 10, 40, 20, 30, 0, 60]);
    assert.equal(peak, 3);
  });

  it('bounded map - the first failure stops new items and is rethrown after the running ones settle', async () => {
    const started: number[] = [];
    await assert.rejects(
      mapBounded([0, 1, 2, 3, 4, 5], 2, async (n) => {
        started.push(n);
        await tick();
        if (n === 1) throw new Error('boom');
        return n;
      }),
      /boom/,
    );
    assert.ok(started.length < 6, `started ${started.join(',')}`);
  });
});

// Read leases, pins with TTL, and delete under the store's protection rules, driven by a fake clock:
// a leased or pinned block survives eviction exactly until its protection ends.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { InvalidArgumentError, LimitExceededError } from '@kvmesh/errors';

import { BLOCK_BYTES, NS, chain, heldHashes, makeStore } from './helpers.ts';

/** A store of 2 blocks that evicts exactly one block per overflowing put. */
function twoBlockStore(config: Parameters<typeof makeStore>[0] = {}): ReturnType<typeof makeStore> {
  return makeStore({ bytesBudget: 2 * BLOCK_BYTES, highWatermark: 1, lowWatermark: 1, ...config });
}

test('lease - a leased block is passed over by eviction until the lease ends', () => {
  const { store, clock } = twoBlockStore();
  const [a, b, c, d] = [chain(1)[0]!, chain(1)[0]!, chain(1)[0]!, chain(1)[0]!];
  store.put(a);
  store.put(b);
  clock.advance(1);
  store.get(NS, a.hash, 50); // protected until 1051
  store.get(NS, b.hash, 0);
  // a is the least recently used block but leased: b goes.
  assert.deepEqual(
    store.put(c).evicted.map((r) => r.hash),
    [b.hash],
  );
  clock.advance(49); // 1050: one ms left
  assert.deepEqual(
    store.put(d).evicted.map((r) => r.hash),
    [c.hash],
  );
  clock.advance(1); // 1051: expired
  assert.deepEqual(
    store.put(b).evicted.map((r) => r.hash),
    [a.hash],
  );
});

test('lease - capped at leaseMsMax, never shortened, and 0 takes none', () => {
  const { store, clock } = twoBlockStore({ leaseMsMax: 100 });
  const [a, b, c] = [chain(1)[0]!, chain(1)[0]!, chain(1)[0]!];
  store.put(a);
  store.put(b);
  store.get(NS, a.hash, 1_000_000); // capped: until 1100
  store.get(NS, a.hash, 10); // shorter: keeps 1100
  assert.equal(store.stats().protectedBlocks, 1);
  clock.advance(99);
  store.get(NS, a.hash, 0);
  store.get(NS, b.hash, 0);
  // a is the least recently used block, still leased at 1099.
  assert.deepEqual(
    store.put(c).evicted.map((r) => r.hash),
    [b.hash],
  );
  clock.advance(1);
  assert.equal(store.tick().released, 1);
  assert.equal(store.stats().protectedBlocks, 0);
  assert.throws(() => store.get(NS, a.hash, -1), InvalidArgumentError);
  assert.throws(() => store.get(NS, a.hash, 1.5), InvalidArgumentError);
});

test('lease - leaseMsMax 0 disables leases', () => {
  const { store } = twoBlockStore({ leaseMsMax: 0 });
  const [a] = chain(1);
  store.put(a!);
  store.get(NS, a!.hash, 1_000);
  assert.equal(store.stats().protectedBlocks, 0);
});

test('pin - pinned blocks are never evicted; the pin expires after its ttl', () => {
  const { store, clock } = twoBlockStore();
  const [a, b, c, d] = [chain(1)[0]!, chain(1)[0]!, chain(1)[0]!, chain(1)[0]!];
  store.put(a);
  store.put(b);
  assert.deepEqual(store.pin(NS, [a.hash, c.hash], 'req-1', 200), { pinned: 1, missing: [c.hash] });
  assert.deepEqual(
    store.put(c).evicted.map((r) => r.hash),
    [b.hash],
  );
  clock.advance(199);
  assert.deepEqual(
    store.put(d).evicted.map((r) => r.hash),
    [c.hash],
  );
  clock.advance(1);
  assert.deepEqual(
    store.put(b).evicted.map((r) => r.hash),
    [a.hash],
  );
});

test('pin - ttl 0 takes the default, and long ttls are capped', () => {
  const { store, clock } = twoBlockStore({ pinTtlMsDefault: 30, pinTtlMsMax: 60 });
  const [a, b] = [chain(1)[0]!, chain(1)[0]!];
  store.put(a);
  store.put(b);
  store.pin(NS, [a.hash], 'default');
  store.pin(NS, [b.hash], 'capped', 1_000_000);
  clock.advance(29);
  assert.equal(store.tick().released, 0);
  clock.advance(1);
  assert.equal(store.tick().released, 1);
  assert.deepEqual(store.delete(NS, a.hash).deleted, true);
  clock.advance(29);
  assert.deepEqual(store.delete(NS, b.hash), { deleted: false, reason: 'pinned' });
  clock.advance(1);
  assert.equal(store.delete(NS, b.hash).deleted, true);
});

test('pin - re-pinning by the same holder renews; other holders keep the block pinned', () => {
  const { store, clock } = makeStore();
  const [a] = chain(1);
  store.put(a!);
  store.pin(NS, [a!.hash], 'h1', 100);
  clock.advance(90);
  store.pin(NS, [a!.hash], 'h1', 100); // renewed: until 1190
  store.pin(NS, [a!.hash], 'h2', 50); // until 1140
  clock.advance(20); // 1110: both unexpired
  assert.equal(store.unpin(NS, [a!.hash], 'h1'), 1);
  assert.equal(store.unpin(NS, [a!.hash], 'h1'), 0);
  assert.deepEqual(store.delete(NS, a!.hash), { deleted: false, reason: 'pinned' });
  clock.advance(30); // 1140: h2 expired
  assert.equal(store.unpin(NS, [a!.hash], 'h2'), 0, 'an expired pin is not counted as released');
  assert.equal(store.delete(NS, a!.hash).deleted, true);
});

test("pin - a renewal may shorten the pin to the holder's latest ttl", () => {
  const { store, clock } = makeStore();
  const [a] = chain(1);
  store.put(a!);
  store.pin(NS, [a!.hash], 'h1', 1_000);
  store.pin(NS, [a!.hash], 'h1', 10);
  clock.advance(10);
  assert.equal(store.tick().released, 1);
});

test('pin - pinHoldersMax is all or nothing per request', () => {
  const { store, clock } = makeStore({ pinHoldersMax: 2 });
  const [a, b] = chain(2);
  store.put(a!);
  store.put(b!);
  store.pin(NS, [b!.hash], 'h1', 10);
  store.pin(NS, [b!.hash], 'h2', 100);
  assert.throws(
    () => store.pin(NS, [a!.hash, b!.hash], 'h3', 100),
    (err: unknown) => err instanceof LimitExceededError && err.details.pinHoldersMax === 2,
  );
  assert.equal(store.stats().protectedBlocks, 1, 'a was not pinned either');
  // An existing holder renews within the bound.
  assert.equal(store.pin(NS, [b!.hash], 'h2', 100).pinned, 1);
  // Expired holders free their slot.
  clock.advance(10);
  assert.equal(store.pin(NS, [a!.hash, b!.hash], 'h3', 100).pinned, 2);
});

test('pin - request bounds and holder ids are checked', () => {
  const { store } = makeStore({ hashesPerRequestMax: 2 });
  const [a] = chain(1);
  store.put(a!);
  assert.throws(() => store.pin(NS, [a!.hash, a!.hash, a!.hash], 'h'), LimitExceededError);
  assert.throws(() => store.unpin(NS, [a!.hash, a!.hash, a!.hash], 'h'), LimitExceededError);
  assert.throws(() => store.pin(NS, [a!.hash], ''), InvalidArgumentError);
  assert.throws(() => store.pin(NS, [a!.hash], 'h'.repeat(257)), InvalidArgumentError);
  assert.throws(() => store.pin(NS, [a!.hash], 'h', -5), InvalidArgumentError);
  assert.equal(store.stats().protectedBlocks, 0);
});

test('delete - respects children, pins and leases, then removes with one event', () => {
  const { store, clock, events } = makeStore();
  const [a, b] = chain(2);
  store.put(a!);
  store.put(b!);
  assert.deepEqual(store.delete(NS, chain(1)[0]!.hash), { deleted: false, reason: 'not-found' });
  assert.deepEqual(store.delete(NS, a!.hash), { deleted: false, reason: 'has-children' });
  store.get(NS, b!.hash, 10);
  assert.deepEqual(store.delete(NS, b!.hash), { deleted: false, reason: 'leased' });
  clock.advance(10);
  store.pin(NS, [b!.hash], 'h', 10);
  assert.deepEqual(store.delete(NS, b!.hash), { deleted: false, reason: 'pinned' });
  clock.advance(10);
  const seq = store.lastEventSeq;
  const result = store.delete(NS, b!.hash);
  assert.equal(result.deleted, true);
  assert.equal(store.lastEventSeq, seq + 1n);
  assert.equal(events.at(-1)?.removed.length, 1);
  assert.equal(store.get(NS, a!.hash)?.localChildren, 0);
  assert.equal(store.delete(NS, a!.hash).deleted, true);
  assert.deepEqual(heldHashes(store), []);
  const stats = store.stats();
  assert.equal(stats.deleted, 2);
  assert.equal(stats.evictions, 0);
  assert.equal(stats.bytesUsed, 0);
});

test('stats - hits, misses and hits by tier', () => {
  const { store } = makeStore();
  const [a] = chain(1);
  store.put(a!);
  store.get(NS, a!.hash);
  store.get(NS, a!.hash);
  store.get(NS, chain(1)[0]!.hash);
  store.has(NS, a!.hash);
  const stats = store.stats();
  assert.equal(stats.hits, 2);
  assert.equal(stats.misses, 1);
  assert.deepEqual(stats.hitsByTier, { dram: 2, far: 0, ssd: 0 });
});

// The block store against a brute-force reference model under random operations: after every step
// the held set, the eviction victims (exact order), byte accounting, local-children counts and the
// state rebuilt from the event log must all agree. The reference recomputes eligibility from
// scratch (O(n²)), so it checks the incremental heaps rather than restating them. A failing run prints
// its seed; MODEL_SEED=<seed> replays it.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { LimitExceededError } from '@kvmesh/errors';
import type { BlockHash, Namespace } from '@kvmesh/protocol';

import { StoreFullError, type BlockRecord, type PutBlockInput } from '../../src/core/index.ts';
import { BLOCK_BYTES, FakeClock, NS_A, NS_B, chain, entryBytes, hex, makeStore } from './helpers.ts';

/** mulberry32: a small seeded PRNG so a failing run can be replayed from its printed seed. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const CONFIG = {
  bytesBudget: 10 * BLOCK_BYTES,
  blocksMax: 9,
  highWatermark: 0.9,
  lowWatermark: 0.6,
  leaseMsMax: 100,
  pinTtlMsDefault: 30,
  pinTtlMsMax: 400,
  pinHoldersMax: 2,
};

interface ModelBlock {
  input: PutBlockInput;
  key: string;
  parentKey: string | null;
  bytes: number;
  access: number;
  leaseUntilMs: number;
  pins: Map<string, number>;
}

const keyOf = (namespace: Namespace, hash: BlockHash): string => `${namespace}/${hash}`;

class Reference {
  readonly held = new Map<string, ModelBlock>();
  private access = 0;

  bytesUsed(): number {
    let sum = 0;
    for (const block of this.held.values()) sum += block.bytes;
    return sum;
  }

  isProtected(block: ModelBlock, now: number): boolean {
    return block.leaseUntilMs > now || [...block.pins.values()].some((end) => end > now);
  }

  children(key: string, among: ReadonlySet<string>): number {
    let count = 0;
    for (const k of among) if (this.held.get(k)?.parentKey === key) count += 1;
    return count;
  }

  /** The victims the rules demand for an incoming block, or null when it cannot fit. */
  plan(incoming: { bytes: number; blocks: number; parentKey: string | null }, now: number): string[] | null {
    const remaining = new Set(this.held.keys());
    let bytes = this.bytesUsed() + incoming.bytes;
    let blocks = remaining.size + incoming.blocks;
    const victims: string[] = [];
    const take = (): boolean => {
      let best: ModelBlock | undefined;
      for (const key of remaining) {
        const block = this.held.get(key)!;
        if (key === incoming.parentKey || this.isProtected(block, now)) continue;
        if (this.children(key, remaining) > 0) continue;
        if (best === undefined || block.access < best.access) best = block;
      }
      if (best === undefined) return false;
      remaining.delete(best.key);
      victims.push(best.key);
      bytes -= best.bytes;
      blocks -= 1;
      return true;
    };
    while (bytes > CONFIG.bytesBudget || blocks > CONFIG.blocksMax) if (!take()) return null;
    if (
      bytes > CONFIG.highWatermark * CONFIG.bytesBudget ||
      blocks > CONFIG.highWatermark * CONFIG.blocksMax
    ) {
      while (
        (bytes > CONFIG.lowWatermark * CONFIG.bytesBudget ||
          blocks > CONFIG.lowWatermark * CONFIG.blocksMax) &&
        take()
      );
    }
    return victims;
  }

  touch(key: string): void {
    this.held.get(key)!.access = ++this.access;
  }

  add(input: PutBlockInput): void {
    const key = keyOf(input.namespace, input.hash);
    this.held.set(key, {
      input,
      key,
      parentKey: input.parentHash === null ? null : keyOf(input.namespace, input.parentHash),
      bytes: entryBytes(input),
      access: ++this.access,
      leaseUntilMs: 0,
      pins: new Map(),
    });
  }
}

test('model - random operations agree with a brute-force reference', (t) => {
  const seed = Number(process.env.MODEL_SEED ?? Math.floor(Math.random() * 2 ** 32));
  t.diagnostic(`seed ${seed}`);
  const rand = prng(seed);
  const pick = <T>(items: readonly T[]): T => items[Math.floor(rand() * items.length)]!;
  const clock = new FakeClock();
  const { store, events } = makeStore(CONFIG, clock);
  const ref = new Reference();
  // Chains in two namespaces; kivi4 blocks are smaller, so byte and entry bounds both bind.
  const pool = [
    ...chain(5, { namespace: NS_A }),
    ...chain(4, { namespace: NS_A, codec: 'kivi4' }),
    ...chain(5, { namespace: NS_B }),
    ...chain(3, { namespace: NS_B, codec: 'kivi4' }),
  ];
  const holders = ['h1', 'h2', 'h3'];
  const replay = new Set<string>();
  let eventsSeen = 0;
  const counts = { stored: 0, evicted: 0, rejected: 0, pinRejected: 0, deleted: 0, cleared: 0 };

  const forget = (records: readonly BlockRecord[], now: number, why: string): void => {
    for (const record of records) {
      const key = keyOf(record.namespace, record.hash);
      const block = ref.held.get(key);
      assert.ok(block, `${why}: ${key} was held`);
      assert.ok(!ref.isProtected(block, now), `${why}: ${key} was protected`);
      ref.held.delete(key);
    }
  };

  for (let step = 0; step < 4_000; step++) {
    const now = clock.now();
    const op = rand();
    const label = `seed ${seed} step ${step}`;
    if (op < 0.35) {
      const input = pick(pool);
      const key = keyOf(input.namespace, input.hash);
      if (ref.held.has(key)) {
        assert.equal(store.put(input).status, 'deduplicated', label);
        ref.touch(key);
      } else {
        const parentKey = input.parentHash === null ? null : keyOf(input.namespace, input.parentHash);
        const expected = ref.plan(
          {
            bytes: entryBytes(input),
            blocks: 1,
            parentKey: parentKey && ref.held.has(parentKey) ? parentKey : null,
          },
          now,
        );
        if (expected === null) {
          assert.throws(() => store.put(input), StoreFullError, label);
          counts.rejected += 1;
        } else {
          const result = store.put(input);
          assert.equal(result.status, 'stored', label);
          assert.deepEqual(
            result.evicted.map((r) => keyOf(r.namespace, r.hash)),
            expected,
            label,
          );
          forget(result.evicted, now, label);
          ref.add(input);
          counts.stored += 1;
          counts.evicted += expected.length;
        }
      }
    } else if (op < 0.5) {
      const input = pick(pool);
      const leaseMs = pick([0, 0, 10, 50, 200]);
      const record = store.get(input.namespace, input.hash, leaseMs);
      const block = ref.held.get(keyOf(input.namespace, input.hash));
      assert.equal(record !== undefined, block !== undefined, label);
      if (block !== undefined) {
        ref.touch(block.key);
        const until = now + Math.min(leaseMs, CONFIG.leaseMsMax);
        if (until > now && until > block.leaseUntilMs) block.leaseUntilMs = until;
      }
    } else if (op < 0.65) {
      const namespace = pick([NS_A, NS_B]);
      const inputs = [pick(pool), pick(pool)].filter((i) => i.namespace === namespace);
      const holder = pick(holders);
      const ttlMs = pick([0, 20, 100, 1_000]);
      const found = inputs.map((i) => ref.held.get(keyOf(i.namespace, i.hash)));
      const overflow = found.some(
        (b) =>
          b !== undefined &&
          !((b.pins.get(holder) ?? 0) > now) &&
          [...b.pins.values()].filter((end) => end > now).length >= CONFIG.pinHoldersMax,
      );
      const hashes = inputs.map((i) => i.hash);
      if (overflow) {
        assert.throws(() => store.pin(namespace, hashes, holder, ttlMs), LimitExceededError, label);
        counts.pinRejected += 1;
      } else {
        const result = store.pin(namespace, hashes, holder, ttlMs);
        assert.equal(result.pinned, found.filter((b) => b !== undefined).length, label);
        assert.equal(result.missing.length, found.filter((b) => b === undefined).length, label);
        const endMs = now + (ttlMs === 0 ? CONFIG.pinTtlMsDefault : Math.min(ttlMs, CONFIG.pinTtlMsMax));
        for (const block of found) block?.pins.set(holder, endMs);
      }
    } else if (op < 0.7) {
      const input = pick(pool);
      const holder = pick(holders);
      const block = ref.held.get(keyOf(input.namespace, input.hash));
      const end = block?.pins.get(holder);
      assert.equal(
        store.unpin(input.namespace, [input.hash], holder),
        end !== undefined && end > now ? 1 : 0,
        label,
      );
      block?.pins.delete(holder);
    } else if (op < 0.75) {
      const input = pick(pool);
      const key = keyOf(input.namespace, input.hash);
      const block = ref.held.get(key);
      const result = store.delete(input.namespace, input.hash);
      const allowed =
        block !== undefined &&
        ref.children(key, new Set(ref.held.keys())) === 0 &&
        !ref.isProtected(block, now);
      assert.equal(result.deleted, allowed, label);
      if (result.deleted) {
        forget([result.record], now, label);
        counts.deleted += 1;
      }
    } else if (op < 0.95) {
      clock.advance(Math.floor(rand() * 20));
    } else if (op < 0.998) {
      const expected = ref.plan({ bytes: 0, blocks: 0, parentKey: null }, now);
      const result = store.tick();
      assert.deepEqual(
        result.evicted.map((r) => keyOf(r.namespace, r.hash)),
        expected,
        label,
      );
      forget(result.evicted, now, label);
      counts.evicted += result.evicted.length;
    } else {
      store.clear();
      ref.held.clear();
      counts.cleared += 1;
    }

    // Invariants after every step.
    const records = [...store.entries()];
    const stats = store.stats();
    assert.deepEqual(
      new Set(records.map((r) => keyOf(r.namespace, r.hash))),
      new Set(ref.held.keys()),
      label,
    );
    assert.equal(stats.bytesUsed, ref.bytesUsed(), label);
    assert.ok(stats.bytesUsed <= CONFIG.bytesBudget && stats.blocks <= CONFIG.blocksMax, label);
    const keys = new Set(ref.held.keys());
    for (const record of records) {
      assert.equal(record.localChildren, ref.children(keyOf(record.namespace, record.hash), keys), label);
    }
    for (; eventsSeen < events.length; eventsSeen++) {
      const event = events[eventsSeen]!;
      assert.equal(event.seq, BigInt(eventsSeen + 1), label);
      if (event.cleared) replay.clear();
      for (const removed of event.removed) assert.ok(replay.delete(hex(removed)), label);
      for (const stored of event.stored) replay.add(hex(stored.hash));
    }
    // Hashes differ across namespaces here (each chain starts from its namespace's seed).
    assert.deepEqual(replay, new Set(records.map((r) => r.hash as string)), label);
  }
  t.diagnostic(JSON.stringify(counts));
  // The run must have exercised every path it checks.
  assert.ok(counts.evicted > 100 && counts.rejected > 0 && counts.deleted > 0, JSON.stringify(counts));
});

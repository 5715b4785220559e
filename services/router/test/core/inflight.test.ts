// The router's in-flight tracker: per worker, requests sent and not finished and the prompt blocks
// they compute; leading runs for prefix affinity; exact release; the block bound drops affinity only.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import type { NodeId } from '@kvmesh/protocol';

import { InflightPrefixes, PendingWork } from '../../src/core/index.ts';

const A = 'prefill-a' as NodeId;
const B = 'prefill-b' as NodeId;

describe('inflight - prefix affinity for requests not yet finished', () => {
  it('inflight - leading blocks in flight per worker, released exactly', () => {
    const inflight = new InflightPrefixes(100);
    const first = inflight.add(A, ['s1', 's2', 'u1']);
    const second = inflight.add(A, ['s1', 's2', 'u2']);
    assert.equal(inflight.requests(A), 2);
    assert.equal(inflight.leadingBlocks(A, ['s1', 's2', 'u3']), 2);
    assert.equal(inflight.leadingBlocks(B, ['s1', 's2', 'u3']), 0);
    assert.equal(inflight.leadingBlocks(A, ['x', 's1']), 0, 'a run starts at the first block');
    assert.equal(inflight.trackedBlocks, 4);
    inflight.release(first);
    assert.equal(inflight.leadingBlocks(A, ['s1', 's2', 'u1']), 2, 'u1 left with its request');
    assert.equal(inflight.trackedBlocks, 3);
    inflight.release(second);
    assert.equal(inflight.requests(A), 0);
    assert.equal(inflight.trackedBlocks, 0);
  });

  it('inflight - past blocksMax a request is counted but its blocks are not tracked', () => {
    const inflight = new InflightPrefixes(3);
    const big = inflight.add(A, ['a', 'b', 'c', 'd']);
    assert.equal(inflight.requests(A), 1);
    assert.equal(inflight.leadingBlocks(A, ['a']), 0);
    const small = inflight.add(B, ['a', 'b']);
    assert.equal(inflight.leadingBlocks(B, ['a', 'b', 'c']), 2);
    inflight.release(big);
    inflight.release(small);
    assert.equal(inflight.trackedBlocks, 0);
    assert.throws(() => new InflightPrefixes(-1), /non-negative/);
  });
});

describe('PendingWork', () => {
  const a = 'dec-a' as NodeId;
  const b = 'dec-b' as NodeId;

  it('sums the work held per worker and takes each hold back exactly once', () => {
    const pending = new PendingWork();
    const first = pending.hold(a, 12.5);
    const second = pending.hold(a, 0.1);
    pending.hold(b, 3);
    assert.equal(pending.of(a), 12.6);
    assert.equal(pending.of(b), 3);
    first();
    first();
    assert.ok(Math.abs(pending.of(a) - 0.1) < 1e-12);
    second();
    // Forgotten once empty, float residue included.
    assert.equal(pending.of(a), 0);
    assert.equal(pending.of(b), 3);
  });

  it('ignores holds of no work', () => {
    const pending = new PendingWork();
    pending.hold(a, 0)();
    pending.hold(a, Number.NaN)();
    assert.equal(pending.of(a), 0);
  });
});

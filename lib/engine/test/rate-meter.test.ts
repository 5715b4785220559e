// RateMeter: ms per unit as a work-weighted moving average (exact values under binary-exact inputs).
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { InvalidArgumentError } from '@kvmesh/errors';

import { RateMeter } from '../src/runtime/rate-meter.ts';

test('rate meter - 0 until measured, then Σ ms ÷ Σ units with older work halved every half-life', () => {
  const meter = new RateMeter(64);
  assert.equal(meter.msPerUnit, 0);
  meter.record(64, 32);
  assert.equal(meter.msPerUnit, 0.5);
  // 64 more units: the first sample counts half. (16 + 64) / (32 + 64).
  meter.record(64, 64);
  assert.equal(meter.msPerUnit, 80 / 96);
  // A big sample outweighs a small one in proportion to its units, not one vote each.
  const weighted = new RateMeter(1e9);
  weighted.record(1, 10);
  weighted.record(99, 99);
  assert.ok(Math.abs(weighted.msPerUnit - 109 / 100) < 1e-6);
});

test('rate meter - samples of no work or of a bad time are ignored; a bad half-life is refused', () => {
  const meter = new RateMeter(16);
  meter.record(0, 5);
  meter.record(4, -1);
  meter.record(4, Number.NaN);
  meter.record(Number.POSITIVE_INFINITY, 1);
  assert.equal(meter.msPerUnit, 0);
  meter.record(4, 2);
  assert.equal(meter.msPerUnit, 0.5);
  for (const bad of [0, -1, Number.NaN, Number.POSITIVE_INFINITY])
    assert.throws(() => new RateMeter(bad), InvalidArgumentError);
});

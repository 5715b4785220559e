// The cost model's rates from the model's shape: parameters of the generated presets, KV bytes at
// the tier bandwidths, compute at the workers' throughput.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { MODEL_PRESETS } from '@kvmesh/engine';

import { derivedCosts, modelParameters } from '../../src/core/index.ts';

const TINY = { ...MODEL_PRESETS.tiny, tiedEmbeddings: false };
const SMALL = { ...MODEL_PRESETS.small, tiedEmbeddings: false };

test('costs - parameters of the generated presets (~0.8 M and ~88 M)', () => {
  // tiny: 2 × (128·256 + 128·128 + 3·128·256 + 2·128) + 2 · 2048·128 + 128.
  assert.equal(modelParameters(TINY), 819_840);
  assert.ok(Math.abs(modelParameters(SMALL) - 88e6) < 2e6, String(modelParameters(SMALL)));
  assert.equal(modelParameters({ ...TINY, tiedEmbeddings: true }), 819_840 - 2048 * 128);
});

test('costs - a token is priced by its KV bytes per tier and its FLOPs', () => {
  // small in f32: 12 layers × 4 kv heads × 64 dims × (K + V) × 4 bytes = 24 KiB per token.
  const rates = derivedCosts(SMALL, {
    kvBytesPerToken: 24_576,
    storeGBps: 1,
    farGBps: 0.5,
    ssdGBps: 0.25,
    workerGflops: 100,
  });
  assert.ok(Math.abs(rates.transferMsPerToken - 0.024576) < 1e-12);
  assert.ok(Math.abs(rates.farTransferMsPerToken - 2 * 0.024576) < 1e-12);
  assert.ok(Math.abs(rates.ssdTransferMsPerToken - 4 * 0.024576) < 1e-12);
  assert.ok(Math.abs(rates.prefillMsPerToken - (2 * modelParameters(SMALL)) / 1e8) < 1e-12);
  // Recomputing a token costs ~70× fetching it from DRAM at these speeds.
  assert.ok(rates.prefillMsPerToken / rates.transferMsPerToken > 50);
});

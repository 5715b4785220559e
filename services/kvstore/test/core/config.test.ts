// Block store configuration: defaults, and InvalidArgumentError naming the field for bad values.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { InvalidArgumentError } from '@kvmesh/errors';
import type { NodeId } from '@kvmesh/protocol';

import {
  BLOCK_STORE_DEFAULTS,
  resolveBlockStoreConfig,
  type BlockStoreConfig,
} from '../../src/core/index.ts';
import { NODE_ID } from './helpers.ts';

test('config - defaults fill every field', () => {
  assert.deepEqual(resolveBlockStoreConfig({ nodeId: NODE_ID }), {
    ...BLOCK_STORE_DEFAULTS,
    nodeId: NODE_ID,
  });
  assert.equal(BLOCK_STORE_DEFAULTS.highWatermark, 0.95);
  assert.equal(BLOCK_STORE_DEFAULTS.lowWatermark, 0.85);
});

test('config - the default blockBytesMax is capped by a small budget', () => {
  assert.equal(resolveBlockStoreConfig({ nodeId: NODE_ID, bytesBudget: 1000 }).blockBytesMax, 1000);
});

test('config - bad values are rejected naming the field', () => {
  const bad: [Partial<BlockStoreConfig>, string][] = [
    [{ bytesBudget: 0 }, 'bytesBudget'],
    [{ bytesBudget: 1.5 }, 'bytesBudget'],
    [{ bytesBudget: Number.POSITIVE_INFINITY }, 'bytesBudget'],
    [{ highWatermark: 0 }, 'highWatermark'],
    [{ highWatermark: 1.01 }, 'highWatermark'],
    [{ lowWatermark: Number.NaN }, 'lowWatermark'],
    [{ highWatermark: 0.5, lowWatermark: 0.6 }, 'lowWatermark'],
    [{ blocksMax: 0 }, 'blocksMax'],
    [{ bytesBudget: 100, blockBytesMax: 101 }, 'blockBytesMax'],
    [{ leaseMsMax: -1 }, 'leaseMsMax'],
    [{ pinTtlMsMax: 0 }, 'pinTtlMsMax'],
    [{ pinTtlMsMax: 10, pinTtlMsDefault: 11 }, 'pinTtlMsDefault'],
    [{ pinHoldersMax: 0 }, 'pinHoldersMax'],
    [{ hashesPerRequestMax: 0 }, 'hashesPerRequestMax'],
    [{ nodeId: 'bad id' as NodeId }, 'node id'],
  ];
  for (const [config, field] of bad) {
    assert.throws(
      () => resolveBlockStoreConfig({ nodeId: NODE_ID, ...config }),
      (err: unknown) => err instanceof InvalidArgumentError && err.message.includes(field),
      JSON.stringify(config),
    );
  }
});

import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { describe, it } from 'node:test';

import { InvalidArgumentError } from '@kvmesh/errors';

import {
  Block,
  Codec,
  KvEvent,
  KvStoreService,
  Tier,
  blockHashFromBytes,
  blockHashToBytes,
  parseBlockHash,
  parseNamespace,
  parseNodeId,
  parseRequestId,
} from '../src/index.ts';

describe('protocol - generated wire types', () => {
  it('protocol - a Block survives encode/decode with its bytes and token ids intact', () => {
    const block = Block.fromPartial({
      hash: randomBytes(16),
      parentHash: randomBytes(16),
      namespace: 'tenant-a',
      modelFingerprint: randomBytes(16),
      tokenIds: [0, 1, 4294967295, 123456],
      payload: randomBytes(4096),
    });
    const decoded = Block.decode(Block.encode(block).finish());
    assert.deepEqual(decoded, block);
  });

  it('protocol - KvEvent keeps 64-bit sequence numbers as bigint', () => {
    const event = KvEvent.fromPartial({
      nodeId: 'kvstore-0',
      seq: 2n ** 63n - 1n,
      stored: [
        {
          hash: randomBytes(16),
          parentHash: Buffer.alloc(0),
          tier: Tier.TIER_DRAM,
          codec: Codec.CODEC_KIVI4,
          bytes: 1n << 40n,
        },
      ],
      removed: [randomBytes(16)],
      timestampMs: 1_700_000_000_000n,
    });
    const decoded = KvEvent.decode(KvEvent.encode(event).finish());
    assert.equal(decoded.seq, 2n ** 63n - 1n);
    assert.equal(decoded.stored[0]?.bytes, 1n << 40n);
    assert.deepEqual(decoded, event);
  });

  it('protocol - the KvStore service definition names every DESIGN §6 method (plus OpenDataChannel)', () => {
    assert.deepEqual(Object.keys(KvStoreService).sort(), [
      'getBlocks',
      'matchPrefix',
      'openDataChannel',
      'partialAttention',
      'pin',
      'putBlocks',
      'stats',
      'unpin',
    ]);
    assert.equal(KvStoreService.putBlocks.requestStream, true);
    assert.equal(KvStoreService.getBlocks.responseStream, true);
  });
});

describe('protocol - branded ids', () => {
  it('protocol - block hashes round-trip between bytes and lowercase hex', () => {
    const bytes = randomBytes(16);
    const hash = blockHashFromBytes(bytes);
    assert.match(hash, /^[0-9a-f]{32}$/);
    assert.deepEqual(Buffer.from(blockHashToBytes(hash)), bytes);
    assert.equal(parseBlockHash(hash.toUpperCase()), hash);
  });

  it('protocol - malformed ids are rejected with the offending value', () => {
    assert.throws(() => parseBlockHash('xyz'), /got 'xyz'/);
    assert.throws(() => blockHashFromBytes(new Uint8Array(15)), InvalidArgumentError);
    assert.throws(() => parseNodeId('bad id with spaces'), InvalidArgumentError);
    assert.throws(() => parseRequestId(''), InvalidArgumentError);
    assert.throws(() => parseNamespace('x'.repeat(257)), /257 bytes, limit is 256/);
    assert.equal(parseNodeId('kvstore-0'), 'kvstore-0');
  });
});

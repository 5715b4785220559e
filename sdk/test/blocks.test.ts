// Unit tests of request assembly and read verification: blocks given in typed or wire form validate
// to the same thing, the data channel put header is a PutBlocksRequest without the payload (byte for
// byte what the generated encoder writes), bad input is INVALID_ARGUMENT before anything is sent,
// and a fetched copy that is not the block asked for (other hash, other namespace, other tokens,
// broken payload header) is DATA_LOSS.
import assert from 'node:assert/strict';
import { randomInt } from 'node:crypto';
import { describe, it } from 'node:test';

import { PutBlocksRequest, Tier, parseNamespace, type Namespace } from '@kvmesh/protocol';

import {
  chainBlocks,
  encodePutHeader,
  normalizeBlock,
  toWireBlock,
  verifyFetchedBlock,
} from '../src/index.ts';
import { FINGERPRINT, kernels, makeChain, randomPayload, randomTokens } from './support.ts';

const NS = '' as Namespace;
const BYTES_MAX = 1 << 26;

describe('sdk blocks - request assembly', () => {
  const [b0, b1] = makeChain(2);

  it('assembly - typed and wire forms normalize to the same block; the default namespace fills in', () => {
    const typed = normalizeBlock({ ...b1!, namespace: undefined }, NS, 0, BYTES_MAX);
    const wire = normalizeBlock(toWireBlock(typed, true), NS, 0, BYTES_MAX);
    assert.deepEqual({ ...wire, payload: undefined }, { ...typed, payload: undefined });
    assert.deepEqual(Buffer.from(wire.payload), Buffer.from(typed.payload));
    assert.equal(typed.parentHash, b0!.hash);
    assert.equal(normalizeBlock({ ...b0!, parentHash: '' }, NS, 0, BYTES_MAX).parentHash, null);
  });

  it('assembly - the put header is a PutBlocksRequest carrying identity and tokens but no payload', () => {
    const block = normalizeBlock(b1!, NS, 0, BYTES_MAX);
    const decoded = PutBlocksRequest.decode(encodePutHeader(block));
    assert.equal(decoded.replica, false);
    assert.deepEqual(decoded.block?.hash, block.hashBytes);
    assert.equal(decoded.block?.payload.length, 0);
    assert.deepEqual(decoded.block?.tokenIds, Array.from(b1!.tokenIds));
  });

  it('assembly - the put header is byte for byte what the generated encoder writes, on random blocks', () => {
    // Token ids across every varint length, namespaces empty / ASCII / multi-byte, with and without a parent.
    const edges = [
      0, 1, 127, 128, 16_383, 16_384, 2_097_151, 2_097_152, 268_435_455, 268_435_456, 0xffff_ffff,
    ];
    const namespaces = ['', 'tenant-7', 'é', 'ünïcödé/名前空間/🔑'];
    const payloads = [randomPayload(), randomPayload()];
    for (let trial = 0; trial < 200; trial++) {
      const blockTokens = 16 * (1 + randomInt(4));
      const tokens = Uint32Array.from({ length: 2 * blockTokens }, () =>
        randomInt(3) === 0 ? (edges[randomInt(edges.length)] as number) : randomInt(2 ** 32),
      );
      const namespace = namespaces[randomInt(namespaces.length)] as string;
      const chain = chainBlocks(
        { modelFingerprint: FINGERPRINT, namespace, blockTokens, tokens, payloads },
        kernels,
      );
      // Odd trials take the second block, which has a parent.
      const chained = chain[trial % 2] as (typeof chain)[number];
      const block = normalizeBlock(chained, parseNamespace(chained.namespace), 0, BYTES_MAX);
      const generated = PutBlocksRequest.encode({
        block: toWireBlock(block, false),
        replica: false,
      }).finish();
      assert.deepEqual(Buffer.from(encodePutHeader(block)), Buffer.from(generated), `trial ${trial}`);
    }
  });

  it('assembly - malformed blocks are INVALID_ARGUMENT naming the block index', () => {
    const cases = [
      { ...b0!, hash: 'xyz' },
      { ...b0!, parentHash: 'abc' },
      { ...b0!, modelFingerprint: '00' },
      { ...b0!, tokenIds: [1, 2, 3] },
      { ...b0!, tokenIds: [...b0!.tokenIds.slice(0, 15), -1] },
      { ...b0!, payload: new Uint8Array(0) },
      { ...b0!, namespace: 'x'.repeat(300) },
    ];
    for (const bad of cases)
      assert.throws(
        () => normalizeBlock(bad, NS, 3, BYTES_MAX),
        (e: { kind: string; details: { index?: number } }) => e.kind === 'invalid-argument',
      );
    assert.throws(() => normalizeBlock(b0!, NS, 0, 10), { kind: 'invalid-argument' });
  });

  it('assembly - chainBlocks continues a chain: hashes equal those of one longer chain', () => {
    const tokens = randomTokens(48);
    const payloads = [randomPayload(), randomPayload(), randomPayload()];
    const args = { modelFingerprint: FINGERPRINT, namespace: 'tenant', blockTokens: 16 };
    const whole = chainBlocks({ ...args, tokens, payloads }, kernels);
    const head = chainBlocks(
      { ...args, tokens: tokens.slice(0, 16), payloads: payloads.slice(0, 1) },
      kernels,
    );
    const tail = chainBlocks(
      { ...args, tokens: tokens.slice(16), payloads: payloads.slice(1), parentHash: head[0]!.hash },
      kernels,
    );
    assert.deepEqual(
      [...head, ...tail].map((b) => [b.hash, b.parentHash]),
      whole.map((b) => [b.hash, b.parentHash]),
    );
    assert.throws(() => chainBlocks({ ...args, tokens: tokens.slice(0, 20), payloads }, kernels), {
      kind: 'invalid-argument',
    });
  });
});

describe('sdk blocks - read verification', () => {
  const [b0, b1] = makeChain(2, { namespace: 'tenant' });
  const ns = parseNamespace('tenant');
  const wire = toWireBlock(normalizeBlock(b1!, ns, 0, BYTES_MAX), false);
  const check = { hash: b1!.hash, namespace: ns, checkIdentity: true };

  it('verify - the block asked for is returned with its codec, dims and tier', () => {
    const fetched = verifyFetchedBlock(kernels, check, wire, b1!.payload, Tier.TIER_DRAM, 'kv-a');
    assert.equal(fetched.hash, b1!.hash);
    assert.equal(fetched.parentHash, b0!.hash);
    assert.equal(fetched.codec, 'f32');
    assert.equal(fetched.tier, 'dram');
    assert.equal(fetched.dims.blockTokens, 16);
    assert.deepEqual(fetched.tokenIds, b1!.tokenIds);
  });

  it('verify - another hash, namespace, token list or a broken payload header is DATA_LOSS', () => {
    const tampered = [...wire.tokenIds];
    tampered[5] = tampered[5]! + 1;
    const broken = Buffer.from(b1!.payload);
    broken[12] = broken[12]! ^ 0xff;
    const cases: [typeof check, typeof wire, Uint8Array][] = [
      [{ ...check, hash: b0!.hash }, wire, b1!.payload],
      [{ ...check, namespace: '' as Namespace }, wire, b1!.payload],
      [check, { ...wire, tokenIds: tampered }, b1!.payload],
      [check, wire, broken],
      [check, wire, b1!.payload.subarray(0, 20)],
    ];
    for (const [asked, block, payload] of cases)
      assert.throws(() => verifyFetchedBlock(kernels, asked, block, payload, Tier.TIER_DRAM, 'kv-a'), {
        kind: 'data-loss',
      });
    // With identity checks off, only the tampered token list goes through (the hash still matches).
    verifyFetchedBlock(
      kernels,
      { ...check, checkIdentity: false },
      { ...wire, tokenIds: tampered },
      b1!.payload,
      Tier.TIER_DRAM,
      'kv-a',
    );
  });
});

import assert from 'node:assert/strict';
import { randomBytes, randomInt } from 'node:crypto';
import { describe, it } from 'node:test';

import { blockFieldsFromWire, PutBlocksRequest, PutBlocksResponse, type Block } from '@kvmesh/protocol';

import { encodePutAck, readPutHeader } from '../src/adapters/put-header.ts';

/** Token ids across every varint length, random ones in between. */
const EDGES = [0, 1, 127, 128, 16_383, 16_384, 2_097_151, 2_097_152, 268_435_455, 268_435_456, 0xffff_ffff];

function randomBlock(): Block {
  const namespaces = ['', 'tenant-7', 'a'.repeat(256)];
  return {
    hash: randomBytes(16),
    parentHash: randomInt(2) === 0 ? Buffer.alloc(0) : randomBytes(16),
    namespace: namespaces[randomInt(namespaces.length)] as string,
    modelFingerprint: randomBytes(16),
    tokenIds: Array.from({ length: 16 * (1 + randomInt(16)) }, () =>
      randomInt(3) === 0 ? (EDGES[randomInt(EDGES.length)] as number) : randomInt(2 ** 32),
    ),
    payload: Buffer.alloc(0),
  };
}

/** A protobuf varint. */
function varint(value: number): number[] {
  const out: number[] = [];
  let v = value;
  while (v >= 0x80) {
    out.push((v % 0x80) | 0x80);
    v = Math.floor(v / 0x80);
  }
  out.push(v);
  return out;
}

/** One field: its tag byte, then a length and `bytes` (length-delimited) or `bytes` as given. */
const field = (tag: number, bytes: ArrayLike<number>, delimited = true): number[] => [
  tag,
  ...(delimited ? varint(bytes.length) : []),
  ...Array.from(bytes),
];

/** PutBlocksRequest {block: <fields as given>}. */
const request = (...fields: number[][]): Uint8Array => Uint8Array.from(field(10, fields.flat()));

/** What the general path makes of a header: the checked fields and the replica flag. */
function generated(header: Uint8Array): { fields: ReturnType<typeof blockFieldsFromWire>; replica: boolean } {
  const message = PutBlocksRequest.decode(header);
  return { fields: blockFieldsFromWire(message.block, 'put'), replica: message.replica };
}

describe('kvstore - put header', () => {
  it('put header - reads what the generated encoder writes to the same fields, on random blocks', () => {
    for (let trial = 0; trial < 300; trial++) {
      const block = randomBlock();
      const replica = randomInt(2) === 1;
      const header = PutBlocksRequest.encode({ block, replica }).finish();
      const fast = readPutHeader(header);
      assert.ok(fast !== undefined, `trial ${trial}: the common encoding takes the fast path`);
      const { hashAt, replica: fastReplica, ...fields } = fast;
      const expected = generated(header);
      assert.deepEqual(fields, expected.fields, `trial ${trial}`);
      assert.equal(fastReplica, expected.replica);
      assert.deepEqual(Buffer.from(header.subarray(hashAt, hashAt + 16)), block.hash);
    }
  });

  it('put header - fields in another order read the same; odd encodings are left to the general path', () => {
    const block = randomBlock();
    const packed = block.tokenIds.flatMap(varint);
    const hash = field(10, block.hash);
    const fingerprint = field(34, block.modelFingerprint);
    const reordered = request(field(42, packed), fingerprint, hash);
    assert.deepEqual(readPutHeader(reordered)?.tokenIds, Uint32Array.from(block.tokenIds));
    assert.deepEqual(generated(reordered).fields.tokenIds, Uint32Array.from(block.tokenIds));

    const utf8 = (text: string): number[] => Array.from(Buffer.from(text, 'utf8'));
    const odd: Record<string, Uint8Array> = {
      'unpacked token ids': request(
        hash,
        fingerprint,
        ...block.tokenIds.map((id) => field(40, varint(id), false)),
      ),
      'a repeated hash': request(hash, hash, fingerprint),
      'a short hash': request(field(10, block.hash.subarray(0, 5)), fingerprint),
      'an empty parent hash': request(hash, field(18, []), fingerprint),
      'a payload in the header': request(hash, fingerprint, field(50, randomBytes(9))),
      'an unknown field': request(hash, fingerprint, field(58, randomBytes(3))),
      'a token id over 2^32 - 1': request(hash, fingerprint, field(42, [0xff, 0xff, 0xff, 0xff, 0x1f])),
      'a token id of 6 bytes': request(hash, fingerprint, field(42, [0x81, 0x80, 0x80, 0x80, 0x80, 0x00])),
      'a non-ASCII namespace': request(hash, field(26, utf8('é')), fingerprint),
      'a namespace over 256 bytes': request(hash, field(26, utf8('n'.repeat(257))), fingerprint),
      'a replica flag of 2': Uint8Array.from([...field(10, [...hash, ...fingerprint]), 16, 2]),
      'no block': Uint8Array.from([16, 1]),
      garbage: randomBytes(64),
    };
    for (const [what, header] of Object.entries(odd)) assert.equal(readPutHeader(header), undefined, what);
    // A cut-off header is never read past its end, wherever it is cut.
    const whole = PutBlocksRequest.encode({ block, replica: false }).finish();
    for (let cut = 0; cut < whole.length; cut++) {
      assert.equal(readPutHeader(whole.subarray(0, cut)), undefined, `cut at ${cut}`);
    }
  });

  it('put header - the ack is byte for byte what the generated encoder writes', () => {
    for (const status of ['stored', 'deduplicated'] as const) {
      const header = PutBlocksRequest.encode({ block: randomBlock(), replica: false }).finish();
      const fast = readPutHeader(header);
      assert.ok(fast !== undefined);
      const hash = Buffer.from(header.subarray(fast.hashAt, fast.hashAt + 16));
      const expected = PutBlocksResponse.encode({
        acknowledged: [hash],
        stored: status === 'stored' ? 1 : 0,
        deduplicated: status === 'deduplicated' ? 1 : 0,
      }).finish();
      assert.deepEqual(Buffer.from(encodePutAck(header, fast.hashAt, status)), Buffer.from(expected));
    }
  });
});

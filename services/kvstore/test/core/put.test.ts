// Put-path checks of the block store: token identity (spec v1 hashes), payload header agreement,
// bounds, deduplication across sessions, and namespace isolation.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { CorruptDataError, InvalidArgumentError, LimitExceededError } from '@kvmesh/errors';
import { parseModelFingerprint, type BlockHash } from '@kvmesh/protocol';

import { BlockHashMismatchError, ENTRY_OVERHEAD_BYTES, type PutBlockInput } from '../../src/core/index.ts';
import { DIMS, NS_A, NS_B, chain, entryBytes, makeStore, randomPayload, randomTokens } from './helpers.ts';

test('put - stores a verified chain; get returns the record with the payload by reference', () => {
  const { store, clock } = makeStore();
  const blocks = chain(3, { namespace: NS_A });
  for (const block of blocks) {
    assert.equal(store.put(block).status, 'stored');
    clock.advance(5);
  }
  const second = blocks[1]!;
  const record = store.get(NS_A, second.hash);
  assert.ok(record);
  assert.equal(record.payload, second.payload, 'held by reference, not copied');
  assert.equal(record.namespace, NS_A);
  assert.equal(record.hash, second.hash);
  assert.equal(record.parentHash, blocks[0]!.hash);
  assert.equal(record.modelFingerprint, second.modelFingerprint);
  assert.deepEqual(record.tokenIds, second.tokenIds);
  assert.equal(record.codec, 'f32');
  assert.equal(record.tier, 'dram');
  assert.deepEqual(record.header.dims, DIMS);
  assert.equal(record.sizeBytes, second.payload.byteLength + 16 * 4 + ENTRY_OVERHEAD_BYTES);
  assert.equal(record.storedAtMs, 1_005);
  assert.equal(record.lastAccessMs, 1_015);
  assert.equal(record.putCount, 1);
  assert.equal(record.localChildren, 1);
  assert.equal(store.get(NS_A, blocks[0]!.hash)?.parentHash, null);
  assert.equal(store.stats().bytesUsed, 3 * entryBytes(second));
});

test('put - the codec comes from the payload header', () => {
  const { store } = makeStore();
  for (const codec of ['f16', 'kivi8', 'kivi4', 'kivi2'] as const) {
    const [block] = chain(1, { codec });
    assert.equal(store.put(block!).record.codec, codec);
  }
});

test('put - token ids given as a plain array are checked and converted', () => {
  const { store } = makeStore();
  const [block] = chain(1);
  const record = store.put({ ...block!, tokenIds: [...block!.tokenIds] }).record;
  assert.ok(record.tokenIds instanceof Uint32Array);
  assert.deepEqual(record.tokenIds, block!.tokenIds);
  assert.throws(
    () => store.put({ ...block!, tokenIds: [...block!.tokenIds.slice(1), -1] }),
    InvalidArgumentError,
  );
});

function rejects(input: PutBlockInput, check: (err: unknown) => boolean): void {
  const { store, events } = makeStore();
  assert.throws(() => store.put(input), check);
  assert.equal(store.stats().blocks, 0);
  assert.equal(events.length, 0);
}

test('put - a hash that does not match the token ids is rejected naming both hashes', () => {
  const [root, child] = chain(2);
  const tokenIds = child!.tokenIds.slice();
  tokenIds[7] = (tokenIds[7]! + 1) % 50_000;
  const { store } = makeStore();
  store.put(root!);
  assert.throws(
    () => store.put({ ...child!, tokenIds }),
    (err: unknown) => {
      assert.ok(err instanceof BlockHashMismatchError);
      assert.equal(err.code, 'BLOCK_HASH_MISMATCH');
      assert.equal(err.kind, 'invalid-argument');
      assert.equal(err.details.claimed, child!.hash);
      assert.notEqual(err.details.computed, child!.hash);
      assert.match(String(err.details.computed), /^[0-9a-f]{32}$/);
      assert.equal(err.details.parentHash, root!.hash);
      return true;
    },
  );
  assert.equal(store.has(child!.namespace, child!.hash), false);
});

test('put - a block chained to the wrong parent is rejected', () => {
  const [, child] = chain(2);
  const [other] = chain(1);
  rejects({ ...child!, parentHash: other!.hash }, (err) => err instanceof BlockHashMismatchError);
  rejects({ ...child!, parentHash: null }, (err) => err instanceof BlockHashMismatchError);
});

test('put - a first block is bound to its namespace and model fingerprint', () => {
  const [root] = chain(1, { namespace: NS_A });
  rejects({ ...root!, namespace: NS_B }, (err) => err instanceof BlockHashMismatchError);
  rejects(
    { ...root!, modelFingerprint: parseModelFingerprint('00'.repeat(16)) },
    (err) => err instanceof BlockHashMismatchError,
  );
});

test('put - a token count that is not a spec block size is rejected', () => {
  const [block] = chain(1);
  rejects(
    { ...block!, tokenIds: block!.tokenIds.subarray(0, 15) },
    (err) => err instanceof InvalidArgumentError && /tokenIds\.length/.test(err.message),
  );
});

test('put - a payload whose block size differs from the token count is rejected', () => {
  // A valid 32-token block carrying a 16-token payload.
  const [block] = chain(1, { dims: { ...DIMS, blockTokens: 32 } });
  rejects(
    { ...block!, payload: randomPayload() },
    (err) =>
      err instanceof InvalidArgumentError &&
      err.details.payloadBlockTokens === 16 &&
      err.details.tokenIds === 32,
  );
});

test('put - a payload over blockBytesMax is rejected', () => {
  const [block] = chain(1);
  const { store } = makeStore({ blockBytesMax: block!.payload.byteLength - 1 });
  assert.throws(
    () => store.put(block!),
    (err: unknown) =>
      err instanceof LimitExceededError &&
      err.details.bytes === block!.payload.byteLength &&
      err.details.blockBytesMax === block!.payload.byteLength - 1,
  );
  assert.equal(store.stats().blocks, 0);
});

test('put - a corrupt payload header is rejected', () => {
  const [block] = chain(1);
  const payload = block!.payload.slice();
  payload[12] = payload[12]! ^ 0x01; // blockTokens field: header checksum catches it
  rejects({ ...block!, payload }, (err) => err instanceof CorruptDataError);
  rejects({ ...block!, payload: block!.payload.subarray(0, 20) }, (err) => err instanceof CorruptDataError);
});

test('put - malformed hashes and namespaces are rejected', () => {
  const [root, child] = chain(2);
  rejects(
    { ...root!, hash: root!.hash.toUpperCase() as BlockHash },
    (err) => err instanceof InvalidArgumentError,
  );
  rejects({ ...child!, parentHash: 'xyz' as BlockHash }, (err) => err instanceof InvalidArgumentError);
  rejects(
    { ...root!, namespace: 'n'.repeat(257) as typeof NS_A },
    (err) => err instanceof InvalidArgumentError,
  );
});

test('put - the same block put again by another session is stored once', () => {
  const { store, events } = makeStore();
  const [root, child] = chain(2);
  store.put(root!);
  store.put(child!);
  const used = store.stats().bytesUsed;
  // Another session computed the same block, possibly in another codec: the held copy stays.
  const again = store.put({ ...child!, payload: randomPayload('kivi4') });
  assert.equal(again.status, 'deduplicated');
  assert.deepEqual(again.evicted, []);
  assert.equal(again.record.payload, child!.payload);
  assert.equal(again.record.codec, 'f32');
  assert.equal(store.put(child!).record.putCount, 3);
  const stats = store.stats();
  assert.equal(stats.blocks, 2);
  assert.equal(stats.bytesUsed, used);
  assert.equal(stats.stored, 2);
  assert.equal(stats.deduplicated, 2);
  assert.equal(events.length, 2, 'a deduplicated put emits nothing');
  assert.equal(store.get(root!.namespace, root!.hash)?.localChildren, 1);
});

test('put - a deduplicated put still checks token identity', () => {
  const { store } = makeStore();
  const [block] = chain(1);
  store.put(block!);
  assert.throws(() => store.put({ ...block!, tokenIds: randomTokens(16) }), BlockHashMismatchError);
  assert.equal(store.get(block!.namespace, block!.hash)?.putCount, 1);
});

test('put - namespaces never share an entry, even for an equal hash', () => {
  const { store } = makeStore();
  const [rootA, childA] = chain(2, { namespace: NS_A });
  store.put(rootA!);
  store.put(childA!);
  assert.equal(store.get(NS_B, rootA!.hash), undefined);
  assert.equal(store.has(NS_B, childA!.hash), false);
  // The chain formula lets a block of B hang off A's root hash: the same hash, a separate entry.
  const childB = { ...childA!, namespace: NS_B, payload: randomPayload() };
  assert.equal(store.put(childB).status, 'stored');
  assert.equal(store.stats().blocks, 3);
  assert.equal(store.get(NS_B, childA!.hash)?.payload, childB.payload);
  assert.equal(store.get(NS_A, childA!.hash)?.payload, childA!.payload);
  // B's copy has no local parent in B: it is a local root and does not count as A's child.
  assert.equal(store.get(NS_A, rootA!.hash)?.localChildren, 1);
  assert.equal(store.delete(NS_B, childA!.hash).deleted, true);
  assert.equal(store.has(NS_A, childA!.hash), true);
  const stats = store.stats();
  assert.equal(stats.misses, 1);
});

test('put - equal tokens in two namespaces hash differently and are stored twice', () => {
  const { store } = makeStore();
  const tokens = randomTokens(16);
  const [a] = chain(1, { namespace: NS_A, tokens });
  const [b] = chain(1, { namespace: NS_B, tokens });
  assert.notEqual(a!.hash, b!.hash);
  store.put(a!);
  assert.equal(store.put(b!).status, 'stored');
  assert.equal(store.stats().deduplicated, 0);
});

test('get - payload memory overwritten after the put (another block in it) is a miss, never served', () => {
  const { store } = makeStore();
  const [first, second] = chain(2, { namespace: NS_A });
  assert.ok(first && second);
  store.put(first);
  store.put(second);
  // As if the memory holding the first payload were handed out again and filled with the second.
  (first.payload as Uint8Array).set(second.payload);
  assert.equal(store.get(NS_A, first.hash), undefined);
  assert.equal(store.stats().payloadMismatches, 1);
  assert.ok(store.get(NS_A, second.hash), 'the other block is unaffected');
});

// Unit tests of the reusable buffer lists: a buffer handed back is the next one taken at its size,
// only buffers this pool made come back (once), and what is kept is bounded per size and in sizes.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { InvalidArgumentError } from '@kvmesh/errors';

import { ReusableBuffers } from '../src/core/index.ts';

describe('reusable buffers', () => {
  it('reusable buffers - a buffer handed back is taken again at its size, never at another', () => {
    const pool = new ReusableBuffers({ buffersPerSize: 2, sizesMax: 2, bytesMin: 16 });
    const a = pool.take(64);
    assert.ok(Buffer.isBuffer(a), 'a Buffer, so the data channel delivers it by identity');
    assert.equal(a.length, 64);
    pool.giveBack(a);
    assert.notEqual(pool.take(32), a);
    assert.equal(pool.take(64), a);
    assert.deepEqual([pool.reused, pool.fresh], [1, 2]);
  });

  it('reusable buffers - foreign, small and twice-returned buffers are not kept; kept buffers are bounded', () => {
    const pool = new ReusableBuffers({ buffersPerSize: 2, sizesMax: 1, bytesMin: 16 });
    pool.giveBack(Buffer.alloc(64)); // not from this pool
    const small = pool.take(8);
    pool.giveBack(small);
    assert.notEqual(pool.take(8), small, 'below bytesMin: not kept');
    const [x, y, z] = [pool.take(64), pool.take(64), pool.take(64)];
    for (const b of [x, y, z]) pool.giveBack(b);
    pool.giveBack(x); // a second give-back changes nothing
    const again = [pool.take(64), pool.take(64), pool.take(64)];
    assert.equal(again.filter((b) => b === x || b === y || b === z).length, 2, 'two kept per size');
    const other = pool.take(128);
    pool.giveBack(other);
    assert.notEqual(pool.take(128), other, 'one size kept at most');
    assert.throws(
      () => new ReusableBuffers({ buffersPerSize: 0, sizesMax: 1, bytesMin: 1 }),
      InvalidArgumentError,
    );
  });
});

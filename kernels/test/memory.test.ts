// Behaviour of the native shared-memory binding: a MAP_SHARED mapping of a file holds what was
// written through it for a second mapping in the same process and for another process; NUMA
// binding, read-only maps, explicit unmap (detaches the buffer) and aligned allocations. Payloads are
// random, drawn fresh each run. Without a native build the tests fail under KVMESH_REQUIRE_NATIVE=1
// and are skipped with the reason otherwise.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { closeSync, constants, mkdtempSync, openSync, rmSync, statSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';

import { InvalidArgumentError } from '@kvmesh/errors';

import { MemoryMapError, nativeMemory, nativeMemoryStatus, type NativeMemory } from '../src/index.ts';

const entry = fileURLToPath(new URL('../src/index.ts', import.meta.url));

function memoryOrSkip(t: { skip(reason: string): void }): NativeMemory | null {
  const memory = nativeMemory();
  if (memory === null) {
    assert.notEqual(
      process.env.KVMESH_REQUIRE_NATIVE,
      '1',
      `native memory required: ${nativeMemoryStatus()}`,
    );
    t.skip(`no native memory functions: ${nativeMemoryStatus()}`);
  }
  return memory;
}

describe('kernels - shared memory', () => {
  let dir = '';
  before(() => {
    // /dev/shm when present: the far tier's own backing on machines without CXL.
    dir = mkdtempSync(
      join(
        statSync('/dev/shm', { throwIfNoEntry: false })?.isDirectory() ? '/dev/shm' : tmpdir(),
        'kvmesh-mem-',
      ),
    );
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  it('memory - map, write, remap in the same process and read back', (t) => {
    const memory = memoryOrSkip(t);
    if (memory === null) return;
    const path = join(dir, 'same-process');
    const bytes = 3 * memory.pageBytes() + 123;
    const first = memory.mapSharedFile(path, bytes, { create: true });
    assert.equal(first.byteLength, bytes);
    assert.equal(statSync(path).size, bytes);
    const data = randomBytes(bytes);
    new Uint8Array(first).set(data);
    const second = memory.mapSharedFile(path, bytes, { readOnly: true });
    assert.deepEqual(Buffer.from(second), data);
    // A write through the first mapping is visible through the second at once (same pages).
    new Uint8Array(first)[bytes - 1] = (data[bytes - 1] as number) ^ 0xff;
    assert.equal(new Uint8Array(second)[bytes - 1], (data[bytes - 1] as number) ^ 0xff);
    assert.equal(memory.unmap(first), true);
    assert.equal(first.byteLength, 0, 'an unmapped buffer is detached');
    assert.equal(memory.unmap(first), false, 'a second unmap is a no-op');
    assert.equal(new Uint8Array(second)[0], data[0]);
    assert.equal(memory.unmap(second), true);
  });

  it('memory - a child process reads what the parent wrote', (t) => {
    const memory = memoryOrSkip(t);
    if (memory === null) return;
    const path = join(dir, 'cross-process');
    const bytes = 1 << 20;
    const mapped = memory.mapSharedFile(path, bytes, { create: true });
    const data = randomBytes(bytes);
    new Uint8Array(mapped).set(data);
    const child = spawnSync(
      process.execPath,
      [
        '--import',
        'tsx',
        '--input-type=module',
        '-e',
        `const k = await import(${JSON.stringify(entry)});
         const { createHash } = await import('node:crypto');
         const m = k.nativeMemory().mapSharedFile(${JSON.stringify(path)}, ${bytes}, { readOnly: true });
         console.log(createHash('sha256').update(new Uint8Array(m)).digest('hex'));`,
      ],
      { encoding: 'utf8' },
    );
    assert.equal(child.status, 0, child.stderr);
    assert.equal(child.stdout.trim(), createHash('sha256').update(data).digest('hex'));
    memory.unmap(mapped);
  });

  it('memory - binding to NUMA node 0 maps and holds data', (t) => {
    const memory = memoryOrSkip(t);
    if (memory === null) return;
    const path = join(dir, 'numa');
    const mapped = memory.mapSharedFile(path, 1 << 16, { create: true, numaNode: 0, prefault: true });
    const data = randomBytes(1 << 16);
    new Uint8Array(mapped).set(data);
    assert.deepEqual(Buffer.from(mapped), data);
    memory.unmap(mapped);
  });

  it('memory - refusals are typed: bad arguments, a missing file, a file smaller than asked', (t) => {
    const memory = memoryOrSkip(t);
    if (memory === null) return;
    assert.throws(() => memory.mapSharedFile('', 10), InvalidArgumentError);
    assert.throws(() => memory.mapSharedFile(join(dir, 'x'), 0, { create: true }), InvalidArgumentError);
    assert.throws(
      () => memory.mapSharedFile(join(dir, 'x'), 10, { create: true, readOnly: true }),
      InvalidArgumentError,
    );
    assert.throws(() => memory.mapSharedFile(join(dir, 'x'), 10, { numaNode: 5000 }), InvalidArgumentError);
    assert.throws(
      () => memory.mapSharedFile(join(dir, 'missing'), 4096),
      (err: unknown) => {
        assert.ok(err instanceof MemoryMapError);
        assert.match(err.message, /missing.*No such file/);
        return true;
      },
    );
    const small = memory.mapSharedFile(join(dir, 'small'), 4096, { create: true });
    memory.unmap(small);
    assert.throws(() => memory.mapSharedFile(join(dir, 'small'), 8192), /fewer than the 8192/);
    assert.throws(() => memory.allocAligned(4096, 3000), InvalidArgumentError);
  });

  it('memory - aligned allocations are zeroed, writable, and accepted by O_DIRECT writes', (t) => {
    const memory = memoryOrSkip(t);
    if (memory === null) return;
    for (const align of [512, 4096, 1 << 21]) {
      const buffer: ArrayBuffer = memory.allocAligned(3 * align + 17, align);
      const view: Uint8Array = new Uint8Array(buffer);
      assert.equal(view.length, 3 * align + 17);
      assert.ok(view.every((b: number) => b === 0));
      const data = randomBytes(view.length);
      view.set(data);
      assert.deepEqual(Buffer.from(buffer), data);
    }
    // O_DIRECT refuses a misaligned buffer with EINVAL: the kernel checks the address for us.
    const directDir = mkdtempSync(join(tmpdir(), 'kvmesh-odirect-'));
    const file = join(directDir, 'f');
    let fd: number;
    try {
      fd = openSync(file, constants.O_WRONLY | constants.O_CREAT | constants.O_DIRECT);
    } catch (err) {
      t.diagnostic(`O_DIRECT not supported under ${tmpdir()}: ${(err as Error).message}`);
      return;
    }
    try {
      const aligned = new Uint8Array(memory.allocAligned(8192, 4096));
      aligned.set(randomBytes(8192));
      assert.equal(writeSync(fd, aligned.subarray(0, 4096), 0, 4096, 0), 4096);
      assert.throws(() => writeSync(fd, aligned.subarray(1, 4097), 0, 4096, 0), /EINVAL/);
    } finally {
      closeSync(fd);
      rmSync(directDir, { recursive: true, force: true });
    }
  });
});

// Parity of the hash kernels: the TypeScript reference, the native module and hash-wasm (an
// independent XXH3-128 build) must agree bit for bit on fresh random inputs of every XXH3 length
// class, and both kernels must reject malformed arguments with the same typed error.
import assert from 'node:assert/strict';
import { randomBytes, randomInt } from 'node:crypto';
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';

import { InvalidArgumentError } from '@kvmesh/errors';
import { createXXHash128, type IHasher } from 'hash-wasm';

import { nativeHash, type NativeHashAddon } from '../src/native/hash.ts';
import { referenceHash } from '../src/reference/hash.ts';
import { loadNative } from './support.ts';

const isaHarness = loadNative().native;
import type { Kernels } from '../src/types.ts';

type HashKernels = Pick<Kernels, 'hash128' | 'blockHashes'>;

// NOTE: the addon is loaded directly (not through src/index.ts) so this suite depends only on the
// hash files; the loader's own fallback logic is tested with the facade.
const addonPath = fileURLToPath(new URL('../build/Release/kvmesh_kernels.node', import.meta.url));
const requireNative = process.env.KVMESH_REQUIRE_NATIVE === '1';

function loadNativeAddon(): { addon: NativeHashAddon | null; reason: string } {
  if (!existsSync(addonPath)) return { addon: null, reason: `${addonPath} not built` };
  try {
    const addon = createRequire(import.meta.url)(addonPath) as Partial<NativeHashAddon>;
    if (typeof addon.hash128 !== 'function' || typeof addon.blockHashes !== 'function')
      return { addon: null, reason: `${addonPath} exports no hash kernels (stale build?)` };
    return { addon: addon as NativeHashAddon, reason: 'loaded' };
  } catch (err) {
    return { addon: null, reason: `failed to load ${addonPath}: ${(err as Error).message}` };
  }
}

const loaded = loadNativeAddon();
const native: HashKernels | null = loaded.addon ? nativeHash(loaded.addon) : null;
if (!native && !requireNative) console.log(`# native hash checks skipped: ${loaded.reason}`);

/** The native kernels, or a failure under KVMESH_REQUIRE_NATIVE=1, or a printed skip. */
function withNative(t: { skip(message: string): void }, body: (k: HashKernels) => void | Promise<void>) {
  if (native) return body(native);
  if (requireNative) assert.fail(`native kernels required (KVMESH_REQUIRE_NATIVE=1): ${loaded.reason}`);
  t.skip(`native addon unavailable: ${loaded.reason}`);
  return undefined;
}

let hasherPromise: Promise<IHasher> | undefined;
async function wasmHash128(data: Uint8Array): Promise<Uint8Array> {
  hasherPromise ??= createXXHash128();
  const hasher = await hasherPromise;
  hasher.init();
  hasher.update(data);
  return hasher.digest('binary');
}

/** Spec v1 chain built on hash-wasm: H(prev ‖ tokens u32le), prev starting at the seed. */
async function wasmBlockHashes(
  seed: Uint8Array,
  tokens: Uint32Array,
  blockTokens: number,
): Promise<Uint8Array> {
  const blocks = Math.floor(tokens.length / blockTokens);
  const out = new Uint8Array(blocks * 16);
  let prev = seed;
  for (let b = 0; b < blocks; b++) {
    const input = Buffer.alloc(16 + 4 * blockTokens);
    input.set(prev, 0);
    for (let t = 0; t < blockTokens; t++)
      input.writeUInt32LE(tokens[b * blockTokens + t] as number, 16 + 4 * t);
    prev = await wasmHash128(input);
    out.set(prev, b * 16);
  }
  return out;
}

const hex = (bytes: Uint8Array): string =>
  Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('hex');

// Every XXH3 length class and its edges: 0, 1-3, 4-8, 9-16, 17-128 (each of the four mix rounds),
// 129-240, and > 240 (inside the first 1024-byte block, on block edges, and several blocks).
const LENGTHS = [
  0, 1, 2, 3, 4, 5, 7, 8, 9, 12, 15, 16, 17, 24, 32, 33, 48, 64, 65, 80, 96, 97, 127, 128, 129, 144, 159, 160,
  161, 200, 239, 240, 241, 255, 256, 272, 320, 511, 1023, 1024, 1025, 1087, 1088, 1089, 2048, 4096, 4097,
  65537,
];
const randomLength = (lo: number, hi: number): number => randomInt(lo, hi + 1);

function randomTokens(count: number): Uint32Array {
  const tokens = new Uint32Array(count);
  for (let i = 0; i < count; i++) tokens[i] = randomInt(0, 2 ** 32);
  // Extremes of the id range, placed at random positions.
  if (count > 0) tokens[randomInt(0, count)] = 0xffffffff;
  if (count > 1) tokens[randomInt(0, count)] = 0;
  return tokens;
}

describe('hash - hash128 parity', () => {
  it('hash - reference matches hash-wasm on fresh random inputs of every length class', async () => {
    const lengths = [...LENGTHS, randomLength(17, 128), randomLength(129, 240), randomLength(241, 10000)];
    for (const len of lengths) {
      const data = randomBytes(len);
      assert.equal(hex(referenceHash.hash128(data)), hex(await wasmHash128(data)), `length ${len}`);
    }
  });

  it('hash - native matches reference and hash-wasm on fresh random inputs of every length class', async (t) => {
    await withNative(t, async (k) => {
      const lengths = [...LENGTHS, randomLength(17, 128), randomLength(129, 240), 1 << 20];
      for (const len of lengths) {
        const data = randomBytes(len);
        const want = hex(await wasmHash128(data));
        assert.equal(hex(k.hash128(data)), want, `native, length ${len}`);
        assert.equal(hex(referenceHash.hash128(data)), want, `reference, length ${len}`);
      }
    });
  });

  // xxHash picks its vector path at compile time; the native module carries one build per ISA.
  for (const isa of isaHarness?.isas ?? []) {
    it(`hash - native ${isa} build gives the reference digest for every length class`, async (t) => {
      t.after(() => isaHarness?.resetIsa());
      isaHarness!.useIsa(isa);
      await withNative(t, async (k) => {
        for (const len of [...LENGTHS, randomLength(241, 4096), 262_272, (1 << 20) + 13]) {
          const data = randomBytes(len);
          assert.equal(hex(k.hash128(data)), hex(await wasmHash128(data)), `${isa}, length ${len}`);
        }
      });
    });
  }

  it('hash - a view into a larger buffer hashes only its own bytes', (t) => {
    const backing = randomBytes(600);
    const view = new Uint8Array(backing.buffer, backing.byteOffset + 3, 300);
    const copy = Uint8Array.from(view);
    assert.equal(hex(referenceHash.hash128(view)), hex(referenceHash.hash128(copy)));
    return withNative(t, (k) => assert.equal(hex(k.hash128(view)), hex(referenceHash.hash128(copy))));
  });

  it('hash - results are plain 16-byte Uint8Arrays from both kernels', (t) => {
    const digest = referenceHash.hash128(randomBytes(20));
    assert.equal(digest.constructor, Uint8Array);
    assert.equal(digest.length, 16);
    return withNative(t, (k) => {
      const d = k.hash128(randomBytes(20));
      assert.equal(d.constructor, Uint8Array);
      assert.equal(d.length, 16);
    });
  });
});

describe('hash - blockHashes parity', () => {
  const cases: { blockTokens: number; tokens: number }[] = [
    { blockTokens: 16, tokens: 16 * 5 + 7 },
    { blockTokens: 32, tokens: 32 * 3 },
    { blockTokens: 48, tokens: 48 * 4 + 47 },
    { blockTokens: 64, tokens: 64 * 9 + 1 },
    { blockTokens: 128, tokens: 128 * 3 + 100 },
    { blockTokens: 256, tokens: 256 * 4 },
    { blockTokens: 16 * randomInt(1, 17), tokens: randomInt(0, 3000) },
    { blockTokens: 64, tokens: 63 },
    { blockTokens: 64, tokens: 0 },
  ];

  it('hash - reference matches the hash-wasm chain, ignoring the partial tail', async () => {
    for (const c of cases) {
      const seed = randomBytes(16);
      const tokens = randomTokens(c.tokens);
      const got = referenceHash.blockHashes(seed, tokens, c.blockTokens);
      assert.equal(got.length, Math.floor(c.tokens / c.blockTokens) * 16);
      assert.equal(hex(got), hex(await wasmBlockHashes(seed, tokens, c.blockTokens)), JSON.stringify(c));
    }
  });

  it('hash - native matches reference and the hash-wasm chain', async (t) => {
    await withNative(t, async (k) => {
      for (const c of [...cases, { blockTokens: 64, tokens: 131072 + 13 }]) {
        const seed = randomBytes(16);
        const tokens = randomTokens(c.tokens);
        const got = hex(k.blockHashes(seed, tokens, c.blockTokens));
        assert.equal(got, hex(referenceHash.blockHashes(seed, tokens, c.blockTokens)), JSON.stringify(c));
        if (c.tokens < 10000)
          assert.equal(got, hex(await wasmBlockHashes(seed, tokens, c.blockTokens)), JSON.stringify(c));
      }
    });
  });

  it('hash - seed and token views at an offset read only their own elements', (t) => {
    const seedBacking = randomBytes(40);
    const seed = new Uint8Array(seedBacking.buffer, seedBacking.byteOffset + 5, 16);
    const tokenBacking = randomTokens(300);
    const tokens = tokenBacking.subarray(7, 7 + 128);
    const want = hex(referenceHash.blockHashes(Uint8Array.from(seed), Uint32Array.from(tokens), 32));
    assert.equal(hex(referenceHash.blockHashes(seed, tokens, 32)), want);
    return withNative(t, (k) => assert.equal(hex(k.blockHashes(seed, tokens, 32)), want));
  });
});

describe('hash - argument validation', () => {
  const seed = randomBytes(16);
  const tokens = randomTokens(64);
  const badCalls: { name: string; call: (k: HashKernels) => unknown; value: unknown }[] = [
    { name: 'seed of 15 bytes', call: (k) => k.blockHashes(new Uint8Array(15), tokens, 16), value: 15 },
    { name: 'seed of 17 bytes', call: (k) => k.blockHashes(new Uint8Array(17), tokens, 16), value: 17 },
    {
      name: 'seed as a plain array',
      call: (k) => k.blockHashes([1, 2] as never, tokens, 16),
      value: 'Array',
    },
    { name: 'blockTokens 0', call: (k) => k.blockHashes(seed, tokens, 0), value: 0 },
    { name: 'blockTokens 15', call: (k) => k.blockHashes(seed, tokens, 15), value: 15 },
    { name: 'blockTokens 24', call: (k) => k.blockHashes(seed, tokens, 24), value: 24 },
    { name: 'blockTokens 272', call: (k) => k.blockHashes(seed, tokens, 272), value: 272 },
    { name: 'blockTokens 16.5', call: (k) => k.blockHashes(seed, tokens, 16.5), value: 16.5 },
    { name: 'blockTokens NaN', call: (k) => k.blockHashes(seed, tokens, NaN), value: NaN },
    { name: 'blockTokens as a string', call: (k) => k.blockHashes(seed, tokens, '64' as never), value: '64' },
    {
      name: 'tokens as a plain array',
      call: (k) => k.blockHashes(seed, [1, 2, 3] as never, 16),
      value: 'Array',
    },
    {
      name: 'tokens as an Int32Array',
      call: (k) => k.blockHashes(seed, new Int32Array(32) as never, 16),
      value: 'Int32Array',
    },
    {
      name: 'tokens as a Float64Array',
      call: (k) => k.blockHashes(seed, new Float64Array(32) as never, 16),
      value: 'Float64Array',
    },
    { name: 'hash128 of a string', call: (k) => k.hash128('abc' as never), value: 'string' },
    {
      name: 'hash128 of an Int8Array',
      call: (k) => k.hash128(new Int8Array(4) as never),
      value: 'Int8Array',
    },
  ];

  const isInvalidArgument = (value: unknown) => (err: unknown) => {
    assert.ok(err instanceof InvalidArgumentError, `expected InvalidArgumentError, got ${String(err)}`);
    assert.equal(err.code, 'INVALID_ARGUMENT');
    assert.ok(
      Object.values(err.details).some((d) => Object.is(d, value)),
      `details name ${String(value)}`,
    );
    return true;
  };

  for (const bad of badCalls) {
    it(`hash - reference rejects ${bad.name} with InvalidArgumentError`, () => {
      assert.throws(() => bad.call(referenceHash), isInvalidArgument(bad.value));
    });
    it(`hash - native rejects ${bad.name} with InvalidArgumentError`, (t) =>
      withNative(t, (k) => assert.throws(() => bad.call(k), isInvalidArgument(bad.value))));
  }

  it('hash - the raw addon re-checks sizes and throws JS errors instead of reading out of bounds', (t) => {
    if (!loaded.addon) return withNative(t, () => undefined);
    const addon = loaded.addon;
    assert.throws(() => addon.blockHashes(new Uint8Array(8), tokens, 16), TypeError);
    assert.throws(() => addon.blockHashes(seed, new Int32Array(16) as never, 16), TypeError);
    assert.throws(() => addon.blockHashes(seed, tokens, 512), RangeError);
    assert.throws(() => addon.blockHashes(seed, tokens, 2 ** 40 + 16), RangeError);
    assert.throws(() => addon.blockHashes(seed, tokens, -16), RangeError);
    assert.throws(() => addon.blockHashes(seed, tokens, NaN), RangeError);
    assert.throws(() => (addon.hash128 as (...a: unknown[]) => unknown)(), TypeError);
    assert.throws(() => addon.hash128(new Float32Array(4) as never), TypeError);
    return undefined;
  });
});

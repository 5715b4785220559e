// Block identity v1 against its test vectors (test/vectors/identity-v1.json, produced from hash-wasm
// by scripts/gen-identity-vectors.ts): every vector is checked through identity.ts on the reference
// kernels, the native kernels and hash-wasm, so a change to any one of them (or to the file) fails.
// Also the properties the mesh relies on: namespaces isolate, and hashes of a prefix are a prefix.
import assert from 'node:assert/strict';
import { randomBytes, randomInt } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { describe, it } from 'node:test';

import { InvalidArgumentError } from '@kvmesh/errors';
import { describeKernels, nativeKernels, referenceKernels } from '@kvmesh/kernels';
import { parseModelFingerprint, parseNamespace, type Namespace } from '@kvmesh/protocol';
import { createXXHash128 } from 'hash-wasm';

import {
  BlockSeeds,
  blockSeed,
  blockSeedPreimage,
  computeBlockHashBytes,
  computeBlockHashes,
  type BlockSeedInput,
  type HashKernels,
} from '../src/identity.ts';

// ---- The three implementations ----

const requireNative = process.env.KVMESH_REQUIRE_NATIVE === '1';
const native = nativeKernels();
if (!native && !requireNative) console.log(`# native identity checks skipped: ${describeKernels().detail}`);

// hash-wasm's hasher is synchronous once created, so it can stand in for the kernels directly.
const hasher = await createXXHash128();
function wasmHash128(data: Uint8Array): Uint8Array {
  hasher.init();
  hasher.update(data);
  return Uint8Array.from(hasher.digest('binary'));
}
const wasmKernels: HashKernels = {
  hash128: wasmHash128,
  blockHashes(seed, tokens, blockTokens) {
    const blocks = Math.floor(tokens.length / blockTokens);
    const out = new Uint8Array(blocks * 16);
    const input = Buffer.alloc(16 + 4 * blockTokens);
    let prev = seed;
    for (let b = 0; b < blocks; b++) {
      input.set(prev, 0);
      for (let t = 0; t < blockTokens; t++)
        input.writeUInt32LE(tokens[b * blockTokens + t] as number, 16 + 4 * t);
      prev = wasmHash128(input);
      out.set(prev, b * 16);
    }
    return out;
  },
};

interface Impl {
  name: string;
  kernels: () => HashKernels | null;
}
const IMPLS: Impl[] = [
  { name: 'reference', kernels: () => referenceKernels },
  { name: 'native', kernels: () => native },
  { name: 'hash-wasm', kernels: () => wasmKernels },
];

/** Runs `body` on the implementation; a missing native build fails under KVMESH_REQUIRE_NATIVE=1, else skips. */
function withImpl(impl: Impl, t: { skip(message: string): void }, body: (k: HashKernels) => void): void {
  const kernels = impl.kernels();
  if (kernels) return body(kernels);
  const reason = describeKernels().detail;
  if (requireNative) assert.fail(`native kernels required (KVMESH_REQUIRE_NATIVE=1): ${reason}`);
  t.skip(`native kernels unavailable: ${reason}`);
}

// ---- Vectors ----

interface LcgSpec {
  generator: 'lcg' | 'lcg-bytes';
  seed: number;
  count: number;
  mod?: number;
}
interface HashVector {
  name: string;
  length: number;
  input: string | LcgSpec;
  digestHex: string;
}
interface BlockVector {
  name: string;
  modelFingerprint: string;
  blockTokens: number;
  namespace: string;
  tokenCount: number;
  tokens: number[] | LcgSpec;
  seedPreimageHex: string;
  seedHex: string;
  hashes: string[];
}

const vectors = JSON.parse(readFileSync(new URL('./vectors/identity-v1.json', import.meta.url), 'utf8')) as {
  hash128: HashVector[];
  blocks: BlockVector[];
};

/** The generators documented in the vector file. */
function lcg(spec: LcgSpec): Uint32Array {
  const out = new Uint32Array(spec.count);
  let state = spec.seed >>> 0;
  for (let k = 0; k < spec.count; k++) {
    state = (Math.imul(1664525, state) + 1013904223) >>> 0;
    out[k] = spec.mod === undefined ? state : state % spec.mod;
  }
  return out;
}
function lcgBytes(spec: LcgSpec): Uint8Array {
  const words = lcg({ generator: 'lcg', seed: spec.seed, count: Math.ceil(spec.count / 4) });
  const bytes = new Uint8Array(words.length * 4);
  const view = new DataView(bytes.buffer);
  words.forEach((w, i) => view.setUint32(4 * i, w, true));
  return bytes.subarray(0, spec.count);
}

const hex = (bytes: Uint8Array): string =>
  Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('hex');

function seedInput(v: BlockVector): BlockSeedInput {
  return {
    modelFingerprint: parseModelFingerprint(v.modelFingerprint),
    blockTokens: v.blockTokens,
    namespace: parseNamespace(v.namespace),
  };
}

describe('identity - vector file', () => {
  it('identity - the vector file covers the cases the spec promises', () => {
    const blocks = vectors.blocks;
    assert.ok(blocks.length >= 24, `${blocks.length} block vectors`);
    for (const size of [16, 64, 128, 256])
      assert.ok(
        blocks.some((v) => v.blockTokens === size),
        `block ${size}`,
      );
    assert.ok(
      blocks.some((v) => v.tokenCount === 0 && v.hashes.length === 0),
      'empty token list',
    );
    assert.ok(
      blocks.some((v) => v.tokenCount % v.blockTokens !== 0 && v.hashes.length > 0),
      'partial tail',
    );
    assert.ok(
      blocks.some((v) => /[^\x20-\x7e]/.test(v.namespace)),
      'non-ASCII namespace',
    );
    const lengths = new Set(vectors.hash128.map((v) => v.length));
    for (const n of [0, 1, 3, 4, 8, 9, 16, 17, 128, 129, 240, 241, 1024, 4096])
      assert.ok(lengths.has(n), `length ${n}`);
  });

  it('identity - seed preimages match the byte layout of the spec', () => {
    for (const v of vectors.blocks)
      assert.equal(hex(blockSeedPreimage(seedInput(v))), v.seedPreimageHex, v.name);
  });
});

for (const impl of IMPLS) {
  describe(`identity - vectors on ${impl.name}`, () => {
    it(`identity - ${impl.name} hash128 matches every raw vector`, (t) =>
      withImpl(impl, t, (k) => {
        for (const v of vectors.hash128) {
          const data = typeof v.input === 'string' ? Buffer.from(v.input, 'hex') : lcgBytes(v.input);
          assert.equal(data.length, v.length, v.name);
          assert.equal(hex(k.hash128(data)), v.digestHex, v.name);
        }
      }));

    it(`identity - ${impl.name} seeds and block hashes match every block vector`, (t) =>
      withImpl(impl, t, (k) => {
        for (const v of vectors.blocks) {
          const tokens = Array.isArray(v.tokens) ? v.tokens : lcg(v.tokens);
          assert.equal(tokens.length, v.tokenCount, v.name);
          const seed = blockSeed(seedInput(v), k);
          assert.equal(hex(seed), v.seedHex, v.name);
          assert.deepEqual(computeBlockHashes(seed, tokens, v.blockTokens, k), v.hashes, v.name);
          assert.equal(hex(computeBlockHashBytes(seed, tokens, v.blockTokens, k)), v.hashes.join(''), v.name);
        }
      }));
  });
}

// ---- Properties ----

const FINGERPRINT = parseModelFingerprint(randomBytes(16).toString('hex'));

function randomTokenIds(count: number): Uint32Array {
  return Uint32Array.from({ length: count }, () => randomInt(0, 2 ** 32));
}

describe('identity - properties', () => {
  it('identity - namespaces isolate: same tokens under different namespaces share no hash', () => {
    const tokens = randomTokenIds(64 * 8);
    const namespaces = ['', 'tenant-a', 'tenant-b', 'TENANT-A', 'tenant-a ', 'ü'];
    const seen = new Set<string>();
    for (const ns of namespaces) {
      const seed = blockSeed({
        modelFingerprint: FINGERPRINT,
        blockTokens: 64,
        namespace: parseNamespace(ns),
      });
      for (const h of computeBlockHashes(seed, tokens, 64)) {
        assert.ok(!seen.has(h), `hash ${h} repeated under namespace '${ns}'`);
        seen.add(h);
      }
    }
    assert.equal(seen.size, namespaces.length * 8);
  });

  it('identity - the model fingerprint and block size are part of identity', () => {
    const tokens = randomTokenIds(256);
    const base = { modelFingerprint: FINGERPRINT, blockTokens: 64, namespace: '' as Namespace };
    const other = parseModelFingerprint(randomBytes(16).toString('hex'));
    const a = computeBlockHashes(blockSeed(base), tokens, 64);
    const b = computeBlockHashes(blockSeed({ ...base, modelFingerprint: other }), tokens, 64);
    assert.notDeepEqual(a[0], b[0]);
    const c = blockSeed({ ...base, blockTokens: 128 });
    assert.notEqual(hex(c), hex(blockSeed(base)));
  });

  it('identity - hashes of a prefix are a prefix of the hashes, and the tail never matters', () => {
    const blockTokens = 16 * randomInt(1, 17);
    const tokens = randomTokenIds(blockTokens * 12 + randomInt(0, blockTokens));
    const seed = blockSeed({ modelFingerprint: FINGERPRINT, blockTokens, namespace: '' as Namespace });
    const all = computeBlockHashes(seed, tokens, blockTokens);
    assert.equal(all.length, 12);
    for (let cut = 0; cut <= tokens.length; cut += randomInt(1, blockTokens + 1)) {
      const prefix = computeBlockHashes(seed, tokens.subarray(0, cut), blockTokens);
      assert.deepEqual(prefix, all.slice(0, Math.floor(cut / blockTokens)), `cut at ${cut}`);
    }
    // Changing one token changes that block's hash and every later one, never an earlier one.
    const changedAt = randomInt(0, 12 * blockTokens);
    const changed = Uint32Array.from(tokens);
    changed[changedAt] = ((changed[changedAt] as number) + 1) >>> 0;
    const after = computeBlockHashes(seed, changed, blockTokens);
    const block = Math.floor(changedAt / blockTokens);
    for (let i = 0; i < 12; i++) {
      if (i < block) assert.equal(after[i], all[i], `block ${i} before the change`);
      else assert.notEqual(after[i], all[i], `block ${i} at or after the change`);
    }
  });

  it('identity - a plain number array and a Uint32Array give the same hashes', () => {
    const tokens = randomTokenIds(200);
    const seed = blockSeed({ modelFingerprint: FINGERPRINT, blockTokens: 32, namespace: '' as Namespace });
    assert.deepEqual(computeBlockHashes(seed, Array.from(tokens), 32), computeBlockHashes(seed, tokens, 32));
  });

  it('identity - the default kernels agree with the reference', () => {
    const tokens = randomTokenIds(64 * 3 + 5);
    const input = { modelFingerprint: FINGERPRINT, blockTokens: 64, namespace: parseNamespace('t') };
    const seed = blockSeed(input);
    assert.equal(hex(seed), hex(blockSeed(input, referenceKernels)));
    assert.deepEqual(
      computeBlockHashes(seed, tokens, 64),
      computeBlockHashes(seed, tokens, 64, referenceKernels),
    );
  });
});

describe('identity - argument validation', () => {
  const seed = randomBytes(16);
  const good: BlockSeedInput = { modelFingerprint: FINGERPRINT, blockTokens: 64, namespace: '' as Namespace };
  const invalid = (value: unknown) => (err: unknown) => {
    assert.ok(err instanceof InvalidArgumentError, `expected InvalidArgumentError, got ${String(err)}`);
    if (value !== undefined)
      assert.ok(
        Object.values(err.details).some((d) => Object.is(d, value)),
        `details carry ${String(value)}`,
      );
    return true;
  };

  const badSeeds: { name: string; input: BlockSeedInput; value?: unknown }[] = [
    { name: 'a 3-character fingerprint', input: { ...good, modelFingerprint: 'abc' as never }, value: 'abc' },
    { name: 'block size 0', input: { ...good, blockTokens: 0 }, value: 0 },
    { name: 'block size 24', input: { ...good, blockTokens: 24 }, value: 24 },
    { name: 'block size 272', input: { ...good, blockTokens: 272 }, value: 272 },
    { name: 'block size 63.5', input: { ...good, blockTokens: 63.5 }, value: 63.5 },
    { name: 'a 257-byte namespace', input: { ...good, namespace: 'n'.repeat(257) as Namespace }, value: 257 },
    {
      name: 'a namespace of 129 two-byte characters',
      input: { ...good, namespace: 'é'.repeat(129) as Namespace },
      value: 258,
    },
    {
      name: 'a namespace with a lone surrogate',
      input: { ...good, namespace: 'a\ud800b' as Namespace },
      value: 'a\ud800b',
    },
  ];
  for (const bad of badSeeds) {
    it(`identity - blockSeed rejects ${bad.name}`, () => {
      assert.throws(() => blockSeed(bad.input, referenceKernels), invalid(bad.value));
    });
  }

  const badTokens: { name: string; tokens: number[]; value: unknown }[] = [
    { name: '-1', tokens: [1, 2, -1], value: -1 },
    { name: '2^32', tokens: [2 ** 32], value: 2 ** 32 },
    { name: '1.5', tokens: [0, 1.5], value: 1.5 },
    { name: 'NaN', tokens: [NaN], value: NaN },
    { name: 'a string', tokens: ['7' as never], value: '7' },
  ];
  for (const bad of badTokens) {
    it(`identity - computeBlockHashes rejects token id ${bad.name}`, () => {
      assert.throws(() => computeBlockHashes(seed, bad.tokens, 16, referenceKernels), invalid(bad.value));
    });
  }

  it('identity - computeBlockHashes rejects a seed that is not 16 bytes and a bad block size', () => {
    assert.throws(() => computeBlockHashes(new Uint8Array(15), [], 16, referenceKernels), invalid(15));
    assert.throws(() => computeBlockHashes(seed, [], 8, referenceKernels), invalid(8));
  });
});

describe('identity - BlockSeeds', () => {
  it('identity - the cached seed is blockSeed, computed once per key and bounded', () => {
    const fp = parseModelFingerprint(randomBytes(16).toString('hex'));
    const seeds = new BlockSeeds(referenceKernels, 2);
    const input = (ns: string) => ({ modelFingerprint: fp, blockTokens: 64, namespace: parseNamespace(ns) });
    const first = seeds.get(input('a'));
    assert.deepEqual(first, blockSeed(input('a'), referenceKernels));
    assert.equal(seeds.get(input('a')), first, 'the same object: computed once');
    assert.notDeepEqual(seeds.get(input('b')), first);
    seeds.get(input('c'));
    assert.notEqual(seeds.get(input('a')), first, "past seedsMax the oldest ('a') was recomputed");
    assert.deepEqual(seeds.get(input('a')), first);
    assert.throws(() => new BlockSeeds(referenceKernels, 0), InvalidArgumentError);
  });
});

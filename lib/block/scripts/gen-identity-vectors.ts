// Generates lib/block/test/vectors/identity-v1.json, the block identity v1 test vectors. It builds
// the seed preimage and the chain by itself and hashes with hash-wasm's xxhash128, so the expected
// values come from neither kvmesh implementation (TypeScript reference or native) under test.
// Usage: node --import tsx lib/block/scripts/gen-identity-vectors.ts [--check]
import { readFileSync, writeFileSync } from 'node:fs';

import { createXXHash128 } from 'hash-wasm';

const outPath = new URL('../test/vectors/identity-v1.json', import.meta.url);

// ---- Deterministic generators (documented in the JSON and in spec/identity-v1.md) ----

interface LcgSpec {
  generator: 'lcg';
  seed: number;
  count: number;
  mod?: number;
}
interface LcgBytesSpec {
  generator: 'lcg-bytes';
  seed: number;
  count: number;
}

/** s[0] = seed; s[k+1] = (1664525 * s[k] + 1013904223) mod 2^32; element k = s[k+1] (mod `mod`, if given). */
function lcg(spec: LcgSpec): number[] {
  const out: number[] = [];
  let state = spec.seed >>> 0;
  for (let k = 0; k < spec.count; k++) {
    state = (Math.imul(1664525, state) + 1013904223) >>> 0;
    out.push(spec.mod === undefined ? state : state % spec.mod);
  }
  return out;
}

/** The lcg u32 stream written as u32le, truncated to `count` bytes. */
function lcgBytes(spec: LcgBytesSpec): Uint8Array {
  const words = lcg({ generator: 'lcg', seed: spec.seed, count: Math.ceil(spec.count / 4) });
  const bytes = Buffer.alloc(words.length * 4);
  words.forEach((w, i) => bytes.writeUInt32LE(w, 4 * i));
  return new Uint8Array(bytes.subarray(0, spec.count));
}

// ---- Independent spec v1 computation on hash-wasm ----

const hasher = await createXXHash128();
function xxh128(data: Uint8Array): Buffer {
  hasher.init();
  hasher.update(data);
  return Buffer.from(hasher.digest('binary'));
}

function seedPreimage(fingerprintHex: string, blockTokens: number, namespace: string): Buffer {
  const blockSize = Buffer.alloc(4);
  blockSize.writeUInt32LE(blockTokens);
  return Buffer.concat([
    Buffer.from('kvmesh/block/v1', 'ascii'),
    Buffer.from(fingerprintHex, 'hex'),
    blockSize,
    Buffer.from(namespace, 'utf8'),
  ]);
}

function chain(seed: Buffer, tokens: readonly number[], blockTokens: number): string[] {
  const hashes: string[] = [];
  let prev = seed;
  for (let b = 0; (b + 1) * blockTokens <= tokens.length; b++) {
    const input = Buffer.alloc(16 + 4 * blockTokens);
    prev.copy(input, 0);
    for (let t = 0; t < blockTokens; t++)
      input.writeUInt32LE(tokens[b * blockTokens + t] as number, 16 + 4 * t);
    prev = xxh128(input);
    hashes.push(prev.toString('hex'));
  }
  return hashes;
}

// ---- The vectors ----

const FP_ZERO = '00000000000000000000000000000000';
const FP_A = '0123456789abcdef0123456789abcdef';
const FP_B = '0123456789abcdef0123456789abcdee'; // FP_A with the last bit flipped
const FP_ONES = 'ffffffffffffffffffffffffffffffff';
const FP_C = xxh128(Buffer.from('example-model/weights+config', 'utf8')).toString('hex');

type Tokens = number[] | LcgSpec;
interface BlockCase {
  name: string;
  modelFingerprint: string;
  blockTokens: number;
  namespace: string;
  tokens: Tokens;
}

const range = (n: number, f: (i: number) => number): number[] => Array.from({ length: n }, (_, i) => f(i));
const lcgTokens = (seed: number, count: number, mod?: number): LcgSpec =>
  mod === undefined ? { generator: 'lcg', seed, count } : { generator: 'lcg', seed, count, mod };

const blockCases: BlockCase[] = [
  { name: 'no tokens: no blocks', modelFingerprint: FP_A, blockTokens: 64, namespace: '', tokens: [] },
  {
    name: '63 tokens with block 64: only a partial block, no hashes',
    modelFingerprint: FP_A,
    blockTokens: 64,
    namespace: '',
    tokens: range(63, (i) => i + 1),
  },
  {
    name: 'one block of zero tokens, block 64',
    modelFingerprint: FP_A,
    blockTokens: 64,
    namespace: '',
    tokens: range(64, () => 0),
  },
  {
    name: 'two blocks of max token ids 4294967295, block 64',
    modelFingerprint: FP_A,
    blockTokens: 64,
    namespace: '',
    tokens: range(128, () => 4294967295),
  },
  {
    name: 'token ids 4294967294 / 4294967295 alternating, block 16',
    modelFingerprint: FP_A,
    blockTokens: 16,
    namespace: '',
    tokens: range(48, (i) => (i % 2 === 0 ? 4294967294 : 4294967295)),
  },
  {
    name: 'tokens 0..63, block 16 (4 blocks)',
    modelFingerprint: FP_A,
    blockTokens: 16,
    namespace: '',
    tokens: range(64, (i) => i),
  },
  {
    name: 'tokens 0..69, block 16: same 4 hashes, the 6-token tail is ignored',
    modelFingerprint: FP_A,
    blockTokens: 16,
    namespace: '',
    tokens: range(70, (i) => i),
  },
  {
    name: 'tokens 0..63, block 64: same tokens, other block size, other seed and hashes',
    modelFingerprint: FP_A,
    blockTokens: 64,
    namespace: '',
    tokens: range(64, (i) => i),
  },
  {
    name: 'exactly one block, block 16',
    modelFingerprint: FP_C,
    blockTokens: 16,
    namespace: '',
    tokens: range(16, (i) => 1000 + i),
  },
  {
    name: 'lcg 1024 tokens, block 64',
    modelFingerprint: FP_A,
    blockTokens: 64,
    namespace: '',
    tokens: lcgTokens(1, 1024),
  },
  {
    name: 'lcg 1024 tokens, block 64, namespace "tenant-a"',
    modelFingerprint: FP_A,
    blockTokens: 64,
    namespace: 'tenant-a',
    tokens: lcgTokens(1, 1024),
  },
  {
    name: 'lcg 1024 tokens, block 64, namespace "tenant-b"',
    modelFingerprint: FP_A,
    blockTokens: 64,
    namespace: 'tenant-b',
    tokens: lcgTokens(1, 1024),
  },
  {
    name: 'lcg 1024 tokens, block 64, namespace "Tenant-a" (case matters)',
    modelFingerprint: FP_A,
    blockTokens: 64,
    namespace: 'Tenant-a',
    tokens: lcgTokens(1, 1024),
  },
  {
    name: 'lcg 256 tokens, block 64, namespace " " (one space is not the empty namespace)',
    modelFingerprint: FP_A,
    blockTokens: 64,
    namespace: ' ',
    tokens: lcgTokens(1, 256),
  },
  {
    name: 'lcg 256 tokens, block 64, non-ASCII namespace (2-, 3- and 4-byte UTF-8)',
    modelFingerprint: FP_A,
    blockTokens: 64,
    namespace: 'café/租户/🚀',
    tokens: lcgTokens(1, 256),
  },
  {
    name: 'namespace with an embedded NUL',
    modelFingerprint: FP_A,
    blockTokens: 64,
    namespace: 'a\u0000b',
    tokens: lcgTokens(1, 128),
  },
  {
    name: 'namespace of exactly 256 ASCII bytes (the limit)',
    modelFingerprint: FP_A,
    blockTokens: 64,
    namespace: 'n'.repeat(256),
    tokens: lcgTokens(8, 192),
  },
  {
    name: 'namespace of exactly 256 UTF-8 bytes (128 x "é")',
    modelFingerprint: FP_A,
    blockTokens: 64,
    namespace: 'é'.repeat(128),
    tokens: lcgTokens(8, 192),
  },
  {
    name: 'lcg 1024 tokens, block 64, fingerprint differing in one bit',
    modelFingerprint: FP_B,
    blockTokens: 64,
    namespace: '',
    tokens: lcgTokens(1, 1024),
  },
  {
    name: 'all-zero fingerprint',
    modelFingerprint: FP_ZERO,
    blockTokens: 64,
    namespace: '',
    tokens: lcgTokens(1, 1024),
  },
  {
    name: 'all-ones fingerprint, lcg 512 tokens',
    modelFingerprint: FP_ONES,
    blockTokens: 64,
    namespace: '',
    tokens: lcgTokens(5, 512),
  },
  {
    name: 'lcg 1000 tokens, block 128 (104-token tail ignored)',
    modelFingerprint: FP_C,
    blockTokens: 128,
    namespace: '',
    tokens: lcgTokens(2, 1000),
  },
  {
    name: 'lcg 1279 tokens, block 256 (255-token tail ignored)',
    modelFingerprint: FP_C,
    blockTokens: 256,
    namespace: '',
    tokens: lcgTokens(3, 1279),
  },
  {
    name: 'zero tokens, block 256 (2 blocks)',
    modelFingerprint: FP_C,
    blockTokens: 256,
    namespace: '',
    tokens: range(512, () => 0),
  },
  {
    name: 'lcg 200 tokens, block 16',
    modelFingerprint: FP_C,
    blockTokens: 16,
    namespace: 'x',
    tokens: lcgTokens(4, 200),
  },
  {
    name: 'lcg 480 tokens, block 48 (a multiple of 16 that is not a power of two)',
    modelFingerprint: FP_C,
    blockTokens: 48,
    namespace: '',
    tokens: lcgTokens(7, 480),
  },
  {
    name: 'lcg 480 tokens, block 240',
    modelFingerprint: FP_C,
    blockTokens: 240,
    namespace: '',
    tokens: lcgTokens(7, 480),
  },
  {
    name: 'vocabulary-sized ids (lcg mod 151936), 4096 tokens, block 32',
    modelFingerprint: FP_C,
    blockTokens: 32,
    namespace: 'tenant-a',
    tokens: lcgTokens(6, 4096, 151936),
  },
  {
    name: 'long prompt: lcg 8192 tokens, block 64 (128 hashes)',
    modelFingerprint: FP_C,
    blockTokens: 64,
    namespace: '',
    tokens: lcgTokens(42, 8192),
  },
];

type Bytes = string | LcgBytesSpec;
const hashCases: { name: string; input: Bytes }[] = [
  { name: 'empty', input: '' },
  { name: '"abc" (ASCII)', input: Buffer.from('abc').toString('hex') },
  ...[1, 2, 3, 4, 5, 8, 9, 15, 16, 17, 32, 33, 64, 65, 96, 97, 128, 129, 160, 239, 240, 241, 256].map(
    (n) => ({
      name: `${n} bytes`,
      input: Buffer.from(lcgBytes({ generator: 'lcg-bytes', seed: n, count: n })).toString('hex'),
    }),
  ),
  ...[1023, 1024, 1025, 4096, 4100, 65536 + 7].map((n) => ({
    name: `${n} bytes (generated)`,
    input: { generator: 'lcg-bytes' as const, seed: n, count: n },
  })),
];

function tokensOf(tokens: Tokens): number[] {
  return Array.isArray(tokens) ? tokens : lcg(tokens);
}

const vectors = {
  spec: 'kvmesh block identity v1',
  specDoc: 'lib/block/spec/identity-v1.md',
  generatedBy: 'lib/block/scripts/gen-identity-vectors.ts (hash-wasm xxhash128; no kvmesh code)',
  generators: {
    lcg: 's[0] = seed; s[k+1] = (1664525 * s[k] + 1013904223) mod 2^32; element k (0-based) = s[k+1], or s[k+1] mod `mod` when given; `count` elements',
    'lcg-bytes':
      'the lcg u32 sequence (same seed, no mod) written as u32 little-endian, truncated to `count` bytes',
  },
  hash128: hashCases.map((c) => {
    const data = typeof c.input === 'string' ? Buffer.from(c.input, 'hex') : lcgBytes(c.input);
    return { name: c.name, length: data.length, input: c.input, digestHex: xxh128(data).toString('hex') };
  }),
  blocks: blockCases.map((c) => {
    const tokens = tokensOf(c.tokens);
    const preimage = seedPreimage(c.modelFingerprint, c.blockTokens, c.namespace);
    const seed = xxh128(preimage);
    return {
      name: c.name,
      modelFingerprint: c.modelFingerprint,
      blockTokens: c.blockTokens,
      namespace: c.namespace,
      tokenCount: tokens.length,
      tokens: c.tokens,
      seedPreimageHex: preimage.toString('hex'),
      seedHex: seed.toString('hex'),
      hashes: chain(seed, tokens, c.blockTokens),
    };
  }),
};

// Arrays of numbers (explicit token lists) go on one line each; everything else is indented.
const text =
  JSON.stringify(vectors, null, 2).replace(
    /\[\s+(\d+(?:,\s+\d+)*)\s+\]/g,
    (_, inner: string) => `[${inner.replace(/,\s+/g, ', ')}]`,
  ) + '\n';
if (process.argv.includes('--check')) {
  const current = readFileSync(outPath, 'utf8');
  if (current !== text) {
    console.error(
      `${outPath.pathname} is out of date: run node --import tsx lib/block/scripts/gen-identity-vectors.ts`,
    );
    process.exit(1);
  }
  console.log(`${outPath.pathname}: up to date`);
} else {
  writeFileSync(outPath, text);
  console.log(
    `wrote ${vectors.hash128.length} hash128 and ${vectors.blocks.length} block vectors to ${outPath.pathname}`,
  );
}

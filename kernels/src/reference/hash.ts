// XXH3-128 (seed 0, default 192-byte secret) and the spec v1 block-hash chain in plain TypeScript:
// the reference the native kernel is checked against and the fallback without a native build.
// Digests are written in canonical order (high 64 bits big-endian, then low 64 bits big-endian).
// Lengths above 240 bytes run their stripe loop on 32-bit halves (the only part whose cost grows
// with the input); the fixed-size mixing and finalisation use BigInt for clarity.
import { checkBlockHashesArgs, checkHash128Args, HASH_BYTES } from '../hash-args.ts';
import type { Kernels } from '../types.ts';

const M64 = (1n << 64n) - 1n;

const PRIME32_1 = 0x9e3779b1;
const PRIME32_2 = 0x85ebca77;
const PRIME32_3 = 0xc2b2ae3d;
const PRIME64_1 = 0x9e3779b185ebca87n;
const PRIME64_2 = 0xc2b2ae3d27d4eb4fn;
const PRIME64_3 = 0x165667b19e3779f9n;
const PRIME64_4 = 0x85ebca77c2b2ae63n;
const PRIME64_5 = 0x27d4eb2f165667c5n;
const PRIME_MX1 = 0x165667919e3779f9n;
const PRIME_MX2 = 0x9fb21c651e98df25n;

// The default secret of the XXH3 specification (192 bytes of pseudo-random data).
const SECRET = new Uint8Array([
  0xb8, 0xfe, 0x6c, 0x39, 0x23, 0xa4, 0x4b, 0xbe, 0x7c, 0x01, 0x81, 0x2c, 0xf7, 0x21, 0xad, 0x1c, 0xde, 0xd4,
  0x6d, 0xe9, 0x83, 0x90, 0x97, 0xdb, 0x72, 0x40, 0xa4, 0xa4, 0xb7, 0xb3, 0x67, 0x1f, 0xcb, 0x79, 0xe6, 0x4e,
  0xcc, 0xc0, 0xe5, 0x78, 0x82, 0x5a, 0xd0, 0x7d, 0xcc, 0xff, 0x72, 0x21, 0xb8, 0x08, 0x46, 0x74, 0xf7, 0x43,
  0x24, 0x8e, 0xe0, 0x35, 0x90, 0xe6, 0x81, 0x3a, 0x26, 0x4c, 0x3c, 0x28, 0x52, 0xbb, 0x91, 0xc3, 0x00, 0xcb,
  0x88, 0xd0, 0x65, 0x8b, 0x1b, 0x53, 0x2e, 0xa3, 0x71, 0x64, 0x48, 0x97, 0xa2, 0x0d, 0xf9, 0x4e, 0x38, 0x19,
  0xef, 0x46, 0xa9, 0xde, 0xac, 0xd8, 0xa8, 0xfa, 0x76, 0x3f, 0xe3, 0x9c, 0x34, 0x3f, 0xf9, 0xdc, 0xbb, 0xc7,
  0xc7, 0x0b, 0x4f, 0x1d, 0x8a, 0x51, 0xe0, 0x4b, 0xcd, 0xb4, 0x59, 0x31, 0xc8, 0x9f, 0x7e, 0xc9, 0xd9, 0x78,
  0x73, 0x64, 0xea, 0xc5, 0xac, 0x83, 0x34, 0xd3, 0xeb, 0xc3, 0xc5, 0x81, 0xa0, 0xff, 0xfa, 0x13, 0x63, 0xeb,
  0x17, 0x0d, 0xdd, 0x51, 0xb7, 0xf0, 0xda, 0x49, 0xd3, 0x16, 0x55, 0x26, 0x29, 0xd4, 0x68, 0x9e, 0x2b, 0x16,
  0xbe, 0x58, 0x7d, 0x47, 0xa1, 0xfc, 0x8f, 0xf8, 0xb8, 0xd1, 0x7a, 0xd0, 0x31, 0xce, 0x45, 0xcb, 0x3a, 0x8f,
  0x95, 0x16, 0x04, 0x28, 0xaf, 0xd7, 0xfb, 0xca, 0xbb, 0x4b, 0x40, 0x7e,
]);
const SECRET_BYTES = SECRET.length;
const secretView = new DataView(SECRET.buffer);

const STRIPE_BYTES = 64;
const SECRET_CONSUME_RATE = 8;
const STRIPES_PER_BLOCK = (SECRET_BYTES - STRIPE_BYTES) / SECRET_CONSUME_RATE; // 16
const LONG_BLOCK_BYTES = STRIPE_BYTES * STRIPES_PER_BLOCK; // 1024
const SECRET_LASTACC_START = 7;
const SECRET_MERGEACCS_START = 11;
const MIDSIZE_START_OFFSET = 3;
const MIDSIZE_LAST_OFFSET = 17;
const SECRET_SIZE_MIN = 136;

interface U128 {
  low: bigint;
  high: bigint;
}

function secret64(offset: number): bigint {
  return secretView.getBigUint64(offset, true);
}

function secret32(offset: number): bigint {
  return BigInt(secretView.getUint32(offset, true));
}

function mul64(a: bigint, b: bigint): bigint {
  return (a * b) & M64;
}

function mul128(a: bigint, b: bigint): U128 {
  const p = a * b;
  return { low: p & M64, high: p >> 64n };
}

/** Low and high halves of the 128-bit product folded together by xor. */
function mul128Fold64(a: bigint, b: bigint): bigint {
  const p = a * b;
  return (p & M64) ^ (p >> 64n);
}

function xorshift64(v: bigint, shift: bigint): bigint {
  return v ^ (v >> shift);
}

function swap32(v: number): number {
  return (((v & 0xff) << 24) | ((v & 0xff00) << 8) | ((v >>> 8) & 0xff00) | (v >>> 24)) >>> 0;
}

function swap64(v: bigint): bigint {
  let out = 0n;
  for (let i = 0n; i < 64n; i += 8n) out = (out << 8n) | ((v >> i) & 0xffn);
  return out;
}

function rotl32(v: number, r: number): number {
  return ((v << r) | (v >>> (32 - r))) >>> 0;
}

/** XXH64's final mix, reused by XXH3 for the shortest inputs. */
function xxh64Avalanche(h: bigint): bigint {
  h = mul64(h ^ (h >> 33n), PRIME64_2);
  h = mul64(h ^ (h >> 29n), PRIME64_3);
  return h ^ (h >> 32n);
}

function xxh3Avalanche(h: bigint): bigint {
  h = mul64(xorshift64(h, 37n), PRIME_MX1);
  return xorshift64(h, 32n);
}

function neg64(v: bigint): bigint {
  return (0n - v) & M64;
}

function hashLen0(): U128 {
  return {
    low: xxh64Avalanche(secret64(64) ^ secret64(72)),
    high: xxh64Avalanche(secret64(80) ^ secret64(88)),
  };
}

function hashLen1to3(data: Uint8Array): U128 {
  const len = data.length;
  const c1 = data[0] as number;
  const c2 = data[len >> 1] as number;
  const c3 = data[len - 1] as number;
  const combinedLow = ((c1 << 16) | (c2 << 24) | c3 | (len << 8)) >>> 0;
  const combinedHigh = rotl32(swap32(combinedLow), 13);
  const bitflipLow = secret32(0) ^ secret32(4);
  const bitflipHigh = secret32(8) ^ secret32(12);
  return {
    low: xxh64Avalanche(BigInt(combinedLow) ^ bitflipLow),
    high: xxh64Avalanche(BigInt(combinedHigh) ^ bitflipHigh),
  };
}

function hashLen4to8(view: DataView, len: number): U128 {
  const inputLow = BigInt(view.getUint32(0, true));
  const inputHigh = BigInt(view.getUint32(len - 4, true));
  const input64 = inputLow | (inputHigh << 32n);
  const keyed = input64 ^ (secret64(16) ^ secret64(24));
  const m = mul128(keyed, PRIME64_1 + (BigInt(len) << 2n));
  let high = (m.high + ((m.low << 1n) & M64)) & M64;
  let low = m.low ^ (high >> 3n);
  low = xorshift64(low, 35n);
  low = mul64(low, PRIME_MX2);
  low = xorshift64(low, 28n);
  high = xxh3Avalanche(high);
  return { low, high };
}

function hashLen9to16(view: DataView, len: number): U128 {
  const bitflipLow = secret64(32) ^ secret64(40);
  const bitflipHigh = secret64(48) ^ secret64(56);
  const inputLow = view.getBigUint64(0, true);
  let inputHigh = view.getBigUint64(len - 8, true);
  const m = mul128(inputLow ^ inputHigh ^ bitflipLow, PRIME64_1);
  let mLow = (m.low + (BigInt(len - 1) << 54n)) & M64;
  inputHigh ^= bitflipHigh;
  // The 64-bit form of "high += inputHigh + inputHigh_lo32 * (PRIME32_2 - 1)".
  let mHigh = (m.high + inputHigh + (inputHigh & 0xffffffffn) * BigInt(PRIME32_2 - 1)) & M64;
  mLow ^= swap64(mHigh);
  const h = mul128(mLow, PRIME64_2);
  mHigh = (h.high + mul64(mHigh, PRIME64_2)) & M64;
  return { low: xxh3Avalanche(h.low), high: xxh3Avalanche(mHigh) };
}

function mix16B(view: DataView, offset: number, secretOffset: number): bigint {
  return mul128Fold64(
    view.getBigUint64(offset, true) ^ secret64(secretOffset),
    view.getBigUint64(offset + 8, true) ^ secret64(secretOffset + 8),
  );
}

/** Mixes two 16-byte lanes into the 128-bit accumulator; each half also absorbs the other lane raw. */
function mix32B(acc: U128, view: DataView, offset1: number, offset2: number, secretOffset: number): U128 {
  let low = (acc.low + mix16B(view, offset1, secretOffset)) & M64;
  low ^= (view.getBigUint64(offset2, true) + view.getBigUint64(offset2 + 8, true)) & M64;
  let high = (acc.high + mix16B(view, offset2, secretOffset + 16)) & M64;
  high ^= (view.getBigUint64(offset1, true) + view.getBigUint64(offset1 + 8, true)) & M64;
  return { low, high };
}

/** Shared by the 17-128 and 129-240 paths (seed 0 drops the seed terms). */
function finishMid(acc: U128, len: number): U128 {
  const low = (acc.low + acc.high) & M64;
  const high = (mul64(acc.low, PRIME64_1) + mul64(acc.high, PRIME64_4) + mul64(BigInt(len), PRIME64_2)) & M64;
  return { low: xxh3Avalanche(low), high: neg64(xxh3Avalanche(high)) };
}

function hashLen17to128(view: DataView, len: number): U128 {
  let acc: U128 = { low: mul64(BigInt(len), PRIME64_1), high: 0n };
  if (len > 32) {
    if (len > 64) {
      if (len > 96) acc = mix32B(acc, view, 48, len - 64, 96);
      acc = mix32B(acc, view, 32, len - 48, 64);
    }
    acc = mix32B(acc, view, 16, len - 32, 32);
  }
  acc = mix32B(acc, view, 0, len - 16, 0);
  return finishMid(acc, len);
}

function hashLen129to240(view: DataView, len: number): U128 {
  const rounds = Math.floor(len / 32);
  let acc: U128 = { low: mul64(BigInt(len), PRIME64_1), high: 0n };
  for (let i = 0; i < 4; i++) acc = mix32B(acc, view, 32 * i, 32 * i + 16, 32 * i);
  acc = { low: xxh3Avalanche(acc.low), high: xxh3Avalanche(acc.high) };
  for (let i = 4; i < rounds; i++) {
    acc = mix32B(acc, view, 32 * i, 32 * i + 16, MIDSIZE_START_OFFSET + 32 * (i - 4));
  }
  // NOTE: the last round reads the final 32 bytes in swapped order and a fixed secret window.
  acc = mix32B(acc, view, len - 16, len - 32, SECRET_SIZE_MIN - MIDSIZE_LAST_OFFSET - 16);
  return finishMid(acc, len);
}

// ---- Long inputs (> 240 bytes): eight 64-bit accumulators kept as 32-bit halves. ----

/** High 32 bits of the 64-bit product of two u32, exact in doubles by splitting into 16-bit limbs. */
function mulHigh32(a: number, b: number): number {
  const a0 = a & 0xffff;
  const a1 = a >>> 16;
  const b0 = b & 0xffff;
  const b1 = b >>> 16;
  const mid = a1 * b0 + a0 * b1 + ((a0 * b0) >>> 16);
  return (a1 * b1 + Math.floor(mid / 0x10000)) >>> 0;
}

/** acc[i ^ 1] += data; acc[i] += lo32(data ^ key) * hi32(data ^ key), for the 8 lanes of one stripe. */
function accumulate512(
  accLow: Uint32Array,
  accHigh: Uint32Array,
  view: DataView,
  offset: number,
  secretOffset: number,
): void {
  for (let i = 0; i < 8; i++) {
    const dataLow = view.getUint32(offset + 8 * i, true);
    const dataHigh = view.getUint32(offset + 8 * i + 4, true);
    const keyLow = (dataLow ^ secretView.getUint32(secretOffset + 8 * i, true)) >>> 0;
    const keyHigh = (dataHigh ^ secretView.getUint32(secretOffset + 8 * i + 4, true)) >>> 0;
    const j = i ^ 1;
    const sumLow = (accLow[j] as number) + dataLow;
    accLow[j] = sumLow; // Uint32Array stores modulo 2^32
    accHigh[j] = (accHigh[j] as number) + dataHigh + (sumLow > 0xffffffff ? 1 : 0);
    const productLow = Math.imul(keyLow, keyHigh) >>> 0;
    const productHigh = mulHigh32(keyLow, keyHigh);
    const sum2Low = (accLow[i] as number) + productLow;
    accLow[i] = sum2Low;
    accHigh[i] = (accHigh[i] as number) + productHigh + (sum2Low > 0xffffffff ? 1 : 0);
  }
}

/** acc = (acc ^ (acc >> 47) ^ key) * PRIME32_1, per lane, after every 1024-byte block. */
function scrambleAcc(accLow: Uint32Array, accHigh: Uint32Array, secretOffset: number): void {
  for (let i = 0; i < 8; i++) {
    const high = accHigh[i] as number;
    const low =
      ((accLow[i] as number) ^ (high >>> 15) ^ secretView.getUint32(secretOffset + 8 * i, true)) >>> 0;
    const highKeyed = (high ^ secretView.getUint32(secretOffset + 8 * i + 4, true)) >>> 0;
    accLow[i] = Math.imul(low, PRIME32_1);
    accHigh[i] = Math.imul(highKeyed, PRIME32_1) + mulHigh32(low, PRIME32_1);
  }
}

function mergeAccs(acc: readonly bigint[], secretOffset: number, start: bigint): bigint {
  let result = start;
  for (let i = 0; i < 4; i++) {
    result += mul128Fold64(
      (acc[2 * i] as bigint) ^ secret64(secretOffset + 16 * i),
      (acc[2 * i + 1] as bigint) ^ secret64(secretOffset + 16 * i + 8),
    );
  }
  return xxh3Avalanche(result & M64);
}

const INIT_ACC = [
  BigInt(PRIME32_3),
  PRIME64_1,
  PRIME64_2,
  PRIME64_3,
  PRIME64_4,
  BigInt(PRIME32_2),
  PRIME64_5,
  BigInt(PRIME32_1),
];
const INIT_ACC_LOW = Uint32Array.from(INIT_ACC, (v) => Number(v & 0xffffffffn));
const INIT_ACC_HIGH = Uint32Array.from(INIT_ACC, (v) => Number(v >> 32n));

function hashLong(view: DataView, len: number): U128 {
  const accLow = INIT_ACC_LOW.slice();
  const accHigh = INIT_ACC_HIGH.slice();
  // NOTE: (len - 1) keeps the last stripe out of the block loop even when len is a multiple of 1024:
  // the final stripe is always hashed separately with its own secret window.
  const blocks = Math.floor((len - 1) / LONG_BLOCK_BYTES);
  for (let b = 0; b < blocks; b++) {
    for (let s = 0; s < STRIPES_PER_BLOCK; s++) {
      accumulate512(accLow, accHigh, view, b * LONG_BLOCK_BYTES + s * STRIPE_BYTES, s * SECRET_CONSUME_RATE);
    }
    scrambleAcc(accLow, accHigh, SECRET_BYTES - STRIPE_BYTES);
  }
  const stripes = Math.floor((len - 1 - blocks * LONG_BLOCK_BYTES) / STRIPE_BYTES);
  for (let s = 0; s < stripes; s++) {
    accumulate512(
      accLow,
      accHigh,
      view,
      blocks * LONG_BLOCK_BYTES + s * STRIPE_BYTES,
      s * SECRET_CONSUME_RATE,
    );
  }
  accumulate512(
    accLow,
    accHigh,
    view,
    len - STRIPE_BYTES,
    SECRET_BYTES - STRIPE_BYTES - SECRET_LASTACC_START,
  );

  const acc = Array.from(accLow, (low, i) => BigInt(low) | (BigInt(accHigh[i] as number) << 32n));
  const lenBig = BigInt(len);
  return {
    low: mergeAccs(acc, SECRET_MERGEACCS_START, mul64(lenBig, PRIME64_1)),
    high: mergeAccs(
      acc,
      SECRET_BYTES - STRIPE_BYTES - SECRET_MERGEACCS_START,
      ~mul64(lenBig, PRIME64_2) & M64,
    ),
  };
}

function xxh3_128(data: Uint8Array): U128 {
  const len = data.length;
  if (len === 0) return hashLen0();
  if (len <= 3) return hashLen1to3(data);
  const view = new DataView(data.buffer, data.byteOffset, len);
  if (len <= 8) return hashLen4to8(view, len);
  if (len <= 16) return hashLen9to16(view, len);
  if (len <= 128) return hashLen17to128(view, len);
  if (len <= 240) return hashLen129to240(view, len);
  return hashLong(view, len);
}

/** Writes XXH3-128(data) in canonical order (high 64 BE, low 64 BE) at out[offset..offset+16). */
function hash128Into(data: Uint8Array, out: Uint8Array, offset: number): void {
  const h = xxh3_128(data);
  const view = new DataView(out.buffer, out.byteOffset + offset, HASH_BYTES);
  view.setBigUint64(0, h.high, false);
  view.setBigUint64(8, h.low, false);
}

function hash128(data: Uint8Array): Uint8Array {
  checkHash128Args(data);
  const out = new Uint8Array(HASH_BYTES);
  hash128Into(data, out, 0);
  return out;
}

function blockHashes(seed: Uint8Array, tokens: Uint32Array, blockTokens: number): Uint8Array {
  checkBlockHashesArgs(seed, tokens, blockTokens);
  const blocks = Math.floor(tokens.length / blockTokens);
  const out = new Uint8Array(blocks * HASH_BYTES);
  // One scratch buffer reused for every block: [previous hash (or seed) ‖ block tokens as u32le].
  const scratch = new Uint8Array(HASH_BYTES + 4 * blockTokens);
  const scratchView = new DataView(scratch.buffer);
  scratch.set(seed, 0);
  for (let b = 0; b < blocks; b++) {
    if (b > 0) scratch.set(out.subarray((b - 1) * HASH_BYTES, b * HASH_BYTES), 0);
    const first = b * blockTokens;
    for (let t = 0; t < blockTokens; t++) {
      scratchView.setUint32(HASH_BYTES + 4 * t, tokens[first + t] as number, true);
    }
    hash128Into(scratch, out, b * HASH_BYTES);
  }
  return out;
}

export const referenceHash: Pick<Kernels, 'hash128' | 'blockHashes'> = { hash128, blockHashes };

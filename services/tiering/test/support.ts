// Shared fixtures of the tiering tests: real blocks (random K/V encoded as payload format v1, hashes
// from the spec v1 chain), and a real tiering service process on loopback with a client.
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { blockSeed, computeBlockHashBytes, encodeBlockPayload, type BlockDims } from '@kvmesh/block';
import { loadKernels, type Kernels } from '@kvmesh/kernels';
import { after } from 'node:test';

import { blockHashFromBytes, parseModelFingerprint, parseNamespace, type BlockHash } from '@kvmesh/protocol';
import { spawnService, type ServiceHandle } from '@kvmesh/test-harness';

import type { TierBlock } from '../src/core/index.ts';
import { TierServiceClient } from '../src/adapters/client.ts';

export const kernels: Kernels = loadKernels();

/** 1 layer × 2 kv heads × 16 tokens × 32 dims, f32: a 8,320-byte payload (header + one section). */
export const SMALL_DIMS: BlockDims = { layers: 1, kvHeads: 2, blockTokens: 16, headDim: 32, groupSize: 16 };
const FINGERPRINT = parseModelFingerprint('6b766d6573682d746965722d74657374');
const NAMESPACE = parseNamespace('tier-test');

function randomFloats(n: number): Float32Array {
  return Float32Array.from({ length: n }, () => Math.random() * 2 - 1);
}

/** A random payload of `dims` (fresh random K/V each call). */
export function randomPayload(dims: BlockDims = SMALL_DIMS): Uint8Array {
  const n = dims.kvHeads * dims.blockTokens * dims.headDim;
  return encodeBlockPayload(
    kernels,
    'f32',
    dims,
    Array.from({ length: dims.layers }, () => ({ k: randomFloats(n), v: randomFloats(n) })),
  );
}

/** Block `i`: its own first-block tokens (so its own hash) over a random payload. */
export function makeBlock(i: number, dims: BlockDims = SMALL_DIMS, payload = randomPayload(dims)): TierBlock {
  const seed = blockSeed({
    modelFingerprint: FINGERPRINT,
    blockTokens: dims.blockTokens,
    namespace: NAMESPACE,
  });
  const tokens = new Uint32Array(dims.blockTokens);
  for (let t = 0; t < tokens.length; t++) tokens[t] = (i * 7919 + t * 104729 + 1) >>> 0;
  tokens[0] = i >>> 0;
  const hash = blockHashFromBytes(computeBlockHashBytes(seed, tokens, dims.blockTokens, kernels));
  return {
    hash,
    parentHash: null,
    namespace: NAMESPACE,
    modelFingerprint: FINGERPRINT,
    tokenIds: tokens,
    payload,
  };
}

export function tempDir(prefix: string): { dir: string; remove(): void } {
  const dir = mkdtempSync(join(tmpdir(), `kvmesh-${prefix}-`));
  return { dir, remove: () => rmSync(dir, { recursive: true, force: true }) };
}

export interface RunningTiering {
  readonly service: ServiceHandle;
  readonly client: TierServiceClient;
  readonly info: {
    serviceId: string;
    grpcAddress: string;
    dataAddress: string;
    far: string;
    farPath: string;
    ssdDir: string;
  };
  stop(): Promise<void>;
}

/** A tiering service process on loopback (settings as KVMESH_* variables) and a connected client. */
export async function startTiering(env: Record<string, string>): Promise<RunningTiering> {
  const service = await spawnService({
    name: 'tiering-test',
    entry: 'services/tiering/src/main.ts',
    env: { KVMESH_LOG_LEVEL: 'warn', ...env },
  });
  const info = service.info as RunningTiering['info'];
  let client: TierServiceClient;
  try {
    client = await TierServiceClient.connect({ grpcAddress: info.grpcAddress });
  } catch (err) {
    await service.stop();
    throw err;
  }
  return {
    service,
    client,
    info,
    async stop() {
      await client.close();
      await service.stop();
    },
  };
}

/**
 * A maker of fresh temporary directories named `prefix`…, all removed when the calling test file
 * ends (call it at the top level of that file).
 */
export function tempDirs(prefix: string): () => string {
  const dirs: string[] = [];
  after(() => {
    for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
  });
  return () => {
    const dir = mkdtempSync(join(tmpdir(), prefix));
    dirs.push(dir);
    return dir;
  };
}

/** `count` (hash, bytes) pairs of `bytes` random bytes each, for raw segment-log records. */
export function randomRecords(count: number, bytes: number): [BlockHash, Uint8Array][] {
  return Array.from(
    { length: count },
    () => [blockHashFromBytes(randomBytes(16)), randomBytes(bytes)] as [BlockHash, Uint8Array],
  );
}

// A client of one tiering service, for the kvstore nodes of its host, the bench and the tests:
// control calls (Stats, LocateFar) over gRPC, bulk single-block calls (demote, read, promote) over
// the binary data channel the service advertises (payload as raw frame bytes); readMany pipelines
// single-block reads. FarMemoryReader adds
// the same-host path: it maps the service's far-memory pool read-only and hands out each located
// payload in place, after verifying every section checksum of it; the bytes stay valid while the
// lease LocateFar granted lasts.
import { credentials, Metadata } from '@grpc/grpc-js';

import { verifyBlockPayload } from '@kvmesh/block';
import { DataChannelClient, parseDataAddress } from '@kvmesh/dataplane';
import { CorruptDataError, InvalidArgumentError, KvmeshError } from '@kvmesh/errors';
import { loadKernels, nativeMemory, type Kernels } from '@kvmesh/kernels';
import {
  DemoteRequest,
  DemoteResponse,
  LocateFarRequest,
  LocateFarResponse,
  PromoteRequest,
  ReadRequest,
  TierBlockResponse,
  TieringClient as TieringGrpcClient,
  blockHashFromBytes,
  blockHashToBytes,
  type BlockHash,
  type OpenDataChannelResponse,
  type TieringStatsResponse,
} from '@kvmesh/protocol';
import { callUnary, deadlineIn, grpcClientOptions } from '@kvmesh/runtime';

import type { TierBlock, TierBlockMeta, TierName } from '../core/index.ts';
import { TIERING_DATA_METHODS } from './data-methods.ts';
import { blockOf, tierBlockOf, tierToProto } from './wire.ts';

export interface TierServiceClientOptions {
  readonly grpcAddress: string;
  /** Data channel connections (default 2). */
  readonly dataConnections?: number;
  /** Bound on each call (default 30 s). */
  readonly timeoutMs?: number;
}

export interface TierReadResult {
  readonly block: TierBlock;
  readonly tier: TierName;
}

function decodeOrCorrupt<T>(what: string, decode: () => T): T {
  try {
    return decode();
  } catch (err) {
    throw new CorruptDataError(`tiering service sent an undecodable ${what}: ${(err as Error).message}`);
  }
}

export class TierServiceClient {
  /** The raw gRPC client, for the streaming RPCs (Demote, Read, Promote). */
  readonly grpc: TieringGrpcClient;
  private readonly data: DataChannelClient;
  private readonly timeoutMs: number;
  readonly blockBytesMax: number;

  private constructor(
    grpc: TieringGrpcClient,
    data: DataChannelClient,
    timeoutMs: number,
    blockBytesMax: number,
  ) {
    this.grpc = grpc;
    this.data = data;
    this.timeoutMs = timeoutMs;
    this.blockBytesMax = blockBytesMax;
  }

  static async connect(options: TierServiceClientOptions): Promise<TierServiceClient> {
    const timeoutMs = options.timeoutMs ?? 30_000;
    const grpc = new TieringGrpcClient(
      options.grpcAddress,
      credentials.createInsecure(),
      grpcClientOptions(),
    );
    try {
      const channel = await callUnary<OpenDataChannelResponse>((cb) =>
        grpc.openDataChannel({}, new Metadata(), { deadline: deadlineIn(timeoutMs) }, cb),
      );
      const address = parseDataAddress(channel.address);
      const blockBytesMax = Number(channel.blockBytesMax);
      const data = await DataChannelClient.connect({
        host: address.host,
        port: address.port,
        ...(channel.token === '' ? {} : { token: channel.token }),
        connections: options.dataConnections ?? 2,
        timeoutMs,
        limits: { bodyBytesMax: Math.max(blockBytesMax, 1) },
      });
      return new TierServiceClient(grpc, data, timeoutMs, blockBytesMax);
    } catch (err) {
      grpc.close();
      throw err;
    }
  }

  /** Stores one block in `target`; resolves once the service acknowledged it (durable there). */
  async demote(block: TierBlock, target: TierName): Promise<void> {
    const header = DemoteRequest.encode({
      block: blockOf(block, false),
      target: tierToProto(target),
    }).finish();
    const { header: reply } = await this.data.call(TIERING_DATA_METHODS.demoteBlock, header, block.payload);
    const response = decodeOrCorrupt('DemoteResponse', () => DemoteResponse.decode(reply));
    const acknowledged = response.acknowledged[0];
    if (acknowledged === undefined || blockHashFromBytes(acknowledged) !== block.hash)
      throw new KvmeshError(
        'NOT_ACKNOWLEDGED',
        'internal',
        `demote of block ${block.hash} was not acknowledged`,
        {
          hash: block.hash,
        },
      );
  }

  /** The block (kept in its tier), or null when the service does not hold it. */
  read(hash: BlockHash, into?: Uint8Array): Promise<TierReadResult | null> {
    return this.fetch(
      TIERING_DATA_METHODS.readBlock,
      ReadRequest.encode({ hashes: [this.hashBytes(hash)] }).finish(),
      hash,
      into,
    );
  }

  /**
   * Many blocks (kept in their tiers), in order, null where the service does not hold one. The
   * single-block calls go out together, at most `inFlightMax` at once (default 16), so the service
   * sees them together and serves neighbouring SSD records with merged reads. The first failure
   * rejects the whole call (calls already sent still finish).
   */
  async readMany(hashes: readonly BlockHash[], inFlightMax = 16): Promise<(TierReadResult | null)[]> {
    if (!Number.isSafeInteger(inFlightMax) || inFlightMax < 1)
      throw new InvalidArgumentError(`inFlightMax must be a positive integer, got ${String(inFlightMax)}`, {
        inFlightMax,
      });
    const results: (TierReadResult | null)[] = new Array<TierReadResult | null>(hashes.length).fill(null);
    let next = 0;
    let failed = false;
    await Promise.all(
      Array.from({ length: Math.min(inFlightMax, hashes.length) }, async () => {
        while (!failed && next < hashes.length) {
          const i = next++;
          try {
            results[i] = await this.read(hashes[i] as BlockHash);
          } catch (err) {
            failed = true;
            throw err;
          }
        }
      }),
    );
    return results;
  }

  /** The block, removed from its tier, or null when the service does not hold it. */
  promote(hash: BlockHash): Promise<TierReadResult | null> {
    return this.fetch(
      TIERING_DATA_METHODS.promoteBlock,
      PromoteRequest.encode({ hashes: [this.hashBytes(hash)] }).finish(),
      hash,
    );
  }

  stats(): Promise<TieringStatsResponse> {
    return callUnary<TieringStatsResponse>((cb) =>
      this.grpc.stats({}, new Metadata(), { deadline: deadlineIn(this.timeoutMs) }, cb),
    );
  }

  /**
   * LocateFar (over the data channel): where the blocks lie in the pool (leased); `withBlock` adds
   * their checked metadata, `stageSsd` has blocks held on SSD read into the staging area and located
   * there.
   */
  async locateFar(
    hashes: readonly BlockHash[],
    leaseMs = 0,
    withBlock = false,
    stageSsd = false,
  ): Promise<LocateFarResponse> {
    const request = LocateFarRequest.encode({
      hashes: hashes.map((h) => this.hashBytes(h)),
      leaseMs,
      withBlock,
      stageSsd,
    }).finish();
    const { body } = await this.data.call(TIERING_DATA_METHODS.locateFar, new Uint8Array(0), request);
    return decodeOrCorrupt('LocateFarResponse', () => LocateFarResponse.decode(body));
  }

  async close(): Promise<void> {
    this.grpc.close();
    await this.data.close();
  }

  private hashBytes(hash: BlockHash): Buffer {
    return Buffer.from(blockHashToBytes(hash));
  }

  private async fetch(
    methodId: number,
    header: Uint8Array,
    hash: BlockHash,
    into?: Uint8Array,
  ): Promise<TierReadResult | null> {
    const result = await this.data.call(
      methodId,
      header,
      undefined,
      into === undefined ? {} : { responseInto: into },
    );
    const response = decodeOrCorrupt('TierBlockResponse', () => TierBlockResponse.decode(result.header));
    if (response.result?.$case !== 'block') return null;
    // A plain Uint8Array view (no copy), like every other payload the tiers hand out.
    const body = result.body;
    const block = tierBlockOf(
      response.result.value,
      new Uint8Array(body.buffer, body.byteOffset, body.byteLength),
    );
    if (block.hash !== hash)
      throw new CorruptDataError(`asked for block ${hash}, the tiering service sent ${block.hash}`, {
        asked: hash,
        sent: block.hash,
      });
    return { block, tier: response.tier === tierToProto('far') ? 'far' : 'ssd' };
  }
}

export interface FarReadHit {
  readonly hash: BlockHash;
  /** 'far': read from far memory; 'ssd': a copy the service staged from its SSD tier. */
  readonly tier: TierName;
  /** The block's metadata, when the read asked for it (`withMeta`). */
  readonly meta: TierBlockMeta | undefined;
  /** The payload in place in the mapped pool, verified; valid until `leaseUntilMs` (performance.now()). */
  readonly payload: Uint8Array;
  readonly leaseUntilMs: number;
}

export interface FarReadResult {
  readonly hits: FarReadHit[];
  /** Hashes far memory (and, with `stageSsd`, the SSD tier) does not hold. */
  readonly missing: BlockHash[];
  /** With `stageSsd`: held on SSD, but the staging area had no free room (read them over the data channel). */
  readonly unstaged: BlockHash[];
  /** Located payloads that failed verification here (not handed out). */
  readonly corrupt: BlockHash[];
}

export interface FarReadOptions {
  /** Lease asked for (0: the service's default). */
  readonly leaseMs?: number;
  /** Also fetch each block's metadata (token ids etc.), decoded and checked by the service. */
  readonly withMeta?: boolean;
  /** Also read blocks held on SSD, through the service's staging area in the same mapping. */
  readonly stageSsd?: boolean;
}

/**
 * Same-host zero-copy reads of far memory: LocateFar (one gRPC call for many hashes), then the
 * payloads straight out of a read-only mapping of the pool, each verified in place. With `stageSsd`
 * the same call reaches SSD blocks: the service reads each into the staging area after the pool.
 */
export class FarMemoryReader {
  private mapping: { poolId: string; path: string; buffer: ArrayBuffer; region: Uint8Array } | undefined;
  private readonly kernels: Kernels;

  constructor(
    private readonly client: TierServiceClient,
    kernels?: Kernels,
  ) {
    this.kernels = kernels ?? loadKernels();
  }

  async read(hashes: readonly BlockHash[], options: FarReadOptions = {}): Promise<FarReadResult> {
    const startedMs = performance.now();
    const located = await this.client.locateFar(
      hashes,
      options.leaseMs ?? 0,
      options.withMeta ?? false,
      options.stageSsd ?? false,
    );
    const region = this.map(located);
    // NOTE: measured from before the call: the lease started at the service no earlier than that.
    const leaseUntilMs = startedMs + located.leaseMs;
    const hits: FarReadHit[] = [];
    const corrupt: BlockHash[] = [];
    for (const location of located.locations) {
      const hash = blockHashFromBytes(location.hash);
      const offset = Number(location.payloadOffset);
      const bytes = Number(location.payloadBytes);
      if (offset + bytes > region.length)
        throw new CorruptDataError(`far location of ${hash} lies outside the pool`, { offset, bytes });
      const payload = region.subarray(offset, offset + bytes);
      try {
        verifyBlockPayload(this.kernels, payload);
      } catch (err) {
        if (!(err instanceof KvmeshError)) throw err;
        corrupt.push(hash);
        continue;
      }
      let meta: TierBlockMeta | undefined;
      if (location.block !== undefined) {
        const { payload: _empty, ...rest } = tierBlockOf(location.block, new Uint8Array(0));
        meta = rest;
      }
      hits.push({
        hash,
        tier: location.tier === tierToProto('ssd') ? 'ssd' : 'far',
        meta,
        payload,
        leaseUntilMs,
      });
    }
    return {
      hits,
      missing: located.missingHashes.map((h) => blockHashFromBytes(h)),
      unstaged: located.unstagedHashes.map((h) => blockHashFromBytes(h)),
      corrupt,
    };
  }

  /** Unmaps the pool; payload views handed out before read as empty afterwards. */
  close(): void {
    if (this.mapping !== undefined) nativeMemory()?.unmap(this.mapping.buffer);
    this.mapping = undefined;
  }

  private map(located: LocateFarResponse): Uint8Array {
    if (this.mapping?.poolId === located.poolId && this.mapping.path === located.poolPath)
      return this.mapping.region;
    const memory = nativeMemory();
    if (memory === null)
      throw new InvalidArgumentError('same-host far reads need the native module (npm run build:native)', {
        path: located.poolPath,
      });
    this.close();
    const buffer = memory.mapSharedFile(located.poolPath, Number(located.poolBytes), { readOnly: true });
    this.mapping = { poolId: located.poolId, path: located.poolPath, buffer, region: new Uint8Array(buffer) };
    return this.mapping.region;
  }
}

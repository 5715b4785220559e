// Bulk-byte transports over loopback, the measurement behind DESIGN §6's choice of a binary data
// channel for block bytes. For each value size (default 256 KiB and 1 MiB) and concurrency (default
// 1 and 8) it measures GET-like (8-byte key in, value out) and PUT-like (key and value in, empty
// reply out) payload throughput in GB/s for: gRPC with the generated kvmesh messages and default
// options, gRPC with identity serializers and 64 MiB HTTP/2 windows, the kvmesh data channel,
// Redis GET/SET of the same values, and memcpy of the same bytes as the ceiling.
// Concurrency c means c connections, each with one operation outstanding (anchors/closed-loop.ts),
// for every transport. Servers run in their own process (anchors/transport-servers.ts), like
// redis-server. Bulk bytes land in reused memory wherever the API allows it, as a store and a
// block pool would use it: data channel PUT bodies in the server's recycled value buffers
// (requestBodies), data channel and RESP GET replies in one buffer per connection (gRPC and the
// `redis` package cannot do either). Each figure is the median of interleaved repeats.
// Options: --sizes 256k,1m  --concurrency 1,8  --seconds S  --warmup S  --repeats N
// --transports grpc-default,grpc-raw,dataplane,redis  --redis-clients resp,node-redis
// --keys-bytes 64m (distinct values per size)  --copy-reads (adds the data channel without direct
// reads on the client)  --fresh-buffers (a fresh buffer for every body instead of reused memory).
import * as grpc from '@grpc/grpc-js';

import { DataChannelClient } from '@kvmesh/dataplane';
import type {
  GetBlocksRequest,
  GetBlocksResponse,
  PutBlocksRequest,
  PutBlocksResponse,
} from '@kvmesh/protocol';

import { measureClosedLoop, type ThroughputResult } from '../anchors/closed-loop.ts';
import {
  openRedisWorkers,
  populateRedis,
  randomPayload,
  startRedisServer,
  type RedisClientKind,
} from '../anchors/redis.ts';
import {
  DATA_GET,
  DATA_PUT,
  encodeKey,
  keysFor,
  MESSAGE_BYTES_MAX,
  protoService,
  RAW_CHANNEL_OPTIONS,
  rawService,
  startTransportServers,
  type TransportServersHandle,
} from '../anchors/transport-servers.ts';
import type { BenchContext, BenchSuite } from '../main.ts';
import { numberOption, round, secondsPerCall, stringOption } from '../options.ts';

const TRANSPORTS = ['grpc-default', 'grpc-raw', 'dataplane', 'redis'] as const;
type TransportName = (typeof TRANSPORTS)[number];
type Op = 'get' | 'put';

/** Parses `256k`, `1m`, `4096` into bytes. */
function parseBytes(text: string): number {
  const m = /^(\d+(?:\.\d+)?)([kmg]?)(i?b)?$/i.exec(text.trim());
  const unit = { '': 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3 }[(m?.[2] ?? '').toLowerCase()];
  const bytes = m && unit !== undefined ? Math.round(Number(m[1]) * unit) : NaN;
  if (!Number.isSafeInteger(bytes) || bytes <= 0) throw new Error(`not a byte size: '${text}'`);
  return bytes;
}

function listOption<T>(args: readonly string[], name: string, fallback: T[], parse: (s: string) => T): T[] {
  const text = stringOption(args, name);
  if (text === undefined) return fallback;
  const values = text.split(',').filter((s) => s.length > 0);
  if (values.length === 0) throw new Error(`--${name} needs a comma-separated list`);
  return values.map(parse);
}

function sizeLabel(bytes: number): string {
  return bytes % 1024 ** 2 === 0
    ? `${bytes / 1024 ** 2}MiB`
    : bytes % 1024 === 0
      ? `${bytes / 1024}KiB`
      : `${bytes}B`;
}

/** One connection per worker, one call outstanding on each: the common definition of concurrency. */
interface OpenTransport {
  get(worker: number, valueBytes: number, key: number): Promise<void>;
  put(worker: number, valueBytes: number, key: number): Promise<void>;
  close(): Promise<void>;
}

/** Per-worker PUT payloads with room for an 8-byte key in front, so no transport copies to frame a value. */
function putBuffers(concurrency: number, valueBytes: number): Buffer[] {
  return Array.from({ length: concurrency }, () => {
    const framed = Buffer.allocUnsafe(8 + valueBytes);
    randomPayload(valueBytes).copy(framed, 8);
    return framed;
  });
}

function unary<Req, Res>(
  client: grpc.Client,
  def: { path: string; requestSerialize: (v: Req) => Buffer; responseDeserialize: (b: Buffer) => Res },
  request: Req,
): Promise<Res> {
  return new Promise((resolve, reject) =>
    client.makeUnaryRequest(def.path, def.requestSerialize, def.responseDeserialize, request, (err, res) =>
      err || res === undefined ? reject(err ?? new Error('empty response')) : resolve(res),
    ),
  );
}

function expectBytes(got: number, want: number, what: string): void {
  if (got !== want) throw new Error(`${what}: got ${got} bytes, want ${want}`);
}

function blockHash(valueBytes: number, key: number): Buffer {
  const hash = Buffer.alloc(16);
  encodeKey(valueBytes, key).copy(hash);
  return hash;
}

async function openGrpcDefault(
  port: number,
  concurrency: number,
  valueBytes: number,
): Promise<OpenTransport> {
  // Separate subchannel pools: without them every client would share one HTTP/2 connection.
  const clients = Array.from(
    { length: concurrency },
    () =>
      new grpc.Client(`127.0.0.1:${port}`, grpc.credentials.createInsecure(), {
        'grpc.use_local_subchannel_pool': 1,
      }),
  );
  const payloads = putBuffers(concurrency, valueBytes).map((b) => b.subarray(8));
  return {
    get: async (worker, size, key) => {
      const request: GetBlocksRequest = { hashes: [blockHash(size, key)], namespace: '', leaseMs: 0 };
      const res = await unary<GetBlocksRequest, GetBlocksResponse>(
        clients[worker] as grpc.Client,
        protoService.get,
        request,
      );
      expectBytes(res.result?.$case === 'block' ? res.result.value.payload.length : -1, size, 'grpc GET');
    },
    put: async (worker, size, key) => {
      const request: PutBlocksRequest = {
        block: {
          hash: blockHash(size, key),
          parentHash: Buffer.alloc(0),
          namespace: '',
          modelFingerprint: Buffer.alloc(0),
          tokenIds: [],
          payload: payloads[worker] as Buffer,
        },
        replica: false,
      };
      await unary<PutBlocksRequest, PutBlocksResponse>(
        clients[worker] as grpc.Client,
        protoService.put,
        request,
      );
    },
    close: async () => clients.forEach((c) => c.close()),
  };
}

async function openGrpcRaw(port: number, concurrency: number, valueBytes: number): Promise<OpenTransport> {
  const clients = Array.from(
    { length: concurrency },
    () => new grpc.Client(`127.0.0.1:${port}`, grpc.credentials.createInsecure(), RAW_CHANNEL_OPTIONS),
  );
  const framed = putBuffers(concurrency, valueBytes);
  return {
    get: async (worker, size, key) => {
      const res = await unary<Buffer, Buffer>(
        clients[worker] as grpc.Client,
        rawService.get,
        encodeKey(size, key),
      );
      expectBytes(res.length, size, 'grpc raw GET');
    },
    put: async (worker, size, key) => {
      const request = framed[worker] as Buffer;
      encodeKey(size, key).copy(request);
      await unary<Buffer, Buffer>(clients[worker] as grpc.Client, rawService.put, request);
    },
    close: async () => clients.forEach((c) => c.close()),
  };
}

async function openDataplane(
  port: number,
  concurrency: number,
  valueBytes: number,
  directReads: boolean,
  readInto: boolean,
): Promise<OpenTransport> {
  const client = await DataChannelClient.connect({
    host: '127.0.0.1',
    port,
    connections: concurrency,
    directReads,
    limits: { bodyBytesMax: MESSAGE_BYTES_MAX },
  });
  const payloads = putBuffers(concurrency, valueBytes).map((b) => b.subarray(8));
  const into = payloads.map(() => (readInto ? Buffer.allocUnsafe(valueBytes) : undefined));
  return {
    get: async (worker, size, key) => {
      const responseInto = into[worker];
      const res = await client.call(
        DATA_GET,
        encodeKey(size, key),
        undefined,
        responseInto ? { responseInto } : {},
      );
      expectBytes(res.body.length, size, 'dataplane GET');
    },
    put: async (worker, size, key) => {
      await client.call(DATA_PUT, encodeKey(size, key), payloads[worker] as Buffer);
    },
    close: () => client.close(),
  };
}

async function openRedis(
  client: RedisClientKind,
  host: string,
  port: number,
  concurrency: number,
  valueBytes: number,
  keys: number,
  readInto: boolean,
): Promise<OpenTransport> {
  const workers = await openRedisWorkers({ host, port, client, valueBytes, keys, concurrency, readInto });
  return {
    get: (worker, _size, key) => workers.get(worker, key),
    put: (worker, _size, key) => workers.set(worker, key),
    close: () => workers.close(),
  };
}

async function measureTransport(
  transport: OpenTransport,
  op: Op,
  valueBytes: number,
  keys: number,
  concurrency: number,
  seconds: number,
  warmupSeconds: number,
): Promise<ThroughputResult> {
  return measureClosedLoop({ concurrency, seconds, warmupSeconds, bytesPerOp: valueBytes }, (worker, i) => {
    const key = (i * concurrency + worker) % keys;
    return op === 'get' ? transport.get(worker, valueBytes, key) : transport.put(worker, valueBytes, key);
  });
}

/** memcpy of `valueBytes` from values spread over `keys`·valueBytes (out of cache), GB/s. */
function memcpyGBps(valueBytes: number, keys: number, seconds: number): number {
  const sources = Array.from({ length: keys }, () => randomPayload(valueBytes));
  const dst = Buffer.allocUnsafe(valueBytes);
  let i = 0;
  return valueBytes / secondsPerCall(seconds, () => (sources[i++ % keys] as Buffer).copy(dst)) / 1e9;
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 === 1
    ? (sorted[mid] as number)
    : ((sorted[mid - 1] as number) + (sorted[mid] as number)) / 2;
}

interface Contender {
  /** Key in the result cells. */
  name: string;
  open(): Promise<OpenTransport>;
}

async function run(ctx: BenchContext): Promise<Record<string, unknown>> {
  const sizes = listOption(ctx.args, 'sizes', [256 * 1024, 1024 * 1024], parseBytes);
  const concurrencies = listOption(ctx.args, 'concurrency', [1, 8], (s) => {
    const n = Number(s);
    if (!Number.isSafeInteger(n) || n < 1 || n > 256) throw new Error(`--concurrency: bad value '${s}'`);
    return n;
  });
  const transports = listOption<TransportName>(ctx.args, 'transports', [...TRANSPORTS], (s) => {
    if (!(TRANSPORTS as readonly string[]).includes(s)) throw new Error(`--transports: unknown '${s}'`);
    return s as TransportName;
  });
  const redisClients = listOption<RedisClientKind>(ctx.args, 'redis-clients', ['resp', 'node-redis'], (s) => {
    if (s !== 'resp' && s !== 'node-redis') throw new Error(`--redis-clients: unknown '${s}'`);
    return s;
  });
  const seconds = numberOption(ctx.args, 'seconds', 0.3);
  const warmupSeconds = numberOption(ctx.args, 'warmup', 0.1);
  const repeats = Math.round(numberOption(ctx.args, 'repeats', 3));
  const keysBytes = parseBytes(stringOption(ctx.args, 'keys-bytes') ?? '64m');
  const copyReads = ctx.args.includes('--copy-reads');
  const readInto = !ctx.args.includes('--fresh-buffers');
  const ops: Op[] = ['get', 'put'];

  const wantServers = transports.some((t) => t !== 'redis');
  const servers: TransportServersHandle | undefined = wantServers
    ? await startTransportServers({ keysBytes, recycleBodies: readInto })
    : undefined;
  const redis = transports.includes('redis') ? await startRedisServer() : undefined;
  if (redis) ctx.log(`redis-server ${redis.version} on port ${redis.port}`);

  /** Indexed [op][size label][`c${concurrency}`]. */
  type Cells<T> = Record<Op, Record<string, Record<string, T>>>;
  const gbps: Cells<Record<string, number>> = { get: {}, put: {} };
  const redisClientUsed: Cells<string> = { get: {}, put: {} };
  const ratio: Cells<number> = { get: {}, put: {} };
  const memcpy: Record<string, number> = {};
  try {
    for (const valueBytes of sizes) {
      const label = sizeLabel(valueBytes);
      const keys = keysFor(keysBytes, valueBytes);
      memcpy[label] = round(memcpyGBps(valueBytes, keys, Math.min(seconds, 0.3)));
      ctx.log(`${label}: memcpy ${memcpy[label]} GB/s (${keys} distinct values)`);
      if (redis) await populateRedis(redis.host, redis.port, valueBytes, keys);
      for (const op of ops) {
        const bySize: Record<string, Record<string, number>> = (gbps[op][label] = {});
        const usedBySize: Record<string, string> = (redisClientUsed[op][label] = {});
        const ratioBySize: Record<string, number> = (ratio[op][label] = {});
        for (const concurrency of concurrencies) {
          const contenders: Contender[] = [];
          if (servers && transports.includes('grpc-default'))
            contenders.push({
              name: 'grpcDefault',
              open: () => openGrpcDefault(servers.grpcDefault, concurrency, valueBytes),
            });
          if (servers && transports.includes('grpc-raw'))
            contenders.push({
              name: 'grpcRaw',
              open: () => openGrpcRaw(servers.grpcRaw, concurrency, valueBytes),
            });
          if (servers && transports.includes('dataplane')) {
            contenders.push({
              name: 'dataplane',
              open: () => openDataplane(servers.dataplane, concurrency, valueBytes, true, readInto),
            });
            if (copyReads)
              contenders.push({
                name: 'dataplaneCopyReads',
                open: () => openDataplane(servers.dataplane, concurrency, valueBytes, false, readInto),
              });
          }
          if (redis)
            for (const client of redisClients)
              contenders.push({
                name: client === 'resp' ? 'redisResp' : 'redisNodeRedis',
                open: () =>
                  openRedis(client, redis.host, redis.port, concurrency, valueBytes, keys, readInto),
              });
          // NOTE: repeats are interleaved (every contender once per round) so that load from other
          // processes on a shared machine spreads over all contenders instead of hitting one.
          const samples = new Map<string, number[]>(contenders.map((c) => [c.name, []]));
          for (let r = 0; r < repeats; r++) {
            for (const contender of contenders) {
              const transport = await contender.open();
              try {
                const result = await measureTransport(
                  transport,
                  op,
                  valueBytes,
                  keys,
                  concurrency,
                  seconds,
                  warmupSeconds,
                );
                samples.get(contender.name)?.push(result.gbps);
              } finally {
                await transport.close();
              }
            }
          }
          const cell: Record<string, number> = {};
          for (const [name, values] of samples) cell[name] = round(median(values));
          const redisBest = redisClients
            .map((client) => ({ client, gbps: cell[client === 'resp' ? 'redisResp' : 'redisNodeRedis'] }))
            .filter((x): x is { client: RedisClientKind; gbps: number } => x.gbps !== undefined)
            .sort((a, b) => b.gbps - a.gbps)[0];
          if (redisBest !== undefined) {
            cell.redis = redisBest.gbps;
            usedBySize[`c${concurrency}`] = redisBest.client;
          }
          bySize[`c${concurrency}`] = cell;
          if (cell.dataplane !== undefined && cell.redis !== undefined)
            ratioBySize[`c${concurrency}`] = round(cell.dataplane / cell.redis, 3);
          ctx.log(`${label} ${op} c${concurrency}: ${JSON.stringify(cell)}`);
        }
      }
    }
  } finally {
    await servers?.stop();
    await redis?.stop();
  }

  return {
    definition: {
      concurrency:
        'c connections (gRPC: c channels with local subchannel pools), each with one operation outstanding, closed loop',
      get: '8-byte key in, value out; payload bytes counted once per op',
      put: '8-byte key + value in, empty reply out; payload bytes counted once per op',
      gbps: '10^9 payload bytes per second (median of the interleaved repeats), client and server in separate processes on loopback',
      redis: 'the faster of the measured clients (redisClientUsed), per cell',
      memory: readInto
        ? 'GET replies land in one reused buffer per connection (dataplane, resp); data channel PUT bodies in recycled store buffers'
        : 'every GET reply and PUT body gets a fresh buffer',
    },
    sizes,
    concurrency: concurrencies,
    seconds,
    warmupSeconds,
    repeats,
    transports,
    redisVersion: redis?.version ?? null,
    memcpyGBps: memcpy,
    gbps,
    redisClientUsed,
    dataplaneVsRedis: ratio,
  };
}

export const suite: BenchSuite = {
  name: 'transport',
  description:
    'Bulk bytes over loopback: gRPC (default, raw+wide windows), data channel, Redis, memcpy; GB/s',
  run,
};

// The server side of the transport bench, run as its own process (as a kvstore node would be, and
// as redis-server is) so that client and server do not share one event loop. It holds
// keysFor(keysBytes, size) distinct values per size and serves GET (small request, value back) and
// PUT (value in, small reply; the value replaces the key's) over three transports: gRPC with the
// generated kvmesh messages and default options (the codecs of lib/protocol's KvStoreService),
// gRPC with identity (raw Buffer) serializers and wide HTTP/2 windows, and the kvmesh data
// channel. `startTransportServers` forks it and returns the ports.
import { fork } from 'node:child_process';
import type * as http2 from 'node:http2';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

import * as grpc from '@grpc/grpc-js';

import { DataChannelServer } from '@kvmesh/dataplane';
import {
  GetBlocksRequest,
  GetBlocksResponse,
  PutBlocksRequest,
  PutBlocksResponse,
  Tier,
} from '@kvmesh/protocol';

import { randomPayload } from './redis.ts';

export interface TransportServerPorts {
  grpcDefault: number;
  grpcRaw: number;
  dataplane: number;
}

export interface TransportServersHandle extends TransportServerPorts {
  stop(): Promise<void>;
}

/** Data channel method ids of the bench service. */
export const DATA_GET = 1;
export const DATA_PUT = 2;

/** Largest message either gRPC variant or the data channel accepts in the bench. */
export const MESSAGE_BYTES_MAX = 64 * 1024 * 1024;
/** HTTP/2 stream and connection window of the raw gRPC variant (both directions). */
export const GRPC_WINDOW_BYTES = 64 * 1024 * 1024;

/** The 8 bytes that name a value: u32le size, u32le key index. Also the first 8 of a gRPC block hash. */
export function encodeKey(valueBytes: number, key: number): Buffer {
  const k = Buffer.alloc(8);
  k.writeUInt32LE(valueBytes, 0);
  k.writeUInt32LE(key, 4);
  return k;
}

function decodeKey(bytes: Uint8Array): { valueBytes: number; key: number } {
  const view = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length);
  return { valueBytes: view.readUInt32LE(0), key: view.readUInt32LE(4) };
}

const identity = (b: Buffer): Buffer => b;

/** gRPC service definitions: the same two methods, with protobuf (generated) or identity codecs. */
export const protoService = {
  get: {
    path: '/kvmesh.bench.Transport/Get',
    requestStream: false,
    responseStream: false,
    requestSerialize: (v: GetBlocksRequest): Buffer => Buffer.from(GetBlocksRequest.encode(v).finish()),
    requestDeserialize: (b: Buffer): GetBlocksRequest => GetBlocksRequest.decode(b),
    responseSerialize: (v: GetBlocksResponse): Buffer => Buffer.from(GetBlocksResponse.encode(v).finish()),
    responseDeserialize: (b: Buffer): GetBlocksResponse => GetBlocksResponse.decode(b),
  },
  put: {
    path: '/kvmesh.bench.Transport/Put',
    requestStream: false,
    responseStream: false,
    requestSerialize: (v: PutBlocksRequest): Buffer => Buffer.from(PutBlocksRequest.encode(v).finish()),
    requestDeserialize: (b: Buffer): PutBlocksRequest => PutBlocksRequest.decode(b),
    responseSerialize: (v: PutBlocksResponse): Buffer => Buffer.from(PutBlocksResponse.encode(v).finish()),
    responseDeserialize: (b: Buffer): PutBlocksResponse => PutBlocksResponse.decode(b),
  },
} satisfies grpc.ServiceDefinition;

/** Raw variant: GET request = 8-byte key, response = value; PUT request = key ‖ value, response empty. */
export const rawService = {
  get: {
    path: '/kvmesh.bench.TransportRaw/Get',
    requestStream: false,
    responseStream: false,
    requestSerialize: identity,
    requestDeserialize: identity,
    responseSerialize: identity,
    responseDeserialize: identity,
  },
  put: {
    path: '/kvmesh.bench.TransportRaw/Put',
    requestStream: false,
    responseStream: false,
    requestSerialize: identity,
    requestDeserialize: identity,
    responseSerialize: identity,
    responseDeserialize: identity,
  },
} satisfies grpc.ServiceDefinition;

/** Channel options of the raw variant's clients (the server gets the same windows, see below). */
export const RAW_CHANNEL_OPTIONS: grpc.ChannelOptions = {
  'grpc.max_receive_message_length': MESSAGE_BYTES_MAX,
  'grpc.max_send_message_length': MESSAGE_BYTES_MAX,
  'grpc-node.flow_control_window': GRPC_WINDOW_BYTES,
  'grpc.use_local_subchannel_pool': 1,
};

/** Distinct values of one size held by every store in the bench (server, Redis, memcpy sources). */
export function keysFor(keysBytes: number, valueBytes: number): number {
  return Math.max(4, Math.floor(keysBytes / valueBytes));
}

/**
 * `keysFor` values per size. A PUT's value replaces the key's, and the replaced buffer goes to a
 * free list that the data channel receives the next PUT into (as a store's slab allocator would;
 * Redis gets the same from jemalloc). NOTE: safe only because the bench never overlaps GETs and
 * PUTs of one size: a recycled buffer could otherwise still be in a GET response being written.
 */
class ValueStore {
  private readonly bySize = new Map<number, Buffer[]>();
  private readonly free = new Map<number, Buffer[]>();
  constructor(private readonly keysBytes: number) {}

  /** A buffer for an incoming value: recycled when one of that size is free. */
  allocate(valueBytes: number): Buffer | undefined {
    return this.free.get(valueBytes)?.pop();
  }

  values(valueBytes: number): Buffer[] {
    let values = this.bySize.get(valueBytes);
    if (values === undefined) {
      values = Array.from({ length: keysFor(this.keysBytes, valueBytes) }, () => randomPayload(valueBytes));
      this.bySize.set(valueBytes, values);
    }
    return values;
  }

  get(valueBytes: number, key: number): Buffer {
    const values = this.values(valueBytes);
    return values[key % values.length] as Buffer;
  }

  /** Stores `value`; when `recycle`, the buffer it replaces is kept for `allocate` (bounded by the key count). */
  put(key: number, value: Buffer, recycle: boolean): void {
    const values = this.values(value.length);
    const old = values[key % values.length] as Buffer;
    values[key % values.length] = value;
    if (!recycle || old.buffer === value.buffer) return;
    let free = this.free.get(old.length);
    if (free === undefined) this.free.set(old.length, (free = []));
    if (free.length < values.length) free.push(old);
  }
}

function bind(server: grpc.Server): Promise<number> {
  return new Promise((resolve, reject) =>
    server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (err, port) =>
      err ? reject(err) : resolve(port),
    ),
  );
}

/**
 * grpc-js 1.14 has no server option for HTTP/2 windows ('grpc-node.flow_control_window' is read by
 * clients only), so the server's receive window stays at 64 KiB and caps PUT. This widens it for
 * http2 servers created from now on: the stream window through SETTINGS, the connection window per
 * session. NOTE: call after the default-options server is bound, so that one keeps the defaults.
 */
function widenHttp2ServerWindows(bytes: number): void {
  // The CommonJS module object, the one grpc-js calls createServer on (ESM namespaces are frozen).
  const http2Module = createRequire(import.meta.url)('node:http2') as typeof http2;
  const original = http2Module.createServer as (...args: unknown[]) => http2.Http2Server;
  const patched = (options: http2.ServerOptions, ...rest: unknown[]): http2.Http2Server => {
    const server = original(
      { ...options, settings: { ...options.settings, initialWindowSize: bytes } },
      ...rest,
    );
    server.on('session', (session) => session.setLocalWindowSize(bytes));
    return server;
  };
  http2Module.createServer = patched as typeof http2Module.createServer;
}

export interface TransportServerOptions {
  /** Bytes of distinct values held per size (keysFor). */
  keysBytes: number;
  /** Data channel PUTs are received into recycled value buffers (requestBodies); false: a fresh buffer each. */
  recycleBodies: boolean;
}

async function serve(
  options: TransportServerOptions,
): Promise<{ ports: TransportServerPorts; stop: () => Promise<void> }> {
  const { keysBytes, recycleBodies } = options;
  const store = new ValueStore(keysBytes);

  const grpcDefault = new grpc.Server();
  grpcDefault.addService(protoService, {
    get: (
      call: grpc.ServerUnaryCall<GetBlocksRequest, GetBlocksResponse>,
      done: grpc.sendUnaryData<GetBlocksResponse>,
    ) => {
      const hash = call.request.hashes[0] ?? Buffer.alloc(16);
      const { valueBytes, key } = decodeKey(hash);
      const block = {
        hash,
        parentHash: Buffer.alloc(0),
        namespace: '',
        modelFingerprint: Buffer.alloc(0),
        tokenIds: [],
        payload: store.get(valueBytes, key),
      };
      done(null, { result: { $case: 'block', value: block }, tier: Tier.TIER_UNSPECIFIED });
    },
    put: (
      call: grpc.ServerUnaryCall<PutBlocksRequest, PutBlocksResponse>,
      done: grpc.sendUnaryData<PutBlocksResponse>,
    ) => {
      const block = call.request.block;
      if (block !== undefined) store.put(decodeKey(block.hash).key, block.payload, false);
      done(null, { acknowledged: [], stored: 1, deduplicated: 0 });
    },
  });
  const grpcDefaultPort = await bind(grpcDefault);

  widenHttp2ServerWindows(GRPC_WINDOW_BYTES);
  const grpcRaw = new grpc.Server({
    'grpc.max_receive_message_length': MESSAGE_BYTES_MAX,
    'grpc.max_send_message_length': MESSAGE_BYTES_MAX,
  });
  grpcRaw.addService(rawService, {
    get: (call: grpc.ServerUnaryCall<Buffer, Buffer>, done: grpc.sendUnaryData<Buffer>) => {
      const { valueBytes, key } = decodeKey(call.request);
      done(null, store.get(valueBytes, key));
    },
    put: (call: grpc.ServerUnaryCall<Buffer, Buffer>, done: grpc.sendUnaryData<Buffer>) => {
      store.put(decodeKey(call.request).key, call.request.subarray(8), false);
      done(null, Buffer.alloc(0));
    },
  });
  const grpcRawPort = await bind(grpcRaw);

  const data = new DataChannelServer();
  data.handle(DATA_GET, async (req) => {
    const { valueBytes, key } = decodeKey(req.header);
    return { body: store.get(valueBytes, key) };
  });
  data.handle(DATA_PUT, async (req) => {
    store.put(decodeKey(req.header).key, req.body as Buffer, recycleBodies);
    return {};
  });
  const { port: dataPort } = await data.listen({
    host: '127.0.0.1',
    port: 0,
    limits: { bodyBytesMax: MESSAGE_BYTES_MAX },
    // PUT bodies land in recycled value buffers: what a store with its own allocator does.
    requestBodies: {
      allocate: ({ methodId, bytes }) => (methodId === DATA_PUT ? store.allocate(bytes) : undefined),
    },
  });

  return {
    ports: { grpcDefault: grpcDefaultPort, grpcRaw: grpcRawPort, dataplane: dataPort },
    stop: async () => {
      await Promise.all([
        new Promise<void>((resolve) => grpcDefault.tryShutdown(() => resolve())),
        new Promise<void>((resolve) => grpcRaw.tryShutdown(() => resolve())),
        data.close(),
      ]);
    },
  };
}

const SELF = fileURLToPath(import.meta.url);

/** Forks this file as the bench's server process; resolves with its ports once it listens. */
export function startTransportServers(options: TransportServerOptions): Promise<TransportServersHandle> {
  const child = fork(SELF, [JSON.stringify(options)], {
    execArgv: ['--import', 'tsx'],
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  const killOnExit = (): void => {
    child.kill('SIGKILL');
  };
  process.once('exit', killOnExit);
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  return new Promise((resolve, reject) => {
    child.once('error', reject);
    child.once('exit', (code) => reject(new Error(`transport server process exited early (code ${code})`)));
    child.once('message', (ports: TransportServerPorts) =>
      resolve({
        ...ports,
        stop: async () => {
          process.off('exit', killOnExit);
          child.send('stop');
          const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
          await exited;
          clearTimeout(timer);
        },
      }),
    );
  });
}

// Child-process entry: serve, report the ports, stop on 'stop' or when the parent goes away.
if (process.argv[1] === SELF && process.send !== undefined) {
  const { ports, stop } = await serve(JSON.parse(process.argv[2] ?? '{}') as TransportServerOptions);
  const shutdown = async (): Promise<void> => {
    await stop();
    process.exit(0);
  };
  process.on('message', (m) => {
    if (m === 'stop') void shutdown();
  });
  process.on('disconnect', () => void shutdown());
  process.send(ports);
}

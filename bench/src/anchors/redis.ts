// Redis as the throughput anchor for bulk block bytes: a private `redis-server` (Debian binary from
// PATH) on a free loopback port with no persistence, and GET/SET throughput of N distinct values of
// one size at concurrency c (c connections, one command outstanding on each; closed-loop.ts).
// Two clients are offered, the official `redis` package with Buffer replies and a minimal RESP
// client over node:net that copies each reply once; the transport suite measures both and anchors
// on the faster, so Redis is never handicapped by its client.
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { freePort } from '@kvmesh/runtime';
import { createClient, RESP_TYPES } from 'redis';

import { measureClosedLoop, type ThroughputResult } from './closed-loop.ts';

export interface RedisServerHandle {
  readonly host: string;
  readonly port: number;
  /** e.g. '7.0.15' */
  readonly version: string;
  /** SIGTERM (SIGKILL after 3 s), then deletes the data directory. */
  stop(): Promise<void>;
}

export interface StartRedisOptions {
  /** Default 'redis-server' from PATH. */
  binary?: string;
  readyTimeoutMs?: number;
}

/** Sends PING on a fresh connection; resolves true on +PONG. */
function ping(host: string, port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect({ host, port });
    const done = (ok: boolean): void => {
      socket.destroy();
      resolve(ok);
    };
    socket.setTimeout(500, () => done(false));
    socket.once('error', () => done(false));
    socket.once('connect', () => socket.write('*1\r\n$4\r\nPING\r\n'));
    socket.once('data', (d: Buffer) => done(d.toString('latin1').startsWith('+PONG')));
  });
}

const live = new Set<ChildProcess>();
let exitHookInstalled = false;

/** Starts redis-server and resolves once it answers PING. The process is killed if this one exits first. */
export async function startRedisServer(options: StartRedisOptions = {}): Promise<RedisServerHandle> {
  const binary = options.binary ?? 'redis-server';
  const readyTimeoutMs = options.readyTimeoutMs ?? 10_000;
  if (!exitHookInstalled) {
    exitHookInstalled = true;
    process.once('exit', () => {
      for (const child of live) child.kill('SIGKILL');
    });
  }
  // NOTE: the port is probed free and then handed to redis-server; another process can take it in
  // between, so a failed start is retried on a new port.
  let lastError: Error | undefined;
  for (let attempt = 0; attempt < 3; attempt++) {
    const port = await freePort();
    const dir = mkdtempSync(join(tmpdir(), 'kvmesh-bench-redis-'));
    const args = [
      '--port',
      String(port),
      '--bind',
      '127.0.0.1',
      '--save',
      '',
      '--appendonly',
      'no',
      '--dir',
      dir,
      '--protected-mode',
      'no',
      '--daemonize',
      'no',
      '--logfile',
      '',
    ];
    const child = spawn(binary, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    live.add(child);
    let log = '';
    const keep = (d: Buffer): void => {
      log = (log + d.toString()).slice(-4000);
    };
    child.stdout?.on('data', keep);
    child.stderr?.on('data', keep);
    const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
    let spawnError: Error | undefined;
    child.once('error', (e) => (spawnError = e));
    const cleanupDir = (): void => rmSync(dir, { recursive: true, force: true });
    const deadline = performance.now() + readyTimeoutMs;
    let ready = false;
    while (performance.now() < deadline && child.exitCode === null && spawnError === undefined) {
      if (await ping('127.0.0.1', port)) {
        ready = true;
        break;
      }
      await new Promise((resolve) => setTimeout(resolve, 25));
    }
    if (!ready) {
      child.kill('SIGKILL');
      await exited;
      live.delete(child);
      cleanupDir();
      lastError =
        spawnError ??
        new Error(
          `redis-server did not answer PING on port ${port} within ${readyTimeoutMs} ms; log:\n${log}`,
        );
      if (spawnError !== undefined) break;
      continue;
    }
    const version = /(?:version|v)=(\d+\.\d+\.\d+)/.exec(log)?.[1] ?? 'unknown';
    return {
      host: '127.0.0.1',
      port,
      version,
      stop: async () => {
        if (child.exitCode === null) {
          child.kill('SIGTERM');
          const timer = setTimeout(() => child.kill('SIGKILL'), 3000);
          await exited;
          clearTimeout(timer);
        }
        live.delete(child);
        cleanupDir();
      },
    };
  }
  throw lastError ?? new Error('redis-server did not start');
}

/** What the bench needs of a Redis client: binary-safe GET and SET. */
export interface RedisBytesClient {
  /** `into`, when given and large enough, receives the value (clients that can read in place use it). */
  get(key: string, into?: Uint8Array): Promise<Uint8Array | null>;
  set(key: string, value: Uint8Array): Promise<void>;
  close(): Promise<void>;
}

export type RedisClientKind = 'node-redis' | 'resp';

/** The official client (`redis` 6.x) with blob strings mapped to Buffer, Nagle off. */
async function nodeRedisClient(host: string, port: number): Promise<RedisBytesClient> {
  const client = createClient({ socket: { host, port, noDelay: true } }).withTypeMapping({
    [RESP_TYPES.BLOB_STRING]: Buffer,
  });
  await client.connect();
  return {
    get: async (key) => (await client.get(key)) as Buffer | null,
    set: async (key, value) => {
      await client.set(key, Buffer.from(value.buffer, value.byteOffset, value.length));
    },
    close: () => client.close(),
  };
}

interface Reply {
  resolve: (value: Buffer | string | null) => void;
  reject: (error: Error) => void;
  into: Uint8Array | undefined;
}

/** Bytes of one socket read outside bulk bodies; bulk bodies with at least DIRECT_BYTES_MIN left are read in place. */
const SCRATCH_BYTES = 256 * 1024;
const DIRECT_BYTES_MIN = 16 * 1024;

/**
 * A minimal RESP2 client with the data channel client's read and write path, so the anchor is
 * not handicapped by its client: commands go out as separate buffers in one writev (the value is
 * never concatenated), and a bulk reply is read straight from the socket into its final buffer
 * (a fresh one, or the caller's `into`). Replies are matched to commands in order.
 */
export class RespClient implements RedisBytesClient {
  private readonly socket: Socket;
  private readonly replies: Reply[] = [];
  private readonly scratch = Buffer.allocUnsafe(SCRATCH_BYTES);
  private direct: Buffer | undefined;
  private line = '';
  private bulk: Buffer | undefined;
  private bulkFilled = 0;
  /** CRLF bytes still to skip after a bulk body, and the body to deliver once they are. */
  private skip = 0;
  private deliverAfterSkip: Buffer | undefined;
  private failure: Error | undefined;

  private constructor(host: string, port: number) {
    this.socket = connect({
      host,
      port,
      noDelay: true,
      onread: {
        buffer: () => {
          const left = this.bulk === undefined ? 0 : this.bulk.length - this.bulkFilled;
          this.direct = left >= DIRECT_BYTES_MIN ? this.bulk?.subarray(this.bulkFilled) : undefined;
          return this.direct ?? this.scratch;
        },
        callback: (bytes, buffer) => {
          if (buffer === this.direct) this.bulkRead(bytes);
          else this.onData(this.scratch.subarray(0, bytes));
          return true;
        },
      },
    });
    this.socket.on('error', (e) => (this.failure = e));
    this.socket.on('close', () => {
      const error = this.failure ?? new Error('redis connection closed');
      for (const r of this.replies.splice(0)) r.reject(error);
    });
  }

  static connect(host: string, port: number): Promise<RespClient> {
    const client = new RespClient(host, port);
    return new Promise((resolve, reject) => {
      client.socket.once('error', reject);
      client.socket.once('connect', () => {
        client.socket.off('error', reject);
        resolve(client);
      });
    });
  }

  private send(parts: (string | Uint8Array)[], into?: Uint8Array): Promise<Buffer | string | null> {
    return new Promise((resolve, reject) => {
      if (this.socket.destroyed) {
        reject(this.failure ?? new Error('redis connection closed'));
        return;
      }
      this.replies.push({ resolve, reject, into });
      this.socket.cork();
      for (const p of parts) this.socket.write(p);
      this.socket.uncork();
    });
  }

  async get(key: string, into?: Uint8Array): Promise<Buffer | null> {
    const k = Buffer.from(key);
    const reply = await this.send([`*2\r\n$3\r\nGET\r\n$${k.length}\r\n`, k, '\r\n'], into);
    return reply as Buffer | null;
  }

  async set(key: string, value: Uint8Array): Promise<void> {
    const k = Buffer.from(key);
    await this.send([`*3\r\n$3\r\nSET\r\n$${k.length}\r\n`, k, `\r\n$${value.length}\r\n`, value, '\r\n']);
  }

  async command(...args: string[]): Promise<Buffer | string | null> {
    return this.send([`*${args.length}\r\n`, ...args.map((a) => `$${Buffer.byteLength(a)}\r\n${a}\r\n`)]);
  }

  close(): Promise<void> {
    return new Promise((resolve) => {
      this.socket.once('close', () => resolve());
      this.socket.end();
    });
  }

  private bulkRead(bytes: number): void {
    this.bulkFilled += bytes;
    if (this.bulk !== undefined && this.bulkFilled === this.bulk.length) {
      this.deliverAfterSkip = this.bulk;
      this.bulk = undefined;
      this.skip = 2;
    }
  }

  private onData(chunk: Buffer): void {
    let at = 0;
    while (at < chunk.length) {
      if (this.bulk !== undefined) {
        const n = Math.min(this.bulk.length - this.bulkFilled, chunk.length - at);
        chunk.copy(this.bulk, this.bulkFilled, at, at + n);
        at += n;
        this.bulkRead(n);
      } else if (this.skip > 0) {
        const n = Math.min(this.skip, chunk.length - at);
        this.skip -= n;
        at += n;
        if (this.skip === 0) this.settle(this.deliverAfterSkip ?? null);
      } else {
        const lf = chunk.indexOf(10, at);
        const end = lf < 0 ? chunk.length : lf;
        this.line += chunk.toString('latin1', at, end);
        at = lf < 0 ? chunk.length : lf + 1;
        if (lf >= 0) {
          const line = this.line.endsWith('\r') ? this.line.slice(0, -1) : this.line;
          this.line = '';
          this.onLine(line);
        }
      }
    }
  }

  private onLine(line: string): void {
    const type = line[0];
    const rest = line.slice(1);
    if (type === '+' || type === ':') return this.settle(rest);
    if (type === '-') return this.settle(new Error(`redis: ${rest}`));
    if (type === '$') {
      const n = Number(rest);
      if (n < 0) return this.settle(null);
      if (n === 0) {
        this.skip = 2;
        this.deliverAfterSkip = Buffer.alloc(0);
        return;
      }
      const into = this.replies[0]?.into;
      this.bulk =
        into !== undefined && into.length >= n
          ? Buffer.from(into.buffer, into.byteOffset, n)
          : Buffer.allocUnsafe(n);
      this.bulkFilled = 0;
      return;
    }
    this.socket.destroy(new Error(`redis: unexpected reply '${line.slice(0, 40)}'`));
  }

  private settle(value: Buffer | string | null | Error): void {
    this.deliverAfterSkip = undefined;
    const reply = this.replies.shift();
    if (reply === undefined) return;
    if (value instanceof Error) reply.reject(value);
    else reply.resolve(value);
  }
}

export async function connectRedis(
  kind: RedisClientKind,
  host: string,
  port: number,
): Promise<RedisBytesClient> {
  return kind === 'resp' ? RespClient.connect(host, port) : nodeRedisClient(host, port);
}

/** The key of value `i` (mod `keys`) of size `valueBytes`. */
export function redisKey(valueBytes: number, keys: number, i: number): string {
  return `kvmesh:bench:${valueBytes}:${i % keys}`;
}

/** Writes `keys` distinct random values of `valueBytes` each (what GET measurements read). */
export async function populateRedis(
  host: string,
  port: number,
  valueBytes: number,
  keys: number,
): Promise<void> {
  const client = await RespClient.connect(host, port);
  try {
    for (let i = 0; i < keys; i++) await client.set(redisKey(valueBytes, keys, i), randomPayload(valueBytes));
  } finally {
    await client.close();
  }
}

export interface RedisThroughputOptions {
  host: string;
  port: number;
  client: RedisClientKind;
  op: 'get' | 'set';
  valueBytes: number;
  /** Distinct keys (each holding its own value) the operations cycle through. */
  keys: number;
  /** Connections, each with one command outstanding (closed-loop.ts). */
  concurrency: number;
  seconds: number;
  warmupSeconds: number;
  /** GET into one reusable buffer per connection where the client can (resp), else a fresh one per reply. */
  readInto: boolean;
  /** Write the keys before a GET run (default true); false when populateRedis already did. */
  populate?: boolean;
}

/** One connection per worker, with the per-worker buffers GET and SET use. */
export interface RedisWorkers {
  get(worker: number, i: number): Promise<void>;
  set(worker: number, i: number): Promise<void>;
  close(): Promise<void>;
}

/** Opens `concurrency` connections for closed-loop GET/SET of `valueBytes` values over `keys` keys. */
export async function openRedisWorkers(
  options: Omit<RedisThroughputOptions, 'op' | 'seconds' | 'warmupSeconds' | 'populate'>,
): Promise<RedisWorkers> {
  const { host, port, valueBytes, keys, concurrency } = options;
  const clients = await Promise.all(
    Array.from({ length: concurrency }, () => connectRedis(options.client, host, port)),
  );
  // One SET payload per connection; the server still stores one value per key.
  const payloads = clients.map(() => randomPayload(valueBytes));
  const into = clients.map(() => (options.readInto ? Buffer.allocUnsafe(valueBytes) : undefined));
  return {
    get: async (worker, i) => {
      const key = redisKey(valueBytes, keys, i);
      const value = await (clients[worker] as RedisBytesClient).get(key, into[worker]);
      if (value?.length !== valueBytes)
        throw new Error(`redis GET ${key} returned ${value?.length ?? 'null'} bytes, want ${valueBytes}`);
    },
    set: (worker, i) =>
      (clients[worker] as RedisBytesClient).set(redisKey(valueBytes, keys, i), payloads[worker] as Buffer),
    close: async () => {
      await Promise.all(clients.map((c) => c.close()));
    },
  };
}

/**
 * GET or SET throughput of `valueBytes` values over `keys` distinct keys at `concurrency`
 * connections (one command outstanding on each). Each GET reply is checked for its size.
 */
export async function measureRedisThroughput(options: RedisThroughputOptions): Promise<ThroughputResult> {
  const { host, port, valueBytes, keys, concurrency } = options;
  if (options.op === 'get' && options.populate !== false) await populateRedis(host, port, valueBytes, keys);
  const workers = await openRedisWorkers(options);
  try {
    return await measureClosedLoop(
      { concurrency, seconds: options.seconds, warmupSeconds: options.warmupSeconds, bytesPerOp: valueBytes },
      (worker, i) => (options.op === 'get' ? workers.get : workers.set)(worker, i * concurrency + worker),
    );
  } finally {
    await workers.close();
  }
}

/** Random bytes without paying for crypto-grade randomness on megabytes. */
export function randomPayload(bytes: number): Buffer {
  const out = Buffer.allocUnsafe(bytes);
  let x = (Math.random() * 0x7fffffff) | 1;
  for (let i = 0; i + 4 <= bytes; i += 4) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out.writeInt32LE(x | 0, i);
  }
  for (let i = bytes - (bytes % 4); i < bytes; i++) out[i] = i & 0xff;
  return out;
}

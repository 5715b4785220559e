// Shared fixtures of the data channel tests: a server on 127.0.0.1 with an echo method and a few
// instrumented ones, and a helper asserting that a promise rejects with a given error code.
import assert from 'node:assert/strict';

import { KvmeshError, type ErrorKind } from '@kvmesh/errors';

import {
  DataChannelClient,
  DataChannelServer,
  type DataChannelConnectOptions,
  type DataChannelListenOptions,
} from '../src/index.ts';

export const ECHO = 1;
/** Replies after `header` (u32le milliseconds) with a body of `body.length` bytes: a slow handler. */
export const SLOW = 2;
/** Throws a KvmeshError with the code, kind and details named in its JSON header. */
export const FAIL = 3;
/** Returns a body of the size named in its header (u32le), filled with a byte pattern. */
export const SIZED = 4;
/** Never answers. */
export const HANG = 5;

export interface Fixture {
  server: DataChannelServer;
  port: number;
  errors: KvmeshError[];
  connect(options?: Partial<DataChannelConnectOptions>): Promise<DataChannelClient>;
}

export async function startServer(options: Partial<DataChannelListenOptions> = {}): Promise<Fixture> {
  const server = new DataChannelServer();
  const errors: KvmeshError[] = [];
  server.handle(ECHO, async (req) => ({ header: req.header, body: req.body }));
  server.handle(SLOW, async (req) => {
    // unref: a handler still sleeping when its test ends must not keep the test process alive.
    await new Promise((resolve) => setTimeout(resolve, Buffer.from(req.header).readUInt32LE(0)).unref());
    return { body: req.body };
  });
  server.handle(FAIL, async (req) => {
    const spec = JSON.parse(Buffer.from(req.header).toString()) as {
      code: string;
      kind?: ErrorKind;
      details: Record<string, unknown>;
      plain?: boolean;
    };
    if (spec.plain) throw new TypeError('plain failure');
    throw new KvmeshError(
      spec.code,
      spec.kind ?? 'not-found',
      `block ${String(spec.details.hash)} not found`,
      spec.details,
    );
  });
  server.handle(SIZED, async (req) => {
    const size = Buffer.from(req.header).readUInt32LE(0);
    const body = Buffer.allocUnsafe(size);
    for (let i = 0; i < size; i++) body[i] = i & 0xff;
    return { body };
  });
  server.handle(HANG, () => new Promise(() => undefined));
  const { port } = await server.listen({
    host: '127.0.0.1',
    port: 0,
    onError: (e) => errors.push(e),
    ...options,
  });
  return {
    server,
    port,
    errors,
    connect: (o = {}) =>
      DataChannelClient.connect({
        host: '127.0.0.1',
        port,
        ...(options.token === undefined ? {} : { token: options.token }),
        ...o,
      }),
  };
}

export function u32(value: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(value);
  return b;
}

export async function rejectsWithCode(
  promise: Promise<unknown>,
  code: string,
  check: (e: KvmeshError) => void = () => undefined,
): Promise<KvmeshError> {
  try {
    await promise;
  } catch (e) {
    assert.ok(e instanceof KvmeshError, `expected a KvmeshError, got ${String(e)}`);
    assert.equal(e.code, code, e.message);
    check(e);
    return e;
  }
  assert.fail(`expected a rejection with ${code}`);
}

/** Resolves after `ms`; keeps tests free of fixed sleeps where an event can be awaited instead. */
export const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

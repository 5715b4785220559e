// Unit tests of the socket-free parts of the runtime: KvmeshError <-> gRPC status mapping, the JSON
// logger's bounds, NATS subject names and the ready-line parser.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { Metadata, status } from '@grpc/grpc-js';
import { CorruptDataError, InvalidArgumentError, KvmeshError, LimitExceededError } from '@kvmesh/errors';

import {
  ERROR_CODE_METADATA_KEY,
  UnavailableError,
  createLogger,
  fromGrpcError,
  heartbeatSubject,
  kvEventsSubject,
  parseReadyLine,
  registerErrorClass,
  toGrpcStatus,
} from '../src/index.ts';

class BlockNotFoundError extends KvmeshError {
  constructor(message: string, details: Record<string, unknown> = {}) {
    super('BLOCK_NOT_FOUND', 'not-found', message, details);
  }
}

/** What a client sees: a ServiceError built from the status the server sent. */
function asClientError(s: { code: number; details: string; metadata: Metadata }): Error {
  return Object.assign(new Error(`${s.code} ${status[s.code]}: ${s.details}`), s);
}

describe('runtime - error mapping', () => {
  it('runtime - every error kind maps to its gRPC status', () => {
    const cases: [KvmeshError, number][] = [
      [new InvalidArgumentError('x'), status.INVALID_ARGUMENT],
      [new KvmeshError('NF', 'not-found', 'x'), status.NOT_FOUND],
      [new LimitExceededError('x'), status.RESOURCE_EXHAUSTED],
      [new KvmeshError('FP', 'failed-precondition', 'x'), status.FAILED_PRECONDITION],
      [new CorruptDataError('x'), status.DATA_LOSS],
      [new UnavailableError('x'), status.UNAVAILABLE],
      [new KvmeshError('AE', 'already-exists', 'x'), status.ALREADY_EXISTS],
      [new KvmeshError('I', 'internal', 'x'), status.INTERNAL],
    ];
    for (const [err, code] of cases) assert.equal(toGrpcStatus(err).code, code, err.code);
    const plain = toGrpcStatus(new TypeError('boom'));
    assert.equal(plain.code, status.INTERNAL);
    assert.match(plain.details, /boom/);
  });

  it('runtime - class, code, message and details survive status -> client error -> KvmeshError', () => {
    registerErrorClass('BLOCK_NOT_FOUND', (m, d) => new BlockNotFoundError(m, d));
    const cases: KvmeshError[] = [
      new LimitExceededError('queue full', { limit: 8, depth: 9 }),
      new CorruptDataError('bad checksum', { offset: 12 }),
      new BlockNotFoundError('no such block', { hash: 'ab'.repeat(16) }),
      new KvmeshError('CUSTOM_THING', 'failed-precondition', 'not now', { big: 2n ** 70n }),
    ];
    for (const original of cases) {
      const back = fromGrpcError(asClientError(toGrpcStatus(original)));
      assert.equal(back.constructor, original.constructor);
      assert.equal(back.code, original.code);
      assert.equal(back.kind, original.kind);
      assert.equal(back.message, original.message);
    }
    const back = fromGrpcError(asClientError(toGrpcStatus(new LimitExceededError('q', { limit: 8 }))));
    assert.deepEqual(back.details, { limit: 8, grpcCode: status.RESOURCE_EXHAUSTED });
  });

  it('runtime - statuses without kvmesh metadata become typed errors by status', () => {
    const unavailable = fromGrpcError(
      asClientError({
        code: status.UNAVAILABLE,
        details: 'No connection established',
        metadata: new Metadata(),
      }),
    );
    assert.ok(unavailable instanceof UnavailableError);
    const deadline = fromGrpcError(
      asClientError({
        code: status.DEADLINE_EXCEEDED,
        details: 'Deadline exceeded',
        metadata: new Metadata(),
      }),
    );
    assert.equal(deadline.code, 'GRPC_DEADLINE_EXCEEDED');
    assert.equal(deadline.kind, 'unavailable');
  });

  it('runtime - huge details are replaced instead of overflowing the trailers', () => {
    const s = toGrpcStatus(new InvalidArgumentError('x', { blob: 'y'.repeat(100_000) }));
    assert.equal(s.metadata.get(ERROR_CODE_METADATA_KEY)[0], 'INVALID_ARGUMENT');
    assert.deepEqual(fromGrpcError(asClientError(s)).details, {
      truncated: true,
      grpcCode: status.INVALID_ARGUMENT,
    });
  });
});

describe('runtime - logger', () => {
  it('runtime - writes one JSON line per record with service, node, level and fields; filters by level', () => {
    const lines: string[] = [];
    const log = createLogger({
      service: 'kvstore',
      nodeId: 'kvstore-0',
      level: 'info',
      sink: (l) => lines.push(l),
      clock: () => 0,
    });
    log.debug('hidden');
    log.info('stored', { blocks: 3, seq: 5n });
    log
      .child({ peer: 'kvstore-1' })
      .error('push failed', { err: new LimitExceededError('full', { limit: 1 }) });
    assert.equal(lines.length, 2);
    assert.ok(lines.every((l) => l.endsWith('\n') && !l.slice(0, -1).includes('\n')));
    assert.deepEqual(JSON.parse(lines[0]!), {
      ts: '1970-01-01T00:00:00.000Z',
      level: 'info',
      service: 'kvstore',
      node: 'kvstore-0',
      msg: 'stored',
      blocks: 3,
      seq: '5',
    });
    const second = JSON.parse(lines[1]!) as { peer: string; err: { code: string; details: unknown } };
    assert.equal(second.peer, 'kvstore-1');
    assert.equal(second.err.code, 'LIMIT_EXCEEDED');
    assert.deepEqual(second.err.details, { limit: 1 });
  });

  it('runtime - an oversized or cyclic record still yields one bounded line', () => {
    const lines: string[] = [];
    const log = createLogger({ service: 's', sink: (l) => lines.push(l), lineCharsMax: 2_000 });
    log.info('big', { blob: 'x'.repeat(10_000) });
    const cyclic: Record<string, unknown> = {};
    cyclic['self'] = cyclic;
    log.warn('cyclic', { cyclic });
    assert.ok(lines[0]!.length < 2_000);
    assert.equal((JSON.parse(lines[0]!) as { truncated: boolean }).truncated, true);
    assert.match((JSON.parse(lines[1]!) as { fieldsError: string }).fieldsError, /circular/i);
  });
});

describe('runtime - subjects and ready line', () => {
  it('runtime - subjects follow DESIGN §6 and refuse wildcard tokens', () => {
    assert.equal(heartbeatSubject('kvstore', 'kvstore-0'), 'kvmesh.nodes.kvstore.kvstore-0.heartbeat');
    assert.equal(kvEventsSubject('kvstore-0'), 'kvmesh.kv.events.kvstore-0');
    assert.throws(() => kvEventsSubject('a.*'), InvalidArgumentError);
    assert.throws(() => heartbeatSubject('kv.store', 'a'), InvalidArgumentError);
    assert.throws(() => kvEventsSubject(''), InvalidArgumentError);
  });

  it('runtime - only a JSON object with ready:true is a ready line', () => {
    assert.deepEqual(parseReadyLine('{"ready":true,"port":5}'), { ready: true, port: 5 });
    assert.equal(parseReadyLine('{"ready":false}'), undefined);
    assert.equal(parseReadyLine('listening on 5'), undefined);
    assert.equal(parseReadyLine('{not json'), undefined);
  });
});

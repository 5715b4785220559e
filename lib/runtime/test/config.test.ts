// Unit tests of the config loader: precedence (default < env < flag), units, bounds, and error
// messages that name the field, its source and the limit.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { InvalidArgumentError } from '@kvmesh/errors';

import { describeConfig, loadConfig, parseBytes, parseDuration } from '../src/index.ts';
import type { ConfigSchema } from '../src/index.ts';

const schema = {
  grpcPort: { type: 'int', default: 0, min: 0, max: 65535, description: 'gRPC listen port' },
  memoryBudget: { type: 'bytes', default: '512MiB', min: '1MiB', max: '1TiB' },
  heartbeatInterval: { type: 'duration', default: '1s', min: '10ms', max: '1m' },
  loadFactor: { type: 'number', default: 0.75, min: 0, max: 1 },
  natsUrl: { type: 'string', default: 'nats://127.0.0.1:4222', env: 'NATS_URL' },
  codec: { type: 'string', default: 'kivi4', choices: ['f32', 'f16', 'kivi8', 'kivi4', 'kivi2'] },
  verbose: { type: 'bool', default: false },
  nodeId: { type: 'string' },
} as const satisfies ConfigSchema;

function expectInvalid(fn: () => unknown, pattern: RegExp): InvalidArgumentError {
  try {
    fn();
  } catch (err) {
    assert.ok(err instanceof InvalidArgumentError, `expected InvalidArgumentError, got ${String(err)}`);
    assert.match(err.message, pattern);
    return err;
  }
  assert.fail('expected a throw');
}

describe('config - loader', () => {
  it('config - defaults apply, units convert, and values are typed', () => {
    const c = loadConfig(schema, { env: { KVMESH_NODE_ID: 'kvstore-0' } });
    assert.deepEqual(c, {
      grpcPort: 0,
      memoryBudget: 512 * 1024 * 1024,
      heartbeatInterval: 1000,
      loadFactor: 0.75,
      natsUrl: 'nats://127.0.0.1:4222',
      codec: 'kivi4',
      verbose: false,
      nodeId: 'kvstore-0',
    });
    const port: number = c.grpcPort;
    const verbose: boolean = c.verbose;
    assert.equal(port + Number(verbose), 0);
  });

  it('config - flags beat env vars, env vars beat defaults; every flag form works', () => {
    const c = loadConfig(schema, {
      env: {
        KVMESH_GRPC_PORT: '7000',
        KVMESH_MEMORY_BUDGET: '2GiB',
        NATS_URL: 'nats://n:1',
        KVMESH_NODE_ID: 'x',
      },
      argv: ['--grpc-port', '7001', '--heartbeat-interval=250ms', '--verbose', '--codec', 'f16'],
    });
    assert.equal(c.grpcPort, 7001);
    assert.equal(c.memoryBudget, 2 * 1024 ** 3);
    assert.equal(c.heartbeatInterval, 250);
    assert.equal(c.natsUrl, 'nats://n:1');
    assert.equal(c.verbose, true);
    assert.equal(c.codec, 'f16');
    assert.equal(
      loadConfig(schema, { argv: ['--node-id=a', '--no-verbose'], env: { KVMESH_VERBOSE: '1' } }).verbose,
      false,
    );
    assert.equal(loadConfig(schema, { argv: ['--node-id=a', '--verbose', 'false'] }).verbose, false);
  });

  it('config - errors name the field, its source and the limit', () => {
    const above = expectInvalid(
      () => loadConfig(schema, { argv: ['--node-id=a', '--grpc-port', '70000'] }),
      /grpcPort \(from --grpc-port\): 70000 is above the maximum 65535/,
    );
    assert.deepEqual(above.details, { field: 'grpcPort', value: 70000, max: 65535, source: 'flag' });
    expectInvalid(
      () => loadConfig(schema, { env: { KVMESH_NODE_ID: 'a', KVMESH_MEMORY_BUDGET: '512KiB' } }),
      /memoryBudget \(from KVMESH_MEMORY_BUDGET\): 512KiB is below the minimum 1MiB/,
    );
    expectInvalid(
      () => loadConfig(schema, { argv: ['--node-id=a', '--grpc-port', '1.5'] }),
      /not an integer/,
    );
    expectInvalid(() => loadConfig(schema, { argv: ['--node-id=a', '--load-factor', 'x'] }), /not a number/);
    expectInvalid(
      () => loadConfig(schema, { argv: ['--node-id=a', '--codec', 'q8'] }),
      /not one of f32, f16/,
    );
    expectInvalid(
      () => loadConfig(schema, { argv: ['--node-id=a', '--heartbeat-interval', 'soon'] }),
      /not a duration/,
    );
    expectInvalid(
      () => loadConfig(schema, { env: { KVMESH_NODE_ID: 'a', KVMESH_VERBOSE: 'maybe' } }),
      /not a boolean/,
    );
    expectInvalid(() => loadConfig(schema, {}), /nodeId is required: set --node-id or KVMESH_NODE_ID/);
    expectInvalid(
      () => loadConfig(schema, { argv: ['--node-id=a', '--grpc-prot', '1'] }),
      /unknown flag --grpc-prot/,
    );
    expectInvalid(
      () => loadConfig(schema, { argv: ['--node-id=a', '--grpc-port'] }),
      /--grpc-port needs a value/,
    );
    expectInvalid(() => loadConfig(schema, { argv: ['stray'] }), /unexpected argument 'stray'/);
  });

  it('config - unknown flags may be allowed for wrappers', () => {
    const c = loadConfig(schema, { argv: ['--node-id=a', '--other', 'x'], allowUnknownFlags: true });
    assert.equal(c.nodeId, 'a');
  });

  it('config - byte sizes and durations parse with binary, decimal and compound units', () => {
    assert.equal(parseBytes('4096'), 4096);
    assert.equal(parseBytes('64k'), 65536);
    assert.equal(parseBytes('64KB'), 64000);
    assert.equal(parseBytes('1.5 GiB'), 1.5 * 1024 ** 3);
    assert.throws(() => parseBytes('12 parsecs'), InvalidArgumentError);
    assert.throws(() => parseBytes('-1'), InvalidArgumentError);
    assert.equal(parseDuration('250'), 250);
    assert.equal(parseDuration('30s'), 30_000);
    assert.equal(parseDuration('1m30s'), 90_000);
    assert.equal(parseDuration('2h'), 7_200_000);
    assert.equal(parseDuration('1.5s'), 1_500);
    assert.throws(() => parseDuration(''), InvalidArgumentError);
    assert.throws(() => parseDuration('5 weeks'), InvalidArgumentError);
  });

  it('config - help text lists flag, env var, default and bounds of every field', () => {
    const help = describeConfig(schema);
    assert.match(
      help,
      /--grpc-port \/ KVMESH_GRPC_PORT {2}<int> {2}default 0 {2}min 0 {2}max 65535 {2}— gRPC listen port/,
    );
    assert.match(help, /--nats-url \/ NATS_URL/);
    assert.match(help, /--node-id \/ KVMESH_NODE_ID {2}<string> {2}required/);
  });
});

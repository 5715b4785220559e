import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { availableParallelism } from 'node:os';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';

import { formatChecks } from '../src/doctor.ts';
import { parseUpArgs, workerThreads } from '../src/up.ts';

const bin = fileURLToPath(new URL('../bin/kvmesh.mjs', import.meta.url));

function kvmesh(...args: string[]): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [bin, ...args], { encoding: 'utf8', timeout: 60_000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

describe('cli - kvmesh', () => {
  it('cli - doctor --json reports every probe and finds the native kernels', () => {
    const r = kvmesh('doctor', '--json');
    const report = JSON.parse(r.stdout.trim().split('\n').pop() as string) as {
      ok: boolean;
      checks: { name: string; ok: boolean; required: boolean; found: string }[];
    };
    const names = report.checks.map((c) => c.name);
    for (const name of [
      'node',
      'c++ compiler',
      'openblas',
      'xxhash',
      'native kernels',
      'nats-server',
      'gpu',
      'cxl far memory',
      'disk',
    ]) {
      assert.ok(names.includes(name), `doctor lacks the '${name}' probe`);
    }
    const nativeCheck = report.checks.find((c) => c.name === 'native kernels');
    if (process.env.KVMESH_REQUIRE_NATIVE === '1') assert.equal(nativeCheck?.ok, true, nativeCheck?.found);
    // The exit code follows the required probes.
    assert.equal(r.status, report.checks.some((c) => c.required && !c.ok) ? 1 : 0);
  });

  it('cli - an unknown command prints usage and exits 2', () => {
    const r = kvmesh('frobnicate');
    assert.equal(r.status, 2);
    assert.match(r.stderr, /unknown command 'frobnicate'/);
    assert.match(r.stderr, /usage: kvmesh/);
  });

  it('cli - a missing required item is marked with its fix', () => {
    const text = formatChecks([
      {
        name: 'nats-server',
        ok: false,
        required: true,
        found: 'missing',
        fix: 'apt-get install nats-server',
      },
      { name: 'gpu', ok: false, required: false, found: 'none' },
    ]);
    assert.match(text, /^MISS nats-server {2}missing {2}-> apt-get install nats-server$/m);
    assert.match(text, /^info gpu/m);
  });
});

describe('cli - kvmesh up options', () => {
  it('up - --threads sets every worker; by default the cores are split among the workers', () => {
    assert.equal(workerThreads(parseUpArgs(['--threads', '3', '--prefill', '2', '--decode', '2'])), 3);
    const cores = availableParallelism();
    assert.equal(
      workerThreads(parseUpArgs(['--prefill', '1', '--decode', '1'])),
      Math.max(1, Math.floor(cores / 2)),
    );
    // More workers than cores: each still gets one thread.
    assert.equal(
      workerThreads(parseUpArgs(['--prefill', '16', '--decode', '16'])),
      Math.max(1, Math.floor(cores / 32)),
    );
    assert.equal(workerThreads({ prefill: 0, decode: 1 }), cores);
    assert.throws(
      () => parseUpArgs(['--threads', '0']),
      /--threads must be an integer in \[1, 1024\], got '0'/,
    );
    assert.throws(() => parseUpArgs(['--threads']), /--threads must be an integer/);
  });

  it('up - --kvstore-data-port fixes the data ports of the kvstore nodes, one per node', () => {
    assert.equal(parseUpArgs([]).kvstoreDataPort, undefined);
    assert.equal(parseUpArgs(['--kvstore-data-port', '47100']).kvstoreDataPort, 47100);
    assert.throws(
      () => parseUpArgs(['--kvstore-data-port', '0']),
      /--kvstore-data-port must be an integer in \[1, 65535\], got '0'/,
    );
    assert.throws(
      () => parseUpArgs(['--kvstore', '3', '--kvstore-data-port', '65534']),
      /--kvstore-data-port 65534 leaves no port for kvstore node 2/,
    );
  });
});

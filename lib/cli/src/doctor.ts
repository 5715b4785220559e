// `kvmesh doctor`: probes the machine for everything kvmesh builds or runs with and prints, for each
// item, what was found or what is missing and the command that installs it. Required items decide
// the exit code; optional ones (GPU, CXL) only inform.
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, statfsSync } from 'node:fs';

import { describeKernels, nativeMemoryStatus } from '@kvmesh/kernels';

export interface Check {
  name: string;
  ok: boolean;
  required: boolean;
  found: string;
  fix?: string;
}

const NODE_MAJOR_MIN = 20;
const DISK_FREE_MIN_BYTES = 2 * 1024 ** 3;

function firstLine(cmd: string, args: string[]): string | null {
  const r = spawnSync(cmd, args, { encoding: 'utf8', timeout: 5000 });
  if (r.error || r.status !== 0) return null;
  const text = `${r.stdout}${r.stderr}`.trim();
  return text.split('\n')[0] ?? '';
}

function anyExists(paths: string[]): string | undefined {
  return paths.find((p) => existsSync(p));
}

function cpulessNumaNodes(): string[] {
  const base = '/sys/devices/system/node';
  if (!existsSync(base)) return [];
  return readdirSync(base)
    .filter((n) => /^node\d+$/.test(n))
    .filter((n) => {
      try {
        return readFileSync(`${base}/${n}/cpulist`, 'utf8').trim() === '';
      } catch {
        return false;
      }
    });
}

export function probe(dataDir = process.cwd()): Check[] {
  const checks: Check[] = [];
  const nodeMajor = Number(process.versions.node.split('.')[0]);
  checks.push({
    name: 'node',
    ok: nodeMajor >= NODE_MAJOR_MIN,
    required: true,
    found: `v${process.versions.node}`,
    fix: `install Node.js ${NODE_MAJOR_MIN} or newer`,
  });
  const gxx = firstLine('g++', ['--version']);
  checks.push({
    name: 'c++ compiler',
    ok: gxx !== null,
    required: true,
    found: gxx ?? 'missing',
    fix: 'apt-get install g++ make',
  });
  const cblas = anyExists([
    '/usr/include/x86_64-linux-gnu/cblas.h',
    '/usr/include/cblas.h',
    '/usr/include/openblas/cblas.h',
  ]);
  const openblasLib = anyExists([
    '/usr/lib/x86_64-linux-gnu/libopenblas.so',
    '/usr/lib/libopenblas.so',
    '/usr/lib/aarch64-linux-gnu/libopenblas.so',
  ]);
  checks.push({
    name: 'openblas',
    ok: cblas !== undefined && openblasLib !== undefined,
    required: true,
    found: openblasLib ?? 'missing',
    fix: 'apt-get install libopenblas-dev',
  });
  const xxhash = anyExists(['/usr/include/xxhash.h']);
  checks.push({
    name: 'xxhash',
    ok: xxhash !== undefined,
    required: true,
    found: xxhash ?? 'missing',
    fix: 'apt-get install libxxhash-dev',
  });
  const kernels = describeKernels();
  checks.push({
    name: 'native kernels',
    ok: kernels.backend === 'native',
    required: true,
    found: kernels.backend === 'native' ? `native (${kernels.isa})` : `reference only: ${kernels.detail}`,
    fix: 'npm run build:native',
  });
  const nats = firstLine('nats-server', ['--version']);
  checks.push({
    name: 'nats-server',
    ok: nats !== null,
    required: true,
    found: nats ?? 'missing',
    fix: 'apt-get install nats-server',
  });
  const redis = firstLine('redis-server', ['--version']);
  checks.push({
    name: 'redis-server (bench anchor)',
    ok: redis !== null,
    required: false,
    found: redis ?? 'missing',
    fix: 'apt-get install redis-server',
  });
  const nvcc =
    firstLine('nvcc', ['--version']) !== null
      ? (spawnSync('nvcc', ['--version'], { encoding: 'utf8' }).stdout.trim().split('\n').pop() ?? 'nvcc')
      : null;
  checks.push({
    name: 'nvcc (CUDA build)',
    ok: nvcc !== null,
    required: false,
    found: nvcc ?? 'missing',
    fix: 'install the CUDA toolkit',
  });
  const gpu = firstLine('nvidia-smi', ['--query-gpu=name', '--format=csv,noheader']);
  checks.push({
    name: 'gpu',
    ok: gpu !== null,
    required: false,
    found: gpu ?? 'none (CUDA kernels are skipped)',
  });
  const dax = existsSync('/dev') ? readdirSync('/dev').filter((d) => /^dax\d+\.\d+$/.test(d)) : [];
  const numa = cpulessNumaNodes();
  checks.push({
    name: 'cxl far memory',
    ok: dax.length > 0 || numa.length > 0,
    required: false,
    found:
      dax.length > 0 || numa.length > 0
        ? [...dax.map((d) => `/dev/${d}`), ...numa.map((n) => `cpu-less NUMA ${n}`)].join(', ')
        : 'none (the far tier uses a shared-memory file)',
  });
  // Without CXL the far tier is a shared-memory file: /dev/shm bounds its capacity.
  let shm: string;
  let shmOk = false;
  try {
    const fs = statfsSync('/dev/shm');
    shm = `/dev/shm ${((fs.blocks * fs.bsize) / 1024 ** 3).toFixed(1)} GiB, ${((fs.bavail * fs.bsize) / 1024 ** 3).toFixed(1)} GiB free`;
    shmOk = fs.bavail > 0;
  } catch {
    shm = 'no /dev/shm';
  }
  const mapping = nativeMemoryStatus();
  checks.push({
    name: 'far memory pool',
    ok: shmOk && mapping === 'loaded',
    required: false,
    found:
      mapping === 'loaded'
        ? `${dax.length > 0 ? 'DAX device or ' : ''}shared-memory file; ${shm}`
        : `in-process memory only (${mapping}); ${shm}`,
    fix: 'npm run build:native (same-host readers map the pool through it); size farBytes below the free /dev/shm',
  });
  try {
    const fs = statfsSync(dataDir);
    const free = fs.bavail * fs.bsize;
    checks.push({
      name: 'disk',
      ok: free >= DISK_FREE_MIN_BYTES,
      required: true,
      found: `${(free / 1024 ** 3).toFixed(1)} GiB free at ${dataDir}`,
      fix: `free at least ${DISK_FREE_MIN_BYTES / 1024 ** 3} GiB`,
    });
  } catch (err) {
    checks.push({ name: 'disk', ok: false, required: true, found: (err as Error).message });
  }
  return checks;
}

export function formatChecks(checks: readonly Check[]): string {
  const width = Math.max(...checks.map((c) => c.name.length));
  return checks
    .map((c) => {
      const mark = c.ok ? 'ok  ' : c.required ? 'MISS' : 'info';
      const fix = !c.ok && c.fix ? `  -> ${c.fix}` : '';
      return `${mark} ${c.name.padEnd(width)}  ${c.found}${fix}`;
    })
    .join('\n');
}

export async function runDoctor(args: string[]): Promise<number> {
  const checks = probe();
  const failed = checks.filter((c) => c.required && !c.ok);
  if (args.includes('--json')) {
    process.stdout.write(`${JSON.stringify({ ok: failed.length === 0, checks })}\n`);
  } else {
    process.stdout.write(`${formatChecks(checks)}\n`);
    process.stdout.write(
      failed.length === 0
        ? 'kvmesh doctor: ready\n'
        : `kvmesh doctor: ${failed.length} required item(s) missing\n`,
    );
  }
  return failed.length === 0 ? 0 : 1;
}

#!/usr/bin/env node
// Builds the native kernel module with node-gyp when a source is newer than the built module.
// A missing compiler is not an install failure: the loader falls back to the TypeScript reference
// and says so. Under KVMESH_REQUIRE_NATIVE=1 (the test command) a failed build is an error.
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { createRequire } from 'node:module';

const dir = new URL('..', import.meta.url).pathname;
const target = join(dir, 'build/Release/kvmesh_kernels.node');
const required = process.env.KVMESH_REQUIRE_NATIVE === '1' || process.argv.includes('--require');
const force = process.argv.includes('--force');

function newestSourceMs() {
  let newest = statSync(join(dir, 'binding.gyp')).mtimeMs;
  for (const sub of ['cpu', 'scripts']) {
    for (const f of readdirSync(join(dir, sub)))
      newest = Math.max(newest, statSync(join(dir, sub, f)).mtimeMs);
  }
  return newest;
}

if (!force && existsSync(target) && statSync(target).mtimeMs >= newestSourceMs()) process.exit(0);

function fail(message) {
  console.error(`[kernels] ${message}`);
  if (required) process.exit(1);
  console.error('[kernels] continuing without the native module: kernels run on the TypeScript reference');
  process.exit(0);
}

if (spawnSync('g++', ['--version']).status !== 0) fail('no C++ compiler (g++) found: apt-get install g++');
const require = createRequire(import.meta.url);
let nodeGyp;
try {
  nodeGyp = require.resolve('node-gyp/bin/node-gyp.js');
} catch {
  fail('node-gyp is not installed: run npm ci');
}
const args = [nodeGyp, 'rebuild', '-j', '2'];
// Debian's Node keeps its headers under /usr/include/node; without --nodedir node-gyp would try to
// download them, which this network does not allow.
if (existsSync('/usr/include/node/node_api.h')) args.push('--nodedir=/usr');
console.error('[kernels] building native module (node-gyp)');
const result = spawnSync(process.execPath, args, { cwd: dir, stdio: ['ignore', 'inherit', 'inherit'] });
if (result.status !== 0) fail(`native build failed (exit ${result.status})`);

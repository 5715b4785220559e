#!/usr/bin/env node
// The one pinned codegen command: proto/kvmesh/v1/*.proto → lib/protocol/src/gen/ with buf and
// ts-proto (versions pinned by package-lock.json), then prettier so the output is stable.
// `--check` regenerates into a temp copy and fails if the checked-in code differs.
import { spawnSync } from 'node:child_process';
import { cpSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const root = new URL('..', import.meta.url).pathname;
const gen = join(root, 'lib/protocol/src/gen');
const check = process.argv.includes('--check');

function run(cmd, args, cwd) {
  const r = spawnSync(cmd, args, { cwd, stdio: 'inherit' });
  if (r.status !== 0) process.exit(r.status ?? 1);
}

function listFiles(dir, prefix = '') {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? listFiles(join(dir, e.name), `${prefix}${e.name}/`) : [`${prefix}${e.name}`],
  );
}

let saved;
if (check) {
  saved = mkdtempSync(join(tmpdir(), 'kvmesh-gen-'));
  cpSync(gen, saved, { recursive: true });
}
run(join(root, 'node_modules/.bin/buf'), ['lint'], join(root, 'proto'));
run(join(root, 'node_modules/.bin/buf'), ['generate'], join(root, 'proto'));
run(join(root, 'node_modules/.bin/prettier'), ['--log-level', 'warn', '--write', gen], root);
if (check) {
  const before = listFiles(saved).sort();
  const after = listFiles(gen).sort();
  const differs =
    before.join() !== after.join() ||
    after.some((f) => readFileSync(join(gen, f), 'utf8') !== readFileSync(join(saved, f), 'utf8'));
  rmSync(saved, { recursive: true, force: true });
  if (differs) {
    console.error('codegen: checked-in lib/protocol/src/gen differs from the protos; run npm run codegen');
    process.exit(1);
  }
}

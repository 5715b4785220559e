// What the bench smoke tests share: running a suite as the CLI does, a tiny model, a small mesh workload.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { NO_PROGRESS, generateModel } from '@kvmesh/engine';

const main = fileURLToPath(new URL('../src/main.ts', import.meta.url));

/** Runs a suite with --json and returns its last stdout line, parsed. */
export function bench(...args: string[]): Record<string, unknown> {
  const r = spawnSync(process.execPath, ['--import', 'tsx', main, ...args, '--json'], {
    encoding: 'utf8',
    timeout: 240_000,
  });
  assert.equal(r.status, 0, r.stderr);
  const last = r.stdout.trim().split('\n').pop() as string;
  return JSON.parse(last) as Record<string, unknown>;
}

/** Runs `body` on a tiny model generated into a fresh temporary directory, removed afterwards. */
export function withTinyModel(name: string, body: (modelDir: string) => void): void {
  const dir = mkdtempSync(join(tmpdir(), `kvmesh-bench-${name}-`));
  try {
    const modelDir = join(dir, 'tiny');
    generateModel({ outDir: modelDir, preset: 'tiny', seed: 5, progress: NO_PROGRESS });
    body(modelDir);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/**
 * The mesh suite on a tiny shared-prefix chat: 2 system prompts × 64 tokens shared by 4
 * conversations × 2 turns; 16-token blocks so that the shared system prompt and the first turn's
 * history are whole blocks. One round per policy.
 */
export function meshSmokeArgs(modelDir: string): string[] {
  const workload = '--system-prompts 2 --system-tokens 64 --conversations 4 --turns 2 --user-tokens 16';
  const shape = '--max-tokens 8 --rate 4 --think-ms 20 --block-tokens 16 --repeats 1';
  return ['--model', modelDir, ...`${workload} ${shape}`.split(' ')];
}

interface MeshPolicyFigures {
  ttftP50Ms: number;
  ttftP90Ms: number;
  itlP50Ms: number;
  outputTokps: number;
  cachedTokenFraction: number;
  requests?: number;
  errors: number;
  rounds: unknown[];
}

/** The mesh suite's contract for both policies of a smoke run (meshSmokeArgs: 8 requests each). */
export function assertMeshPolicies(policies: unknown, ratio: unknown): void {
  const figuresOf = policies as Record<string, MeshPolicyFigures>;
  assert.deepEqual(Object.keys(figuresOf).sort(), ['kv-aware', 'round-robin']);
  for (const [policy, figures] of Object.entries(figuresOf)) {
    for (const key of ['ttftP50Ms', 'ttftP90Ms', 'itlP50Ms', 'outputTokps'] as const)
      assert.ok(Number.isFinite(figures[key]) && figures[key] > 0, `${policy} ${key} ${figures[key]}`);
    if (figures.requests !== undefined) assert.equal(figures.requests, 8, policy);
    assert.equal(figures.rounds.length, 1, policy);
    assert.equal(figures.errors, 0, `${policy}: ${JSON.stringify(figures)}`);
    assert.ok(
      figures.cachedTokenFraction > 0 && figures.cachedTokenFraction <= 1,
      `${policy} cachedTokenFraction ${figures.cachedTokenFraction}`,
    );
  }
  const ratios = ratio as Record<string, number>;
  for (const key of ['ttftP90', 'outputTokps'])
    assert.ok(Number.isFinite(ratios[key]) && (ratios[key] as number) > 0, `ratio ${key}`);
}

// Models the bench suites run on: a preset name is generated once into bench/out/models/<preset>
// (never committed), anything else is taken as a model directory.
import { existsSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';

import { generateModel, type ModelPreset } from '@kvmesh/engine';

import type { BenchContext } from './main.ts';

const MODELS_DIR = new URL('../out/models/', import.meta.url).pathname;

/** The directory and display name of `model` (tiny, small or a directory with a config.json). */
export function ensureModel(log: BenchContext['log'], model: string): { dir: string; name: string } {
  if (model === 'tiny' || model === 'small') {
    const dir = join(MODELS_DIR, model);
    if (!existsSync(join(dir, 'config.json'))) {
      log(`generating the ${model} model in ${dir} (once)`);
      mkdirSync(dir, { recursive: true });
      generateModel({ outDir: dir, preset: model satisfies ModelPreset, seed: 0 });
    }
    return { dir, name: model };
  }
  if (!existsSync(join(model, 'config.json'))) throw new Error(`--model ${model} has no config.json`);
  return { dir: model, name: model.replace(/\/+$/, '').split('/').pop() ?? model };
}

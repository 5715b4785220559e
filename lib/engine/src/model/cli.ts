// `kvmesh model ...`: generates the project's own Llama-family test models and exports them to GGUF
// for llama.cpp. Arguments are validated here and every failure is a one-line message with exit
// code 2 (usage) or 1 (the command failed); progress goes to stderr, the summary to stdout.
import { existsSync, statSync } from 'node:fs';

import { KvmeshError } from '@kvmesh/errors';

import { generateModel, MODEL_PRESETS, type ModelPreset } from './generate.ts';
import { exportGguf } from './gguf.ts';
import { createProgress, type ProgressStream } from './progress.ts';

export const MODEL_USAGE = `usage: kvmesh model <command>

commands:
  init --out DIR --preset tiny|small [--seed N]
                      generate a Llama-family model with seeded random weights and a BPE tokenizer
                      trained on lib/engine/corpus (HF layout: config.json, model.safetensors,
                      tokenizer.json, tokenizer_config.json, generation_config.json);
                      tiny ~0.8 M parameters, small ~88 M; N is an integer in [0, 2^32), default 0
  export-gguf DIR OUT.gguf
                      write the model in DIR as a GGUF v3 file (F32) that llama.cpp can run
  help                this text
`;

export interface ModelCommandIo {
  stdout: { write(chunk: string): unknown };
  /** Errors and progress (a redrawn bar when it is a TTY, a line per quarter otherwise). */
  stderr: ProgressStream;
}

class UsageError extends Error {}

const SEED_MAX = 2 ** 32 - 1;

function parseInit(args: string[]): { outDir: string; preset: ModelPreset; seed: number } {
  let outDir: string | undefined;
  let preset: string | undefined;
  let seed = 0;
  for (let i = 0; i < args.length; i++) {
    const flag = args[i] as string;
    const value = (): string => {
      const v = args[++i];
      if (v === undefined || v.startsWith('--')) throw new UsageError(`${flag} needs a value`);
      return v;
    };
    if (flag === '--out') outDir = value();
    else if (flag === '--preset') preset = value();
    else if (flag === '--seed') {
      const raw = value();
      if (!/^\d+$/.test(raw) || Number(raw) > SEED_MAX) {
        throw new UsageError(`--seed must be an integer in [0, ${SEED_MAX}], got '${raw}'`);
      }
      seed = Number(raw);
    } else throw new UsageError(`unknown argument '${flag}'`);
  }
  if (outDir === undefined) throw new UsageError('--out DIR is required');
  if (preset === undefined) throw new UsageError('--preset is required (tiny or small)');
  if (!Object.hasOwn(MODEL_PRESETS, preset)) {
    throw new UsageError(`--preset must be one of ${Object.keys(MODEL_PRESETS).join(', ')}, got '${preset}'`);
  }
  if (existsSync(outDir) && !statSync(outDir).isDirectory()) {
    throw new UsageError(`--out ${outDir} exists and is not a directory`);
  }
  return { outDir, preset: preset as ModelPreset, seed };
}

function parseExport(args: string[]): { modelDir: string; outPath: string } {
  if (args.length !== 2) throw new UsageError('export-gguf takes exactly DIR and OUT.gguf');
  const [modelDir, outPath] = args as [string, string];
  if (!existsSync(modelDir) || !statSync(modelDir).isDirectory()) {
    throw new UsageError(`model directory ${modelDir} does not exist`);
  }
  if (!outPath.endsWith('.gguf')) throw new UsageError(`output ${outPath} should end in .gguf`);
  return { modelDir, outPath };
}

const seconds = (startMs: number): string => ((performance.now() - startMs) / 1000).toFixed(1);

export async function runModelCommand(
  args: string[],
  io: ModelCommandIo = { stdout: process.stdout, stderr: process.stderr },
): Promise<number> {
  const [command, ...rest] = args;
  try {
    switch (command) {
      case 'init': {
        const options = parseInit(rest);
        const startMs = performance.now();
        const model = generateModel({
          ...options,
          progress: (label, total) => createProgress(label, total, io.stderr),
        });
        io.stdout.write(
          `wrote ${model.preset} model (${(model.parameterCount / 1e6).toFixed(1)} M parameters, ` +
            `vocab ${model.vocabSize} of which ${model.learnedTokens} learned, seed ${model.seed}) ` +
            `to ${model.outDir} in ${seconds(startMs)} s\n`,
        );
        return 0;
      }
      case 'export-gguf': {
        const { modelDir, outPath } = parseExport(rest);
        const startMs = performance.now();
        const result = exportGguf(modelDir, outPath);
        io.stdout.write(
          `wrote ${result.outPath} (${result.tensors} tensors, ${(result.bytes / 2 ** 20).toFixed(1)} MiB) ` +
            `in ${seconds(startMs)} s\n`,
        );
        return 0;
      }
      case undefined:
      case 'help':
      case '--help':
      case '-h':
        io.stdout.write(MODEL_USAGE);
        return 0;
      default:
        throw new UsageError(`unknown command '${command}'`);
    }
  } catch (err) {
    if (err instanceof UsageError) {
      io.stderr.write(`kvmesh model: ${err.message}\n\n${MODEL_USAGE}`);
      return 2;
    }
    // Typed errors and system errors (EACCES, ENOSPC, ...) already name the file; print them plainly.
    const systemError = err instanceof Error && typeof (err as NodeJS.ErrnoException).code === 'string';
    if (err instanceof KvmeshError || systemError) {
      io.stderr.write(`kvmesh model ${command}: ${(err as Error).message}\n`);
      return 1;
    }
    throw err;
  }
}

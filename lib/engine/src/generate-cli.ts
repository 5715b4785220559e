// `kvmesh generate`: loads a model directory, runs one prompt through the engine and streams the
// text to stdout as it is produced; prompt/generated token counts and prefill/decode speeds go to
// stderr. Arguments are validated up front; a bad value is a one-line usage error (exit code 2).
import { existsSync, statSync } from 'node:fs';

import { KvmeshError } from '@kvmesh/errors';
import { CODEC_IDS, type CodecName } from '@kvmesh/kernels';

import { loadModel } from './model/load.ts';
import { Engine } from './runtime/engine.ts';
import type { SamplingOptions } from './runtime/sampling.ts';
import { TextStream } from './runtime/text-stream.ts';

export const GENERATE_USAGE = `usage: kvmesh generate --model DIR --prompt TEXT [options]

options:
  --chat               wrap the prompt as a user message in the model's chat template
  --max-tokens N       most tokens to generate (default 128)
  --codec C            KV cache codec: ${Object.keys(CODEC_IDS).join(', ')} (default f32)
  --block-tokens N     KV block size in tokens, a multiple of 16 up to 256 (default 64)
  --temperature T      0 = greedy (default 0)
  --top-p P            nucleus sampling mass in (0, 1] (default 1)
  --top-k K            keep the K most likely tokens, 0 = all (default 0)
  --seed S             seed of the sampling stream, an integer in [0, 2^32)
  --stop TEXT          stop when TEXT is generated (repeatable; not printed)
`;

export interface GenerateOptions {
  modelDir: string;
  prompt: string;
  chat: boolean;
  maxTokens: number;
  codec: CodecName;
  blockTokens: number;
  sampling: SamplingOptions;
  stop: string[];
}

class UsageError extends Error {}

function parseNumber(flag: string, raw: string, integer: boolean, min: number, max: number): number {
  const value = Number(raw);
  if (raw.trim() === '' || !Number.isFinite(value) || (integer && !Number.isInteger(value))) {
    throw new UsageError(`${flag} must be ${integer ? 'an integer' : 'a number'}, got '${raw}'`);
  }
  if (value < min || value > max) throw new UsageError(`${flag} must be in [${min}, ${max}], got ${raw}`);
  return value;
}

export function parseGenerateArgs(args: readonly string[]): GenerateOptions {
  const options: Partial<GenerateOptions> & { stop: string[]; sampling: SamplingOptions } = {
    chat: false,
    maxTokens: 128,
    codec: 'f32',
    blockTokens: 64,
    sampling: { temperature: 0, topK: 0, topP: 1 },
    stop: [],
  };
  for (let i = 0; i < args.length; i++) {
    const flag = args[i] as string;
    const value = (): string => {
      const v = args[++i];
      if (v === undefined) throw new UsageError(`${flag} needs a value`);
      return v;
    };
    switch (flag) {
      case '--model':
        options.modelDir = value();
        break;
      case '--prompt':
        options.prompt = value();
        break;
      case '--chat':
        options.chat = true;
        break;
      case '--max-tokens':
        options.maxTokens = parseNumber(flag, value(), true, 1, 1 << 20);
        break;
      case '--codec': {
        const codec = value();
        if (!Object.hasOwn(CODEC_IDS, codec)) {
          throw new UsageError(`--codec must be one of ${Object.keys(CODEC_IDS).join(', ')}, got '${codec}'`);
        }
        options.codec = codec as CodecName;
        break;
      }
      case '--block-tokens':
        options.blockTokens = parseNumber(flag, value(), true, 16, 256);
        break;
      case '--temperature':
        options.sampling.temperature = parseNumber(flag, value(), false, 0, 100);
        break;
      case '--top-p':
        options.sampling.topP = parseNumber(flag, value(), false, Number.MIN_VALUE, 1);
        break;
      case '--top-k':
        options.sampling.topK = parseNumber(flag, value(), true, 0, 1 << 30);
        break;
      case '--seed':
        options.sampling.seed = parseNumber(flag, value(), true, 0, 2 ** 32 - 1);
        break;
      case '--stop':
        options.stop.push(value());
        break;
      default:
        throw new UsageError(`unknown argument '${flag}'`);
    }
  }
  if (options.modelDir === undefined) throw new UsageError('--model DIR is required');
  if (options.prompt === undefined) throw new UsageError('--prompt TEXT is required');
  if (!existsSync(options.modelDir) || !statSync(options.modelDir).isDirectory()) {
    throw new UsageError(`model directory ${options.modelDir} does not exist`);
  }
  return options as GenerateOptions;
}

export interface GenerateIo {
  stdout: { write(chunk: string): unknown };
  stderr: { write(chunk: string): unknown };
}

export interface GenerateSummary {
  promptTokens: number;
  generatedTokens: number;
  finishReason: 'stop' | 'length';
  prefillTokps: number;
  decodeTokps: number;
  text: string;
}

/** Runs one generation; writes text deltas to io.stdout as they become final. */
export function generateText(options: GenerateOptions, io: GenerateIo): GenerateSummary {
  const model = loadModel(options.modelDir);
  const tokenizer = model.tokenizer;
  const promptText = options.chat
    ? tokenizer.applyChatTemplate([{ role: 'user', content: options.prompt }], true)
    : options.prompt;
  // A chat template writes its own BOS; a raw prompt gets the tokenizer's special tokens.
  const promptTokens = tokenizer.encode(promptText, { addSpecialTokens: !options.chat });
  const engine = new Engine(model, { codec: options.codec, blockTokens: options.blockTokens, maxBatch: 1 });
  const stream = new TextStream(tokenizer, options.stop);
  const id = engine.addSequence({ promptTokens, maxTokens: options.maxTokens, sampling: options.sampling });
  let text = '';
  let generated = 0;
  let finishReason: 'stop' | 'length' = 'length';
  const write = (delta: string): void => {
    if (delta.length === 0) return;
    text += delta;
    io.stdout.write(delta);
  };
  const startMs = performance.now();
  let firstTokenMs = startMs;
  for (;;) {
    const event = engine.step().find((e) => e.sequenceId === id);
    if (!event) break;
    if (generated === 0) firstTokenMs = performance.now();
    generated++;
    const delta = stream.push(event.token);
    write(delta.text);
    if (delta.stopped) {
      finishReason = 'stop';
      break;
    }
    if (event.finishReason) {
      finishReason = event.finishReason;
      write(stream.finish());
      break;
    }
  }
  const endMs = performance.now();
  engine.removeSequence(id);
  const prefillSeconds = (firstTokenMs - startMs) / 1000;
  const decodeSeconds = (endMs - firstTokenMs) / 1000;
  return {
    promptTokens: promptTokens.length,
    generatedTokens: generated,
    finishReason,
    prefillTokps: prefillSeconds > 0 ? promptTokens.length / prefillSeconds : 0,
    decodeTokps: decodeSeconds > 0 && generated > 1 ? (generated - 1) / decodeSeconds : 0,
    text,
  };
}

export async function runGenerateCommand(
  args: string[],
  io: GenerateIo = { stdout: process.stdout, stderr: process.stderr },
): Promise<number> {
  try {
    const options = parseGenerateArgs(args);
    const summary = generateText(options, io);
    io.stdout.write('\n');
    io.stderr.write(
      `prompt ${summary.promptTokens} tokens, generated ${summary.generatedTokens} tokens ` +
        `(finish: ${summary.finishReason}); prefill ${summary.prefillTokps.toFixed(1)} tok/s, ` +
        `decode ${summary.decodeTokps.toFixed(1)} tok/s\n`,
    );
    return 0;
  } catch (err) {
    if (err instanceof UsageError) {
      io.stderr.write(`kvmesh generate: ${err.message}\n\n${GENERATE_USAGE}`);
      return 2;
    }
    const systemError = err instanceof Error && typeof (err as NodeJS.ErrnoException).code === 'string';
    if (err instanceof KvmeshError || systemError) {
      io.stderr.write(`kvmesh generate: ${(err as Error).message}\n`);
      return 1;
    }
    throw err;
  }
}

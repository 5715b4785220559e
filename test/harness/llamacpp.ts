// llama.cpp through node-llama-cpp (CPU) as the independent reference for the engine: load a GGUF,
// read per-position logits with an f32 KV cache, run greedy continuations. Test support only.
import assert from 'node:assert/strict';

// Types only (erased): the module itself is imported lazily so a missing binary fails with advice.
import type * as NodeLlamaCpp from 'node-llama-cpp';
import type { LlamaModel } from 'node-llama-cpp';

export async function loadLlamaModel(path: string): Promise<LlamaModel> {
  let lib: typeof NodeLlamaCpp;
  try {
    lib = await import('node-llama-cpp');
  } catch (err) {
    throw new Error(
      `node-llama-cpp could not be imported (${(err as Error).message}); run \`npm install --no-audit --no-fund\` ` +
        'at the repo root (it is a root devDependency; its CPU binaries come in @node-llama-cpp/<platform> packages)',
    );
  }
  try {
    const llama = await lib.getLlama({ gpu: false, build: 'never', logLevel: lib.LlamaLogLevel.error });
    return await llama.loadModel({ modelPath: path, gpuLayers: 0 });
  } catch (err) {
    throw new Error(
      `node-llama-cpp could not load ${path} on CPU: ${(err as Error).message} ` +
        '(no prebuilt binary for this platform? `npx node-llama-cpp inspect gpu` shows what it found)',
    );
  }
}

/** Next-token logits at every position of `tokens`, dense [position][token]. */
export async function llamaCppLogits(
  model: LlamaModel,
  tokens: number[],
  kvCacheF32: boolean,
  vocabSize: number,
): Promise<Float32Array[]> {
  const context = await model.createContext({
    contextSize: Math.max(256, tokens.length + 1),
    ...(kvCacheF32
      ? { experimentalKvCacheKeyType: 'F32', experimentalKvCacheValueType: 'F32', flashAttention: false }
      : {}),
  });
  try {
    const sequence = context.getSequence();
    const results = await sequence.controlledEvaluate(
      tokens.map((t) => [t as never, { generateNext: { logits: true } }] as const),
    );
    return results.map((r, pos) => {
      const logits = r?.next.logits;
      assert.ok(logits, `no logits at position ${pos}`);
      const out = new Float32Array(vocabSize);
      for (const [token, value] of logits) out[token as number] = value;
      return out;
    });
  } finally {
    await context.dispose();
  }
}

/** Index of the largest value (ties to the lowest index). */
export function argmax(row: Float32Array): number {
  let best = 0;
  for (let i = 1; i < row.length; i++) if ((row[i] as number) > (row[best] as number)) best = i;
  return best;
}

// Parses a Hugging Face `config.json` of a Llama-family decoder (Llama 2/3, Mistral, Qwen2,
// SmolLM, TinyLlama) into the engine's ModelConfig, with every field checked. Unsupported
// architectures or features are rejected with an error naming the field, never guessed.
import { InvalidArgumentError } from '@kvmesh/errors';
import type { RopeScaling } from '@kvmesh/kernels';

export type { RopeScaling };

export interface ModelConfig {
  architecture: 'llama' | 'mistral' | 'qwen2';
  hiddenSize: number;
  intermediateSize: number;
  layers: number;
  queryHeads: number;
  kvHeads: number;
  headDim: number;
  vocabSize: number;
  rmsNormEps: number;
  ropeTheta: number;
  ropeScaling: RopeScaling;
  maxContextTokens: number;
  tiedEmbeddings: boolean;
  /** Bias on the q/k/v projections (Qwen2 always; Llama when attention_bias). */
  attentionBias: boolean;
  bosTokenId: number | null;
  eosTokenIds: number[];
}

const ARCHITECTURES: Record<string, ModelConfig['architecture']> = {
  LlamaForCausalLM: 'llama',
  MistralForCausalLM: 'mistral',
  Qwen2ForCausalLM: 'qwen2',
};

export class ModelConfigError extends InvalidArgumentError {}

export function parseModelConfig(raw: unknown, source = 'config.json'): ModelConfig {
  if (typeof raw !== 'object' || raw === null)
    throw new ModelConfigError(`${source}: not a JSON object`, { file: source });
  const c = raw as Record<string, unknown>;
  const err = (field: string, message: string): ModelConfigError =>
    new ModelConfigError(`${source}: ${field} ${message}`, { file: source, field, value: c[field] });
  const int = (field: string, fallback?: number): number => {
    const v = c[field] ?? fallback;
    if (!Number.isInteger(v) || (v as number) <= 0)
      throw err(field, `must be a positive integer, got ${JSON.stringify(c[field])}`);
    return v as number;
  };
  const num = (field: string, fallback: number): number => {
    const v = c[field] ?? fallback;
    if (typeof v !== 'number' || !Number.isFinite(v) || v <= 0)
      throw err(field, `must be a positive number, got ${JSON.stringify(c[field])}`);
    return v;
  };

  const archs = c.architectures;
  const archName = Array.isArray(archs) ? archs[0] : undefined;
  const architecture = typeof archName === 'string' ? ARCHITECTURES[archName] : undefined;
  if (architecture === undefined) {
    throw err(
      'architectures',
      `${JSON.stringify(archs)} is not supported (supported: ${Object.keys(ARCHITECTURES).join(', ')})`,
    );
  }
  const act = c.hidden_act ?? 'silu';
  if (act !== 'silu') throw err('hidden_act', `'${String(act)}' is not supported (only silu)`);

  const hiddenSize = int('hidden_size');
  const queryHeads = int('num_attention_heads');
  const kvHeads = int('num_key_value_heads', queryHeads);
  if (queryHeads % kvHeads !== 0)
    throw err('num_key_value_heads', `(${kvHeads}) must divide num_attention_heads (${queryHeads})`);
  const headDim = c.head_dim == null ? hiddenSize / queryHeads : int('head_dim');
  if (!Number.isInteger(headDim) || headDim % 16 !== 0) {
    throw err('head_dim', `${headDim} must be a multiple of 16 (the KV kernels' vector width)`);
  }

  let ropeScaling: RopeScaling = { kind: 'none' };
  const rs = c.rope_scaling as Record<string, unknown> | null | undefined;
  if (rs != null) {
    const type = rs.rope_type ?? rs.type;
    const factor = rs.factor;
    if (typeof factor !== 'number' || !(factor > 0)) throw err('rope_scaling', 'needs a positive factor');
    if (type === 'linear') {
      ropeScaling = { kind: 'linear', factor };
    } else if (type === 'llama3') {
      ropeScaling = {
        kind: 'llama3',
        factor,
        lowFreqFactor: Number(rs.low_freq_factor ?? 1),
        highFreqFactor: Number(rs.high_freq_factor ?? 4),
        originalContextTokens: Number(rs.original_max_position_embeddings ?? 8192),
      };
    } else if (type !== 'default') {
      throw err('rope_scaling', `type '${String(type)}' is not supported (linear, llama3)`);
    }
  }

  const eos = c.eos_token_id;
  const eosTokenIds = eos == null ? [] : Array.isArray(eos) ? (eos as number[]) : [eos as number];
  if (!eosTokenIds.every((t) => Number.isInteger(t) && t >= 0))
    throw err('eos_token_id', 'must be a token id or a list of them');
  const bos = c.bos_token_id;
  if (bos != null && !(Number.isInteger(bos) && (bos as number) >= 0))
    throw err('bos_token_id', 'must be a token id');

  return {
    architecture,
    hiddenSize,
    intermediateSize: int('intermediate_size'),
    layers: int('num_hidden_layers'),
    queryHeads,
    kvHeads,
    headDim,
    vocabSize: int('vocab_size'),
    rmsNormEps: num('rms_norm_eps', 1e-6),
    ropeTheta: num('rope_theta', 10000),
    ropeScaling,
    maxContextTokens: int('max_position_embeddings', 2048),
    tiedEmbeddings: c.tie_word_embeddings === true,
    attentionBias: architecture === 'qwen2' || c.attention_bias === true,
    bosTokenId: (bos as number | null | undefined) ?? null,
    eosTokenIds,
  };
}

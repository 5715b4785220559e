import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { CorruptDataError, InvalidArgumentError } from '@kvmesh/errors';

import { parseModelConfig } from '../src/model/config.ts';
import { parseSafetensors, readTensorF32, writeSafetensors } from '../src/model/safetensors.ts';

const LLAMA = {
  architectures: ['LlamaForCausalLM'],
  hidden_size: 64,
  intermediate_size: 128,
  num_hidden_layers: 2,
  num_attention_heads: 4,
  num_key_value_heads: 2,
  vocab_size: 300,
  rms_norm_eps: 1e-5,
  max_position_embeddings: 512,
  eos_token_id: [2, 3],
  bos_token_id: 1,
};

describe('engine - config.json', () => {
  it('engine - parses a Llama config with GQA and derives head_dim', () => {
    const cfg = parseModelConfig(LLAMA);
    assert.equal(cfg.architecture, 'llama');
    assert.equal(cfg.headDim, 16);
    assert.equal(cfg.kvHeads, 2);
    assert.deepEqual(cfg.eosTokenIds, [2, 3]);
    assert.equal(cfg.attentionBias, false);
    assert.equal(cfg.ropeTheta, 10000);
  });

  it('engine - Qwen2 implies q/k/v bias; llama3 rope scaling is read', () => {
    const cfg = parseModelConfig({
      ...LLAMA,
      architectures: ['Qwen2ForCausalLM'],
      rope_scaling: {
        rope_type: 'llama3',
        factor: 8,
        low_freq_factor: 1,
        high_freq_factor: 4,
        original_max_position_embeddings: 8192,
      },
    });
    assert.equal(cfg.attentionBias, true);
    assert.deepEqual(cfg.ropeScaling, {
      kind: 'llama3',
      factor: 8,
      lowFreqFactor: 1,
      highFreqFactor: 4,
      originalContextTokens: 8192,
    });
  });

  it('engine - unsupported or inconsistent configs name the field', () => {
    assert.throws(
      () => parseModelConfig({ ...LLAMA, architectures: ['GPT2LMHeadModel'] }),
      /architectures .*not supported/,
    );
    assert.throws(
      () => parseModelConfig({ ...LLAMA, num_key_value_heads: 3 }),
      /num_key_value_heads \(3\) must divide/,
    );
    assert.throws(
      () => parseModelConfig({ ...LLAMA, hidden_size: -1 }),
      /hidden_size must be a positive integer/,
    );
    assert.throws(() => parseModelConfig({ ...LLAMA, hidden_act: 'gelu' }), /hidden_act/);
    assert.throws(() => parseModelConfig(null), InvalidArgumentError);
  });
});

describe('engine - safetensors', () => {
  it('engine - f32 tensors round-trip through write and parse', () => {
    const a = Float32Array.from({ length: 12 }, () => Math.random() - 0.5);
    const b = Float32Array.from({ length: 5 }, () => Math.random() * 10);
    const bytes = writeSafetensors([
      { name: 'a', shape: [3, 4], data: a },
      { name: 'b', shape: [5], data: b },
    ]);
    const file = parseSafetensors(bytes, 'model.safetensors');
    assert.deepEqual(file.tensors.get('a')?.shape, [3, 4]);
    assert.deepEqual(readTensorF32(file, 'a'), a);
    assert.deepEqual(readTensorF32(file, 'b'), b);
  });

  it('engine - f16 and bf16 tensors convert to f32', () => {
    const header = JSON.stringify({
      h: { dtype: 'F16', shape: [3], data_offsets: [0, 6] },
      b: { dtype: 'BF16', shape: [2], data_offsets: [6, 10] },
    });
    const bytes = new Uint8Array(8 + header.length + 10);
    const view = new DataView(bytes.buffer);
    view.setBigUint64(0, BigInt(header.length), true);
    bytes.set(new TextEncoder().encode(header), 8);
    const d = 8 + header.length;
    view.setUint16(d, 0x3c00, true); // 1.0
    view.setUint16(d + 2, 0xc000, true); // -2.0
    view.setUint16(d + 4, 0x3555, true); // 0.333251953125
    view.setUint16(d + 6, 0x3f80, true); // bf16 1.0
    view.setUint16(d + 8, 0x4049, true); // bf16 3.140625
    const file = parseSafetensors(bytes, 'x.safetensors');
    assert.deepEqual(Array.from(readTensorF32(file, 'h')), [1, -2, 0.333251953125]);
    assert.deepEqual(Array.from(readTensorF32(file, 'b')), [1, 3.140625]);
  });

  it('engine - truncated and inconsistent files are CorruptDataError naming the file', () => {
    const bytes = writeSafetensors([{ name: 'w', shape: [4], data: new Float32Array([1, 2, 3, 4]) }]);
    assert.throws(() => parseSafetensors(bytes.subarray(0, 4), 'm.safetensors'), /m.safetensors: truncated/);
    assert.throws(
      () => parseSafetensors(bytes.subarray(0, bytes.length - 1), 'm.safetensors'),
      CorruptDataError,
    );
    const garbage = new Uint8Array(16);
    new DataView(garbage.buffer).setBigUint64(0, 4n, true);
    assert.throws(() => parseSafetensors(garbage, 'g.safetensors'), /not valid JSON/);
    assert.throws(() => readTensorF32(parseSafetensors(bytes, 'm'), 'missing'), /no tensor named missing/);
  });
});

import assert from 'node:assert/strict';
import { cpSync, mkdtempSync, readFileSync, rmSync, unlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';

import { loadKernels } from '@kvmesh/kernels';

import { generateModel } from '../src/model/generate.ts';
import { loadModel } from '../src/model/load.ts';
import { NO_PROGRESS } from '../src/model/progress.ts';
import { parseSafetensors, readTensorF32, writeSafetensors } from '../src/model/safetensors.ts';

let dir = '';
let modelDir = '';

before(() => {
  dir = mkdtempSync(join(tmpdir(), 'kvmesh-load-'));
  modelDir = join(dir, 'tiny');
  generateModel({ outDir: modelDir, preset: 'tiny', seed: 5, progress: NO_PROGRESS });
});

after(() => {
  if (dir !== '') rmSync(dir, { recursive: true, force: true });
});

function copyModel(name: string): string {
  const target = join(dir, name);
  cpSync(modelDir, target, { recursive: true });
  return target;
}

describe('engine - model loading', () => {
  it('engine - decode keeps spaces as they are unless asked to clean them up', () => {
    const { tokenizer } = loadModel(modelDir);
    const ids = tokenizer.encode('wait , what ?', { addSpecialTokens: false });
    assert.equal(tokenizer.decode(ids), 'wait , what ?');
    assert.equal(tokenizer.decode(ids, { cleanUpSpaces: false }), 'wait , what ?');
    assert.equal(tokenizer.decode(ids, { cleanUpSpaces: true }), 'wait, what?');
  });

  it('engine - loads config, fused weights, tokenizer and chat template of a generated model', () => {
    const model = loadModel(modelDir);
    const { config, weights } = model;
    const layer = weights.layers[0];
    assert.ok(layer);
    assert.equal(weights.layers.length, config.layers);
    assert.equal(
      layer.qkv.length,
      (config.queryHeads + 2 * config.kvHeads) * config.headDim * config.hiddenSize,
    );
    assert.equal(layer.gateUp.length, 2 * config.intermediateSize * config.hiddenSize);
    // The fused matrix starts with q_proj's rows and ends with v_proj's.
    const file = parseSafetensors(new Uint8Array(readFileSync(join(modelDir, 'model.safetensors'))), 'model');
    const q = readTensorF32(file, 'model.layers.0.self_attn.q_proj.weight');
    const v = readTensorF32(file, 'model.layers.0.self_attn.v_proj.weight');
    assert.deepEqual(layer.qkv.subarray(0, q.length), q);
    assert.deepEqual(layer.qkv.subarray(layer.qkv.length - v.length), v);
    const text = 'Blocks are content-addressed.';
    assert.equal(model.tokenizer.decode(model.tokenizer.encode(text, { addSpecialTokens: false })), text);
    const chat = model.tokenizer.applyChatTemplate([{ role: 'user', content: 'hi' }]);
    assert.match(chat, /user\nhi/);
    assert.match(model.fingerprint, /^[0-9a-f]{32}$/);
  });

  it('engine - the fingerprint is stable across loads and changes with any weight byte', () => {
    const a = loadModel(modelDir).fingerprint;
    assert.equal(loadModel(modelDir).fingerprint, a);
    const changed = copyModel('changed');
    const path = join(changed, 'model.safetensors');
    const bytes = readFileSync(path);
    bytes[bytes.length - 1] = (bytes[bytes.length - 1] as number) ^ 1;
    writeFileSync(path, bytes);
    assert.notEqual(loadModel(changed).fingerprint, a);
  });

  it('engine - a sharded checkpoint with an index loads the same weights', () => {
    const sharded = copyModel('sharded');
    const file = parseSafetensors(new Uint8Array(readFileSync(join(sharded, 'model.safetensors'))), 'model');
    const names = [...file.tensors.keys()];
    const half = Math.ceil(names.length / 2);
    const shards = [names.slice(0, half), names.slice(half)];
    const weightMap: Record<string, string> = {};
    shards.forEach((shard, i) => {
      const fileName = `model-0000${i + 1}-of-00002.safetensors`;
      const tensors = shard.map((name) => ({
        name,
        shape: file.tensors.get(name)?.shape ?? [],
        data: readTensorF32(file, name),
      }));
      writeFileSync(join(sharded, fileName), writeSafetensors(tensors));
      for (const name of shard) weightMap[name] = fileName;
    });
    unlinkSync(join(sharded, 'model.safetensors'));
    writeFileSync(join(sharded, 'model.safetensors.index.json'), JSON.stringify({ weight_map: weightMap }));
    const a = loadModel(modelDir);
    const b = loadModel(sharded);
    assert.deepEqual(b.weights.layers[1]?.down, a.weights.layers[1]?.down);
    assert.deepEqual(b.weights.lmHead, a.weights.lmHead);
  });

  it('engine - missing files and tensors, bad shapes are errors naming the file and tensor', () => {
    assert.throws(() => loadModel(join(dir, 'nope')), /does not exist/);
    const noTokenizer = copyModel('no-tokenizer');
    unlinkSync(join(noTokenizer, 'tokenizer.json'));
    assert.throws(() => loadModel(noTokenizer), /tokenizer.json: missing/);
    const noWeights = copyModel('no-weights');
    unlinkSync(join(noWeights, 'model.safetensors'));
    assert.throws(() => loadModel(noWeights), /no model.safetensors and no model.safetensors.index.json/);
    const badShape = copyModel('bad-shape');
    const config = JSON.parse(readFileSync(join(badShape, 'config.json'), 'utf8')) as Record<string, number>;
    writeFileSync(
      join(badShape, 'config.json'),
      JSON.stringify({ ...config, intermediate_size: (config.intermediate_size as number) + 16 }),
    );
    assert.throws(
      () => loadModel(badShape),
      /tensor model\.layers\.0\.mlp\.gate_proj\.weight has shape .* expected/,
    );
    const badArch = copyModel('bad-arch');
    writeFileSync(join(badArch, 'config.json'), JSON.stringify({ ...config, architectures: ['BertModel'] }));
    assert.throws(() => loadModel(badArch, loadKernels()), /architectures .*not supported/);
  });
});

// Loads a Hugging Face model directory into what the engine runs: parsed config, f32 weights with
// q/k/v and gate/up fused into one matrix each (one GEMM instead of three or two), the tokenizer,
// the chat template and the model fingerprint of block identity. Every missing file, tensor or
// shape mismatch is an error naming the file and tensor.
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';

import { Template } from '@huggingface/jinja';
import { Tokenizer } from '@huggingface/tokenizers';
import { InvalidArgumentError } from '@kvmesh/errors';
import { loadKernels, type Kernels } from '@kvmesh/kernels';
import { modelFingerprintFromBytes, type ModelFingerprint } from '@kvmesh/protocol';

import { parseModelConfig, type ModelConfig } from './config.ts';
import { parseSafetensors, readTensorF32, type SafetensorsFile } from './safetensors.ts';
import { SegmentCache, segmentCacheSafe, type AddedToken } from './segment-cache.ts';

export class ModelFileError extends InvalidArgumentError {}

export interface LayerWeights {
  inputNorm: Float32Array;
  /** [(queryHeads + 2·kvHeads)·headDim][hidden]: q rows, then k rows, then v rows. */
  qkv: Float32Array;
  qkvBias: Float32Array | null;
  /** [hidden][queryHeads·headDim] */
  o: Float32Array;
  postNorm: Float32Array;
  /** [2·intermediate][hidden]: gate rows, then up rows. */
  gateUp: Float32Array;
  /** [hidden][intermediate] */
  down: Float32Array;
}

export interface ModelWeights {
  /** [vocab][hidden] */
  embed: Float32Array;
  layers: LayerWeights[];
  norm: Float32Array;
  /** [vocab][hidden]; the embedding table itself when tied. */
  lmHead: Float32Array;
}

export interface ChatMessage {
  role: string;
  content: string;
}

export interface ModelTokenizer {
  encode(text: string, options?: { addSpecialTokens?: boolean }): number[];
  /**
   * Text of `ids`; special tokens (BOS, EOS, chat markers) are dropped with skipSpecialTokens, and
   * cleanUpSpaces overrides the tokenizer's own clean_up_tokenization_spaces (" ," → ",").
   */
  decode(ids: readonly number[], options?: { skipSpecialTokens?: boolean; cleanUpSpaces?: boolean }): string;
  /** Renders the chat template; encode the result with addSpecialTokens: false. */
  applyChatTemplate(messages: readonly ChatMessage[], addGenerationPrompt?: boolean): string;
  readonly bosTokenId: number | null;
  /**
   * Memoized pieces between added tokens, used by encode() without special tokens (chat prompts);
   * null when this tokenizer's pieces do not encode independently (see segment-cache.ts).
   */
  readonly pieceCache: SegmentCache | null;
}

export interface LoadedModel {
  dir: string;
  config: ModelConfig;
  weights: ModelWeights;
  tokenizer: ModelTokenizer;
  fingerprint: ModelFingerprint;
  /** Display name: the directory's last component. */
  name: string;
}

function readJsonFile(dir: string, file: string): unknown {
  const path = join(dir, file);
  if (!existsSync(path))
    throw new ModelFileError(`${path}: missing (a model directory needs ${file})`, { file: path });
  try {
    return JSON.parse(readFileSync(path, 'utf8'));
  } catch (err) {
    throw new ModelFileError(`${path}: not valid JSON: ${(err as Error).message}`, { file: path });
  }
}

/** The safetensors files of a directory: a single model.safetensors or the shards of its index. */
export function listWeightFiles(dir: string): string[] {
  if (existsSync(join(dir, 'model.safetensors'))) return ['model.safetensors'];
  const indexFile = 'model.safetensors.index.json';
  if (!existsSync(join(dir, indexFile))) {
    throw new ModelFileError(`${dir}: no model.safetensors and no ${indexFile}`, { dir });
  }
  const index = readJsonFile(dir, indexFile) as { weight_map?: Record<string, string> };
  if (typeof index.weight_map !== 'object' || index.weight_map === null) {
    throw new ModelFileError(`${join(dir, indexFile)}: no weight_map`, { file: indexFile });
  }
  return [...new Set(Object.values(index.weight_map))].sort();
}

class TensorSource {
  private readonly byName = new Map<string, SafetensorsFile>();

  constructor(files: SafetensorsFile[]) {
    for (const f of files) for (const name of f.tensors.keys()) this.byName.set(name, f);
  }

  has(name: string): boolean {
    return this.byName.has(name);
  }

  read(name: string, shape: readonly number[]): Float32Array {
    const file = this.byName.get(name);
    if (!file) throw new ModelFileError(`missing tensor ${name}`, { tensor: name });
    const info = file.tensors.get(name);
    if (!info || info.shape.length !== shape.length || info.shape.some((d, i) => d !== shape[i])) {
      throw new ModelFileError(
        `${file.source}: tensor ${name} has shape [${info?.shape.join(', ')}], expected [${shape.join(', ')}]`,
        {
          tensor: name,
          shape: info?.shape,
          expected: shape,
        },
      );
    }
    return readTensorF32(file, name);
  }
}

function concatRows(parts: readonly Float32Array[]): Float32Array {
  const out = new Float32Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

function loadWeights(config: ModelConfig, source: TensorSource): ModelWeights {
  const { hiddenSize: h, intermediateSize: inter, queryHeads, kvHeads, headDim, vocabSize } = config;
  const qRows = queryHeads * headDim;
  const kvRows = kvHeads * headDim;
  const layers: LayerWeights[] = [];
  for (let l = 0; l < config.layers; l++) {
    const p = `model.layers.${l}`;
    const bias = config.attentionBias
      ? concatRows([
          source.read(`${p}.self_attn.q_proj.bias`, [qRows]),
          source.read(`${p}.self_attn.k_proj.bias`, [kvRows]),
          source.read(`${p}.self_attn.v_proj.bias`, [kvRows]),
        ])
      : null;
    layers.push({
      inputNorm: source.read(`${p}.input_layernorm.weight`, [h]),
      qkv: concatRows([
        source.read(`${p}.self_attn.q_proj.weight`, [qRows, h]),
        source.read(`${p}.self_attn.k_proj.weight`, [kvRows, h]),
        source.read(`${p}.self_attn.v_proj.weight`, [kvRows, h]),
      ]),
      qkvBias: bias,
      o: source.read(`${p}.self_attn.o_proj.weight`, [h, qRows]),
      postNorm: source.read(`${p}.post_attention_layernorm.weight`, [h]),
      gateUp: concatRows([
        source.read(`${p}.mlp.gate_proj.weight`, [inter, h]),
        source.read(`${p}.mlp.up_proj.weight`, [inter, h]),
      ]),
      down: source.read(`${p}.mlp.down_proj.weight`, [h, inter]),
    });
  }
  const embed = source.read('model.embed_tokens.weight', [vocabSize, h]);
  const tied = config.tiedEmbeddings || !source.has('lm_head.weight');
  return {
    embed,
    layers,
    norm: source.read('model.norm.weight', [h]),
    lmHead: tied ? embed : source.read('lm_head.weight', [vocabSize, h]),
  };
}

/** Sample texts that put every added token between words, at the ends and next to another. */
function segmentProbes(added: readonly AddedToken[]): string[] {
  const probes = ['plain words, no markers at all:\n\n  two  spaces and digits 12345.'];
  for (const { content } of added) {
    probes.push(`${content}system\n\nYou are helpful. ${content} user: hi there${content}${content}\n `);
  }
  return probes;
}

/**
 * A segment cache for the tokenizer when its pieces encode independently and encoding piece by piece
 * gives the same ids as encoding whole on every probe; null otherwise (every text is then encoded
 * whole).
 */
function segmentCacheFor(
  tokenizerJson: unknown,
  encodePiece: (piece: string) => number[],
): SegmentCache | null {
  const added = segmentCacheSafe(tokenizerJson);
  if (added === null) return null;
  const probe = new SegmentCache(added, encodePiece, { entriesMax: 0, charsMax: 0 });
  const joined = (ids: readonly number[]): string => ids.join(',');
  for (const text of segmentProbes(added)) {
    // NOTE: encodePiece on the whole text is the tokenizer's own encoding of it.
    if (joined(probe.encode(text)) !== joined(encodePiece(text))) return null;
  }
  return new SegmentCache(added, encodePiece);
}

function loadTokenizer(dir: string, config: ModelConfig): ModelTokenizer {
  const tokenizerJson = readJsonFile(dir, 'tokenizer.json') as object;
  const tokenizerConfig = (
    existsSync(join(dir, 'tokenizer_config.json')) ? readJsonFile(dir, 'tokenizer_config.json') : {}
  ) as Record<string, unknown>;
  let tokenizer: Tokenizer;
  try {
    tokenizer = new Tokenizer(tokenizerJson, tokenizerConfig);
  } catch (err) {
    throw new ModelFileError(`${join(dir, 'tokenizer.json')}: ${(err as Error).message}`, {
      file: 'tokenizer.json',
    });
  }
  const encodeRaw = (text: string, addSpecialTokens: boolean): number[] =>
    tokenizer.encode(text, { add_special_tokens: addSpecialTokens }).ids;
  const segments = segmentCacheFor(tokenizerJson, (piece) => encodeRaw(piece, false));
  const templateSource = tokenizerConfig.chat_template;
  const template = typeof templateSource === 'string' ? new Template(templateSource) : null;
  const special = (key: string): string => {
    const v = tokenizerConfig[key];
    if (typeof v === 'string') return v;
    if (v && typeof v === 'object' && typeof (v as { content?: unknown }).content === 'string')
      return (v as { content: string }).content;
    return '';
  };
  return {
    encode: (text, options = {}) => {
      const addSpecialTokens = options.addSpecialTokens ?? true;
      return !addSpecialTokens && segments !== null
        ? segments.encode(text)
        : encodeRaw(text, addSpecialTokens);
    },
    // NOTE: the library rejects an empty id list; the text of no tokens is ''.
    decode: (ids, options = {}) =>
      ids.length === 0
        ? ''
        : tokenizer.decode([...ids], {
            skip_special_tokens: options.skipSpecialTokens ?? false,
            ...(options.cleanUpSpaces === undefined
              ? {}
              : { clean_up_tokenization_spaces: options.cleanUpSpaces }),
          }),
    applyChatTemplate: (messages, addGenerationPrompt = true) => {
      if (!template)
        throw new ModelFileError(`${join(dir, 'tokenizer_config.json')}: no chat_template`, {
          file: 'tokenizer_config.json',
        });
      return template.render({
        messages,
        add_generation_prompt: addGenerationPrompt,
        bos_token: special('bos_token'),
        eos_token: special('eos_token'),
      });
    },
    bosTokenId: config.bosTokenId,
    pieceCache: segments,
  };
}

/**
 * The model fingerprint (block identity): XXH3-128 over the KV-relevant config and the bytes of every
 * weight file, so two processes loading the same directory agree and any weight change splits caches.
 */
export function modelFingerprint(
  config: ModelConfig,
  weightFileBytes: readonly Uint8Array[],
  kernels: Kernels,
): ModelFingerprint {
  const kvConfig = {
    architecture: config.architecture,
    layers: config.layers,
    hiddenSize: config.hiddenSize,
    queryHeads: config.queryHeads,
    kvHeads: config.kvHeads,
    headDim: config.headDim,
    vocabSize: config.vocabSize,
    rmsNormEps: config.rmsNormEps,
    ropeTheta: config.ropeTheta,
    ropeScaling: config.ropeScaling,
    attentionBias: config.attentionBias,
  };
  const parts = [
    new TextEncoder().encode(JSON.stringify(kvConfig)),
    ...weightFileBytes.map((b) => kernels.hash128(b)),
  ];
  const all = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    all.set(p, at);
    at += p.length;
  }
  return modelFingerprintFromBytes(kernels.hash128(all));
}

export function loadModel(dir: string, kernels: Kernels = loadKernels()): LoadedModel {
  if (!existsSync(dir)) throw new ModelFileError(`model directory ${dir} does not exist`, { dir });
  const config = parseModelConfig(readJsonFile(dir, 'config.json'), join(dir, 'config.json'));
  const files = listWeightFiles(dir);
  const bytes = files.map((f) => {
    const path = join(dir, f);
    if (!existsSync(path))
      throw new ModelFileError(`${path}: missing (listed in the shard index)`, { file: path });
    return new Uint8Array(readFileSync(path));
  });
  const source = new TensorSource(bytes.map((b, i) => parseSafetensors(b, join(dir, files[i] as string))));
  const weights = loadWeights(config, source);
  return {
    dir,
    config,
    weights,
    tokenizer: loadTokenizer(dir, config),
    fingerprint: modelFingerprint(config, bytes, kernels),
    name: dir.replace(/\/+$/, '').split('/').pop() ?? dir,
  };
}

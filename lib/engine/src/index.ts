// Public surface of @kvmesh/engine: model files, generated test models, the runtime (engine,
// sampling, text streaming) and the `kvmesh model` / `kvmesh generate` commands.
export * from './model/config.ts';
export * from './model/safetensors.ts';
export * from './model/bpe.ts';
export * from './model/cli.ts';
export * from './model/generate.ts';
export * from './model/gguf.ts';
export * from './model/progress.ts';
export * from './model/random.ts';
export * from './model/load.ts';
export * from './model/segment-cache.ts';
export * from './runtime/sampling.ts';
export * from './runtime/kv-pool.ts';
export * from './runtime/engine.ts';
export * from './runtime/rate-meter.ts';
export * from './runtime/text-stream.ts';
export * from './generate-cli.ts';

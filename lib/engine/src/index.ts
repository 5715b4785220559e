// Public surface of @kvmesh/engine (model files and generated test models so far; the runtime
// follows).
export * from './model/config.ts';
export * from './model/safetensors.ts';
export * from './model/bpe.ts';
export * from './model/cli.ts';
export * from './model/generate.ts';
export * from './model/gguf.ts';
export * from './model/progress.ts';
export * from './model/random.ts';
export * from './model/load.ts';
export * from './runtime/sampling.ts';
export * from './runtime/kv-pool.ts';
export * from './runtime/engine.ts';

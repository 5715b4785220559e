// Public surface of @kvmesh/engine (model files so far; the runtime follows).
export * from './model/config.ts';
export * from './model/safetensors.ts';

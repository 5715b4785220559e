// Public surface of @kvmesh/test-harness: real processes for integration tests (a nats-server, kvmesh
// services as children on loopback) and the waiting helpers tests need around them. No mocks: what a
// test talks to is the same binary or entry file that runs in production.
export * from './util.ts';
export * from './children.ts';
export * from './nats-server.ts';
export * from './service.ts';
// llama.cpp as the engine's reference (node-llama-cpp is imported lazily, only when used).
export * from './llamacpp.ts';
export * from './kvstore.ts';
export * from './tiering.ts';
export * from './grpc-assert.ts';

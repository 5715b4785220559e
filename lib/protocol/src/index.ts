// Public surface of @kvmesh/protocol: branded identifiers and the generated wire types and gRPC
// service definitions (lib/protocol/src/gen is produced by `npm run codegen`; never edit it).
export * from './ids.ts';
export * from './gen/kvmesh/v1/common.js';
export * from './gen/kvmesh/v1/kvstore.js';
export * from './gen/kvmesh/v1/worker.js';
export * from './gen/kvmesh/v1/router.js';
export * from './gen/kvmesh/v1/tiering.js';
export * from './gen/kvmesh/v1/events.js';
export * from './data-methods.ts';
export * from './codecs.ts';
export * from './wire-blocks.ts';

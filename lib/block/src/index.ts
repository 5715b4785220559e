// Public surface of @kvmesh/block: block identity (spec v1) and the block payload format (v1).
export * from './identity.ts';
export * from './payload.ts';
export * from './attention.ts';

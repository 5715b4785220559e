// Public surface of @kvmesh/protocol: branded identifiers and (generated) wire types.
export * from './ids.ts';

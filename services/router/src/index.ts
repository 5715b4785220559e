// Public surface of @kvmesh/router. Today it is the pure core (block index, routing policies,
// disaggregation plan) and the JetStream index feed; the HTTP / gRPC front door comes next.
export * from './core/index.ts';
export * from './adapters/index-feed.ts';

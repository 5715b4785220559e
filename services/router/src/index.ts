// Public surface of @kvmesh/router. Today it is the pure core (block index, routing policies,
// disaggregation plan); the HTTP / gRPC front door and the NATS adapters will be added beside it.
export * from './core/index.ts';

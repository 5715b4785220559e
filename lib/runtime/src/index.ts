// Public surface of @kvmesh/runtime: what every service's main.ts wires together. Pure decisions
// (placement, membership, config, subjects) live in ./core and are usable without any transport;
// the rest are thin adapters over gRPC, NATS and JetStream.
export * from './core/placement.ts';
export * from './core/membership.ts';
export * from './core/config.ts';
export * from './core/subjects.ts';
export * from './errors.ts';
export * from './logger.ts';
export * from './ready.ts';
export * from './grpc.ts';
export * from './nats.ts';
export * from './membership-nats.ts';
export * from './events.ts';
export * from './net.ts';
export * from './cpus.ts';
export * from './metrics.ts';
export * from './block-stream.ts';
export * from './shutdown.ts';

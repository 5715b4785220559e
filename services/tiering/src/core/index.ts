// The tiering service's pure core: far-pool bookkeeping, the tier record format and the policy.
// No transport or file access: the pool region, the SSD tier and the clock are injected.
export * from './errors.ts';
export * from './far-pool.ts';
export * from './tier-policy.ts';
export * from './tier-record.ts';
export * from './reusable-buffers.ts';

// NATS connection for services: reconnects forever by default (NATS restarting must not take a
// service down; publishers buffer or drop per their own bounds meanwhile), names the connection for
// server-side monitoring, and turns a failed first connect into an UnavailableError.
import { connect } from '@nats-io/transport-node';
import type { NatsConnection } from '@nats-io/transport-node';

import { UnavailableError } from './errors.ts';

export type { NatsConnection } from '@nats-io/transport-node';

export interface NatsConnectOptions {
  readonly servers: string | readonly string[];
  /** Connection name shown by the server (e.g. 'kvstore-0'). */
  readonly name: string;
  /** Wait between reconnect attempts. Default 250 ms. */
  readonly reconnectTimeWaitMs?: number;
  /** -1 (default) retries forever. */
  readonly reconnectAttemptsMax?: number;
  /** Timeout of the first connect. Default 5 s. */
  readonly connectTimeoutMs?: number;
  /** Keep retrying the first connect instead of failing at once. Default false. */
  readonly waitOnFirstConnect?: boolean;
  /** Server ping interval; two missed pongs mark the connection stale. Default 10 s. */
  readonly pingIntervalMs?: number;
}

export async function connectNats(options: NatsConnectOptions): Promise<NatsConnection> {
  const servers = typeof options.servers === 'string' ? [options.servers] : [...options.servers];
  try {
    return await connect({
      servers,
      name: options.name,
      reconnect: true,
      reconnectTimeWait: options.reconnectTimeWaitMs ?? 250,
      maxReconnectAttempts: options.reconnectAttemptsMax ?? -1,
      timeout: options.connectTimeoutMs ?? 5_000,
      waitOnFirstConnect: options.waitOnFirstConnect ?? false,
      pingInterval: options.pingIntervalMs ?? 10_000,
      maxPingOut: 2,
    });
  } catch (err) {
    throw new UnavailableError(`cannot connect to NATS at ${servers.join(', ')}: ${(err as Error).message}`, {
      servers,
    });
  }
}

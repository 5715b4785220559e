// The node's NATS side: the connection, the JetStream stream its kv events land in, and the sink
// that hands BlockStore events to the KvEventPublisher. The sink never throws back into the store
// (which calls it after a state change): an event the publisher cannot take is replaced by a
// `cleared` marker with the same seq, so consumers see the documented resync, never a silent hole.
import { LimitExceededError } from '@kvmesh/errors';
import type { KvEvent } from '@kvmesh/protocol';
import {
  connectNats,
  openKvEventPublisher,
  type KvEventPublisher,
  type Logger,
  type NatsConnection,
} from '@kvmesh/runtime';

import type { KvEventSink } from '../core/index.ts';

export interface ClusterConnection {
  readonly nc: NatsConnection;
  readonly publisher: KvEventPublisher;
}

/** Connects to NATS, makes sure the kv event stream exists, and opens this node's publisher. */
export async function connectCluster(options: {
  natsUrl: string;
  nodeId: string;
  logger: Logger;
}): Promise<ClusterConnection> {
  const servers = options.natsUrl
    .split(',')
    .map((s) => s.trim())
    .filter((s) => s !== '');
  const nc = await connectNats({ servers, name: options.nodeId });
  try {
    return { nc, publisher: await openKvEventPublisher(nc, options) };
  } catch (err) {
    await nc.close().catch(() => undefined);
    throw err;
  }
}

/** A BlockStore sink that forwards to `publisher` once one is attached (standalone: nowhere). */
export class KvEventForwarder {
  publisher: KvEventPublisher | undefined;
  /** Events replaced by a resync marker because the publisher refused them. */
  replaced = 0;

  constructor(private readonly logger: Logger) {}

  readonly sink: KvEventSink = (event: KvEvent) => {
    const publisher = this.publisher;
    if (publisher === undefined) return;
    try {
      publisher.publish(event);
    } catch (err) {
      if (!(err instanceof LimitExceededError)) {
        // Closed during shutdown: the remaining events have nowhere to go.
        this.logger.debug('kv event not published', { seq: event.seq, err });
        return;
      }
      this.replaced++;
      this.logger.warn('kv event too large; publishing a cleared marker in its place', {
        seq: event.seq,
        err,
      });
      try {
        publisher.publish({ ...event, stored: [], removed: [], removedNamespaces: [], cleared: true });
      } catch (markerErr) {
        this.logger.error('cannot publish a kv event resync marker', { seq: event.seq, err: markerErr });
      }
    }
  };
}

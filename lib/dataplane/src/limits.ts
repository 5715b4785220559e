// Bounds of a data channel endpoint and their defaults. Every queue and map of the client and the
// server is sized by one of these; a peer learns the other side's frame bounds in the HELLO
// exchange and never sends past them, so hitting a bound on the wire means a misbehaving peer.
import { InvalidArgumentError } from '@kvmesh/errors';

import { LENGTH_FIELD_MAX } from './frame.ts';

export interface DataChannelLimits {
  /** Largest metadata blob of one frame. */
  headerBytesMax: number;
  /** Largest bulk payload of one frame. */
  bodyBytesMax: number;
  /** Requests outstanding on one connection; the server stops reading a connection at this bound. */
  inFlightPerConnectionMax: number;
  /** Server: connections held at once; more are refused with an ERROR frame. */
  connectionsMax: number;
  /** Client: calls waiting for a connection slot when every connection is at its in-flight bound. */
  pendingCallsMax: number;
}

export const DEFAULT_LIMITS: Readonly<DataChannelLimits> = {
  headerBytesMax: 64 * 1024,
  bodyBytesMax: 64 * 1024 * 1024,
  inFlightPerConnectionMax: 64,
  connectionsMax: 256,
  pendingCallsMax: 4096,
};

/** Defaults overlaid with `given`, each checked to be a positive integer within its field. */
export function resolveLimits(given: Partial<DataChannelLimits> = {}): DataChannelLimits {
  const limits = { ...DEFAULT_LIMITS, ...given };
  for (const [name, value] of Object.entries(limits)) {
    if (!Number.isSafeInteger(value) || value <= 0)
      throw new InvalidArgumentError(`data channel limit ${name} must be a positive integer, got ${value}`, {
        name,
        value,
      });
  }
  for (const name of ['headerBytesMax', 'bodyBytesMax'] as const) {
    if (limits[name] > LENGTH_FIELD_MAX)
      throw new InvalidArgumentError(`data channel limit ${name} must fit a u32 length field`, {
        name,
        value: limits[name],
        valueMax: LENGTH_FIELD_MAX,
      });
  }
  return limits;
}

/** A positive integer millisecond option, or `fallback`. */
export function resolveMs(name: string, value: number | undefined, fallback: number): number {
  const ms = value ?? fallback;
  if (!Number.isFinite(ms) || ms <= 0)
    throw new InvalidArgumentError(`${name} must be a positive number of milliseconds, got ${ms}`, {
      name,
      value: ms,
    });
  return ms;
}

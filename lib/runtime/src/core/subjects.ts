// NATS subject names from DESIGN.md §6, in one place so publishers and subscribers cannot drift.
// Tokens are validated: a '*', '>' or whitespace in a role or node id would silently widen or break
// a subscription, and an empty token makes an invalid subject.
import { InvalidArgumentError } from '@kvmesh/errors';

export const KV_EVENTS_SUBJECT_PREFIX = 'kvmesh.kv.events';
export const KV_EVENTS_STREAM_DEFAULT = 'KVMESH_KV_EVENTS';

const TOKEN = /^[A-Za-z0-9._-]{1,128}$/;
const ROLE = /^[A-Za-z0-9_-]{1,64}$/;

function checkToken(value: string, what: string, re: RegExp): string {
  if (!re.test(value) || value.startsWith('.') || value.endsWith('.') || value.includes('..'))
    throw new InvalidArgumentError(`${what} '${value}' cannot be used in a NATS subject (must match ${re})`, {
      value,
    });
  return value;
}

/** `kvmesh.nodes.<role>.<id>.heartbeat`. A node id may contain '.', so subscribers use `role.>`. */
export function heartbeatSubject(role: string, nodeId: string): string {
  return `kvmesh.nodes.${checkToken(role, 'role', ROLE)}.${checkToken(nodeId, 'node id', TOKEN)}.heartbeat`;
}

/** Every heartbeat of one role, or of all roles when `role` is undefined. */
export function heartbeatWildcard(role?: string): string {
  return role === undefined ? 'kvmesh.nodes.>' : `kvmesh.nodes.${checkToken(role, 'role', ROLE)}.>`;
}

/** `kvmesh.kv.events.<nodeId>`. */
export function kvEventsSubject(nodeId: string): string {
  return `${KV_EVENTS_SUBJECT_PREFIX}.${checkToken(nodeId, 'node id', TOKEN)}`;
}

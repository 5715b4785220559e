// Errors the SDK itself raises, on top of the ones it passes through (server errors rebuilt by
// fromGrpcError or by the data channel keep their code, kind and details, `details.grpcCode` included).
// Each carries what a caller needs to act: the block hash and namespace, the nodes that were tried, or
// the deadline that passed. The router's own error codes (MODEL_NOT_FOUND, CONTEXT_LENGTH_EXCEEDED,
// UNAUTHENTICATED) are registered here, so a failed call comes back as these classes.
import { KvmeshError } from '@kvmesh/errors';
import type { BlockHash, Namespace, NodeId } from '@kvmesh/protocol';
import { registerErrorClass } from '@kvmesh/runtime';

/** No live node holds the block (DistAttention cannot cover it). */
export class BlockNotFoundError extends KvmeshError {
  constructor(hash: BlockHash, namespace: Namespace, triedNodes: readonly NodeId[] = []) {
    super(
      'BLOCK_NOT_FOUND',
      'not-found',
      `block ${hash} (namespace '${namespace}') is held by no live node`,
      {
        hash,
        namespace,
        triedNodes: [...triedNodes],
      },
    );
  }
}

/** Every node that might hold or take the block failed; whether it exists is unknown. */
export class BlockUnavailableError extends KvmeshError {
  constructor(hash: BlockHash, namespace: Namespace, triedNodes: readonly NodeId[], cause?: KvmeshError) {
    super(
      'BLOCK_UNAVAILABLE',
      'unavailable',
      `block ${hash} (namespace '${namespace}'): no node could serve it (tried ${triedNodes.join(', ') || 'none'})${
        cause === undefined ? '' : `: ${cause.message}`
      }`,
      {
        hash,
        namespace,
        triedNodes: [...triedNodes],
        ...(cause === undefined ? {} : { causeCode: cause.code }),
      },
    );
  }
}

/** The client knows no live kvstore node (none discovered yet, or all gone). */
export class NoLiveNodesError extends KvmeshError {
  constructor(what: string) {
    super('NO_LIVE_NODES', 'unavailable', `${what}: no live kvstore node`, {});
  }
}

/** A node answered a put without listing the block as acknowledged. */
export class PutNotAcknowledgedError extends KvmeshError {
  constructor(hash: BlockHash, nodeId: NodeId) {
    super('PUT_NOT_ACKNOWLEDGED', 'unavailable', `node ${nodeId} did not acknowledge block ${hash}`, {
      hash,
      nodeId,
    });
  }
}

/** The client was closed; no further calls are accepted (and calls in flight were cancelled). */
export class ClientClosedError extends KvmeshError {
  constructor(client = 'kvstore client') {
    super('CLIENT_CLOSED', 'failed-precondition', `${client} is closed`, { client });
  }
}

/** The call's deadline passed (over all its attempts) before it completed. */
export class DeadlineExceededError extends KvmeshError {
  constructor(what: string, deadlineMs: number | undefined, details: Record<string, unknown> = {}) {
    super(
      'DEADLINE_EXCEEDED',
      'unavailable',
      `${what}: deadline${deadlineMs === undefined ? '' : ` of ${deadlineMs} ms`} exceeded`,
      { ...details, what, ...(deadlineMs === undefined ? {} : { deadlineMs }) },
    );
  }
}

/** The caller aborted the call (its AbortSignal fired); `cause` is the signal's reason. */
export class RequestCancelledError extends KvmeshError {
  constructor(what: string, reason?: unknown) {
    super('CANCELLED', 'unavailable', `${what}: cancelled by the caller`, { what });
    if (reason !== undefined) this.cause = reason;
  }
}

/** The server wants an API key (`apiKey` option) and got none or a wrong one. */
export class UnauthenticatedError extends KvmeshError {
  constructor(message: string, details: Record<string, unknown> = {}) {
    super('UNAUTHENTICATED', 'failed-precondition', message, details);
  }
}

/** The router serves another model than the one asked for; `details.served` names it. */
export class ModelNotFoundError extends KvmeshError {
  constructor(message: string, details: Record<string, unknown> = {}) {
    super('MODEL_NOT_FOUND', 'not-found', message, details);
  }
}

/** Prompt plus max tokens exceed the model's context; details carry the three numbers. */
export class ContextLengthExceededError extends KvmeshError {
  constructor(message: string, details: Record<string, unknown> = {}) {
    super('CONTEXT_LENGTH_EXCEEDED', 'resource-exhausted', message, details);
  }
}

registerErrorClass('UNAUTHENTICATED', (m, d) => new UnauthenticatedError(m, d));
registerErrorClass('MODEL_NOT_FOUND', (m, d) => new ModelNotFoundError(m, d));
registerErrorClass('CONTEXT_LENGTH_EXCEEDED', (m, d) => new ContextLengthExceededError(m, d));

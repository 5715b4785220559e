// Errors the SDK itself raises, on top of the ones it passes through (server errors rebuilt by
// fromGrpcError or by the data channel keep their code, kind and details). Each carries what a
// caller needs to act: the block hash and namespace, or the nodes that were tried.
import { KvmeshError } from '@kvmesh/errors';
import type { BlockHash, Namespace, NodeId } from '@kvmesh/protocol';

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

/** The client was closed; no further calls are accepted. */
export class ClientClosedError extends KvmeshError {
  constructor() {
    super('CLIENT_CLOSED', 'failed-precondition', 'kvstore client is closed', {});
  }
}

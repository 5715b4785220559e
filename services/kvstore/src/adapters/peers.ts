// Clients of the other kvstore nodes, keyed by node id: a data channel client (lazily connected with
// the cluster token) for replica puts, and a gRPC client for probes (MatchPrefix). Addresses come
// from the membership tracker at each use, so a node that restarted on another port is redialed; a
// node that leaves has its clients closed. The map holds only live members (bounded by nodesMax).
// Any failure to reach a peer surfaces as an 'unavailable' error, which a coordinator skips.
import { credentials, Metadata } from '@grpc/grpc-js';
import { DataChannelClient, parseDataAddress } from '@kvmesh/dataplane';
import { KvmeshError } from '@kvmesh/errors';
import {
  KVSTORE_DATA_METHODS,
  KvStoreClient,
  PutBlocksRequest,
  PutBlocksResponse,
  blockHashFromBytes,
  type BlockHash,
  type MatchPrefixResponse,
  type Namespace,
  type NodeId,
} from '@kvmesh/protocol';
import { UnavailableError, callUnary, deadlineIn, grpcClientOptions, type Logger } from '@kvmesh/runtime';

import type { PutBlockInput, ReplicaOutcome } from '../core/index.ts';
import { blockOf } from './wire.ts';

export interface PeerAddresses {
  readonly grpcAddress: string;
  readonly dataAddress: string;
}

export interface PeerDirectoryOptions {
  /** Current addresses of a live member, or undefined when it is not live. */
  readonly addressesOf: (node: NodeId) => PeerAddresses | undefined;
  /** Cluster data channel token ('' = none). */
  readonly token: string;
  /** Bound on connecting and on each call. */
  readonly timeoutMs: number;
  readonly connections: number;
  readonly logger: Logger;
}

interface Peer {
  readonly node: NodeId;
  readonly addresses: PeerAddresses;
  data: Promise<DataChannelClient> | undefined;
  grpc: KvStoreClient | undefined;
}

export class PeerDirectory {
  private readonly peers = new Map<NodeId, Peer>();
  private closed = false;

  constructor(private readonly options: PeerDirectoryOptions) {}

  /** Copies one block to `node` as a replica put; resolves with the peer's outcome. */
  async putReplica(node: NodeId, input: PutBlockInput): Promise<ReplicaOutcome> {
    const client = await this.dataClient(node);
    const header = PutBlocksRequest.encode({ block: blockOf(input, false), replica: true }).finish();
    const result = await client.call(KVSTORE_DATA_METHODS.putBlock, header, input.payload);
    let response: PutBlocksResponse;
    try {
      response = PutBlocksResponse.decode(result.header);
    } catch (err) {
      throw new UnavailableError(`peer ${node} answered putBlock with an undecodable header`, {
        node,
        cause: (err as Error).message,
      });
    }
    const acknowledged = response.acknowledged.some(
      (h) => h.length === 16 && blockHashFromBytes(h) === input.hash,
    );
    if (!acknowledged)
      throw new UnavailableError(`peer ${node} did not acknowledge block ${input.hash}`, {
        node,
        hash: input.hash,
      });
    return response.deduplicated > 0 ? 'deduplicated' : 'stored';
  }

  /** Which of `hashes` (in `namespace`) `node` holds, by a MatchPrefix probe. */
  async heldBlocks(node: NodeId, namespace: Namespace, hashes: readonly BlockHash[]): Promise<BlockHash[]> {
    const client = this.grpcClient(node);
    const response = await callUnary<MatchPrefixResponse>((cb) =>
      client.matchPrefix(
        { hashes: hashes.map((h) => Buffer.from(h, 'hex')), namespace },
        new Metadata(),
        { deadline: deadlineIn(this.options.timeoutMs) },
        cb,
      ),
    );
    return response.locations.filter((l) => l.hash.length === 16).map((l) => blockHashFromBytes(l.hash));
  }

  /** Closes the clients of a node that left. */
  remove(node: NodeId): void {
    const peer = this.peers.get(node);
    if (peer === undefined) return;
    this.peers.delete(node);
    void this.closePeer(peer);
  }

  get size(): number {
    return this.peers.size;
  }

  async close(): Promise<void> {
    this.closed = true;
    const peers = [...this.peers.values()];
    this.peers.clear();
    await Promise.all(peers.map((p) => this.closePeer(p)));
  }

  private peer(node: NodeId): Peer {
    if (this.closed) throw new UnavailableError(`peer clients are closed (node shutting down)`, { node });
    const addresses = this.options.addressesOf(node);
    if (addresses === undefined)
      throw new UnavailableError(`kvstore node ${node} is not a live member`, { node });
    let peer = this.peers.get(node);
    if (
      peer !== undefined &&
      (peer.addresses.dataAddress !== addresses.dataAddress ||
        peer.addresses.grpcAddress !== addresses.grpcAddress)
    ) {
      this.remove(node);
      peer = undefined;
    }
    if (peer === undefined) {
      peer = { node, addresses, data: undefined, grpc: undefined };
      this.peers.set(node, peer);
    }
    return peer;
  }

  private dataClient(node: NodeId): Promise<DataChannelClient> {
    const peer = this.peer(node);
    if (peer.data !== undefined) return peer.data;
    const { dataAddress } = peer.addresses;
    const connecting = (async () => {
      if (dataAddress === '')
        throw new UnavailableError(`kvstore node ${node} advertises no data channel address`, { node });
      const { host, port } = parseDataAddress(dataAddress);
      return DataChannelClient.connect({
        host,
        port,
        ...(this.options.token === '' ? {} : { token: this.options.token }),
        timeoutMs: this.options.timeoutMs,
        connections: this.options.connections,
      });
    })().catch((err: unknown) => {
      if (peer.data === connecting) peer.data = undefined;
      this.options.logger.warn('cannot open data channel to peer', { peer: node, dataAddress, err });
      // A peer that cannot be dialed (or refuses our token) is unavailable, whatever the cause.
      const message = err instanceof Error ? err.message : String(err);
      throw new UnavailableError(`cannot reach kvstore node ${node} at ${dataAddress}: ${message}`, {
        node,
        dataAddress,
        ...(err instanceof KvmeshError ? { causeCode: err.code } : {}),
      });
    });
    peer.data = connecting;
    return connecting;
  }

  private grpcClient(node: NodeId): KvStoreClient {
    const peer = this.peer(node);
    if (peer.grpc === undefined) {
      if (peer.addresses.grpcAddress === '')
        throw new UnavailableError(`kvstore node ${node} advertises no gRPC address`, { node });
      peer.grpc = new KvStoreClient(
        peer.addresses.grpcAddress,
        credentials.createInsecure(),
        grpcClientOptions(),
      );
    }
    return peer.grpc;
  }

  private async closePeer(peer: Peer): Promise<void> {
    peer.grpc?.close();
    const data = peer.data;
    peer.data = undefined;
    if (data === undefined) return;
    try {
      await (await data).close();
    } catch {
      // It never connected, or already failed: nothing to close.
    }
  }
}

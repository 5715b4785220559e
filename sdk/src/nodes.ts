// The client's view of the kvstore nodes: who is live (NATS heartbeats through a MembershipTracker,
// or a fixed list), and per node a gRPC client and a lazily opened data channel client. A node that
// leaves membership has its clients closed at once; a node that fails a call is a *suspect* for a
// while (tried last) because membership needs a few heartbeat intervals to notice a crash.
// Invariant: at most nodesMax entries exist, one per live node id.
import { credentials } from '@grpc/grpc-js';
import { DataChannelClient, parseDataAddress } from '@kvmesh/dataplane';
import { InvalidArgumentError, LimitExceededError, type KvmeshError } from '@kvmesh/errors';
import {
  KvStoreClient as KvStoreGrpcClient,
  parseNodeId,
  type NodeId,
  type OpenDataChannelResponse,
} from '@kvmesh/protocol';
import {
  MembershipTracker,
  connectNats,
  grpcClientOptions,
  watchMembership,
  type MembershipChange,
  type MembershipWatch,
  type NatsConnection,
} from '@kvmesh/runtime';

import { unary } from './calls.ts';
import { NoLiveNodesError } from './errors.ts';
import type { KvStoreClientOptions, ResolvedOptions } from './options.ts';

/** Most concurrent waitForNodes() callers. */
const WAITERS_MAX = 1024;

export interface NodeEndpoint {
  readonly nodeId: NodeId;
  readonly grpcAddress: string;
  readonly dataAddress: string | undefined;
}

class NodeEntry {
  suspectUntilMs = 0;
  private grpcClient: KvStoreGrpcClient | undefined;
  private dataClient: Promise<DataChannelClient> | undefined;
  private closed = false;

  constructor(
    readonly endpoint: NodeEndpoint,
    private readonly options: ResolvedOptions,
  ) {}

  grpc(): KvStoreGrpcClient {
    if (this.closed) throw new NoLiveNodesError(`node ${this.endpoint.nodeId} left`);
    this.grpcClient ??= new KvStoreGrpcClient(
      this.endpoint.grpcAddress,
      credentials.createInsecure(),
      grpcClientOptions(),
    );
    return this.grpcClient;
  }

  /** The data channel, opened on first use; a failed open is forgotten so the next call retries. */
  data(): Promise<DataChannelClient> {
    if (this.closed) return Promise.reject(new NoLiveNodesError(`node ${this.endpoint.nodeId} left`));
    if (this.dataClient === undefined) {
      const opening = this.openData();
      this.dataClient = opening;
      opening.catch(() => {
        if (this.dataClient === opening) this.dataClient = undefined;
      });
    }
    return this.dataClient;
  }

  private async openData(): Promise<DataChannelClient> {
    let address = this.endpoint.dataAddress;
    let token = this.options.dataToken;
    if (address === undefined || address === '' || token === undefined) {
      const grpc = this.grpc();
      const opened = await unary<OpenDataChannelResponse>(
        (md, opts, cb) => grpc.openDataChannel({}, md, opts, cb),
        this.options.timeoutMs,
      );
      address = opened.address;
      token = opened.token === '' ? token : opened.token;
    }
    const { host, port } = parseDataAddress(address);
    const client = await DataChannelClient.connect({
      host,
      port,
      ...(token === undefined ? {} : { token }),
      connections: this.options.dataConnectionsPerNode,
      timeoutMs: this.options.timeoutMs,
    });
    if (this.closed) {
      void client.close();
      throw new NoLiveNodesError(`node ${this.endpoint.nodeId} left`);
    }
    return client;
  }

  close(): Promise<void> {
    this.closed = true;
    this.grpcClient?.close();
    this.grpcClient = undefined;
    const data = this.dataClient;
    this.dataClient = undefined;
    return data === undefined ? Promise.resolve() : data.then((c) => c.close()).catch(() => undefined);
  }
}

export class NodeDirectory {
  private readonly entries = new Map<NodeId, NodeEntry>();
  private readonly joinListeners = new Set<() => void>();
  private watch: MembershipWatch | undefined;
  private ownedNats: NatsConnection | undefined;
  private closed = false;

  private constructor(
    private readonly options: ResolvedOptions,
    private readonly clock: () => number,
  ) {}

  static async open(given: KvStoreClientOptions, options: ResolvedOptions): Promise<NodeDirectory> {
    const directory = new NodeDirectory(options, Date.now);
    if (given.nodes !== undefined) {
      for (const node of given.nodes) {
        const nodeId = parseNodeId(node.nodeId);
        if (directory.entries.has(nodeId))
          throw new InvalidArgumentError(`static node ${nodeId} is listed twice`, { nodeId });
        directory.add({ nodeId, grpcAddress: node.grpcAddress, dataAddress: node.dataAddress });
      }
      return directory;
    }
    const nc =
      given.nats ??
      (directory.ownedNats = await connectNats({
        servers: typeof given.natsUrl === 'string' ? given.natsUrl : [...(given.natsUrl ?? [])],
        name: options.name,
      }));
    const tracker = new MembershipTracker({
      heartbeatIntervalMs: options.heartbeatIntervalMs,
      missedHeartbeatsMax: options.missedHeartbeatsMax,
      nodesMax: options.nodesMax,
    });
    directory.watch = watchMembership(nc, 'kvstore', tracker, directory.clock, {
      onChange: (change) => directory.onChange(change),
    });
    return directory;
  }

  private onChange(change: MembershipChange): void {
    const { nodeId, heartbeat } = change.member;
    if (change.type === 'leave') {
      const entry = this.entries.get(nodeId);
      this.entries.delete(nodeId);
      void entry?.close();
      return;
    }
    if (this.closed || this.entries.size >= this.options.nodesMax) return;
    this.add({
      nodeId,
      grpcAddress: heartbeat.grpcAddress,
      dataAddress: heartbeat.dataAddress === '' ? undefined : heartbeat.dataAddress,
    });
    for (const listener of [...this.joinListeners]) listener();
  }

  private add(endpoint: NodeEndpoint): void {
    void this.entries.get(endpoint.nodeId)?.close();
    this.entries.set(endpoint.nodeId, new NodeEntry(endpoint, this.options));
  }

  /** Live node ids, sorted (the input placement wants; the same on every process). */
  liveIds(): NodeId[] {
    return [...this.entries.keys()].sort();
  }

  endpoint(nodeId: NodeId): NodeEndpoint | undefined {
    return this.entries.get(nodeId)?.endpoint;
  }

  private entry(nodeId: NodeId): NodeEntry {
    const entry = this.entries.get(nodeId);
    if (entry === undefined) throw new NoLiveNodesError(`node ${nodeId} is not live`);
    return entry;
  }

  grpc(nodeId: NodeId): KvStoreGrpcClient {
    return this.entry(nodeId).grpc();
  }

  data(nodeId: NodeId): Promise<DataChannelClient> {
    try {
      return this.entry(nodeId).data();
    } catch (err) {
      return Promise.reject(err as KvmeshError);
    }
  }

  markSuspect(nodeId: NodeId): void {
    const entry = this.entries.get(nodeId);
    if (entry !== undefined) entry.suspectUntilMs = this.clock() + this.options.suspectMs;
  }

  isSuspect(nodeId: NodeId): boolean {
    return (this.entries.get(nodeId)?.suspectUntilMs ?? 0) > this.clock();
  }

  /** Resolves once `count` nodes are live; rejects with NoLiveNodesError after `timeoutMs`. */
  waitForNodes(count: number, timeoutMs: number): Promise<void> {
    if (this.entries.size >= count) return Promise.resolve();
    if (this.joinListeners.size >= WAITERS_MAX)
      return Promise.reject(
        new LimitExceededError(`${WAITERS_MAX} callers already wait for nodes`, { waitersMax: WAITERS_MAX }),
      );
    return new Promise((resolve, reject) => {
      const check = (): void => {
        if (this.entries.size < count) return;
        clearTimeout(timer);
        this.joinListeners.delete(check);
        resolve();
      };
      const timer = setTimeout(() => {
        this.joinListeners.delete(check);
        reject(
          new NoLiveNodesError(
            `waited ${timeoutMs} ms for ${count} kvstore node(s), ${this.entries.size} live`,
          ),
        );
      }, timeoutMs);
      this.joinListeners.add(check);
    });
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.watch?.stop();
    const entries = [...this.entries.values()];
    this.entries.clear();
    await Promise.all(entries.map((e) => e.close()));
    await this.ownedNats?.close();
  }
}

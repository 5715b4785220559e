// Method ids of the kvstore binary data channel (@kvmesh/dataplane) and what travels in each frame.
// Headers are protobuf messages of kvstore.proto; the bulk payload travels as the frame body, so a
// block's bytes are never protobuf-encoded on the hot path. The gRPC PutBlocks / GetBlocks RPCs
// carry the same messages with the payload inside `Block.payload` for clients without the channel.

export const KVSTORE_DATA_METHODS = {
  /**
   * Store one block. Request header: PutBlocksRequest (block.payload empty; `replica` set on
   * node-to-node copies), body: the block payload (format v1). Response header: PutBlocksResponse
   * whose `acknowledged` holds the hash once the required replicas hold the block.
   */
  putBlock: 1,
  /**
   * Read one block. Request header: GetBlocksRequest with exactly one hash. Response header:
   * GetBlocksResponse (block without payload, or missing_hash), body: the payload (empty if missing).
   */
  getBlock: 2,
} as const;

export type KvStoreDataMethod = (typeof KVSTORE_DATA_METHODS)[keyof typeof KVSTORE_DATA_METHODS];

/**
 * Protobuf tags (field number << 3 | wire type) of the putBlock header, for the hand-written writer
 * (SDK) and reader (kvstore node) of its common encoding: PutBlocksRequest and its Block.
 */
export const PUT_BLOCK_TAGS = {
  requestBlock: (1 << 3) | 2,
  requestReplica: (2 << 3) | 0,
  hash: (1 << 3) | 2,
  parentHash: (2 << 3) | 2,
  namespace: (3 << 3) | 2,
  modelFingerprint: (4 << 3) | 2,
  tokenIds: (5 << 3) | 2,
} as const;

/** Bytes of a block hash and of a model fingerprint on the wire. */
export const WIRE_ID_BYTES = 16;

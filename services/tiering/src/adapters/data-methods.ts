// Method ids of the tiering service's binary data channel (@kvmesh/dataplane), negotiated over gRPC
// (Tiering.OpenDataChannel). Headers are protobuf messages of tiering.proto; the block payload
// travels as the frame body, never protobuf-encoded, so bulk bytes move at socket speed. The gRPC
// Demote / Read / Promote RPCs carry the same messages with the payload inside `Block.payload`.
export const TIERING_DATA_METHODS = {
  /**
   * Store one block. Request header: DemoteRequest (block.payload empty, target TIER_FAR or
   * TIER_SSD), body: the payload. Response header: DemoteResponse with the hash once durable.
   */
  demoteBlock: 1,
  /**
   * Read one block and keep it. Request header: ReadRequest with exactly one hash. Response header:
   * TierBlockResponse (block without payload, or missing_hash), body: the payload (empty if missing).
   */
  readBlock: 2,
  /** As readBlock, and the tier no longer holds the block. Request header: PromoteRequest, one hash. */
  promoteBlock: 3,
  /**
   * LocateFar for same-host readers (a data channel call costs far less than a gRPC one). Request
   * body: LocateFarRequest; response body: LocateFarResponse; headers empty. In the bodies because
   * a batch of hashes, or of locations with their metadata, can outgrow a frame header.
   */
  locateFar: 4,
} as const;

export type TieringDataMethod = (typeof TIERING_DATA_METHODS)[keyof typeof TIERING_DATA_METHODS];

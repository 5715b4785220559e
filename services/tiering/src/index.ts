// The tiering service's public surface.
export {
  FarPool,
  FarMemoryFullError,
  FarMemoryNotMappableError,
  TierPolicy,
  TierUnavailableError,
  decodeRecord,
  encodeRecord,
} from './core/index.ts';
export type {
  FarPoolConfig,
  FarPoolStats,
  LentBytes,
  SsdTier,
  TierBlock,
  TierName,
  TierStatsView,
} from './core/index.ts';
export { TIERING_DATA_METHODS } from './adapters/data-methods.ts';
export { FarMemoryReader, TierServiceClient } from './adapters/client.ts';
export type {
  FarReadHit,
  FarReadOptions,
  FarReadResult,
  TierReadResult,
  TierServiceClientOptions,
} from './adapters/client.ts';
export { cpulessNumaNodes, daxDevices, filesystemFreeBytes } from './adapters/far-memory.ts';
export { TIERING_CONFIG_SCHEMA, loadTieringConfig, tieringConfig, type TieringConfig } from './config.ts';
export { TIERING_SERVICE_NAME, startTieringService, type TieringServiceHandle } from './service.ts';
export { SegmentLog } from './adapters/segment-log.ts';
export type {
  FsyncPolicy,
  LentPayload,
  SegmentLogOptions,
  SegmentLogRecoveryReport,
  SegmentLogStats,
} from './adapters/segment-log.ts';
export {
  DiskFullError,
  SegmentDirectoryLockedError,
  SegmentFormatVersionError,
  SegmentLogClosedError,
  StorageIoError,
} from './core/errors.ts';
export {
  SEGMENT_FORMAT_VERSION,
  SEGMENT_RECORD_ALIGN_BYTES,
  SEGMENT_RECORD_HEADER_BYTES,
  scanSegmentRecords,
  segmentRecordBytes,
} from './core/segment-records.ts';

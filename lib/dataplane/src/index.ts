// Public surface of @kvmesh/dataplane: the binary data channel that carries bulk block bytes
// between clients and kvstore nodes (framed, multiplexed request/response over TCP) while control
// RPCs stay on gRPC, which advertises the channel's address and token (OpenDataChannel).
export { DataChannelClient } from './client.ts';
export type {
  DataCallOptions,
  DataCallResult,
  DataChannelClientStats,
  DataChannelConnectOptions,
} from './client.ts';
export { DataChannelServer, decodeDataHeader } from './server.ts';
export type {
  DataChannelListenOptions,
  DataChannelServerStats,
  DataHandler,
  DataRequest,
  DataResponse,
  RequestBodyAllocator,
} from './server.ts';
export {
  DataChannelAuthError,
  DataChannelMethodNotFoundError,
  DataChannelProtocolError,
  DataChannelRemoteError,
  DataChannelUnavailableError,
} from './errors.ts';
export type { UnavailableReason } from './errors.ts';
export { DEFAULT_LIMITS } from './limits.ts';
export type { DataChannelLimits } from './limits.ts';
export { FRAME_PREFIX_BYTES, PROTOCOL_VERSION } from './frame.ts';
export { formatDataAddress, parseDataAddress } from './wire.ts';
export type { DataChannelAddress } from './wire.ts';

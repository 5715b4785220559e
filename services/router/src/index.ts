// Public surface of @kvmesh/router: the pure core (block index, routing policies, disaggregation
// plan), the JetStream index feed, and the service itself (config, OpenAI-compatible HTTP server,
// gRPC Router service, startRouter).
export * from './core/index.ts';
export * from './adapters/index-feed.ts';
export * from './adapters/grpc-service.ts';
export {
  ROUTER_CONFIG_SCHEMA,
  checkRouterConfig,
  loadRouterConfig,
  routerConfig,
  type RouterConfig,
} from './config.ts';
export {
  CHAT_MESSAGES_MAX,
  HttpError,
  STOP_STRINGS_MAX,
  chatPromptTokens,
  chatRoleOf,
  createAdmission,
  requestsCounter,
  startHttpServer,
  type Admission,
  type GenerationBackend,
  type GenerationChunk,
  type GenerationInput,
  type GenerationUsage,
  type HttpServer,
  type HttpServerOptions,
  type SamplingInput,
} from './http.ts';
export {
  DECODE_ROLE,
  KVSTORE_ROLE,
  PREFILL_ROLE,
  WorkerCallError,
  startRouter,
  type Router,
  type RouterStats,
  type StartRouterOptions,
} from './router.ts';

// Public surface of the workers' shared pure core: the typed request errors and validation of the
// request fields every worker shares.
export { CodecMismatchError, ModelMismatchError, type CodecUse } from './errors.ts';
export {
  field,
  parseSampling,
  parseWorkerRequestCommon,
  type WireSampling,
  type WorkerInputCommon,
  type WorkerLimits,
  type WorkerRequestCommon,
} from './request.ts';

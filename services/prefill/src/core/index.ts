// Public surface of the prefill worker's pure core: request validation, the import / put plan over
// the prompt's full blocks, the bounded serial queue the engine runs behind, and the typed errors.
// Adapters and the worker import from here only.
export { CodecMismatchError, ModelMismatchError } from '@kvmesh/worker';
export { QueueFullError } from './errors.ts';
export {
  blocksToPut,
  importableBlocks,
  planPrefill,
  prefillUsage,
  usablePrefix,
  type PrefillPlan,
  type PrefillPlanInput,
} from './plan.ts';
export { parsePrefillRequest, type PrefillInput, type PrefillLimits } from './request.ts';
export { SerialQueue } from './serial-queue.ts';

// Assertions on gRPC failures shared by the service tests.
import assert from 'node:assert/strict';

import type { ServiceError, status as GrpcStatus } from '@grpc/grpc-js';

/** Asserts `call` failed with gRPC status `code` and details matching `pattern`. */
export async function rejectsWithStatus(
  call: Promise<unknown>,
  code: GrpcStatus,
  pattern: RegExp,
): Promise<void> {
  await assert.rejects(call, (err: ServiceError) => {
    assert.equal(err.code, code, `status ${err.code}: ${err.details}`);
    assert.match(err.details, pattern);
    return true;
  });
}

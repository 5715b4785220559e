// Checks a coordinator runs on a client's block before fanning it out. The BlockStore on each owner
// checks identity and the payload header; the coordinator additionally verifies every section
// checksum once (a corrupt block must not be replicated R times) and refuses an oversized payload
// before sending it anywhere.
import { verifyBlockPayload, type BlockHeader } from '@kvmesh/block';
import { CorruptDataError, InvalidArgumentError, LimitExceededError } from '@kvmesh/errors';
import { CODEC_NAMES, type Kernels } from '@kvmesh/kernels';

import type { PutBlockInput } from './types.ts';

/**
 * Returns the payload's verified header (the store takes it instead of parsing it again). Throws
 * LimitExceededError (RESOURCE_EXHAUSTED) for a payload over `blockBytesMax`: a configured
 * bound, advertised by OpenDataChannel, so the caller may retry with a smaller block or another
 * codec. Throws CorruptDataError (DATA_LOSS) when a checksum or the layout fails, and
 * InvalidArgumentError when an intact header names a codec this build does not know.
 */
export function checkClientBlock(kernels: Kernels, input: PutBlockInput, blockBytesMax: number): BlockHeader {
  const bytes = input.payload.byteLength;
  if (bytes > blockBytesMax) {
    throw new LimitExceededError(`block payload of ${bytes} bytes exceeds blockBytesMax ${blockBytesMax}`, {
      bytes,
      blockBytesMax,
    });
  }
  try {
    return verifyBlockPayload(kernels, input.payload);
  } catch (err) {
    // NOTE: the header checksum is verified before the codec id is read, so an unknown id here is
    // what the client wrote, not a flipped bit: a bad argument rather than data loss.
    if (err instanceof CorruptDataError && typeof err.details['codecId'] === 'number') {
      throw new InvalidArgumentError(
        `unknown codec id ${err.details['codecId']} (known: ${CODEC_NAMES.join(', ')})`,
        { codecId: err.details['codecId'], known: [...CODEC_NAMES] },
      );
    }
    throw err;
  }
}

// Error metrics for comparing kernel outputs (parity tests, benchmarks, engine checks): one
// definition so every tolerance in the project means the same thing.

/** Relative L2 error ‖a − b‖₂ / ‖b‖₂ of `a` against the reference `b` (over b's length). */
export function relativeL2Error(a: Float32Array, b: Float32Array): number {
  let num = 0;
  let den = 0;
  for (let i = 0; i < b.length; i++) {
    num += ((a[i] as number) - (b[i] as number)) ** 2;
    den += (b[i] as number) ** 2;
  }
  return Math.sqrt(num / den);
}

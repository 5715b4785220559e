// The codec names used across kvmesh ('f32' … 'kivi2', as in @kvmesh/kernels' CodecName) and their
// wire enum. One table, so a new codec is added in one place.
import { Codec } from './gen/kvmesh/v1/common.js';

export type WireCodecName = 'f32' | 'f16' | 'kivi8' | 'kivi4' | 'kivi2';
export const WIRE_CODEC_NAMES: readonly WireCodecName[] = ['f32', 'f16', 'kivi8', 'kivi4', 'kivi2'];

const TO_WIRE: Readonly<Record<WireCodecName, Codec>> = {
  f32: Codec.CODEC_F32,
  f16: Codec.CODEC_F16,
  kivi8: Codec.CODEC_KIVI8,
  kivi4: Codec.CODEC_KIVI4,
  kivi2: Codec.CODEC_KIVI2,
};

const FROM_WIRE: ReadonlyMap<Codec, WireCodecName> = new Map(
  Object.entries(TO_WIRE).map(([name, codec]) => [codec, name as WireCodecName]),
);

export function codecToWire(name: WireCodecName): Codec {
  return TO_WIRE[name];
}

/** The codec name of a wire Codec; undefined for UNSPECIFIED and unknown values. */
export function codecFromWire(codec: Codec): WireCodecName | undefined {
  return FROM_WIRE.get(codec);
}

// The tiering service's public surface.
export {};

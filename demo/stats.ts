/** Counters the demo keeps per name. */
export interface NameStats {
  acquisitions: number
  reads: number
  writes: number
  /** Wait before each grant, in milliseconds. */
  readonly waits: Array<number>
}

/** Nearest-rank percentile of ascending `sorted` (`p` in 0..1); 0 when empty. */
export const percentile = (sorted: ReadonlyArray<number>, p: number): number => {
  if (sorted.length === 0) return 0
  const rank = Math.min(sorted.length, Math.max(1, Math.ceil(p * sorted.length)))
  return sorted[rank - 1]!
}

/**
 * The few types of the `redlock` package the benchmark uses: its own
 * declarations are not reachable through its package.json `exports`.
 */
declare module "redlock" {
  interface Lock {
    release(): Promise<unknown>
  }
  export default class Redlock {
    constructor(
      clients: ReadonlyArray<unknown>,
      settings?: { readonly retryCount?: number; readonly retryDelay?: number; readonly retryJitter?: number }
    )
    acquire(resources: ReadonlyArray<string>, duration: number): Promise<Lock>
  }
}

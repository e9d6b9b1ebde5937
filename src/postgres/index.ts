/**
 * effect-locks/postgres: the PostgreSQL backend. Importing it also makes
 * `LOCK_PROVIDER=postgres` available to `LockBackend.layerConfig`.
 *
 * @since 0.1.0
 */

/** Advisory locks over `SqlClient` connections. @since 0.1.0 */
export * as PostgresBackend from "./PostgresBackend.ts"

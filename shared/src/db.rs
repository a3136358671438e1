//! Database connections and how their errors are told apart.

use sea_orm::sqlx;
use sea_orm::{ConnectOptions, Database, DatabaseConnection, DbErr, RuntimeErr};

use crate::config::{DatabaseSettings, millis};

/// A pool that has connected once, so a wrong URL or password shows at once.
pub async fn connect(settings: &DatabaseSettings) -> Result<DatabaseConnection, DbErr> {
    Database::connect(options(settings, false)).await
}

/// A pool that connects on first use: a service starts, and answers for itself, while the
/// database is still down; connections are made again whenever they are needed.
pub async fn connect_lazy(settings: &DatabaseSettings) -> Result<DatabaseConnection, DbErr> {
    Database::connect(options(settings, true)).await
}

fn options(settings: &DatabaseSettings, lazy: bool) -> ConnectOptions {
    let mut options = ConnectOptions::new(settings.url.expose().to_owned());
    options
        .max_connections(settings.max_connections)
        .min_connections(if lazy { 0 } else { 1 })
        .acquire_timeout(millis(settings.acquire_timeout_ms))
        .connect_timeout(millis(settings.connect_timeout_ms))
        .connect_lazy(lazy)
        .sqlx_logging(false);
    options
}

/// Whether an error says the database could not be reached or is going away, as opposed to
/// a query that is wrong in itself. The first kind is worth retrying later.
pub fn is_unavailable(err: &DbErr) -> bool {
    match err {
        DbErr::ConnectionAcquire(_) => true,
        DbErr::Conn(runtime) | DbErr::Exec(runtime) | DbErr::Query(runtime) => match runtime {
            RuntimeErr::SqlxError(sqlx_err) => sqlx_unavailable(sqlx_err),
            _ => false,
        },
        _ => false,
    }
}

fn sqlx_unavailable(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            // 08: connection exception; 57P0x: shutdown, cannot connect now; 53: resources.
            code.starts_with("08") || code.starts_with("57P") || code.starts_with("53")
        }),
        _ => false,
    }
}

/// Whether PostgreSQL refused a value itself (SQLSTATE class 22, data exception: an invalid
/// Unicode escape, a number out of range, a NUL in text): the same values will always be
/// refused, so the event that carries them can never be applied.
pub fn is_data_error(err: &DbErr) -> bool {
    match err {
        DbErr::Exec(RuntimeErr::SqlxError(sqlx_err))
        | DbErr::Query(RuntimeErr::SqlxError(sqlx_err)) => match sqlx_err.as_ref() {
            sqlx::Error::Database(db) => db.code().is_some_and(|code| code.starts_with("22")),
            _ => false,
        },
        _ => false,
    }
}

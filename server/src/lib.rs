//! `pg-jobs serve`: the dashboard of pg_jobs over an ordinary connection, as
//! the role in the database URL. Routes live in modules by protocol
//! (`dashboard` now; Inngest's SDK endpoints later); SQL lives in `db`.

pub mod app;
pub mod connection;
pub mod dashboard;
pub mod db;

use std::net::SocketAddr;
use std::sync::Arc;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::NoTls;

pub struct ServeOptions {
    pub database: tokio_postgres::Config,
    pub listen: SocketAddr,
    pub pool_size: usize,
}

/// Connects (failing at once if it cannot), then serves until SIGINT or SIGTERM.
pub async fn serve(options: ServeOptions) -> Result<(), String> {
    let manager = Manager::from_config(
        options.database,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    let pool = Pool::builder(manager)
        .max_size(options.pool_size)
        .build()
        .map_err(|e| format!("connection pool: {e}"))?;
    let db = db::Database::new(pool);
    let identity = db
        .identity()
        .await
        .map_err(|e| format!("cannot connect to the database: {e}"))?;
    let state = Arc::new(app::AppState {
        db,
        csrf: app::CsrfToken::random().map_err(|e| format!("no random token: {e}"))?,
        role: identity.role.clone(),
        database: identity.database.clone(),
    });
    let listener = tokio::net::TcpListener::bind(options.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", options.listen))?;
    let listen = listener.local_addr().map_err(|e| e.to_string())?;
    println!(
        "pg-jobs: dashboard on http://{listen}/ (database {:?} as role {:?}{})",
        identity.database,
        identity.role,
        if identity.superuser {
            ", a superuser: every function's runs are visible"
        } else {
            ""
        }
    );
    axum::serve(listener, app::router(state, listen))
        .with_graceful_shutdown(shutdown())
        .await
        .map_err(|e| format!("server: {e}"))
}

async fn shutdown() {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "pg-jobs", version, about = "pg_jobs' dashboard server")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the dashboard (http://127.0.0.1:8288 by default).
    Serve {
        /// postgresql://user@host:port/db; without it DATABASE_URL, then the
        /// libpq variables (PGHOST, PGPORT, PGUSER, PGDATABASE, PGPASSWORD).
        #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
        database_url: Option<String>,
        /// Address to listen on; anything but a loopback address exposes the
        /// dashboard (and the actions of the role) to the network.
        #[arg(long, default_value = "127.0.0.1:8288")]
        listen: SocketAddr,
        /// Most database connections the server opens.
        #[arg(long, default_value_t = 8)]
        pool_size: usize,
    },
}

fn main() -> ExitCode {
    let Command::Serve {
        database_url,
        listen,
        pool_size,
    } = Cli::parse().command;
    let database = match pg_jobs_server::connection::config(database_url.as_deref(), |name| {
        std::env::var(name).ok()
    }) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("pg-jobs: {e}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let options = pg_jobs_server::ServeOptions {
        database,
        listen,
        pool_size,
    };
    match runtime.block_on(pg_jobs_server::serve(options)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pg-jobs: {e}");
            ExitCode::FAILURE
        }
    }
}

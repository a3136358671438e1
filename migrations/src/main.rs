//! `scanhook-migrate`: applies, reverts and reports the schema migrations.
//! The database comes from the same configuration as the services (`SCANHOOK__DATABASE__URL`).

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use scanhook_migrations::{Migrator, MigratorTrait};
use scanhook_shared::{Needs, Settings, db, telemetry};

#[derive(Parser)]
#[command(name = "scanhook-migrate", version, about = "Schema migrations of scanhook")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Apply pending migrations (all, or the next N).
    Up {
        #[arg(short, long)]
        num: Option<u32>,
    },
    /// Revert applied migrations (the last one, or the last N).
    Down {
        #[arg(short, long, default_value_t = 1)]
        num: u32,
    },
    /// List migrations and whether each is applied.
    Status,
    /// Drop every table and apply all migrations again.
    Fresh,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("scanhook-migrate: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> Result<(), String> {
    let settings = Settings::load().map_err(|e| e.to_string())?;
    settings.require(&[Needs::Database]).map_err(|e| e.to_string())?;
    telemetry::init(&settings.log);

    let conn = db::connect(&settings.database)
        .await
        .map_err(|e| format!("cannot connect to the database: {e}"))?;
    let result = match command {
        Command::Up { num } => Migrator::up(&conn, num).await,
        Command::Down { num } => Migrator::down(&conn, Some(num)).await,
        Command::Status => Migrator::status(&conn).await,
        Command::Fresh => Migrator::fresh(&conn).await,
    };
    result.map_err(|e| e.to_string())
}

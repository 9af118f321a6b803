//! The one binary: `serve` (API and/or workers), `migrate`, `demo`, `healthcheck`.

use std::process::ExitCode;

use anyhow::Context;
use auth0_exporter::{
    app::{shutdown_signal, Application, Role},
    config::Settings,
    db, demo, telemetry,
};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(version, about = "Exports complete Auth0 user profiles through a REST API")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the API and the background workers (configuration from the environment).
    Serve {
        /// Run only one half of the service.
        #[arg(long, env = "EXPORTER_ROLE", value_enum, default_value = "all")]
        role: Role,
    },
    /// Apply database migrations and exit.
    Migrate,
    /// One whole export against a bundled auth0-sim, on a throwaway Postgres when DATABASE_URL is unset.
    Demo(demo::DemoArgs),
    /// Exit 0 when the service at URL is ready (for container health checks).
    Healthcheck {
        #[arg(long, default_value = "http://127.0.0.1:8080/readyz")]
        url: String,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo draws a progress bar: only problems are logged over it.
    telemetry::init_logging(if matches!(cli.command, Command::Demo(_)) { "warn" } else { telemetry::DEFAULT_LOG });
    let result = match cli.command {
        Command::Serve { role } => serve(role).await,
        Command::Migrate => migrate().await,
        Command::Demo(args) => demo::run(args).await,
        Command::Healthcheck { url } => healthcheck(&url).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "exiting");
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(role: Role) -> anyhow::Result<()> {
    let settings = Settings::from_env()?;
    let app = Application::build(settings, role).await?;
    let stop = app.shutdown_token();
    tokio::spawn(async move {
        shutdown_signal().await;
        stop.cancel();
    });
    app.run().await
}

async fn migrate() -> anyhow::Result<()> {
    let settings = Settings::from_env()?;
    let url = settings.database_url.context("DATABASE_URL is required")?;
    let pool = db::connect(&url, 2).await?;
    db::migrate(&pool).await?;
    println!("migrations applied");
    Ok(())
}

async fn healthcheck(url: &str) -> anyhow::Result<()> {
    let status = reqwest::get(url).await.context("service unreachable")?.status();
    anyhow::ensure!(status.is_success(), "{url} answered {status}");
    Ok(())
}

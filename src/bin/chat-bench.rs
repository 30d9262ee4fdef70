//! `chat-bench`: loads a chat server and reports throughput, loss and latency.
//! Flags in [`chat::bench::BenchConfig`].

use clap::Parser;

/// Open-loop load generator for the chat server.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    config: chat::bench::BenchConfig,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    chat::logging::init("warn");
    let json = cli.config.json;
    match chat::bench::run(cli.config).await {
        Ok(report) if json => match serde_json::to_string(&report) {
            Ok(text) => {
                println!("{text}");
                std::process::ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("error: cannot encode the report: {error}");
                std::process::ExitCode::FAILURE
            }
        },
        Ok(report) => {
            print!("{report}");
            std::process::ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}

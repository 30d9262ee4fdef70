//! `client`: the chat client. Flags in [`chat::client::config::ClientConfig`].

use clap::Parser;

/// Chat from a terminal or a pipe: sends stdin lines, prints what the room says.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    config: chat::client::config::ClientConfig,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // Quiet by default: stdout is the chat, stderr is for errors.
    chat::logging::init("warn");
    if let Err(error) = chat::protocol::check_token(cli.config.token.as_deref()) {
        eprintln!("error: {error}");
        return std::process::ExitCode::from(2);
    }
    match chat::client::run(cli.config).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            error.exit_code()
        }
    }
}

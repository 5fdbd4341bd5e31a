//! The `callplus` command: run the server, mint tokens, place and answer calls.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use callplus_signal::cli::bench::BenchArgs;
use callplus_signal::cli::serve::ServeArgs;
use callplus_signal::cli::sfu::SfuArgs;
use callplus_signal::cli::softphone::{self, DialArgs, ListenArgs};
use callplus_signal::cli::token::TokenArgs;
use clap::{Parser, Subcommand};

/// Self-hosted calling: signalling server, tokens and a terminal softphone.
#[derive(Debug, Parser)]
#[command(name = "callplus", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the signalling server (embedded storage; prints where it listens and how to get a token).
    Serve(Box<ServeArgs>),
    /// Run the selective forwarding unit as its own process, for `serve --sfu-url`.
    Sfu(SfuArgs),
    /// Mint a token for a user.
    Token(TokenArgs),
    /// Call a user and print the call's events.
    Dial(DialArgs),
    /// Wait for calls and print their events.
    Listen(ListenArgs),
    /// Load-test a server: call cycles between simulated users, or idle devices (--idle).
    Bench(Box<BenchArgs>),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Command::Serve(args) = &cli.command
        && let Some(workers) = args.worker_threads
    {
        builder.worker_threads(usize::from(workers));
    }
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Serve(args) => runtime.block_on(callplus_signal::cli::serve::serve(*args)),
        Command::Sfu(args) => runtime.block_on(callplus_signal::cli::sfu::sfu(args)),
        Command::Token(args) => callplus_signal::cli::token::token(&args),
        Command::Dial(args) => runtime.block_on(softphone::dial(args)),
        Command::Listen(args) => runtime.block_on(softphone::listen(args)),
        Command::Bench(args) => runtime.block_on(callplus_signal::cli::bench::bench(*args)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

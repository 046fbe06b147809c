//! The `switchboard` binary: parse the command line, set up logging, run the server
//! or one operator command.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use switchboard::cli::{CheckArgs, Cli, Command, ServeArgs, ServerArgs};
use switchboard::config::Config;
use switchboard::operator::{self, Operation};

/// mimalloc instead of glibc's malloc: a request allocates and frees a few dozen small
/// blocks on one thread, which glibc's arenas made a fifth of its instructions.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    let (op, server) = match cli.command {
        Command::Serve(args) => {
            init_tracing();
            let config = Config::load(&args).context("configuration")?;
            // One worker per core; TOKIO_WORKER_THREADS overrides it.
            let runtime = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
            runtime.block_on(switchboard::app::run(config, args))?;
            return Ok(ExitCode::SUCCESS);
        }
        Command::Check(args) => return Ok(check(args)),
        Command::Services(a) => (Operation::Services, a.server),
        Command::Instances(a) => (Operation::Instances { service: a.service }, a.server),
        Command::Drain(a) => (
            Operation::Drain {
                service: a.service,
                id: a.id,
                evacuate_per_sec: a.evacuate_per_sec,
            },
            a.server,
        ),
        Command::Deregister(a) => (
            Operation::Deregister {
                service: a.service,
                id: a.id,
            },
            a.server,
        ),
    };
    operate(&op, &server)
}

/// `switchboard check`: validates the file as `serve` would (environment tokens
/// included), starts nothing.
fn check(args: CheckArgs) -> ExitCode {
    let serve = ServeArgs {
        config: Some(args.config.clone()),
        ..ServeArgs::default()
    };
    match Config::load(&serve) {
        Ok(config) => {
            // The certificate and key are read as a start would read them.
            if let Some(tls) = &config.tls {
                let api_tls =
                    switchboard::tls::ServerTls::load(tls, "http", switchboard::tls::api_alpn());
                if let Err(err) = api_tls {
                    eprintln!("error: {err}");
                    return ExitCode::from(2);
                }
            }
            for forward in &config.forwards {
                if let Some(tls) = &forward.edge.tls
                    && let Err(err) =
                        switchboard::forwarder::supervisor::load_tls(forward.listen, tls)
                {
                    eprintln!("error: {err}");
                    return ExitCode::from(2);
                }
            }
            println!("configuration {} is valid", args.config.display());
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::from(2)
        }
    }
}

/// Runs one operator command: its output on stdout, or one line on stderr and the
/// error's exit code. No logging: stderr is for that one line.
fn operate(op: &Operation, server: &ServerArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let result = runtime.block_on(operator::run(
        op,
        &server.server,
        server.token.as_deref(),
        &server.tls_files(),
        server.json,
    ));
    match result {
        Ok(text) => {
            let mut out = std::io::stdout().lock();
            match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
                // A closed pipe (`| head`) is the reader's choice, not a failure.
                Err(err) if err.kind() != std::io::ErrorKind::BrokenPipe => {
                    eprintln!("error: writing the output: {err}");
                    Ok(ExitCode::from(operator::EXIT_REFUSED))
                }
                _ => Ok(ExitCode::SUCCESS),
            }
        }
        Err(err) => {
            eprintln!("error: {err}");
            Ok(ExitCode::from(err.exit_code()))
        }
    }
}

fn init_tracing() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

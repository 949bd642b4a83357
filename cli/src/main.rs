//! `kc`, the command: `check`, `build`, `run` and `bench` `.ker` files. The only crate of the workspace that reads
//! files, parses arguments and prints.
//!
//! Exit status: 0 on success; 1 on a user error (a diagnostic, a bad argument, a file that cannot be read
//! or written); 2 on an internal error (a panic: a bug in kc).

mod args;
mod bench;
mod commands;
mod files;

use args::{Cli, Color, Command};
use clap::error::ErrorKind;
use clap::Parser;
use commands::{Ctx, Failure};
use std::io::IsTerminal;
use std::process::ExitCode;

/// Large blocks (tensors) start on 2 MiB boundaries: see `kc_runtime::alloc`.
#[global_allocator]
static ALLOC: kc_runtime::alloc::Aligned = kc_runtime::alloc::Aligned;

/// The main thread's stack: deep but legal inputs must not overflow it.
const STACK_BYTES: usize = 256 << 20;

fn main() -> ExitCode {
    // The hook prints the one message a panic gets; `main` then only sets the exit status.
    std::panic::set_hook(Box::new(|info| {
        let payload = info.payload();
        let msg = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic with no message".to_string());
        let at = info.location().map(|l| format!(" (at {}:{})", l.file(), l.line())).unwrap_or_default();
        eprintln!("internal error: {msg}{at}\nthis is a bug in kc; please report it with the input that caused it");
    }));
    let worker = std::thread::Builder::new()
        .name("kc".to_string())
        .stack_size(STACK_BYTES)
        .spawn(|| std::panic::catch_unwind(real_main));
    match worker {
        Ok(handle) => match handle.join() {
            Ok(Ok(code)) => ExitCode::from(code),
            _ => ExitCode::from(2),
        },
        Err(e) => {
            eprintln!("internal error: cannot start kc's main thread: {e}\nthis is a bug in kc");
            ExitCode::from(2)
        }
    }
}

fn real_main() -> u8 {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return match e.kind() {
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => 0,
                _ => 1,
            };
        }
    };
    let color = match cli.color {
        Color::Always => true,
        Color::Never => false,
        Color::Auto => std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
    };
    let ctx = Ctx { color };
    let result = match &cli.command {
        Command::Check(a) => commands::check(&ctx, a),
        Command::Build(a) => commands::build(&ctx, a),
        Command::Run(a) => commands::run(&ctx, a),
        Command::Bench(a) => bench::bench(&ctx, a),
    };
    match result {
        Ok(()) => 0,
        Err(Failure::Reported) => 1,
        Err(Failure::Message(m)) => {
            ctx.error(&m);
            1
        }
    }
}

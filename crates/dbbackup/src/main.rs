//! The `dbbackup` binary: parses the command line, runs the engine, prints
//! the result and maps errors to exit codes. Nothing else lives here.

mod cli;
mod commands;
mod config;
mod context;
mod output;

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};

use crate::cli::{Cli, Command, WalCommand};
use crate::context::Ctx;

/// Exit status for `wal fetch` failures other than "not found": above 125,
/// so PostgreSQL aborts recovery instead of ending it early.
pub const EXIT_FETCH_FATAL: u8 = 128;

fn command() -> clap::Command {
    // -h means --host (as in psql), so no command gets clap's -h help flag.
    fn no_short_help(c: clap::Command) -> clap::Command {
        c.disable_help_flag(true).mut_subcommands(no_short_help)
    }
    no_short_help(Cli::command())
}

/// A panic is a bug, but its exit status must still be one PostgreSQL
/// reads right: 101 from `wal fetch` would read as "not archived" and end
/// recovery early. One line, then exit 128 for fetch and 1 for the rest.
fn install_panic_hook() {
    let fetch = std::env::args().collect::<Vec<_>>().windows(2).any(|w| w[0] == "wal" && w[1] == "fetch");
    std::panic::set_hook(Box::new(move |info| {
        let p = info.payload();
        let msg = p.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| p.downcast_ref::<String>().cloned());
        let at = info.location().map(|l| format!(" ({}:{})", l.file(), l.line())).unwrap_or_default();
        eprintln!(
            "dbbackup: internal error, please report it: {}{at}",
            output::one_line(msg.as_deref().unwrap_or("a panic"))
        );
        std::process::exit(if fetch { i32::from(EXIT_FETCH_FATAL) } else { 1 });
    }));
}

fn main() -> ExitCode {
    install_panic_hook();
    let matches = match command().try_get_matches() {
        Ok(m) => m,
        Err(e) => return usage_error(e),
    };
    let mut cli = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => return usage_error(e),
    };
    let is_fetch = matches!(cli.command, Command::Wal(WalCommand::Fetch(_)));
    let is_wal_hook = is_fetch || matches!(cli.command, Command::Wal(WalCommand::Archive(_)));
    if let Some(path) = cli.global.config.clone() {
        match config::load(&path) {
            Ok(f) => config::apply(&mut cli.global, &matches, f),
            Err(e) => {
                eprintln!("dbbackup: error: {}", output::one_line(&format!("{e:#}")));
                return ExitCode::from(if is_fetch { EXIT_FETCH_FATAL } else { 2 });
            }
        }
    }
    // The monitor is a service: a reader gone away must not end it.
    if !is_wal_hook && !matches!(cli.command, Command::Monitor(_)) {
        die_quietly_on_closed_pipes();
    }
    init_logging(&cli.global, is_wal_hook);
    let port_on_cli = matches!(matches.value_source("port"), Some(clap::parser::ValueSource::CommandLine));
    let ctx = Ctx::new(cli.global, port_on_cli);
    match commands::run(&ctx, cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("dbbackup: error: {}", output::one_line(&format!("{e:#}")));
            ExitCode::FAILURE
        }
    }
}

/// A command line clap refuses: exit 2, except for `wal fetch`, where 2
/// would read to PostgreSQL as "not archived" and end recovery early at the
/// wrong point: a mistyped restore_command must stop recovery instead.
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        e.exit();
    }
    let args: Vec<String> = std::env::args().collect();
    if args.windows(2).any(|w| w[0] == "wal" && w[1] == "fetch") {
        eprintln!("dbbackup: wal fetch: {}", output::one_line(&e.render().to_string()));
        return ExitCode::from(EXIT_FETCH_FATAL);
    }
    e.exit()
}

/// `dbbackup backup list | head` should end quietly when `head` does, as
/// other command-line tools do, instead of panicking on the closed pipe.
/// Not for archive/fetch: their output goes to the server log, and a
/// signal death would read as a crash to PostgreSQL.
#[allow(unsafe_code)]
fn die_quietly_on_closed_pipes() {
    // SAFETY: called once at start-up, before any thread is spawned;
    // SIG_DFL is a valid disposition for SIGPIPE.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn init_logging(g: &cli::GlobalOpts, wal_hook: bool) {
    use tracing_subscriber::EnvFilter;
    // archive/fetch write into the server log: quiet unless asked.
    let default = match (g.quiet, g.verbose, wal_hook) {
        (true, _, _) => "error",
        (false, 0, true) => "warn",
        (false, 0, false) => "info",
        (false, 1, _) => "debug",
        _ => "trace",
    };
    let filter = std::env::var("DBBACKUP_LOG")
        .ok()
        .and_then(|s| EnvFilter::try_new(s).ok())
        .unwrap_or_else(|| EnvFilter::new(format!("dbbackup={default},dbbackup_core={default}")));
    let _ =
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).event_format(OneLine).try_init();
}

/// "dbbackup: warning: message" on one line: what a server log wants.
struct OneLine;

impl<S, N> tracing_subscriber::fmt::FormatEvent<S, N> for OneLine
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut w: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let level = match *event.metadata().level() {
            tracing::Level::ERROR => "error: ",
            tracing::Level::WARN => "warning: ",
            tracing::Level::INFO => "",
            tracing::Level::DEBUG => "debug: ",
            tracing::Level::TRACE => "trace: ",
        };
        write!(w, "dbbackup: {level}")?;
        ctx.field_format().format_fields(w.by_ref(), event)?;
        writeln!(w)
    }
}

use std::process::ExitCode;

use clap::Parser;
use conntrack_user::{app, cli::Cli};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = match (cli.quiet, cli.verbose) {
        (true, _) => log::LevelFilter::Error,
        (false, 0) => log::LevelFilter::Info,
        (false, 1) => log::LevelFilter::Debug,
        (false, _) => log::LevelFilter::Trace,
    };
    env_logger::Builder::new()
        .filter_level(level)
        .format(|f, r| {
            use std::io::Write;
            match r.level() {
                log::Level::Info => writeln!(f, "ct-trace: {}", r.args()),
                l => writeln!(f, "ct-trace: {}: {}", l.as_str().to_lowercase(), r.args()),
            }
        })
        .parse_env("CT_TRACE_LOG")
        .init();
    match app::main(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ct-trace: {e:#}");
            app::exit_code(&e)
        }
    }
}

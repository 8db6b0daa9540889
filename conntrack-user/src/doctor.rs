//! `ct-trace doctor`.
use crate::report::Format;

pub fn run(_format: Format) -> anyhow::Result<std::process::ExitCode> {
    anyhow::bail!("doctor: not implemented yet")
}

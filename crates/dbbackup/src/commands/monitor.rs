//! `dbbackup monitor`: flags to options; the service is core's.

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use dbbackup_core::monitor::{Service, ServiceOptions};

use crate::cli::MonitorArgs;
use crate::context::Ctx;

pub fn run(ctx: &Ctx, a: MonitorArgs) -> Result<ExitCode> {
    let opts = super::pitr::status_options(ctx, a.lag_warning, None, a.repo_id.clone())?;
    // Bound first: a port in use is said before anything else.
    let service = Service::bind(a.listen)?;
    let stop = Arc::new(AtomicBool::new(false));
    let which = Arc::new(AtomicUsize::new(0));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register_usize(sig, Arc::clone(&which), sig as usize)?;
        signal_hook::flag::register(sig, Arc::clone(&stop))?;
    }
    let interval = Duration::from_secs_f64(a.interval);
    let deadline = Duration::from_secs_f64(a.check_timeout.unwrap_or(a.interval.max(10.0)));
    let initial = super::pitr::labels_before_check(ctx, &opts);
    let checker = Arc::new(super::pitr::checker(ctx, opts));
    tracing::info!(
        "monitor: serving http://{}/metrics and /status, checking every {} s (deadline {} s)",
        service.local_addr(),
        a.interval,
        deadline.as_secs_f64()
    );
    service.run(
        ServiceOptions { interval, deadline, repo_id: a.repo_id.clone() },
        checker,
        initial,
        Arc::clone(&stop),
    )?;
    let by = match which.load(Ordering::SeqCst) as i32 {
        signal_hook::consts::SIGTERM => "SIGTERM",
        signal_hook::consts::SIGINT => "SIGINT",
        _ => "a signal",
    };
    tracing::info!("monitor: stopped ({by})");
    Ok(ExitCode::SUCCESS)
}

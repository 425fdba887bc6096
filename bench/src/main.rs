//! `pgws-bench`: load generator for servers that speak the
//! postgres-websockets protocol (fanout, ingest and idle scenarios), and for
//! pgws's Server-Sent Events streams, resume and replay windows, a chaos run that checks
//! delivery guarantees under injected faults, protocol v2 (`pgws.v2`) requests, and row changes
//! to filtered row subscriptions.

mod catchup;
mod chaos;
mod chaos_check;
mod chaos_clients;
mod chaos_proxy;
mod cli;
mod connect;
mod fanout;
mod frame;
mod idle;
mod ingest;
mod latency;
mod message;
mod pacing;
mod pg;
mod phases;
mod procstat;
mod publisher;
mod report;
mod rows;
mod rss;
mod rxstamp;
mod scrape;
mod sseclient;
mod ssesub;
mod storm;
mod subscriber;
mod target;
mod token;
mod tracker;
mod v2;
mod v2ops;
mod v2req;
mod windows;
mod writer;
mod wsclient;

use anyhow::{Context, Result};
use clap::Parser;
use cli::{Cli, Scenario};
use connect::Transport::Sse;
use std::time::Duration;

fn main() -> Result<()> {
    let cli = Cli::parse();
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => eprintln!("open files limit: {n}"),
        Err(e) => eprintln!("could not raise the open files limit: {e}"),
    }
    let threads = cli.global.threads.unwrap_or_else(procstat::cpus).max(1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .context("building the runtime")?;
    let g = cli.global.clone();
    let cap = Duration::from_secs(g.max_duration.max(1) + 60);
    let result = rt.block_on(async {
        let run = async {
            match &cli.scenario {
                Scenario::Fanout(a) => fanout::run(&g, a, threads).await,
                Scenario::Ingest(a) => ingest::run(&g, a, threads).await,
                Scenario::Idle(a) => idle::run(&g, a, threads).await,
                Scenario::SseFanout(a) => fanout::run_over(&g, a, threads, Sse).await,
                Scenario::SseIdle(a) => idle::run_over(&g, a, threads, Sse).await,
                Scenario::SseCatchup(a) => catchup::run(&g, a, threads).await,
                Scenario::SseStorm(a) => storm::run(&g, a, threads).await,
                Scenario::Windows(a) => windows::run(&g, a, threads).await,
                Scenario::V2Subscribe(a) => v2ops::subscribe(&g, a, threads).await,
                Scenario::V2Publish(a) => v2ops::publish(&g, a, threads).await,
                Scenario::Chaos(a) => chaos::run(&g, a, threads).await,
                Scenario::Rows(a) => rows::run(&g, a, threads).await,
            }
        };
        tokio::time::timeout(cap, run)
            .await
            .map_err(|_| anyhow::anyhow!("run exceeded --max-duration; aborted"))?
    });
    rt.shutdown_timeout(Duration::from_secs(2));
    let report = result?;
    report.print();
    if report.failed() {
        std::process::exit(1);
    }
    Ok(())
}

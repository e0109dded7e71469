//! The delivery runtime: a thread running a tokio runtime (hickory-resolver and the
//! outbound connection pool need one), taking remote and LMTP jobs from the control thread
//! and answering with one outcome per recipient. Nothing that waits on a server runs on the
//! control thread.
//!
//! A job is one message for the recipients that share a route (a smart host, or one
//! domain's MX plan). Hosts of the plan are tried in order while the failure concerns the
//! connection (RFC 5321 §5.1); a reply that concerns the message or a recipient ends the
//! job. Connections go back to the pool for the next message to the same destination.

use super::control::link::ControlMsg;
use crate::delivery::client::{Concern, OutboundMessage, Response};
use crate::delivery::lmtp::{LmtpEndpoint, LmtpRoute};
use crate::delivery::mx::{DnsConfig, MxError, MxResolver};
use crate::delivery::remote::{Destination, Pool, RemoteConfig};
use crate::queue::actions::{LmtpBatch, LocalFailure, Outcome, RcptOutcome, RemoteJob, RemoteOutcome};
use crate::routing::Route;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::mpsc::SyncSender;
use std::time::Duration;

/// Work for the delivery runtime.
#[derive(Debug)]
enum Job {
    Remote(RemoteJob),
    Lmtp { endpoint: Arc<LmtpEndpoint>, timeout: Duration, batch: LmtpBatch },
}

/// The control thread's handle on the delivery runtime.
pub struct DeliveryHandle {
    tx: tokio::sync::mpsc::UnboundedSender<Job>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl DeliveryHandle {
    /// Sends a message to a remote server; the outcome comes back as [`Outcome::Remote`].
    pub fn submit(&self, job: RemoteJob) {
        // The thread only ends when this handle is dropped.
        let _ = self.tx.send(Job::Remote(job));
    }

    /// Hands copies to the LMTP server; the outcome comes back as [`Outcome::Lmtp`].
    pub fn submit_lmtp(&self, route: &LmtpRoute, batch: LmtpBatch) {
        let endpoint = Arc::new(route.endpoint.clone());
        let _ = self.tx.send(Job::Lmtp { endpoint, timeout: route.timeout, batch });
    }
}

impl Drop for DeliveryHandle {
    fn drop(&mut self) {
        // Closing the channel ends the thread.
        let (tx, _) = tokio::sync::mpsc::unbounded_channel();
        drop(std::mem::replace(&mut self.tx, tx));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts the delivery thread; outcomes go to `results`.
pub fn spawn(
    remote: RemoteConfig,
    dns: DnsConfig,
    dns_service: Option<Arc<crate::dns::DnsService>>,
    hostname: &str,
    results: SyncSender<ControlMsg>,
) -> std::io::Result<DeliveryHandle> {
    let pool = Pool::new(remote, hostname).map_err(std::io::Error::other)?;
    let lhlo_name = hostname.to_string();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Job>();
    let thread = std::thread::Builder::new().name("remote".into()).spawn(move || {
        let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt,
            Err(e) => {
                log::error!("remote delivery: no runtime: {e}");
                return;
            }
        };
        rt.block_on(async move {
            // Without the DNS service (it could not start) deliveries wait, deferred.
            let resolver = dns_service.map(|s| MxResolver::new(&dns, s));
            let pool = Arc::new(pool);
            // Idle connections are closed with QUIT once they have waited the idle time-out.
            let reaper = {
                let pool = pool.clone();
                let period = (pool.idle_timeout() / 4).clamp(Duration::from_millis(250), Duration::from_secs(30));
                tokio::spawn(async move {
                    let mut tick = tokio::time::interval(period);
                    loop {
                        tick.tick().await;
                        pool.close_expired().await;
                    }
                })
            };
            let mut tasks = tokio::task::JoinSet::new();
            let lhlo_name: Arc<str> = Arc::from(lhlo_name.as_str());
            while let Some(job) = rx.recv().await {
                let (pool, resolver, results) = (pool.clone(), resolver.clone(), results.clone());
                let lhlo_name = lhlo_name.clone();
                tasks.spawn(async move {
                    let outcome = match job {
                        Job::Remote(job) => Outcome::Remote(run_job(&pool, resolver.as_ref(), job).await),
                        Job::Lmtp { endpoint, timeout, batch } => run_lmtp(&endpoint, &lhlo_name, timeout, batch).await,
                    };
                    let _ = results.send(ControlMsg::Outcome(outcome));
                });
                // Reap finished tasks as we go.
                while tasks.try_join_next().is_some() {}
            }
            // Shutting down: jobs still out are dropped; their recipients have no final mark
            // and are tried again after the restart.
            tasks.abort_all();
            while tasks.join_next().await.is_some() {}
            reaper.abort();
            pool.close_idle().await;
        });
    })?;
    Ok(DeliveryHandle { tx, thread: Some(thread) })
}

/// One LMTP transaction (RFC 2033): a result per recipient, or why there was none.
async fn run_lmtp(endpoint: &LmtpEndpoint, lhlo_name: &str, timeout: Duration, b: LmtpBatch) -> Outcome {
    let r = crate::delivery::lmtp::deliver(endpoint, lhlo_name, &b.from, &b.rcpts, &b.body, timeout).await;
    let result = r.map_err(|e| e.to_string()).map(|v| {
        v.into_iter()
            .map(|r| {
                r.map_err(|f| LocalFailure {
                    permanent: f.permanent,
                    reply: Response::from_code_text(f.reply.code, &f.reply.text),
                })
            })
            .collect()
    });
    Outcome::Lmtp { id: b.id, batch: b.batch, result }
}

async fn run_job(pool: &Pool, resolver: Option<&MxResolver>, job: RemoteJob) -> RemoteOutcome {
    let all = |o: RcptOutcome| job.rcpts.iter().map(|(i, _)| (*i, o.clone())).collect();
    let (hosts, auth): (Vec<(String, SocketAddr)>, _) = match &job.route {
        Route::SmartHost { host, port, auth } => {
            let found = match resolver {
                Some(r) => r.smart_host(host, *port).await,
                None => crate::delivery::mx::literal_host(host, *port)
                    .ok_or_else(|| MxError::Temporary { name: host.clone(), what: "no resolver available".into() }),
            };
            match found {
                Ok(addrs) => (addrs.into_iter().map(|a| (host.clone(), a)).collect(), auth.clone()),
                // A smart host that does not resolve is our configuration's problem, not the
                // message's: deferred, whatever DNS says, until an operator fixes it.
                Err(e) => {
                    let reply = Response::new(451, Some("4.4.3"), &format!("smart host {host}: {e}"));
                    return RemoteOutcome {
                        id: job.id,
                        remote_mta: None,
                        peer_dsn: false,
                        results: all(RcptOutcome::Deferred { reply }),
                    };
                }
            }
        }
        Route::Mx(domain) => {
            let Some(resolver) = resolver else {
                return RemoteOutcome {
                    id: job.id,
                    remote_mta: None,
                    peer_dsn: false,
                    results: all(RcptOutcome::Deferred {
                        reply: Response::new(451, Some("4.4.3"), "no resolver available"),
                    }),
                };
            };
            match resolver.plan(domain, job.seed).await {
                Ok(plan) => (plan.addrs().map(|(h, a)| (h.to_string(), a)).collect(), None),
                Err(e) => {
                    let reply =
                        Response::new(if e.is_permanent() { 550 } else { 451 }, Some(e.status()), &e.to_string());
                    let o =
                        if e.is_permanent() { RcptOutcome::Failed { reply } } else { RcptOutcome::Deferred { reply } };
                    return RemoteOutcome { id: job.id, remote_mta: None, peer_dsn: false, results: all(o) };
                }
            }
        }
    };
    if hosts.is_empty() {
        return RemoteOutcome {
            id: job.id,
            remote_mta: None,
            peer_dsn: false,
            results: all(RcptOutcome::Deferred {
                reply: Response::new(451, Some("4.4.4"), "no address to deliver to"),
            }),
        };
    }
    if !job.verp {
        let mut msg = OutboundMessage::new(
            &job.from,
            job.rcpts.iter().map(|(_, a)| a.clone()).collect(),
            job.content.clone(),
            job.smtputf8,
        );
        msg.dsn = job.dsn.clone();
        msg.auth = job.auth.clone();
        let (results, remote_mta, peer_dsn) = try_hosts(pool, &hosts, &auth, Arc::new(msg), &job.rcpts).await;
        return RemoteOutcome { id: job.id, remote_mta, peer_dsn, results };
    }
    // VERP: each recipient in a transaction of its own, from its own reverse path.
    let mut out = RemoteOutcome { id: job.id, remote_mta: None, peer_dsn: false, results: Vec::new() };
    for (k, (i, address)) in job.rcpts.iter().enumerate() {
        let from = crate::lists::message::verp_encode(&job.from, address);
        let content = match &job.personal {
            Some((oc, list)) => Arc::from(oc.personalize(list, address, &job.content)),
            None => job.content.clone(),
        };
        let mut msg = OutboundMessage::new(&from, vec![address.clone()], content, job.smtputf8);
        msg.dsn = crate::delivery::client::DsnParams {
            ret: job.dsn.ret,
            envid: job.dsn.envid.clone(),
            rcpts: job.dsn.rcpts.get(k).cloned().into_iter().collect(),
        };
        msg.auth = job.auth.clone();
        let (results, remote_mta, peer_dsn) =
            try_hosts(pool, &hosts, &auth, Arc::new(msg), std::slice::from_ref(&(*i, address.clone()))).await;
        out.results.extend(results);
        out.remote_mta = remote_mta.or(out.remote_mta);
        out.peer_dsn |= peer_dsn;
    }
    out
}

/// Sends `msg` to the first of `hosts` that takes it or refuses it for good; the result of
/// each of `rcpts` (index and address, in the order of the message's recipients), the host
/// that answered, and whether it offers DSN.
async fn try_hosts(
    pool: &Pool,
    hosts: &[(String, SocketAddr)],
    auth: &Option<crate::delivery::client::Credentials>,
    msg: Arc<OutboundMessage>,
    rcpts: &[(u16, String)],
) -> (Vec<(u16, RcptOutcome)>, Option<String>, bool) {
    let all = |o: RcptOutcome| rcpts.iter().map(|(i, _)| (*i, o.clone())).collect();
    let mut last_error = Response::new(451, Some("4.4.1"), "no host answered");
    for (host, addr) in hosts {
        let dest = Destination { host: host.clone(), addr: *addr, auth: auth.clone() };
        match pool.deliver_to_peer(&dest, msg.clone()).await {
            Ok((results, peer_dsn)) => {
                // A failure that concerns the connection (or is temporary and about the
                // message) is worth the next host; anything else is the answer.
                let next_host = results
                    .iter()
                    .all(|r| r.as_ref().err().is_some_and(|e| e.concern() == Concern::Connection && !e.is_permanent()));
                if next_host {
                    if let Some(Err(e)) = results.first() {
                        last_error = Response::new(451, Some(&e.status()), &format!("{host}: {e}"));
                    }
                    continue;
                }
                let results = rcpts
                    .iter()
                    .zip(results)
                    .map(|((i, _), r)| {
                        let o = match r {
                            Ok(resp) => RcptOutcome::Delivered { reply: resp },
                            Err(e) => {
                                let reply = match e.reply() {
                                    Some(resp) => resp.clone(),
                                    None => Response::new(
                                        if e.is_permanent() { 554 } else { 451 },
                                        Some(&e.status()),
                                        &e.to_string(),
                                    ),
                                };
                                if e.is_permanent() {
                                    RcptOutcome::Failed { reply }
                                } else {
                                    RcptOutcome::Deferred { reply }
                                }
                            }
                        };
                        (*i, o)
                    })
                    .collect();
                return (results, Some(host.clone()), peer_dsn);
            }
            Err(e) => last_error = Response::new(451, Some("4.4.1"), &e.to_string()),
        }
    }
    (all(RcptOutcome::Deferred { reply: last_error }), None, false)
}

//! Getting through wherever the user is: a [`FallbackConnector`] holds several routes to the
//! server, best first (QUIC, TLS, plain TCP, the HTTP tunnel, through a proxy or not), and
//! races them the way "Happy Eyeballs" (RFC 8305) races addresses. The first route starts at
//! once; each next one starts when the previous attempt failed or a short stagger passed
//! without an answer, whichever comes first. The first stream to open wins and the other
//! attempts are dropped. So a network that silently drops UDP costs one stagger, not a QUIC
//! timeout, and a network that refuses connections costs nothing.
//!
//! What worked is remembered per network (the app names networks with
//! [`FallbackConnector::set_network`]): the next connection on that network starts with the
//! route that worked last. While the session runs over a worse route than the best one, the
//! connector probes the better routes now and then; when one opens, it tells the driver
//! ([`Connector::better_route`]), which moves the session over, and the probe's stream is the
//! one the session moves to.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::StreamExt as _;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use tokio::time::Instant;

use super::{ByteStream, Connector, ServerAddress};

/// One way to the server.
pub struct Route {
    name: String,
    address: Option<ServerAddress>,
    connector: Arc<dyn Connector>,
}

impl Route {
    /// A route called `name` (for logs and [`FallbackConnector::current_route`]) that opens
    /// streams with `connector` to the address the driver was given.
    pub fn new(name: impl Into<String>, connector: Arc<dyn Connector>) -> Route {
        Route {
            name: name.into(),
            address: None,
            connector,
        }
    }

    /// The same route to another address (transports listen on different ports: QUIC and TLS
    /// on 443, plain TCP on 8080, say).
    pub fn at(mut self, address: ServerAddress) -> Route {
        self.address = Some(address);
        self
    }

    /// The route's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn connect(
        &self,
        server: &ServerAddress,
    ) -> BoxFuture<'static, std::io::Result<Box<dyn ByteStream>>> {
        self.connector
            .connect(self.address.as_ref().unwrap_or(server))
    }
}

/// How routes are raced and probed.
#[derive(Clone, Debug)]
pub struct FallbackOptions {
    /// How long an attempt runs alone before the next route starts alongside it.
    pub stagger: Duration,
    /// How long one attempt may take before it counts as failed.
    pub attempt_timeout: Duration,
    /// How often, while connected over a worse route than the best, the better ones are tried.
    pub probe_interval: Duration,
    /// How long a stream opened by a probe stays usable before it is discarded.
    pub probe_stream_lifetime: Duration,
}

impl Default for FallbackOptions {
    fn default() -> FallbackOptions {
        FallbackOptions {
            // Long enough for a QUIC or TLS handshake on a decent network, short enough that a
            // blocked route costs the user nothing they notice.
            stagger: Duration::from_millis(300),
            attempt_timeout: Duration::from_secs(10),
            probe_interval: Duration::from_secs(60),
            probe_stream_lifetime: Duration::from_secs(5),
        }
    }
}

/// Races several routes to the server and remembers, per network, which one worked.
pub struct FallbackConnector {
    routes: Arc<[Route]>,
    options: FallbackOptions,
    state: Arc<Mutex<State>>,
}

#[derive(Default)]
struct State {
    /// The network the app says the device is on ("" until it says).
    network: String,
    /// Per network, the route that opened the last stream there.
    worked: HashMap<String, usize>,
    /// The route of the last stream handed to the driver.
    current: Option<usize>,
    /// Counts streams handed out: a probe for an older stream gives up.
    generation: u64,
    /// A stream a probe opened over a better route, waiting for the driver's next connect.
    probed: Option<ProbedStream>,
    /// The address the driver last asked for (what routes without their own address probe).
    server: Option<ServerAddress>,
}

struct ProbedStream {
    route: usize,
    opened: Instant,
    stream: Box<dyn ByteStream>,
}

impl FallbackConnector {
    /// Races `routes`, best first.
    ///
    /// # Panics
    /// If `routes` is empty: a connector needs at least one way to the server.
    pub fn new(routes: Vec<Route>, options: FallbackOptions) -> FallbackConnector {
        assert!(
            !routes.is_empty(),
            "a FallbackConnector needs at least one route"
        );
        FallbackConnector {
            routes: routes.into(),
            options,
            state: Arc::default(),
        }
    }

    /// The device is now on network `id` (a Wi-Fi network's name, "cellular"): connections
    /// start with what worked on it last time, or from the best route on a new network. Call
    /// [`crate::ClientHandle::network_changed`] as well, so the client reconnects.
    pub fn set_network(&self, id: impl Into<String>) {
        let mut state = self.lock();
        state.network = id.into();
        // A stream opened on the old network is of no use on the new one.
        state.probed = None;
    }

    /// The name of the route the last stream went over, if any opened yet.
    pub fn current_route(&self) -> Option<String> {
        let state = self.lock();
        state.current.map(|i| self.routes[i].name.clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        lock(&self.state)
    }
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    // The state is a cache of what worked: whatever a panicking holder left is still usable.
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Records that `route` just opened the stream handed out, on the current network.
fn note_success(state: &mut State, route: usize) {
    let network = state.network.clone();
    state.worked.insert(network, route);
    state.current = Some(route);
    state.generation += 1;
}

/// One attempt, bounded by `timeout`, tagged with its route.
fn attempt(
    route: &Route,
    index: usize,
    server: &ServerAddress,
    timeout: Duration,
) -> BoxFuture<'static, (usize, std::io::Result<Box<dyn ByteStream>>)> {
    let opening = route.connect(server);
    Box::pin(async move {
        let result = tokio::time::timeout(timeout, opening)
            .await
            .unwrap_or_else(|_| {
                Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "timed out",
                ))
            });
        (index, result)
    })
}

impl Connector for FallbackConnector {
    fn connect(
        &self,
        server: &ServerAddress,
    ) -> BoxFuture<'static, std::io::Result<Box<dyn ByteStream>>> {
        let routes = self.routes.clone();
        let options = self.options.clone();
        let state = self.state.clone();
        let server = server.clone();
        Box::pin(async move {
            let start = {
                let mut state = lock(&state);
                state.server = Some(server.clone());
                if let Some(probed) = state.probed.take()
                    && probed.opened.elapsed() < options.probe_stream_lifetime
                {
                    note_success(&mut state, probed.route);
                    return Ok(probed.stream);
                }
                state.worked.get(&state.network).copied().unwrap_or(0)
            };
            // What worked here last time first, then the rest from the best down.
            let order: Vec<usize> = std::iter::once(start)
                .chain((0..routes.len()).filter(|&i| i != start))
                .collect();
            let mut next = order.iter().copied();
            let mut running = FuturesUnordered::new();
            let mut failures = String::new();
            if let Some(first) = next.next() {
                running.push(attempt(
                    &routes[first],
                    first,
                    &server,
                    options.attempt_timeout,
                ));
            }
            loop {
                let stagger = tokio::time::sleep(options.stagger);
                tokio::select! {
                    finished = running.next(), if !running.is_empty() => {
                        match finished {
                            Some((index, Ok(stream))) => {
                                note_success(&mut lock(&state), index);
                                tracing::debug!(route = %routes[index].name, "connected");
                                return Ok(stream);
                            }
                            Some((index, Err(e))) => {
                                tracing::debug!(route = %routes[index].name, error = %e, "route failed");
                                let _ = write!(failures, "{}{}: {e}", if failures.is_empty() { "" } else { "; " }, routes[index].name);
                                let last_kind = e.kind();
                                // A failure starts the next route at once, not after the stagger.
                                if let Some(i) = next.next() {
                                    running.push(attempt(&routes[i], i, &server, options.attempt_timeout));
                                } else if running.is_empty() {
                                    return Err(std::io::Error::new(last_kind, format!("no route to {server} worked ({failures})")));
                                }
                            }
                            None => unreachable!("guarded by !running.is_empty()"),
                        }
                    }
                    () = stagger, if next.len() > 0 => {
                        if let Some(i) = next.next() {
                            running.push(attempt(&routes[i], i, &server, options.attempt_timeout));
                        }
                    }
                }
            }
        })
    }

    fn better_route(&self) -> BoxFuture<'static, ()> {
        let routes = self.routes.clone();
        let options = self.options.clone();
        let state = self.state.clone();
        let (current, generation, server) = {
            let state = self.lock();
            (state.current, state.generation, state.server.clone())
        };
        let (Some(current), Some(server)) = (current.filter(|&c| c > 0), server) else {
            // Already on the best route (or on none): nothing to move to.
            return Box::pin(std::future::pending());
        };
        Box::pin(async move {
            let stale = |state: &State| state.generation != generation;
            loop {
                tokio::time::sleep(options.probe_interval).await;
                for better in 0..current {
                    if stale(&lock(&state)) {
                        break;
                    }
                    let (_, opened) =
                        attempt(&routes[better], better, &server, options.attempt_timeout).await;
                    let Ok(stream) = opened else { continue };
                    let mut state = lock(&state);
                    if stale(&state) {
                        break;
                    }
                    tracing::debug!(route = %routes[better].name, "a better route works again");
                    let network = state.network.clone();
                    state.worked.insert(network, better);
                    state.probed = Some(ProbedStream {
                        route: better,
                        opened: Instant::now(),
                        stream,
                    });
                    return;
                }
                if stale(&lock(&state)) {
                    // Another stream was handed out since: that connection asks anew.
                    return std::future::pending().await;
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    use super::*;

    /// A route whose connects answer after `delay`: a stream while `works`, else a refusal.
    struct FakeRoute {
        delay: Duration,
        works: AtomicBool,
        attempts: AtomicUsize,
    }

    impl FakeRoute {
        fn new(delay: Duration, works: bool) -> Arc<FakeRoute> {
            Arc::new(FakeRoute {
                delay,
                works: AtomicBool::new(works),
                attempts: AtomicUsize::new(0),
            })
        }

        /// A route whose packets vanish: its connects never answer.
        fn black_hole() -> Arc<FakeRoute> {
            FakeRoute::new(Duration::from_secs(3600), true)
        }

        fn attempts(&self) -> usize {
            self.attempts.load(Ordering::SeqCst)
        }
    }

    impl Connector for FakeRoute {
        fn connect(
            &self,
            _server: &ServerAddress,
        ) -> BoxFuture<'static, std::io::Result<Box<dyn ByteStream>>> {
            self.attempts.fetch_add(1, Ordering::SeqCst);
            let delay = self.delay;
            let works = self.works.load(Ordering::SeqCst);
            Box::pin(async move {
                tokio::time::sleep(delay).await;
                if works {
                    Ok(Box::new(tokio::io::duplex(64).0) as Box<dyn ByteStream>)
                } else {
                    Err(std::io::Error::new(
                        std::io::ErrorKind::ConnectionRefused,
                        "refused",
                    ))
                }
            })
        }
    }

    const FAST: Duration = Duration::from_millis(20);

    fn connector(routes: &[(&str, &Arc<FakeRoute>)]) -> FallbackConnector {
        FallbackConnector::new(
            routes
                .iter()
                .map(|(name, route)| Route::new(*name, (*route).clone() as Arc<dyn Connector>))
                .collect(),
            FallbackOptions::default(),
        )
    }

    fn server() -> ServerAddress {
        ServerAddress::new("im.example.org", 443)
    }

    #[tokio::test(start_paused = true)]
    async fn the_best_route_is_used_alone_when_it_answers_within_the_stagger() {
        let quic = FakeRoute::new(FAST, true);
        let tls = FakeRoute::new(FAST, true);
        let fallback = connector(&[("quic", &quic), ("tls", &tls)]);
        fallback.connect(&server()).await.unwrap();
        assert_eq!(fallback.current_route().as_deref(), Some("quic"));
        assert_eq!(tls.attempts(), 0, "no second route was started");
    }

    #[tokio::test(start_paused = true)]
    async fn a_route_that_never_answers_costs_one_stagger_not_a_timeout() {
        let quic = FakeRoute::black_hole();
        let tls = FakeRoute::new(FAST, true);
        let fallback = connector(&[("quic", &quic), ("tls", &tls)]);
        let started = Instant::now();
        fallback.connect(&server()).await.unwrap();
        assert_eq!(fallback.current_route().as_deref(), Some("tls"));
        // Paused time: exactly the stagger and TLS's own delay went by.
        assert_eq!(started.elapsed(), FallbackOptions::default().stagger + FAST);
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_route_starts_the_next_at_once() {
        let quic = FakeRoute::new(Duration::ZERO, false);
        let tls = FakeRoute::new(Duration::ZERO, false);
        let tunnel = FakeRoute::new(FAST, true);
        let fallback = connector(&[("quic", &quic), ("tls", &tls), ("tunnel", &tunnel)]);
        let started = Instant::now();
        fallback.connect(&server()).await.unwrap();
        assert_eq!(fallback.current_route().as_deref(), Some("tunnel"));
        assert_eq!(started.elapsed(), FAST, "no stagger was waited out");
    }

    #[tokio::test(start_paused = true)]
    async fn when_every_route_fails_the_error_names_each() {
        let quic = FakeRoute::new(Duration::ZERO, false);
        let tls = FakeRoute::black_hole();
        let fallback = connector(&[("quic", &quic), ("tls", &tls)]);
        let error = fallback
            .connect(&server())
            .await
            .err()
            .expect("no route works");
        let message = error.to_string();
        assert!(message.contains("quic: refused"), "{message}");
        assert!(message.contains("tls: timed out"), "{message}");
        assert_eq!(error.kind(), std::io::ErrorKind::TimedOut);
    }

    #[tokio::test(start_paused = true)]
    async fn what_worked_is_remembered_per_network() {
        let quic = FakeRoute::black_hole();
        let tls = FakeRoute::new(FAST, true);
        let fallback = connector(&[("quic", &quic), ("tls", &tls)]);
        fallback.set_network("office wifi");
        fallback.connect(&server()).await.unwrap();
        assert_eq!((quic.attempts(), tls.attempts()), (1, 1));

        // Back on the same network: TLS first, and it answers within the stagger.
        let started = Instant::now();
        fallback.connect(&server()).await.unwrap();
        assert_eq!(started.elapsed(), FAST);
        assert_eq!((quic.attempts(), tls.attempts()), (1, 2));

        // A network never seen: from the best route again.
        fallback.set_network("cellular");
        fallback.connect(&server()).await.unwrap();
        assert_eq!((quic.attempts(), tls.attempts()), (2, 3));
    }

    #[tokio::test(start_paused = true)]
    async fn a_better_route_that_works_again_is_announced_and_its_stream_reused() {
        let quic = FakeRoute::new(FAST, false);
        let tunnel = FakeRoute::new(FAST, true);
        let fallback = connector(&[("quic", &quic), ("tunnel", &tunnel)]);
        fallback.connect(&server()).await.unwrap();
        assert_eq!(fallback.current_route().as_deref(), Some("tunnel"));

        let better = tokio::spawn(fallback.better_route());
        // Still blocked at the first probe.
        tokio::time::sleep(FallbackOptions::default().probe_interval + FAST * 2).await;
        assert!(!better.is_finished());
        assert_eq!(quic.attempts(), 2);

        quic.works.store(true, Ordering::SeqCst);
        better.await.unwrap();
        // The driver reconnects: it gets the probe's stream, no new handshake.
        fallback.connect(&server()).await.unwrap();
        assert_eq!(fallback.current_route().as_deref(), Some("quic"));
        assert_eq!(quic.attempts(), 3);
        assert_eq!(tunnel.attempts(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn on_the_best_route_there_is_nothing_better() {
        let quic = FakeRoute::new(FAST, true);
        let fallback = connector(&[("quic", &quic)]);
        fallback.connect(&server()).await.unwrap();
        let better = fallback.better_route();
        assert!(
            tokio::time::timeout(Duration::from_secs(3600), better)
                .await
                .is_err()
        );
        assert_eq!(quic.attempts(), 1, "no probes");
    }
}

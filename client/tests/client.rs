//! The client crate against the real server, started in-process on loopback.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use switchboard::app::{self, Running};
use switchboard::cli::ServeArgs;
use switchboard::config::Config;
use switchboard_client::{Backend, Device, Error, Query, Registration, Registry, Watch};

const PATIENCE: Duration = Duration::from_secs(15);

/// Starts a server on `http` (port 0 for any) with extra TOML.
async fn serve_on(http: &str, extra: &str) -> Running {
    let args = ServeArgs {
        no_forward: true,
        ..ServeArgs::default()
    };
    let toml = format!("http = \"{http}\"\ndb = \"sqlite::memory:\"\n{extra}");
    let config = Config::from_toml(&toml, &args).expect("valid config");
    app::start(config).await.expect("server starts")
}

async fn serve() -> (Running, String) {
    let server = serve_on("127.0.0.1:0", "").await;
    let url = format!("http://{}", server.http_addr);
    (server, url)
}

/// Polls `check` every 20 ms until it returns Some, failing after [`PATIENCE`].
async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The admin listing of a service, raw.
async fn listing(url: &str, service: &str) -> Vec<serde_json::Value> {
    let body: serde_json::Value = switchboard::tls::client::reqwest_client()
        .get(format!("{url}/v1/services/{service}/instances"))
        .send()
        .await
        .expect("listing")
        .json()
        .await
        .expect("listing JSON");
    body["instances"].as_array().cloned().unwrap_or_default()
}

#[tokio::test]
async fn a_backend_registers_and_its_count_reaches_the_registry() {
    let (server, url) = serve().await;
    let registry = Registry::builder([url.clone()]).build().unwrap();
    let live = Arc::new(AtomicU64::new(7));
    let mut backend = Backend::start(
        registry,
        "fleet",
        Registration::new("127.0.0.1:7001").ttl_secs(3).zone("eu-1"),
        Arc::clone(&live),
    );
    let lease = backend.registered(PATIENCE).await.expect("registered");
    assert_eq!((lease.service.as_str(), lease.heartbeat_secs), ("fleet", 1));
    live.store(42, Ordering::Relaxed);
    eventually("the heartbeat with 42 connections", || async {
        let instances = listing(&url, "fleet").await;
        (instances.first()?["connections"] == 42).then_some(())
    })
    .await;
    backend.shutdown().await.expect("deregisters");
    assert!(listing(&url, "fleet").await.is_empty(), "gone at once");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_backend_registers_again_when_the_registry_forgot_it() {
    // A registry restarted on sqlite::memory: has forgotten everything: the next
    // heartbeat answers 404 and the backend registers again by itself.
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let http = probe.local_addr().unwrap().to_string();
    drop(probe);
    let first = serve_on(&http, "").await;
    let url = format!("http://{http}");
    let registry = Registry::builder([url.clone()]).build().unwrap();
    let mut backend = Backend::start(
        registry,
        "default",
        Registration::new("127.0.0.1:7002").ttl_secs(3),
        Arc::new(AtomicU64::new(3)),
    );
    let before = backend.registered(PATIENCE).await.unwrap();
    first.stop().await.unwrap();
    let second = serve_on(&http, "").await;
    let again = eventually("re-registration on the new registry", || async {
        let instances = listing(&url, "default").await;
        instances.first().cloned()
    })
    .await;
    assert_eq!(again["address"], "127.0.0.1:7002");
    let now = eventually("a new lease", || async {
        backend.lease().filter(|l| l != &before)
    })
    .await;
    assert_ne!(now.id, before.id, "a new registry gives a new id");
    drop(backend);
    second.stop().await.unwrap();
}

#[tokio::test]
async fn calls_fail_over_to_the_next_registry_and_remember_it() {
    let (a, url_a) = serve().await;
    let (b, url_b) = serve().await;
    let registry = Registry::builder([url_a.clone(), url_b.clone()])
        .build()
        .unwrap();
    registry
        .register("default", &Registration::new("127.0.0.1:7003"))
        .await
        .unwrap();
    assert!(registry.current_node().starts_with(&url_a));
    a.stop().await.unwrap();
    // B is another registry (not a cluster peer): it answers, with its own state.
    let list = registry.resolve(&Query::new("default")).await.unwrap();
    assert!(!list.from_cache);
    assert!(list.servers.is_empty());
    assert!(
        registry.current_node().starts_with(&url_b),
        "B is remembered"
    );
    b.stop().await.unwrap();
}

#[tokio::test]
async fn the_last_good_list_is_used_while_the_registry_is_down() {
    let (server, url) = serve().await;
    let registry = Registry::builder([url]).build().unwrap();
    registry
        .register("default", &Registration::new("127.0.0.1:7004"))
        .await
        .unwrap();
    let query = Query::new("default").limit(3);
    let live = registry.resolve(&query).await.unwrap();
    assert_eq!(live.servers.len(), 1);
    server.stop().await.unwrap();
    let cached = registry.resolve(&query).await.expect("cached list");
    assert!(cached.from_cache);
    assert_eq!(cached.servers, live.servers);
    // Another query was never answered: nothing to fall back on.
    let err = registry.resolve(&Query::new("other")).await.unwrap_err();
    assert!(matches!(err, Error::Unreachable { .. }), "{err:?}");
    assert!(err.is_transient());
}

#[tokio::test]
async fn shed_hints_reach_the_application() {
    let (server, url) = serve().await;
    let registry = Registry::builder([url]).build().unwrap();
    let idle = Arc::new(AtomicU64::new(0));
    let mut light = Backend::start(
        registry.clone(),
        "default",
        Registration::new("127.0.0.1:7005").ttl_secs(3),
        idle,
    );
    light.registered(PATIENCE).await.unwrap();
    // Mean load 500: 1000 is far above it; 1 % of 1000 per heartbeat is 10.
    let mut heavy = Backend::start(
        registry,
        "default",
        Registration::new("127.0.0.1:7006").ttl_secs(3),
        Arc::new(AtomicU64::new(1_000)),
    );
    heavy.registered(PATIENCE).await.unwrap();
    let mut shed = heavy.take_shed().expect("first take");
    let hint = tokio::time::timeout(PATIENCE, shed.recv())
        .await
        .expect("a shed hint in time")
        .expect("channel open");
    assert_eq!(hint, 10);
    assert!(heavy.take_shed().is_none());
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_drain_with_evacuation_paces_the_backend_to_zero_then_deregisters() {
    let (server, url) = serve().await;
    let registry = Registry::builder([url.clone()]).build().unwrap();
    let live = Arc::new(AtomicU64::new(120));
    let mut backend = Backend::start(
        registry,
        "default",
        Registration::new("127.0.0.1:7007").ttl_secs(3),
        Arc::clone(&live),
    );
    backend.registered(PATIENCE).await.unwrap();
    let mut shed = backend.take_shed().unwrap();
    // The application closes what it is asked to close.
    let closer = {
        let live = Arc::clone(&live);
        tokio::spawn(async move {
            let mut asked = Vec::new();
            while let Some(n) = shed.recv().await {
                asked.push(n);
                live.fetch_sub(n.min(live.load(Ordering::Relaxed)), Ordering::Relaxed);
            }
            asked
        })
    };
    backend
        .drain_and_shutdown(Some(50), PATIENCE)
        .await
        .expect("drained and deregistered");
    assert_eq!(live.load(Ordering::Relaxed), 0);
    let asked = closer.await.unwrap();
    // 50/s with heartbeats every second: 50, 50, then the 20 left.
    assert_eq!(asked, [50, 50, 20]);
    assert!(listing(&url, "default").await.is_empty());
    server.stop().await.unwrap();
}

#[tokio::test]
async fn reconnect_jitter_follows_the_registry() {
    let server = serve_on("127.0.0.1:0", "[rebalance]\nreconnect_jitter_ms = 200").await;
    let url = format!("http://{}", server.http_addr);
    let registry = Registry::builder([url]).build().unwrap();
    let list = registry.resolve(&Query::default()).await.unwrap();
    assert_eq!(list.reconnect_jitter_ms, 200);
    let delays: Vec<Duration> = (0..200).map(|_| registry.reconnect_delay()).collect();
    assert!(delays.iter().all(|d| *d < Duration::from_millis(200)));
    assert!(delays.iter().any(|d| *d != delays[0]), "random, not fixed");
    server.stop().await.unwrap();

    let none = serve_on("127.0.0.1:0", "[rebalance]\nreconnect_jitter_ms = 0").await;
    let registry = Registry::builder([format!("http://{}", none.http_addr)])
        .build()
        .unwrap();
    registry.resolve(&Query::default()).await.unwrap();
    assert_eq!(registry.reconnect_delay(), Duration::ZERO);
    none.stop().await.unwrap();
}

/// A listening socket (keep it), its address, and an address nothing listens on.
async fn open_and_closed() -> (tokio::net::TcpListener, String, String) {
    let open = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let open_addr = open.local_addr().unwrap().to_string();
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    (open, open_addr, closed)
}

#[tokio::test]
async fn a_device_connects_to_the_first_server_that_answers() {
    let (server, url) = serve().await;
    let registry = Registry::builder([url]).build().unwrap();
    let (_open, open_addr, closed) = open_and_closed().await;
    // The closed one is ranked first (it reports fewer connections).
    let dead = registry
        .register("default", &Registration::new(closed.clone()))
        .await
        .unwrap();
    let alive = registry
        .register("default", &Registration::new(open_addr.clone()))
        .await
        .unwrap();
    registry.heartbeat(&alive, 10).await.unwrap();
    registry.heartbeat(&dead, 0).await.unwrap();
    let device =
        Device::new(registry, Query::new("default")).connect_timeout(Duration::from_millis(500));
    let (_stream, chosen) = device.connect().await.expect("the second answers");
    assert_eq!(chosen.address, open_addr);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn after_a_dead_first_server_the_device_asks_again_so_its_pick_is_counted() {
    let (server, url) = serve().await;
    let registry = Registry::builder([url.clone()]).build().unwrap();
    let (_open, open_addr, closed) = open_and_closed().await;
    // The dead one is first (load 10 against 10.5); one hand-out puts it at 11, so
    // the answer to the second ask puts the live one first and counts it there.
    let dead = registry
        .register("default", &Registration::new(closed.clone()))
        .await
        .unwrap();
    let alive = registry
        .register("default", &Registration::new(open_addr.clone()).weight(2))
        .await
        .unwrap();
    registry.heartbeat(&dead, 10).await.unwrap();
    registry.heartbeat(&alive, 21).await.unwrap();
    let device =
        Device::new(registry, Query::new("default")).connect_timeout(Duration::from_millis(500));
    let (_stream, chosen) = device.connect().await.expect("the live one answers");
    assert_eq!(chosen.address, open_addr);
    let pending = |address: &str, instances: &[serde_json::Value]| {
        instances
            .iter()
            .find(|i| i["address"] == address)
            .map(|i| i["pending"].as_u64().unwrap())
    };
    let instances = listing(&url, "default").await;
    assert_eq!(pending(&closed, &instances), Some(1), "{instances:?}");
    assert_eq!(pending(&open_addr, &instances), Some(1), "{instances:?}");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_watch_wakes_on_a_membership_change() {
    let (server, url) = serve().await;
    let registry = Registry::builder([url]).build().unwrap();
    let mut watch = Watch::new(registry.clone(), Query::new("default"));
    let first = watch.next().await.unwrap();
    assert!(first.servers.is_empty());
    let registering = {
        let registry = registry.clone();
        tokio::spawn(async move {
            registry
                .register("default", &Registration::new("127.0.0.1:7008"))
                .await
        })
    };
    let changed = tokio::time::timeout(PATIENCE, watch.next())
        .await
        .expect("woken by the change")
        .unwrap();
    assert_ne!(changed.version, first.version);
    assert_eq!(changed.servers.len(), 1);
    registering.await.unwrap().unwrap();
    server.stop().await.unwrap();
}

#[tokio::test]
async fn bad_urls_and_bad_tokens_are_typed_errors() {
    for bad in ["", "not a url", "ftp://host", "http://", "http://h/?q=1"] {
        let err = Registry::builder([bad]).build().unwrap_err();
        assert!(matches!(err, Error::InvalidUrl { .. }), "{bad:?}: {err:?}");
    }
    let empty: [&str; 0] = [];
    assert!(matches!(
        Registry::builder(empty).build(),
        Err(Error::InvalidUrl { .. })
    ));

    let server = serve_on("127.0.0.1:0", "[tokens]\nregister = \"right\"").await;
    let url = format!("http://{}", server.http_addr);
    let wrong = Registry::builder([url.clone()])
        .register_token("wrong")
        .build()
        .unwrap();
    let err = wrong
        .register("default", &Registration::new("127.0.0.1:7009"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Unauthorized(_)), "{err:?}");
    let right = Registry::builder([url])
        .register_token("right")
        .build()
        .unwrap();
    let lease = right
        .register("default", &Registration::new("127.0.0.1:7009"))
        .await
        .unwrap();
    let err = right
        .register("default", &Registration::new("nowhere"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Api { status: 400, code, .. } if code == "invalid_address"),
        "{err:?}"
    );
    assert!(
        !format!("{lease:?} {right:?}").contains("right\""),
        "no secret in Debug"
    );
    server.stop().await.unwrap();
}

//! Fuzz target: the JSON bodies of register, heartbeat and drain through the real
//! router, in process (`oneshot`, no socket), over an in-memory SQLite store. See
//! `checks::api_body` (shared with `tests/fuzz_corpus.rs`).
#![no_main]

#[path = "../checks.rs"]
mod checks;

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, OnceLock};

use arc_swap::ArcSwap;
use axum::Router;
use axum::body::Body;
use axum::http::Request;
use checks::{Call, Fixture, Reply};
use switchboard::api::{self, Shared};
use switchboard::clock::Clock;
use switchboard::config::TokenConfig;
use switchboard::forwarder::stats::ForwardBoard;
use switchboard::hub::Hub;
use switchboard::registry::rank::RebalancePolicy;
use tokio::runtime::Runtime;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

struct Api {
    rt: Runtime,
    router: Router,
    fixture: Mutex<Fixture>,
}

fn send(rt: &Runtime, router: &Router, call: Call) -> Reply {
    let mut req = Request::builder()
        .method(call.method)
        .uri(&call.path)
        .header("content-type", "application/json");
    if let Some(lease) = &call.lease {
        req = req.header("x-lease", lease);
    }
    let req = req.body(Body::from(call.body)).expect("request");
    rt.block_on(async {
        let res = router.clone().oneshot(req).await.expect("infallible");
        let status = res.status().as_u16();
        let body = axum::body::to_bytes(res.into_body(), usize::MAX)
            .await
            .expect("body");
        Reply {
            status,
            body: body.to_vec(),
        }
    })
}

fn api() -> &'static Api {
    static API: OnceLock<Api> = OnceLock::new();
    API.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let router = rt.block_on(async {
            switchboard::metrics::handle();
            let opened = switchboard::store::open("sqlite::memory:")
                .await
                .expect("store");
            let hub = Hub::new(opened.store, Clock::start(), RebalancePolicy::default(), 0);
            hub.restore().await.expect("restore");
            api::router(Arc::new(Shared {
                hub,
                cluster: None,
                forwarders: Arc::new(ForwardBoard::default()),
                tokens: ArcSwap::from_pointee(api::auth::Tokens::new(&TokenConfig::default())),
                limits: ArcSwap::default(),
                shutting_down: Arc::new(AtomicBool::new(false)),
                shutdown: CancellationToken::new(),
            }))
        });
        let fixture = checks::api_fixture(&mut |call| send(&rt, &router, call));
        Api {
            rt,
            router,
            fixture: Mutex::new(fixture),
        }
    })
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let api = api();
    let mut fixture = api.fixture.lock().expect("one thread");
    checks::api_body(data, &mut fixture, &mut |call| {
        send(&api.rt, &api.router, call)
    });
});

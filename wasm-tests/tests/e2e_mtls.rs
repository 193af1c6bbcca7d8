//! Mutual TLS between Envoy and the control plane, through a real Envoy: the whole stack with
//! `--envoy-tls-cert`, `--envoy-tls-key`, `--envoy-client-ca` and `--envoy-listen` (certificates
//! from `podgate tls gen-test-certs`), Envoy on `envoy/podgate.yaml` with its client
//! certificate.
//!
//! - Envoy with the right client certificate gets its configuration over ADS and routes a
//!   browser (through `/.podgate/callback`, which Envoy forwards to the Envoy-facing listener)
//!   and a script to the pod; its health checks of both control-plane clusters pass over
//!   mutual TLS.
//! - An Envoy without a client certificate, and one with a certificate from another CA, get no
//!   configuration (no pushed cluster or filter, no successful update) and route nothing.
//! - A client without Envoy's certificate, plaintext or TLS, cannot read the filter
//!   configuration or call the renew endpoint on the Envoy-facing listener; the public
//!   listener answers the Envoy-only endpoints 404.
//!
//! Needs what `e2e_stack` needs: Envoy, the filter, `podgate`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use podgate_demo_pod::DemoPod;
use podgate_wasm_tests::e2e::stack_full::{
    free_port, render_ads_bootstrap, test_certs, EnvoyMtls, FullStack, Seeded, Servers,
    StackOptions, ADMIN_TOKEN, TEST_CA, TEST_CLIENT_CERT, TEST_CLIENT_KEY,
};
use podgate_wasm_tests::e2e::web_client::WebClient;
use podgate_wasm_tests::e2e::{block_on, Envoy, EnvoyClient};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::{Mutex, MutexGuard, OnceCell};

const PAGE: u16 = 8726;
const API: u16 = 3000;
/// How long an Envoy refused by the control plane is watched: a good one has its
/// configuration well within it.
const REFUSED_WATCH: Duration = Duration::from_secs(5);

/// One stack with mutual TLS, one seeded pod on its demo pods; tests take turns on it (each
/// resets the demo pods' records).
struct Mtls {
    stack: FullStack,
    servers: Servers,
    seeded: Seeded,
    turn: Mutex<()>,
}

async fn shared() -> (&'static Mtls, MutexGuard<'static, ()>) {
    static SHARED: OnceCell<Result<Mtls, String>> = OnceCell::const_new();
    let m = SHARED
        .get_or_init(|| async {
            let mut options = StackOptions::new("mtls");
            options.mtls = true;
            let stack = FullStack::start(options)
                .await
                .map_err(|e| format!("{e:#}"))?;
            let servers = FullStack::servers().await.map_err(|e| format!("{e:#}"))?;
            let seeded = stack
                .seed("mtls", &servers)
                .await
                .map_err(|e| format!("{e:#}"))?;
            Ok(Mtls {
                stack,
                servers,
                seeded,
                turn: Mutex::new(()),
            })
        })
        .await
        .as_ref()
        .unwrap_or_else(|e| panic!("the mutual-TLS stack did not start: {e}"));
    let guard = m.turn.lock().await;
    m.servers.a.reset();
    m.servers.b.reset();
    (m, guard)
}

fn certs_dir(stack: &FullStack) -> &Path {
    &stack
        .cp
        .settings()
        .mtls
        .as_ref()
        .expect("the stack runs mutual TLS")
        .certs
}

fn envoy_listen(stack: &FullStack) -> SocketAddr {
    stack
        .cp
        .settings()
        .mtls
        .as_ref()
        .expect("the stack runs mutual TLS")
        .envoy_listen
}

/// A capability for the member on the JSON API port, once the pod reached Envoy.
async fn member_token(m: &Mtls) -> String {
    let web = WebClient::new().unwrap();
    m.stack.dev_login(&web, &m.seeded.member).await.unwrap();
    let token = m.stack.capability(&web, &m.seeded.slug, API).await.unwrap();
    m.stack
        .wait_until(
            &m.seeded.slug,
            API,
            &token,
            "the pod reaches Envoy over mutual TLS",
            |a| a.status == 200,
        )
        .await
        .unwrap();
    token
}

fn assert_untouched(pod: &DemoPod, what: &str) {
    assert!(pod.untouched(), "{what}: {}", pod.describe());
}

#[test]
fn envoy_with_the_client_certificate_gets_config_and_routes_to_the_pod() {
    block_on(async {
        let (m, _turn) = shared().await;
        // A script: the capability in a header, straight to the pod's JSON API.
        member_token(m).await;
        let seen = m.servers.a.requests();
        assert!(
            seen.iter().any(|r| r.path == "/api/info"),
            "the pod got no /api/info: {}",
            m.servers.a.describe()
        );
        // A browser: the pod URL, the sign-in, the callback that Envoy forwards to the
        // control plane's Envoy-facing listener, the page.
        let web = WebClient::new().unwrap();
        m.stack.dev_login(&web, &m.seeded.member).await.unwrap();
        let page = web
            .navigate(
                &m.stack
                    .pod_url(&m.seeded.slug, PAGE, "/index.html?via=mtls"),
            )
            .await
            .unwrap();
        assert_eq!(page.status, 200, "{}", page.trail());
        assert!(
            page.hops.iter().any(|h| h
                .location
                .as_deref()
                .is_some_and(|l| l.contains("/.podgate/callback"))),
            "{}",
            page.trail()
        );
        assert!(
            m.servers
                .a
                .requests()
                .iter()
                .any(|r| r.path.starts_with("/index.html")),
            "the page request did not reach the pod: {}",
            m.servers.a.describe()
        );
        let log = m.stack.cp.log();
        assert!(
            log.contains("Envoy-facing HTTP listening (mutual TLS)"),
            "{}",
            m.stack.cp.log_tail()
        );
        // Envoy's health checks pass over mutual TLS: a handshake on ADS, `GET /readyz` on the
        // Envoy-facing listener. A host marked down would still be used (Envoy's panic routing
        // when every host is down), so the routing above alone does not show it.
        let start = std::time::Instant::now();
        loop {
            let clusters = m.stack.envoy.admin_get("/clusters").await.unwrap();
            let flags: Vec<&str> = clusters
                .lines()
                .filter(|l| {
                    (l.starts_with("podgate_xds::") || l.starts_with("podgate_control_plane::"))
                        && l.contains("::health_flags::")
                })
                .collect();
            if flags.len() == 2 && flags.iter().all(|l| l.ends_with("::healthy")) {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "the control plane's hosts are not healthy to Envoy: {flags:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
}

/// Starts an Envoy on `envoy/podgate.yaml` in front of the shared control plane with `tls`,
/// and checks over `REFUSED_WATCH` that it gets no configuration and routes nothing.
async fn assert_refused_envoy(m: &Mtls, label: &str, tls: &EnvoyMtls) {
    let token = member_token(m).await;
    m.servers.a.reset();
    m.servers.b.reset();
    let settings = m.stack.cp.settings();
    let mtls = settings.mtls.as_ref().unwrap();
    let port = free_port().unwrap();
    let yaml = render_ads_bootstrap(
        port,
        settings.xds.port(),
        mtls.envoy_listen.port(),
        Some(tls),
    )
    .unwrap();
    let mut envoy = Envoy::spawn(label, &yaml, 1).unwrap();
    envoy.wait_admin(Duration::from_secs(30)).await.unwrap();
    tokio::time::sleep(REFUSED_WATCH).await;
    assert!(envoy.exit_status().is_none(), "{}", envoy.log_tail());
    let client = EnvoyClient::new(SocketAddr::from(([127, 0, 0, 1], port))).unwrap();
    let host = m.stack.pod_host(&m.seeded.slug, API);
    let answer = EnvoyClient::send(
        client
            .get(&host, "/api/info")
            .header("podgate-token", &token),
    )
    .await;
    if let Ok(a) = &answer {
        assert_ne!(a.status, 200, "{label}: routed: {}", a.body);
    }
    assert_untouched(&m.servers.a, label);
    assert_untouched(&m.servers.b, label);
    for (stat, want) in [
        ("control_plane.connected_state", 0),
        ("cluster_manager.cds.update_success", 0),
    ] {
        let got = envoy.counter(stat).await.unwrap();
        assert_eq!(got, want, "{label}: {stat}\n{}", envoy.log_tail());
    }
    let dump = envoy.admin_get("/config_dump").await.unwrap();
    assert!(
        dump.contains("podgate_xds"),
        "{label}: no config dump: {dump}"
    );
    // The route names the pods' cluster; the cluster itself comes only over CDS.
    let clusters: serde_json::Value = serde_json::from_str(&dump).unwrap();
    let dynamic: Vec<&serde_json::Value> = clusters["configs"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|c| {
            ["dynamic_active_clusters", "dynamic_warming_clusters"]
                .into_iter()
                .filter_map(|k| c[k].as_array())
                .flatten()
        })
        .collect();
    assert!(
        dynamic.is_empty(),
        "{label}: Envoy got the pods' cluster: {dynamic:?}"
    );
    assert!(
        !dump.contains("podgate_filter.wasm") && !dump.contains("renewal"),
        "{label}: Envoy got the filter's configuration"
    );
    assert!(
        m.stack.cp.log().contains("refused a TLS connection"),
        "{label}: the control plane logged no refused handshake:\n{}",
        m.stack.cp.log_tail()
    );
}

#[test]
fn envoy_without_a_client_certificate_gets_no_config() {
    block_on(async {
        let (m, _turn) = shared().await;
        let tls = EnvoyMtls {
            client: None,
            ca: certs_dir(&m.stack).join(TEST_CA),
        };
        assert_refused_envoy(m, "no-client-cert", &tls).await;
    });
}

#[test]
fn envoy_with_a_certificate_from_another_ca_gets_no_config() {
    block_on(async {
        let (m, _turn) = shared().await;
        let other = test_certs("other-ca").unwrap();
        let tls = EnvoyMtls {
            client: Some((other.join(TEST_CLIENT_CERT), other.join(TEST_CLIENT_KEY))),
            ca: certs_dir(&m.stack).join(TEST_CA),
        };
        assert_refused_envoy(m, "other-ca", &tls).await;
    });
}

/// An HTTPS client that trusts the test CA, with or without Envoy's client certificate.
fn https_client(certs: &Path, addr: SocketAddr, with_envoy_cert: bool) -> reqwest::Client {
    let ca = std::fs::read(certs.join(TEST_CA)).unwrap();
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .no_proxy()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
        .resolve("localhost", addr)
        .timeout(Duration::from_secs(10));
    if with_envoy_cert {
        let mut pem = std::fs::read(certs.join(TEST_CLIENT_CERT)).unwrap();
        pem.extend(std::fs::read(certs.join(TEST_CLIENT_KEY)).unwrap());
        builder = builder.identity(reqwest::Identity::from_pem(&pem).unwrap());
    }
    builder.build().unwrap()
}

/// What a request answered: its status and body, or the error that stopped it.
async fn outcome(request: reqwest::RequestBuilder) -> Result<(u16, String), String> {
    match request.send().await {
        Ok(resp) => {
            let status = resp.status().as_u16();
            match resp.text().await {
                Ok(body) => Ok((status, body)),
                Err(e) => Err(format!("{e:#}")),
            }
        }
        Err(e) => Err(format!("{e:#}")),
    }
}

#[test]
fn clients_without_envoys_certificate_cannot_use_the_envoy_facing_listener() {
    block_on(async {
        let (m, _turn) = shared().await;
        let certs = certs_dir(&m.stack).to_owned();
        let addr = envoy_listen(&m.stack);
        let base = format!("https://localhost:{}", addr.port());

        // With Envoy's certificate the listener answers: the refusals below are the
        // certificate's doing.
        let envoy_side = https_client(&certs, addr, true);
        let (status, body) = outcome(
            envoy_side
                .get(format!("{base}/v1/filter-config"))
                .bearer_auth(ADMIN_TOKEN),
        )
        .await
        .unwrap();
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("renewal"), "{body}");

        // TLS, trusting the CA, no client certificate.
        let no_cert = https_client(&certs, addr, false);
        for request in [
            no_cert
                .get(format!("{base}/v1/filter-config"))
                .bearer_auth(ADMIN_TOKEN),
            no_cert.post(format!("{base}/api/proxy-renew")).body("{}"),
        ] {
            let got = outcome(request).await;
            assert!(
                got.is_err(),
                "answered without a client certificate: {got:?}"
            );
        }

        // Plain HTTP on the same port.
        let plain = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        let got = outcome(
            plain
                .get(format!("http://{addr}/v1/filter-config"))
                .bearer_auth(ADMIN_TOKEN),
        )
        .await;
        assert!(
            got.as_ref()
                .map_or(true, |(s, b)| *s != 200 && !b.contains("renewal")),
            "plaintext got an answer: {got:?}"
        );

        // Raw TCP: what comes back is no HTTP answer.
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        tcp.write_all(
            b"POST /api/proxy-renew HTTP/1.1\r\nhost: localhost\r\ncontent-length: 2\r\n\r\n{}",
        )
        .await
        .unwrap();
        let mut back = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut back)).await;
        assert!(
            !back.starts_with(b"HTTP/"),
            "raw TCP got an HTTP answer: {}",
            String::from_utf8_lossy(&back)
        );

        // The public listener does not serve the endpoints only Envoy calls.
        let public = m.stack.cp.http_addr();
        for path in ["/api/proxy-renew", "/api/proxy-exchange", "/api/proxy-wake"] {
            let (status, body) = outcome(plain.post(format!("http://{public}{path}")).body("{}"))
                .await
                .unwrap();
            assert_eq!(status, 404, "{path} on the public listener: {body}");
        }
    });
}

//! The authorization flow in a real browser: headless Chromium (Debian's `chromium`, driven
//! through `chromedriver`; `scripts/ensure-browser.sh` installs both) goes from the gateway's
//! `/wx/{tenant}/authorize` through the sim's login stand-in to `/wx/{tenant}/authorized`, on a
//! desktop and a mobile viewport, and checks what the user sees: the account's name after
//! authorizing, the error page for an expired code, and no console error on the gateway's
//! pages. Screenshots of every step land in `{target}/test-artifacts/browser/`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::wd::WebDriverCompatibleCommand;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;
use wxhub_tests::*;

/// A chromedriver on a free port of 127.0.0.1, killed on drop.
struct Driver {
    child: Child,
    url: String,
}

impl Driver {
    async fn start() -> Self {
        for tool in ["chromium", "chromedriver"] {
            assert!(
                Command::new("which")
                    .arg(tool)
                    .stdout(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success()),
                "{tool} is not installed: run scripts/ensure-browser.sh (make test does)"
            );
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let url = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let ready = async {
            loop {
                if http
                    .get(format!("{url}/status"))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success())
                {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(30), ready)
            .await
            .expect("chromedriver answers /status within 30 s");
        Self { child, url }
    }

    /// A headless Chromium session; `mobile` emulates a phone (viewport, touch, user agent).
    async fn session(&self, profile: &std::path::Path, mobile: bool) -> Client {
        // The flags this machine needs: no sandbox as root, and nothing that reaches for the
        // network on its own (background services, component updates, sync).
        let mut args = vec![
            "--headless=new".to_owned(),
            "--no-sandbox".to_owned(),
            "--disable-gpu".to_owned(),
            "--disable-quic".to_owned(),
            "--no-first-run".to_owned(),
            "--disable-background-networking".to_owned(),
            "--disable-component-update".to_owned(),
            "--disable-sync".to_owned(),
            format!("--user-data-dir={}", profile.display()),
        ];
        let mut chrome = json!({ "binary": "/usr/bin/chromium" });
        if mobile {
            chrome["mobileEmulation"] = json!({
                "deviceMetrics": { "width": 390, "height": 844, "pixelRatio": 3.0, "touch": true },
                "userAgent": "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148 MicroMessenger/8.0.50",
            });
        } else {
            args.push("--window-size=1280,900".to_owned());
        }
        chrome["args"] = json!(args);
        let mut caps = serde_json::Map::new();
        caps.insert("goog:chromeOptions".into(), chrome);
        caps.insert("goog:loggingPrefs".into(), json!({ "browser": "ALL" }));
        ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&self.url)
            .await
            .expect("a WebDriver session")
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// chromedriver's console log of the page (and clears it): `POST /session/{id}/se/log`.
#[derive(Debug)]
struct BrowserLog;

impl WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(
        &self,
        base_url: &url::Url,
        session_id: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!(
            "session/{}/se/log",
            session_id.unwrap_or_default()
        ))
    }

    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        (http::Method::POST, Some(r#"{"type":"browser"}"#.to_owned()))
    }
}

/// The console entries of level SEVERE (JavaScript errors, failed loads) since the last call.
async fn console_errors(client: &Client) -> Vec<String> {
    let log = client.issue_cmd(BrowserLog).await.expect("browser log");
    log.as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["level"] == "SEVERE")
        .map(|e| e["message"].as_str().unwrap_or_default().to_owned())
        .collect()
}

fn artifacts() -> PathBuf {
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let dir = target.join("test-artifacts").join("browser");
    std::fs::create_dir_all(&dir).expect("artifact dir");
    dir
}

/// Nothing wider than the device: a page the user would have to scroll sideways (or that a
/// phone shrinks to fit, widening its layout viewport) to read.
async fn fits_the_device(client: &Client, device_width: u64, what: &str) {
    let width = client
        .execute("return document.documentElement.scrollWidth;", vec![])
        .await
        .expect("page width")
        .as_u64()
        .unwrap_or(u64::MAX);
    assert!(
        width <= device_width,
        "{what}: the content is {width} px wide on a {device_width} px wide device"
    );
}

async fn screenshot(client: &Client, name: &str) {
    let png = client.screenshot().await.expect("screenshot");
    assert!(png.starts_with(b"\x89PNG"), "{name}: not a PNG");
    std::fs::write(artifacts().join(format!("{name}.png")), png).expect("write screenshot");
}

async fn text_of(client: &Client, css: &str) -> String {
    client
        .wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .text()
        .await
        .expect("element text")
}

/// One viewport: the authorize page → the link for this viewport → the login stand-in → the
/// account → back on /authorized, which names the account.
async fn authorize_in_browser(
    driver: &Driver,
    gateway: &str,
    mobile: bool,
    account: (&str, &str),
) -> (Client, tempfile::TempDir) {
    let label = if mobile { "mobile" } else { "desktop" };
    let profile = tempfile::tempdir().expect("profile dir");
    let client = driver.session(profile.path(), mobile).await;
    client
        .goto(&format!("{gateway}/wx/{TENANT}/authorize"))
        .await
        .expect("authorize page");
    assert!(
        text_of(&client, "h1")
            .await
            .contains("Authorize your account"),
        "{label}: the start page"
    );
    assert_eq!(
        console_errors(&client).await,
        Vec::<String>::new(),
        "{label}: console errors on the authorize page"
    );
    let device = if mobile { 390 } else { 1280 };
    fits_the_device(&client, device, label).await;
    screenshot(&client, &format!("{label}-1-authorize")).await;

    let link = if mobile { "#mobile" } else { "#pc" };
    client
        .find(Locator::Css(link))
        .await
        .expect("the link of this viewport")
        .click()
        .await
        .expect("follow it");
    let (appid, name) = account;
    let choice = client
        .wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::XPath(&format!("//a[contains(., '{appid}')]")))
        .await
        .unwrap_or_else(|e| panic!("{label}: {appid} on the login page: {e}"));
    screenshot(&client, &format!("{label}-2-login")).await;
    // What the sim's login page logged is WeChat's, not ours.
    let _ = console_errors(&client).await;
    choice.click().await.expect("authorize the account");

    assert_eq!(
        text_of(&client, "#account").await,
        name,
        "{label}: the authorized account is named"
    );
    let url = client.current_url().await.expect("url");
    assert_eq!(url.path(), format!("/wx/{TENANT}/authorized"), "{label}");
    assert_eq!(text_of(&client, "#appid").await, appid, "{label}");
    assert_eq!(
        console_errors(&client).await,
        Vec::<String>::new(),
        "{label}: console errors on the authorized page"
    );
    fits_the_device(&client, device, label).await;
    screenshot(&client, &format!("{label}-3-authorized")).await;
    // The profile dir must outlive the session.
    (client, profile)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_authorization_pages_work_in_a_real_browser() {
    let setup = Setup {
        wire_callbacks: false,
        ..Setup::new("browser")
    };
    let stack = Stack::start_with(setup).await.unwrap();
    let gateway = stack.gateway(GATEWAY_KEY, &[]).await.unwrap();
    let gw = gateway.url.clone();
    stack
        .sim
        .set_component_urls(COMPONENT, Some(format!("{gw}/wx/{TENANT}/component")), None)
        .unwrap();
    stack.give_ticket(COMPONENT, TENANT).await.unwrap();
    let driver = Driver::start().await;

    let (desktop, _desktop_profile) =
        authorize_in_browser(&driver, &gw, false, (FRESH, "Fresh Bakery")).await;
    let (mobile, _mobile_profile) =
        authorize_in_browser(&driver, &gw, true, (AUTH2, "Acme Tea")).await;

    // An expired code: WeChat's redirect arrives after the code's 10 minutes.
    let outcome = stack.sim.authorize(COMPONENT, FRESH, false).await.unwrap();
    stack.sim.advance(Duration::from_secs(601));
    for (client, label, device) in [(&desktop, "desktop", 1280), (&mobile, "mobile", 390)] {
        client
            .goto(&format!(
                "{gw}/wx/{TENANT}/authorized?auth_code={}&expires_in=600",
                outcome.authorized.auth_code
            ))
            .await
            .expect("authorized page");
        let title = text_of(client, "h1").await;
        assert!(
            title.contains("Authorization cannot be completed"),
            "{label}: {title}"
        );
        assert!(
            text_of(client, "p.error").await.contains("authorize again"),
            "{label}: the error says what to do"
        );
        // The page's own 409 is logged as a failed load; nothing else may be.
        let errors: Vec<String> = console_errors(client)
            .await
            .into_iter()
            .filter(|e| !(e.contains("/authorized?auth_code=") && e.contains("409")))
            .collect();
        assert_eq!(errors, Vec::<String>::new(), "{label}");
        fits_the_device(client, device, label).await;
        screenshot(client, &format!("{label}-4-expired-code")).await;
    }
    desktop.close().await.expect("close desktop session");
    mobile.close().await.expect("close mobile session");
    gateway.stop().await;
    stack.stop().await;
}

//! A real browser for tests of the manager's web page: Debian's headless Chromium driven
//! through `chromedriver` with the W3C WebDriver protocol (JSON over HTTP on loopback), spoken
//! directly with `reqwest` so no browser-automation framework sits between the test and the
//! page.
//!
//! [`Browser::start`] finds both programs (or panics telling to run `make deps`: a browser test
//! must not pass by doing nothing), starts `chromedriver` with its own log file on a port it
//! binds itself (port 0, read back from that log), and opens one session with a throw-away
//! profile. Helpers find elements by CSS selector, click, type, run a script, take screenshots,
//! and poll the DOM for an expected text up to a deadline. Dropping the [`Browser`] ends the
//! session and stops `chromedriver`, also when the test panics.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// The key under which WebDriver returns an element reference.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";
/// How long `chromedriver` and the browser may take to start.
const START_DEADLINE: Duration = Duration::from_secs(30);
/// How long one WebDriver command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// Pause between two looks at the DOM while waiting for a text.
const POLL_EVERY: Duration = Duration::from_millis(50);

/// The Chromium flags of the browser tests: headless, no sandbox (containers), and nothing that
/// phones home or runs in the background while the test measures the page.
pub const CHROMIUM_FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--ignore-certificate-errors",
    "--disable-dev-shm-usage",
    "--window-size=1280,1400",
];

/// The browser and its driver, found on this machine.
#[derive(Debug, Clone)]
pub struct Tools {
    /// The Chromium binary.
    pub chromium: PathBuf,
    /// The `chromedriver` binary.
    pub chromedriver: PathBuf,
}

fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn first_of(env: &str, names: &[&str], fixed: &[&str]) -> Option<PathBuf> {
    // An override that points nowhere counts as missing, not as a reason to look elsewhere.
    if let Some(p) = std::env::var_os(env) {
        return Some(PathBuf::from(p)).filter(|p| p.is_file());
    }
    names
        .iter()
        .find_map(|n| on_path(n))
        .or_else(|| fixed.iter().map(PathBuf::from).find(|p| p.is_file()))
}

/// Finds Chromium and `chromedriver` (`AUTOGATE_CHROMIUM` / `AUTOGATE_CHROMEDRIVER` override
/// the search). Panics with what to do when either is missing.
pub fn require_tools() -> Tools {
    let chromium = first_of(
        "AUTOGATE_CHROMIUM",
        &["chromium", "chromium-browser"],
        &["/usr/bin/chromium", "/usr/lib/chromium/chromium"],
    );
    let chromedriver = first_of(
        "AUTOGATE_CHROMEDRIVER",
        &["chromedriver"],
        &["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"],
    );
    match (chromium, chromedriver) {
        (Some(chromium), Some(chromedriver)) => Tools {
            chromium,
            chromedriver,
        },
        (chromium, driver) => {
            let mut missing = Vec::new();
            if chromium.is_none() {
                missing.push("chromium (Debian package chromium)");
            }
            if driver.is_none() {
                missing.push("chromedriver (Debian package chromium-driver)");
            }
            panic!(
                "the browser test needs {}: run `make deps` (scripts/deps.sh installs them)",
                missing.join(" and ")
            )
        }
    }
}

/// Where screenshots go: `target/screenshots/` of the workspace (`CARGO_TARGET_DIR` when set,
/// else found from the test executable, which lives in `target/<profile>/deps/`).
pub fn screenshot_dir() -> PathBuf {
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) => PathBuf::from(d),
        None => {
            let exe = std::env::current_exe().expect("current exe");
            exe.ancestors()
                .nth(3)
                .map(Path::to_path_buf)
                .unwrap_or_else(std::env::temp_dir)
        }
    };
    let dir = target.join("screenshots");
    std::fs::create_dir_all(&dir).expect("create the screenshot directory");
    dir
}

/// A WebDriver error answer.
#[derive(Debug, Clone)]
pub struct WebDriverError {
    /// HTTP status.
    pub status: u16,
    /// The W3C error code, e.g. `no such element`.
    pub error: String,
    /// The driver's message.
    pub message: String,
}

/// A headless Chromium with one WebDriver session. Stopped on drop.
#[derive(Debug)]
pub struct Browser {
    rt: tokio::runtime::Runtime,
    http: reqwest::Client,
    driver_url: String,
    session: String,
    driver: Child,
    dir: tempfile::TempDir,
}

impl Browser {
    /// Starts `chromedriver` and a browser session (panics, naming `make deps`, if the tools are
    /// missing).
    pub fn start() -> Browser {
        let tools = require_tools();
        let dir = tempfile::tempdir().expect("tempdir");
        // Port 0: chromedriver binds a port of the kernel's choosing and logs which.
        let driver = Command::new(&tools.chromedriver)
            .arg("--port=0")
            .arg(format!(
                "--log-path={}",
                dir.path().join("chromedriver.log").display()
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {}: {e}; run `make deps`",
                    tools.chromedriver.display()
                )
            });
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        // Loopback only: a proxy from the environment must not see WebDriver traffic.
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(COMMAND_TIMEOUT)
            .build()
            .expect("http client");
        let mut browser = Browser {
            rt,
            http,
            driver_url: String::new(),
            session: String::new(),
            driver,
            dir,
        };
        let port = browser.wait_driver_port();
        browser.driver_url = format!("http://127.0.0.1:{port}");
        browser.wait_driver_ready();
        browser.session = browser.new_session(&tools.chromium);
        browser
    }

    /// The port chromedriver bound, from its log line `ChromeDriver was started successfully on
    /// port <port>`.
    fn wait_driver_port(&mut self) -> u16 {
        const STARTED: &str = "started successfully on port ";
        let end = Instant::now() + START_DEADLINE;
        loop {
            let log = self.driver_log();
            if let Some(port) = log.split(STARTED).nth(1).and_then(|rest| {
                let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
                digits.parse::<u16>().ok()
            }) {
                return port;
            }
            if let Ok(Some(status)) = self.driver.try_wait() {
                panic!("chromedriver exited at start ({status}); its log:\n{log}");
            }
            if Instant::now() >= end {
                panic!(
                    "chromedriver did not say which port it bound within {START_DEADLINE:?}; its log:\n{log}"
                );
            }
            std::thread::sleep(POLL_EVERY);
        }
    }

    fn wait_driver_ready(&mut self) {
        let end = Instant::now() + START_DEADLINE;
        loop {
            let url = format!("{}/status", self.driver_url);
            let ready = self.rt.block_on(async {
                let r = self.http.get(&url).send().await.ok()?;
                let v: Value = r.json().await.ok()?;
                v["value"]["ready"].as_bool()
            });
            if ready == Some(true) {
                return;
            }
            if let Ok(Some(status)) = self.driver.try_wait() {
                panic!(
                    "chromedriver exited at start ({status}); its log:\n{}",
                    self.driver_log()
                );
            }
            if Instant::now() >= end {
                panic!(
                    "chromedriver not ready after {START_DEADLINE:?}; its log:\n{}",
                    self.driver_log()
                );
            }
            std::thread::sleep(POLL_EVERY);
        }
    }

    fn new_session(&self, chromium: &Path) -> String {
        let mut args: Vec<String> = CHROMIUM_FLAGS.iter().map(|s| (*s).to_owned()).collect();
        args.push(format!(
            "--user-data-dir={}",
            self.dir.path().join("profile").display()
        ));
        let caps = json!({
            "capabilities": {
                "alwaysMatch": {
                    "browserName": "chrome",
                    "acceptInsecureCerts": true,
                    "timeouts": { "implicit": 0, "pageLoad": 30_000, "script": 30_000 },
                    "goog:chromeOptions": {
                        "binary": chromium.display().to_string(),
                        "args": args,
                    },
                    "goog:loggingPrefs": { "browser": "ALL" },
                }
            }
        });
        let url = format!("{}/session", self.driver_url);
        match self.send(reqwest::Method::POST, &url, Some(caps)) {
            Ok(v) => v["sessionId"]
                .as_str()
                .unwrap_or_else(|| panic!("no sessionId in {v}"))
                .to_owned(),
            Err(e) => panic!(
                "cannot open a browser session: {} {}: {}\nchromedriver log:\n{}",
                e.status,
                e.error,
                e.message,
                self.driver_log()
            ),
        }
    }

    /// The tail of chromedriver's log (for failure messages).
    pub fn driver_log(&self) -> String {
        let text =
            std::fs::read_to_string(self.dir.path().join("chromedriver.log")).unwrap_or_default();
        let start = text.len().saturating_sub(8_000);
        let start = (start..text.len())
            .find(|i| text.is_char_boundary(*i))
            .unwrap_or(text.len());
        text[start..].to_owned()
    }

    fn send(
        &self,
        method: reqwest::Method,
        url: &str,
        body: Option<Value>,
    ) -> Result<Value, WebDriverError> {
        self.rt.block_on(async {
            let mut req = self.http.request(method, url);
            if let Some(b) = body {
                req = req.json(&b);
            }
            let resp = req.send().await.map_err(|e| WebDriverError {
                status: 0,
                error: "transport".into(),
                message: e.to_string(),
            })?;
            let status = resp.status().as_u16();
            let v: Value = resp.json().await.map_err(|e| WebDriverError {
                status,
                error: "bad response".into(),
                message: e.to_string(),
            })?;
            let value = v.get("value").cloned().unwrap_or(Value::Null);
            if status >= 400 {
                return Err(WebDriverError {
                    status,
                    error: value["error"].as_str().unwrap_or("unknown error").into(),
                    message: value["message"].as_str().unwrap_or_default().into(),
                });
            }
            Ok(value)
        })
    }

    /// One command of this session (`path` after `/session/<id>`).
    pub fn command(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, WebDriverError> {
        let url = format!("{}/session/{}{path}", self.driver_url, self.session);
        self.send(method, &url, body)
    }

    fn must(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        self.command(method, path, body)
            .unwrap_or_else(|e| panic!("WebDriver {path}: {} {}: {}", e.status, e.error, e.message))
    }

    /// Navigates to `url` and waits for the page to load.
    pub fn goto(&self, url: &str) {
        self.must(reqwest::Method::POST, "/url", Some(json!({ "url": url })));
    }

    /// The current URL.
    pub fn url(&self) -> String {
        self.must(reqwest::Method::GET, "/url", None)
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// Runs `script` (a function body; `arguments[i]` are `args`) and returns its result.
    pub fn execute(&self, script: &str, args: Vec<Value>) -> Value {
        self.must(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({ "script": script, "args": args })),
        )
    }

    /// The first element matching the CSS selector, if any.
    pub fn find(&self, css: &str) -> Option<String> {
        match self.command(
            reqwest::Method::POST,
            "/element",
            Some(json!({ "using": "css selector", "value": css })),
        ) {
            Ok(v) => v[ELEMENT_KEY].as_str().map(str::to_owned),
            Err(e) if e.error == "no such element" => None,
            Err(e) => panic!("find {css:?}: {} {}: {}", e.status, e.error, e.message),
        }
    }

    fn element(&self, css: &str) -> String {
        self.find(css)
            .unwrap_or_else(|| panic!("no element {css:?} on the page:\n{}", self.page_text()))
    }

    /// The rendered text of the first element matching `css` (`None` if there is none or it
    /// went away while being read).
    pub fn text(&self, css: &str) -> Option<String> {
        let id = self.find(css)?;
        match self.command(reqwest::Method::GET, &format!("/element/{id}/text"), None) {
            Ok(v) => v.as_str().map(str::to_owned),
            Err(e) if e.error == "stale element reference" => None,
            Err(e) => panic!("text of {css:?}: {} {}: {}", e.status, e.error, e.message),
        }
    }

    /// Clicks the first element matching `css`.
    pub fn click(&self, css: &str) {
        let id = self.element(css);
        self.must(
            reqwest::Method::POST,
            &format!("/element/{id}/click"),
            Some(json!({})),
        );
    }

    /// Empties an input (or text area) matching `css`.
    pub fn clear(&self, css: &str) {
        let id = self.element(css);
        self.must(
            reqwest::Method::POST,
            &format!("/element/{id}/clear"),
            Some(json!({})),
        );
    }

    /// Types `text` into the element matching `css`. For `<input type=file>` the text is the
    /// file path (several paths separated by `\n` for `multiple`).
    pub fn type_into(&self, css: &str, text: &str) {
        let id = self.element(css);
        self.must(
            reqwest::Method::POST,
            &format!("/element/{id}/value"),
            Some(json!({ "text": text })),
        );
    }

    /// Selects the `<option>` with this value in the `<select>` matching `css` and tells the
    /// page it changed, as a user's choice would.
    pub fn select(&self, css: &str, value: &str) {
        let id = self.element(css);
        let el = json!({ ELEMENT_KEY: id });
        self.execute(
            "const s = arguments[0]; s.value = arguments[1]; \
             s.dispatchEvent(new Event('change', { bubbles: true }));",
            vec![el, json!(value)],
        );
    }

    /// The whole page's visible text.
    pub fn page_text(&self) -> String {
        self.command(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({ "script": "return document.body ? document.body.innerText : '';", "args": [] })),
        )
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
    }

    /// Polls until the text of `css` contains `needle`; returns that text. Panics at the
    /// deadline with what the element and the page showed instead.
    pub fn wait_for_text(&self, css: &str, needle: &str, deadline: Duration) -> String {
        self.wait_until(&format!("{css:?} to contain {needle:?}"), deadline, || {
            self.text(css).filter(|t| t.contains(needle))
        })
    }

    /// Polls `f` until it returns `Some`, up to `deadline`; panics with the page's text (and
    /// the browser console) otherwise.
    pub fn wait_until<T>(
        &self,
        what: &str,
        deadline: Duration,
        mut f: impl FnMut() -> Option<T>,
    ) -> T {
        let end = Instant::now() + deadline;
        loop {
            if let Some(v) = f() {
                return v;
            }
            if Instant::now() >= end {
                let shot = self.screenshot("timeout");
                panic!(
                    "timed out after {deadline:?} waiting for {what}\n--- page ({}) ---\n{}\n--- console ---\n{}\n--- screenshot: {} ---",
                    self.url(),
                    self.page_text(),
                    self.console().join("\n"),
                    shot.display()
                );
            }
            std::thread::sleep(POLL_EVERY);
        }
    }

    /// Saves a PNG of the viewport as `target/screenshots/<name>.png`; returns its path.
    pub fn screenshot(&self, name: &str) -> PathBuf {
        let b64 = self.must(reqwest::Method::GET, "/screenshot", None);
        let png = decode_base64(b64.as_str().unwrap_or_default())
            .unwrap_or_else(|| panic!("screenshot {name}: the driver sent bad base64"));
        let path = screenshot_dir().join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        path
    }

    /// The browser console's messages since the last call (JavaScript errors among them).
    pub fn console(&self) -> Vec<String> {
        self.command(
            reqwest::Method::POST,
            "/se/log",
            Some(json!({ "type": "browser" })),
        )
        .ok()
        .and_then(|v| {
            v.as_array().map(|a| {
                a.iter()
                    .map(|e| {
                        format!(
                            "{} {}",
                            e["level"].as_str().unwrap_or_default(),
                            e["message"].as_str().unwrap_or_default()
                        )
                    })
                    .collect()
            })
        })
        .unwrap_or_default()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            // Ends the browser too; chromedriver alone would leave it running.
            let url = format!("{}/session/{}", self.driver_url, self.session);
            let _ = self.rt.block_on(async {
                tokio::time::timeout(Duration::from_secs(10), self.http.delete(&url).send()).await
            });
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Standard base64 (the encoding of WebDriver screenshots), padded or not, line breaks ignored.
fn decode_base64(text: &str) -> Option<Vec<u8>> {
    use base64::engine::{general_purpose, DecodePaddingMode, GeneralPurpose};
    use base64::Engine as _;
    const ENGINE: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        general_purpose::PAD.with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    let clean: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    ENGINE.decode(clean).ok()
}

#[cfg(test)]
mod tests {
    use super::decode_base64;

    #[test]
    fn base64_decodes_with_and_without_padding() {
        assert_eq!(decode_base64("aGVsbG8=").as_deref(), Some(&b"hello"[..]));
        assert_eq!(decode_base64("aGVsbG8h").as_deref(), Some(&b"hello!"[..]));
        assert_eq!(decode_base64("aGk=").as_deref(), Some(&b"hi"[..]));
        assert_eq!(
            decode_base64("iVBO\nRw0K").as_deref(),
            Some(&[0x89, b'P', b'N', b'G', 13, 10][..])
        );
        assert_eq!(decode_base64("a$=="), None);
    }
}

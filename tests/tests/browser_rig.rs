//! The browser rig itself, without a gateway: headless Chromium in a private network namespace
//! sends its fake microphone (a 1 kHz tone) between two RTCPeerConnections of one page over
//! 127.0.0.1, the receiving side hears 1 kHz, screenshots work, and page exceptions come back
//! as errors.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use dialtone_tests::audio::tone_wav;
use dialtone_tests::browser::Browser;
use dialtone_tests::netns;
use serde_json::Value;

/// The page under test (two peer connections and an analyser), served by [`PageServer`].
const LOOPBACK_PAGE: &str = include_str!("../browser/loopback.html");

const TONE_HZ: f64 = 1000.0;
const TONE_TOLERANCE_HZ: f64 = 50.0;
const MEDIA_TIMEOUT: Duration = Duration::from_secs(20);

/// Serves one HTML page at `/` on 127.0.0.1 (404 for anything else) from a thread, until
/// dropped.
struct PageServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl PageServer {
    fn start(html: &'static str) -> std::io::Result<PageServer> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread_stop = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("page-server".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    if thread_stop.load(Ordering::SeqCst) {
                        break;
                    }
                    if let Ok(conn) = conn {
                        // One bad request must not stop the server.
                        let _ = serve(conn, html);
                    }
                }
            })?;
        Ok(PageServer {
            addr,
            stop,
            thread: Some(thread),
        })
    }

    fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }
}

impl Drop for PageServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the blocking accept so the thread sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(mut conn: TcpStream, html: &str) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = conn.read(&mut buf)?;
        if n == 0 || head.len() > 16 * 1024 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&head);
    let path = head.split_whitespace().nth(1).unwrap_or("");
    let (status, body) = if path == "/" {
        ("200 OK", html)
    } else {
        ("404 Not Found", "not found\n")
    };
    let content_type = if path == "/" {
        "text/html; charset=utf-8"
    } else {
        "text/plain"
    };
    write!(
        conn,
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    conn.flush()
}

/// The fake microphone: 10 s of 1 kHz at 48 kHz (Chromium loops it).
fn tone(dir: &Path) -> anyhow::Result<PathBuf> {
    let wav = dir.join("tone1k_48k.wav");
    tone_wav(&wav, TONE_HZ, 10.0, 48_000)?;
    Ok(wav)
}

fn num(v: &Value, key: &str) -> f64 {
    v.get(key)
        .and_then(Value::as_f64)
        .unwrap_or_else(|| panic!("no number {key:?} in {v}"))
}

#[test]
fn chromium_sends_fake_mic_tone_over_loopback_webrtc() {
    if !netns::in_private_netns("chromium_sends_fake_mic_tone_over_loopback_webrtc") {
        return;
    }
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("creating the test's temp dir");
    let wav = tone(dir.path()).expect("writing the 1 kHz fake microphone WAV with sox");
    let server = PageServer::start(LOOPBACK_PAGE).expect("serving the loopback page");
    let mut browser = Browser::launch(&wav).expect("launching headless Chromium");
    println!(
        "Chromium {} up after {:?}",
        browser.version(),
        started.elapsed()
    );
    browser
        .goto(&server.url())
        .expect("loading the loopback page");

    let stats = browser
        .wait_for(
            "(async () => { const s = await window.rig.stats(); \
             return s.sent > 50 && s.received > 50 && s; })()",
            MEDIA_TIMEOUT,
        )
        .unwrap_or_else(|e| {
            let errors = browser.eval("window.rig.errors").unwrap_or_default();
            panic!("audio packets did not flow pc1 -> pc2: {e:#}\npage errors: {errors}")
        });
    println!("stats: {stats}");
    assert!(num(&stats, "sent") > 50.0, "{stats}");
    assert!(num(&stats, "received") > 50.0, "{stats}");
    assert_eq!(stats["localAddress"], "127.0.0.1", "selected pair: {stats}");
    assert_eq!(
        stats["remoteAddress"], "127.0.0.1",
        "selected pair: {stats}"
    );

    // Wait for the tone to be audible at the receiver, then check its pitch.
    let spectrum = browser
        .wait_for(
            "(() => { const s = window.rig.spectrum(); return s && s.peakDb > -60 && s; })()",
            MEDIA_TIMEOUT,
        )
        .expect("the receiving peer connection never heard audio");
    println!("spectrum: {spectrum}");
    let heard = num(&spectrum, "dominantHz");
    assert!(
        (heard - TONE_HZ).abs() <= TONE_TOLERANCE_HZ,
        "receiver heard {heard} Hz, expected {TONE_HZ} ± {TONE_TOLERANCE_HZ} Hz: {spectrum}"
    );

    let png = dir.path().join("loopback.png");
    browser.screenshot(&png).expect("taking a screenshot");
    let bytes = std::fs::read(&png).expect("reading the screenshot");
    assert!(
        bytes.len() > 100 && bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
        "screenshot is not a PNG ({} bytes)",
        bytes.len()
    );
    browser.close().expect("closing Chromium");
    println!("smoke test body took {:?}", started.elapsed());
}

#[test]
fn browser_reports_page_exceptions_as_errors() {
    if !netns::in_private_netns("browser_reports_page_exceptions_as_errors") {
        return;
    }
    let dir = tempfile::tempdir().expect("creating the test's temp dir");
    let wav = tone(dir.path()).expect("writing the 1 kHz fake microphone WAV with sox");
    let mut browser = Browser::launch(&wav).expect("launching headless Chromium");

    let thrown = browser.eval("(() => { throw new Error('deliberate failure 4711'); })()");
    let err = format!(
        "{:#}",
        thrown.expect_err("a thrown exception must be an error")
    );
    assert!(err.contains("deliberate failure 4711"), "{err}");

    let rejected = browser.eval("Promise.reject(new Error('rejected on purpose'))");
    let err = format!(
        "{:#}",
        rejected.expect_err("a rejected promise must be an error")
    );
    assert!(err.contains("rejected on purpose"), "{err}");

    let started = Instant::now();
    let timed_out = browser.wait_for("false", Duration::from_millis(300));
    let err = format!(
        "{:#}",
        timed_out.expect_err("wait_for on `false` must time out")
    );
    assert!(err.contains("Timeout"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5), "{err}");

    // The browser is still usable after errors.
    assert_eq!(browser.eval("6 * 7").expect("evaluating 6 * 7"), 42);
    assert_eq!(
        browser
            .eval("new Promise((r) => setTimeout(() => r({ok: [1, 'two']}), 10))")
            .expect("awaiting a promise"),
        serde_json::json!({"ok": [1, "two"]})
    );
    browser.close().expect("closing Chromium");
}

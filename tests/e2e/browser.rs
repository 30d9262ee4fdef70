//! The web page in Debian's headless Chromium, driven by Playwright: see
//! `tests/browser/chat.mjs`. Needs `chromium`, `node` and
//! `npm ci --prefix tests/browser`; without them the test says so and is
//! skipped, unless `CHAT_REQUIRE_BROWSER=1` (set by `.ci/run`) makes that a
//! failure.

use std::path::{Path, PathBuf};
use std::process::Command;

const INSTALL: &str = "apt-get install chromium nodejs npm && npm ci --prefix tests/browser";

#[test]
fn two_pages_and_a_terminal_client_chat_survive_a_restart_and_scroll_back() {
    run_script("chat.mjs");
}

#[test]
fn the_page_takes_a_token_from_its_fragment_and_keeps_it_out_of_request_lines() {
    run_script("identity.mjs");
}

/// Runs `tests/browser/SCRIPT` with node, or says why it cannot and skips.
fn run_script(script: &str) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let chromium = std::env::var_os("CHAT_CHROMIUM")
        .map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from);
    let missing: Vec<&str> = [
        (!chromium.exists()).then_some("chromium"),
        Command::new("node").arg("--version").output().is_err().then_some("node"),
        (!root.join("tests/browser/node_modules/playwright-core").exists())
            .then_some("playwright-core"),
    ]
    .into_iter()
    .flatten()
    .collect();
    if !missing.is_empty() {
        let message = format!("browser test needs {}: {INSTALL}", missing.join(", "));
        assert!(std::env::var_os("CHAT_REQUIRE_BROWSER").is_none(), "{message}");
        eprintln!("SKIPPED: {message}");
        return;
    }
    // CHAT_SCREENSHOT=img/page.png, passed through, saves README's pictures:
    // that one (desktop) and img/page-phone.png (390 x 844, dark).
    let status = Command::new("node")
        .arg(root.join("tests/browser").join(script))
        .env("CHAT_SERVER", env!("CARGO_BIN_EXE_server"))
        .env("CHAT_CLIENT", env!("CARGO_BIN_EXE_client"))
        .env("CHAT_CHROMIUM", &chromium)
        // chat.mjs's server names a --db of its own, a temporary file, so
        // that a restart keeps the history; anything else keeps nothing on
        // disk.
        .env("CHAT_DB", ":memory:")
        .status()
        .expect("run node");
    assert!(status.success(), "the browser test {script} failed (its output is above)");
}

/// The page answers `/help` itself, with the server's words (a
/// moderator's too).
#[test]
fn the_pages_help_is_the_servers() {
    let page = include_str!("../../src/server/page.html");
    assert!(page.contains(&format!("[[\"{}\"", chat::protocol::HELP)), "page.html's /help");
    let moderator = format!("moderator ? \"{}\" : \"\"", chat::protocol::MODERATOR_HELP);
    assert!(page.contains(&moderator), "page.html's /help for a moderator");
}

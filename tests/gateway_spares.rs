//! Warm spares (issue #16): a new session's `initialize` goes to a server process that was started
//! before the session existed; a replacement starts behind it; a dead spare is replaced and never handed
//! out; an idle app releases its spares and gets them back with its next session; a push replaces the
//! spares of the old release. Behaviour, not timing: every check is about which process serves.

use crate::gateway_support;

use std::time::Duration;

use gateway_support::*;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(30);

/// Waits until `bridge` has exactly one child that is not in `busy` (its warm spare) and returns it.
fn wait_spare(bridge: &Bridge, busy: &[u32]) -> u32 {
    // By what the bridge announced, not by its children: the era probe is a child for a moment too.
    let mut spare = None;
    let found = wait_until(WAIT, || {
        spare = bridge
            .stderr_text()
            .lines()
            .filter_map(|l| {
                let rest = &l[l.find("process ")? + 8..];
                rest.strip_suffix(" is a warm spare")?.trim().parse::<u32>().ok()
            })
            .rfind(|p| !busy.contains(p) && pid_alive(*p));
        spare.is_some()
    });
    assert!(found, "no single warm spare appeared; children: {:?}", children_of(bridge.pid()));
    spare.unwrap()
}

async fn session_pid(c: &reqwest::Client, url: &str) -> (String, u32) {
    let sid = init(c, url, "2025-11-25").await;
    let pid = call_text(c, url, &sid, 2, "pid", json!({})).await.parse().unwrap();
    (sid, pid)
}

#[tokio::test]
async fn a_new_session_runs_on_a_process_started_before_it() {
    let b = Bridge::start(&[]);
    let c = client();
    let spare = wait_spare(&b, &[]);
    let (_sid, pid) = session_pid(&c, &b.url).await;
    assert_eq!(pid, spare, "the session must get the warm spare");
    // A replacement starts behind it; the next session gets that one, never the first's.
    let next = wait_spare(&b, &[spare]);
    assert_ne!(next, spare);
    let (_sid2, pid2) = session_pid(&c, &b.url).await;
    assert_eq!(pid2, next);
    let m = c.get(format!("{}/metrics", b.base)).send().await.unwrap().text().await.unwrap();
    assert!(m.contains("catwalk_mcp_spares_taken_total"), "{m}");
}

#[tokio::test]
async fn a_dead_spare_is_replaced_and_never_handed_out() {
    let b = Bridge::start(&["--session-grace", "1s"]);
    let c = client();
    let dead = wait_spare(&b, &[]);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(dead as i32), nix::sys::signal::Signal::SIGKILL)
        .unwrap();
    let replacement = wait_spare(&b, &[dead]);
    assert_ne!(replacement, dead);
    let (_sid, pid) = session_pid(&c, &b.url).await;
    assert_eq!(pid, replacement, "the session must get the live replacement");
}

#[tokio::test]
async fn an_idle_app_releases_its_spares_and_gets_them_back() {
    let b = Bridge::start(&["--warm-idle", "1s", "--session-grace", "1s"]);
    let c = client();
    let spare = wait_spare(&b, &[]);
    assert!(wait_until(WAIT, || children_of(b.pid()).is_empty()), "the idle app kept its spare");
    assert!(!pid_alive(spare));
    // The first session after that pays a start-up (and the metrics say so); then a spare is back.
    let (sid, pid) = session_pid(&c, &b.url).await;
    assert_ne!(pid, spare);
    let m = c.get(format!("{}/metrics", b.base)).send().await.unwrap().text().await.unwrap();
    assert!(m.lines().any(|l| l.starts_with("catwalk_mcp_cold_starts_total") && !l.ends_with(" 0")), "{m}");
    // And what it cost: one observation of the start-up this session waited for.
    let paid = m.lines().find(|l| {
        l.starts_with("catwalk_mcp_cold_start_duration_seconds_count{") && l.contains("era=\"2025\"")
    });
    assert!(paid.is_some_and(|l| !l.ends_with(" 0")), "{m}");
    let back = wait_spare(&b, &[pid]);
    assert_ne!(back, pid);
    assert_eq!(call_text(&c, &b.url, &sid, 3, "echo", json!({"text": "still here"})).await, "still here");
}

#[tokio::test]
async fn warm_zero_and_shared_mode_start_no_spares() {
    for flags in [&["--warm", "0"][..], &["--shared"][..]] {
        let b = Bridge::start(flags);
        let c = client();
        let (_sid, pid) = session_pid(&c, &b.url).await;
        // The session's own process is the only one; a spare would have started right after it.
        let (_sid2, pid2) = session_pid(&c, &b.url).await;
        let children = children_of(b.pid());
        if flags == ["--shared"] {
            assert_eq!((pid, children), (pid2, vec![pid2]), "{flags:?}");
        } else {
            assert_ne!(pid, pid2);
            assert_eq!(
                children,
                {
                    let mut v = vec![pid, pid2];
                    v.sort();
                    v
                },
                "{flags:?}"
            );
        }
    }
}

//! The Unix control socket (`DIR/control.sock`, mode 0600): how the git hooks and the local CLI talk to
//! the running daemon.
//!
//! The protocol is newline-delimited JSON, one frame per line, tagged by `type`:
//!
//! ```text
//! client → daemon   {"type":"command","argv":["apps","--json"]}                      (first frame)
//!                   {"type":"hook","hook":"pre-receive","push_id":"…","updates":[{"old":…,"new":…,"ref":…}],
//!                    "options":["k=v"],"quarantine":{"quarantine_path":…,"object_directory":…,
//!                    "alternate_object_directories":…}}                              (first frame)
//!                   {"type":"stdin","data":"…"}  {"type":"stdin_eof"}                (after stdin_request)
//! daemon → client   {"type":"stdout","data":"…"}  {"type":"stderr","data":"…"}
//!                   {"type":"stdin_request"}                                         (a command wants stdin)
//!                   {"type":"exit","code":0}                                         (last frame)
//! ```
//!
//! Anyone who can open the socket is the daemon's own user, so the local CLI acts as the admin identity
//! `local`. A hook frame is honoured only for a `push_id` the daemon registered for a running push.

pub mod client;
pub mod server;

use serde::{Deserialize, Serialize};

use crate::git::hook::{QuarantineEnv, RefUpdate};

/// Longest accepted frame (a hook frame lists every pushed ref).
pub const MAX_FRAME: usize = 4 << 20;

/// Which hook is calling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum HookKind {
    #[serde(rename = "pre-receive")]
    PreReceive,
    #[serde(rename = "post-receive")]
    PostReceive,
}

/// Frames sent to the daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientFrame {
    Command {
        argv: Vec<String>,
    },
    Hook {
        hook: HookKind,
        push_id: String,
        updates: Vec<RefUpdate>,
        #[serde(default)]
        options: Vec<String>,
        #[serde(default)]
        quarantine: QuarantineEnv,
    },
    Stdin {
        data: String,
    },
    StdinEof,
}

/// Frames sent by the daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum DaemonFrame {
    Stdout { data: String },
    Stderr { data: String },
    StdinRequest,
    Exit { code: i32 },
}

/// One frame as a line of JSON.
pub fn encode<T: Serialize>(frame: &T) -> String {
    let mut line = serde_json::to_string(frame).expect("frames serialise");
    line.push('\n');
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let frame = ClientFrame::Hook {
            hook: HookKind::PreReceive,
            push_id: "abc".into(),
            updates: vec![RefUpdate {
                old: "0".repeat(40),
                new: "1".repeat(40),
                refname: "refs/heads/main".into(),
            }],
            options: vec!["a=b".into()],
            quarantine: QuarantineEnv::default(),
        };
        let line = encode(&frame);
        assert!(line.contains(r#""type":"hook""#) && line.contains(r#""hook":"pre-receive""#), "{line}");
        assert_eq!(serde_json::from_str::<ClientFrame>(line.trim()).unwrap(), frame);
        let exit: DaemonFrame = serde_json::from_str(r#"{"type":"exit","code":3}"#).unwrap();
        assert_eq!(exit, DaemonFrame::Exit { code: 3 });
        assert!(serde_json::from_str::<ClientFrame>(r#"{"type":"shell"}"#).is_err());
    }
}

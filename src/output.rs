//! Transport-independent input and output of a command or a push step.
//!
//! Commands and the push gate never see an SSH channel or a Unix socket: they write to an [`Output`]
//! (stdout/stderr chunks sent down a channel) and read from an [`Input`]. The SSH layer turns output into
//! channel data / extended data; the control socket turns it into JSON frames. That is what keeps "one
//! grammar over SSH and the local CLI" true by construction.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{mpsc, oneshot};

/// Which of the two client streams a chunk belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// A cheap, cloneable writer of stdout/stderr chunks. Writes after the reader went away are dropped:
/// a client that hung up does not make a command fail half-way.
#[derive(Clone, Debug)]
pub struct Output {
    tx: mpsc::UnboundedSender<(Stream, String)>,
    /// Bytes written but not yet taken by the transport (see [`Output::queued_bytes`]).
    queued: Arc<AtomicUsize>,
}

/// The receiving end of an [`Output`].
pub struct OutputReceiver {
    rx: mpsc::UnboundedReceiver<(Stream, String)>,
    queued: Arc<AtomicUsize>,
}

impl OutputReceiver {
    /// The next chunk, `None` once every writer is gone.
    pub async fn recv(&mut self) -> Option<(Stream, String)> {
        let chunk = self.rx.recv().await?;
        self.queued.fetch_sub(chunk.1.len(), Ordering::Relaxed);
        Some(chunk)
    }
}

impl Output {
    pub fn channel() -> (Output, OutputReceiver) {
        let (tx, rx) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        (Output { tx, queued: queued.clone() }, OutputReceiver { rx, queued })
    }

    /// Writes `text` to stdout as is.
    pub fn out(&self, text: impl Into<String>) {
        self.send(Stream::Stdout, text.into());
    }

    /// Writes `text` to stderr as is.
    pub fn err(&self, text: impl Into<String>) {
        self.send(Stream::Stderr, text.into());
    }

    fn send(&self, stream: Stream, text: String) {
        let len = text.len();
        if self.tx.send((stream, text)).is_ok() {
            self.queued.fetch_add(len, Ordering::Relaxed);
        }
    }

    /// Bytes written that the client has not taken yet. A command that writes without end (`logs -f`)
    /// checks it, so a reader that stops reading cannot make the daemon buffer without bound.
    pub fn queued_bytes(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// Resolves when the reader went away (the client disconnected): followers stop then.
    pub async fn closed(&self) {
        self.tx.closed().await
    }

    /// Writes one line to stdout.
    pub fn line(&self, text: impl AsRef<str>) {
        self.out(format!("{}\n", text.as_ref()));
    }

    /// Writes one line to stderr.
    pub fn eline(&self, text: impl AsRef<str>) {
        self.err(format!("{}\n", text.as_ref()));
    }
}

/// Progress lines of a push, a rollback or a deploy, in the `-----> step` style git users know from
/// Heroku/Dokku. The one sink the push gate, the pipeline, installs and the Fly runtime all write to: the
/// formatting lives here, and where the lines go (the pusher's terminal, an app's log for a detached
/// deploy, the Fly runner's stderr) is chosen once by whoever creates it.
#[derive(Clone)]
pub struct Progress {
    sink: ProgressSink,
}

#[derive(Clone)]
enum ProgressSink {
    /// A client's stdout (a push's `remote:` lines, a command's output).
    Client(Output),
    /// Whole lines to a function (an app's log, a process's stderr).
    Lines(Arc<dyn Fn(String) + Send + Sync>),
}

impl std::fmt::Debug for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sink = match self.sink {
            ProgressSink::Client(_) => "client",
            ProgressSink::Lines(_) => "lines",
        };
        f.debug_struct("Progress").field("sink", &sink).finish()
    }
}

impl Progress {
    /// Progress written to a client's stdout.
    pub fn new(out: Output) -> Progress {
        Progress { sink: ProgressSink::Client(out) }
    }

    /// Progress written line by line to `f` (each line formatted exactly as a client would see it).
    pub fn to_lines(f: impl Fn(String) + Send + Sync + 'static) -> Progress {
        Progress { sink: ProgressSink::Lines(Arc::new(f)) }
    }

    fn line(&self, text: String) {
        match &self.sink {
            ProgressSink::Client(out) => out.line(text),
            ProgressSink::Lines(f) => f(text),
        }
    }

    /// A headline: `-----> text`.
    pub fn step(&self, text: impl AsRef<str>) {
        self.line(format!("-----> {}", text.as_ref()));
    }

    /// A detail under the current step.
    pub fn detail(&self, text: impl AsRef<str>) {
        self.line(format!("       {}", text.as_ref()));
    }

    /// A refusal, on its own marked line.
    pub fn error(&self, text: impl AsRef<str>) {
        self.line(format!(" !     {}", text.as_ref()));
    }
}

/// The standard input of a command, read only when a command needs it (`keys add`). Reading it lazily
/// matters: `ssh host apps` from a terminal never sends EOF, so a command must not wait for stdin it does
/// not use.
pub struct Input {
    rx: Option<mpsc::Receiver<Vec<u8>>>,
    /// Asks the transport to start sending stdin (the control socket only sends it on request).
    request: Option<oneshot::Sender<()>>,
}

impl Input {
    /// An input fed by `rx` (closed = EOF); `request` fires on the first read.
    pub fn new(rx: mpsc::Receiver<Vec<u8>>, request: Option<oneshot::Sender<()>>) -> Input {
        Input { rx: Some(rx), request }
    }

    /// An input that is always empty.
    pub fn empty() -> Input {
        Input { rx: None, request: None }
    }

    /// Reads stdin to its end, refusing more than `limit` bytes.
    pub async fn read_all(&mut self, limit: usize) -> Result<Vec<u8>, String> {
        if let Some(request) = self.request.take() {
            let _ = request.send(());
        }
        let Some(rx) = self.rx.as_mut() else { return Ok(Vec::new()) };
        let mut buf = Vec::new();
        while let Some(chunk) = rx.recv().await {
            buf.extend_from_slice(&chunk);
            if buf.len() > limit {
                return Err(format!("standard input is larger than {limit} bytes"));
            }
        }
        Ok(buf)
    }
}

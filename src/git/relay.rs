//! Runs a `git receive-pack`/`upload-pack` child with the client's byte streams piped through.
//!
//! The order matters (a push hangs or loses its last lines otherwise): the child's stdin is closed when
//! the client sends EOF; its stdout and stderr are copied to the client until they end; only then does the
//! caller send the exit status, EOF and close.

use std::process::Stdio;

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Spawns `cmd` and relays: `input` → child stdin (EOF when `input` closes), child stdout → `stdout`,
/// child stderr → `stderr`. Returns the exit code (128 + signal if killed). `abort` kills the child.
pub async fn relay<O, E>(
    mut cmd: tokio::process::Command,
    mut input: mpsc::Receiver<Vec<u8>>,
    mut stdout: O,
    mut stderr: E,
    abort: CancellationToken,
) -> std::io::Result<i32>
where
    O: AsyncWrite + Unpin + Send + 'static,
    E: AsyncWrite + Unpin + Send + 'static,
{
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
    let mut child = cmd.spawn()?;
    let mut child_in = child.stdin.take().expect("stdin is piped");
    let mut child_out = child.stdout.take().expect("stdout is piped");
    let mut child_err = child.stderr.take().expect("stderr is piped");

    let feed = tokio::spawn(async move {
        while let Some(chunk) = input.recv().await {
            if child_in.write_all(&chunk).await.is_err() {
                // The child stopped reading (it failed or finished early); drain nothing more.
                break;
            }
        }
        // Dropping `child_in` closes the pipe: git sees EOF.
    });
    let out = tokio::spawn(async move {
        let r = tokio::io::copy(&mut child_out, &mut stdout).await;
        let _ = stdout.flush().await;
        r
    });
    let err = tokio::spawn(async move {
        let r = tokio::io::copy(&mut child_err, &mut stderr).await;
        let _ = stderr.flush().await;
        r
    });

    let status = tokio::select! {
        status = child.wait() => status?,
        _ = abort.cancelled() => {
            let _ = child.start_kill();
            child.wait().await?
        }
    };
    feed.abort();
    // The pipes end when the child and its hooks exited; wait for the last bytes to reach the client.
    let _ = out.await;
    let _ = err.await;
    Ok(exit_code(status))
}

fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

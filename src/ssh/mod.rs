//! The SSH server (russh): public-key authentication, then exec requests for git or for commands.
//!
//! Identity is decided only in [`Handler::auth_publickey`], which russh calls after verifying the
//! signature. `auth_publickey_offered` (a key merely offered, ownership unproven) only answers "this key
//! could be accepted" and never touches the connection's identity: a client offering the admin's public
//! key and then signing with its own key is its own key (soft-serve GHSA-pchf-49fh-w34r).

mod exec;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result};
use russh::keys::PrivateKey;
use russh::server::{Auth, Msg, PublicKeyOffer, Session, VerifiedPublicKey};
use russh::{Channel, ChannelId, MethodKind, MethodSet};
use tokio::net::{TcpListener, TcpStream};

use crate::identity::Identity;
use crate::platform::Platform;

/// The russh configuration: publickey only (keyboard-interactive had a pre-auth DoS; passwords have no
/// place here), idle timeout from the config.
pub fn russh_config(platform: &Platform) -> Result<Arc<russh::server::Config>> {
    let path = platform.dir.host_key();
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("reading the SSH host key {} (run `catwalk init`)", path.display()))?;
    let key = PrivateKey::from_openssh(&text)
        .map_err(|e| anyhow::anyhow!("{} is not an OpenSSH private key: {e}", path.display()))?;
    Ok(Arc::new(russh::server::Config {
        server_id: russh::SshId::Standard(format!("SSH-2.0-catwalk_{}", env!("CARGO_PKG_VERSION")).into()),
        methods: MethodSet::from(&[MethodKind::PublicKey][..]),
        keys: vec![key],
        inactivity_timeout: Some(platform.config.ssh.idle_timeout),
        auth_rejection_time: std::time::Duration::from_millis(500),
        // OpenSSH starts with a "none" probe to learn the methods: answer it at once.
        auth_rejection_time_initial: Some(std::time::Duration::ZERO),
        max_auth_attempts: 6,
        nodelay: true,
        ..Default::default()
    }))
}

/// Accepts connections until shutdown starts; running sessions keep going.
pub async fn serve(platform: Arc<Platform>, listener: TcpListener, config: Arc<russh::server::Config>) {
    loop {
        tokio::select! {
            _ = platform.shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    tokio::spawn(connection(platform.clone(), config.clone(), stream, peer));
                }
                Err(e) => {
                    tracing::warn!("ssh accept: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            },
        }
    }
    tracing::info!("ssh: stopped accepting connections");
}

/// Runs one connection, closing it if it has not authenticated within `ssh.handshake_timeout`.
async fn connection(
    platform: Arc<Platform>,
    config: Arc<russh::server::Config>,
    stream: TcpStream,
    peer: SocketAddr,
) {
    let _ = stream.set_nodelay(true);
    let authed = Arc::new(AtomicBool::new(false));
    let deadline = platform.config.ssh.handshake_timeout;
    let handler = Conn {
        platform: platform.clone(),
        peer,
        identity: None,
        authed: authed.clone(),
        channels: HashMap::new(),
        git_protocol: HashMap::new(),
    };
    let session =
        match tokio::time::timeout(deadline, russh::server::run_stream(config, stream, handler)).await {
            Ok(Ok(session)) => session,
            Ok(Err(e)) => {
                tracing::debug!("ssh {peer}: setup failed: {e}");
                return;
            }
            Err(_) => {
                tracing::info!("ssh {peer}: no SSH banner within {deadline:?}; closed");
                return;
            }
        };
    let handle = session.handle();
    let timer = async {
        tokio::time::sleep(deadline).await;
        if authed.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        result = session => {
            if let Err(e) = result {
                tracing::debug!("ssh {peer}: {e}");
            }
        }
        () = timer => {
            tracing::info!("ssh {peer}: not authenticated within {deadline:?}; closed");
            let _ = handle
                .disconnect(russh::Disconnect::ByApplication, "authentication timeout".into(), "en".into())
                .await;
        }
    }
}

/// One SSH connection.
struct Conn {
    platform: Arc<Platform>,
    peer: SocketAddr,
    /// Set only by `auth_publickey`, after russh verified the signature.
    identity: Option<Identity>,
    authed: Arc<AtomicBool>,
    /// Session channels opened but not yet given a command.
    channels: HashMap<ChannelId, Channel<Msg>>,
    /// `GIT_PROTOCOL` from each channel's env requests.
    git_protocol: HashMap<ChannelId, String>,
}

impl Conn {
    fn hint(&self) -> String {
        let (host, port) = self.platform.config.ssh_host_port();
        format!("catwalk has no shell; try: ssh -p {port} git@{host} help\r\n")
    }
}

impl russh::server::Handler for Conn {
    type Error = russh::Error;

    async fn auth_none(&mut self, _user: &str) -> Result<Auth, Self::Error> {
        Ok(Auth::Reject {
            proceed_with_methods: Some(MethodSet::from(&[MethodKind::PublicKey][..])),
            partial_success: false,
        })
    }

    /// Only "could this key be accepted": no identity is recorded here (the key's ownership is unproven).
    async fn auth_publickey_offered(
        &mut self,
        _user: &str,
        offer: PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(if self.platform.authorized_keys.lookup(offer.public_key).is_some() {
            Auth::Accept
        } else {
            Auth::reject()
        })
    }

    /// The signature was verified: this is the one place a connection gets an identity.
    async fn auth_publickey(&mut self, _user: &str, key: VerifiedPublicKey<'_>) -> Result<Auth, Self::Error> {
        match self.platform.authorized_keys.lookup(key.public_key) {
            Some(identity) => {
                tracing::info!("ssh {}: authenticated as {}", self.peer, identity.describe());
                self.identity = Some(identity);
                self.authed.store(true, Ordering::SeqCst);
                Ok(Auth::Accept)
            }
            None => {
                tracing::info!("ssh {}: refused unknown key", self.peer);
                Ok(Auth::reject())
            }
        }
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: russh::server::ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if self.identity.is_none() {
            reply.reject(russh::ChannelOpenFailure::AdministrativelyProhibited).await;
            return Ok(());
        }
        self.channels.insert(channel.id(), channel);
        reply.accept().await;
        Ok(())
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        // Only GIT_PROTOCOL is honoured (and validated); nothing else from the client reaches a process.
        if name == "GIT_PROTOCOL" && crate::git::is_valid_git_protocol(value) {
            self.git_protocol.insert(channel, value.to_string());
            session.channel_success(channel)?;
        } else {
            session.channel_failure(channel)?;
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn pty_request(
        &mut self,
        channel: ChannelId,
        _term: &str,
        _col: u32,
        _row: u32,
        _pw: u32,
        _ph: u32,
        _modes: &[(russh::Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        // Accepted so that `ssh -t host apps` works; an interactive shell gets the hint below.
        session.channel_success(channel)?;
        Ok(())
    }

    async fn shell_request(&mut self, channel: ChannelId, session: &mut Session) -> Result<(), Self::Error> {
        session.channel_success(channel)?;
        session.extended_data(channel, 1, self.hint().into_bytes())?;
        session.exit_status_request(channel, 1)?;
        session.eof(channel)?;
        session.close(channel)?;
        self.channels.remove(&channel);
        Ok(())
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        _name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_failure(channel)?;
        Ok(())
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let (Some(chan), Some(identity)) = (self.channels.remove(&channel), self.identity.clone()) else {
            session.channel_failure(channel)?;
            return Ok(());
        };
        session.channel_success(channel)?;
        let request = exec::Request {
            platform: self.platform.clone(),
            identity,
            command: data.to_vec(),
            git_protocol: self.git_protocol.remove(&channel),
        };
        tokio::spawn(exec::run(request, chan));
        Ok(())
    }

    async fn channel_close(&mut self, channel: ChannelId, _session: &mut Session) -> Result<(), Self::Error> {
        self.channels.remove(&channel);
        self.git_protocol.remove(&channel);
        Ok(())
    }
}

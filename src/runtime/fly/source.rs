//! Release sources for Fly machines: `GET /_catwalk/source/<token>` on the daemon's HTTP server.
//!
//! A release built from its repository has no package to install at boot: the machine's runner
//! downloads the release's exported source (`releases/vN/src` of the app, as a tar.gz) from the daemon
//! and builds it there. The download needs a one-time token:
//! - random 256 bits, created for one release of one app when its machine is staged;
//! - handed to the machine as the Fly secret `CATWALK_SOURCE_TOKEN` (never in the machine config);
//! - single use: the first request takes it (a second answers 404, like an unknown or forged one);
//! - expires after [`TOKEN_TTL`], and is revoked when the deploy ends, used or not;
//! - only its digest is kept, so the daemon's memory does not hold usable tokens either.
//!
//! The runner keeps the built source on the machine's root file system, which catwalk asks Fly to
//! persist (`rootfs.persist = "always"`): restarts and scale-to-zero wakes do not download it again.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use sha2::{Digest, Sha256};

use crate::gateway::{GatewayBody, InternalRoutes};

/// How long a source token stays valid when unused.
pub const TOKEN_TTL: Duration = Duration::from_secs(15 * 60);

/// The URL path prefix (after the daemon's URL) the runner appends the token to.
pub const SOURCE_PATH: &str = "/_catwalk/source/";

/// What a token grants: one release's source directory.
struct Grant {
    app: String,
    release: u32,
    dir: PathBuf,
    expires: Instant,
}

/// The outstanding source tokens (see the module docs).
#[derive(Default)]
pub struct SourceArchives {
    grants: Mutex<HashMap<[u8; 32], Grant>>,
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl SourceArchives {
    /// A new one-time token for `dir`, the exported source of `app`'s release `release`.
    pub fn grant(&self, app: &str, release: u32, dir: &Path) -> String {
        let token = hex::encode(rand::random::<[u8; 32]>());
        let mut grants = self.grants.lock().expect("source grants");
        let now = Instant::now();
        grants.retain(|_, g| g.expires > now);
        grants.insert(
            digest(&token),
            Grant { app: app.to_string(), release, dir: dir.to_path_buf(), expires: now + TOKEN_TTL },
        );
        token
    }

    /// Revokes the unused tokens of `app`'s release `release` (its deploy ended).
    pub fn revoke(&self, app: &str, release: u32) {
        self.grants.lock().expect("source grants").retain(|_, g| !(g.app == app && g.release == release));
    }

    /// Takes the grant of `token`: it is gone afterwards. `None` when unknown, used or expired.
    fn take(&self, token: &str) -> Option<Grant> {
        let grant = self.grants.lock().expect("source grants").remove(&digest(token))?;
        (grant.expires > Instant::now()).then_some(grant)
    }

    async fn answer(&self, rest: &str, req: Request<Incoming>) -> Response<GatewayBody> {
        let Some(token) = rest.strip_prefix("source/") else {
            return text(StatusCode::NOT_FOUND, "not found\n");
        };
        if req.method() != Method::GET {
            return text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n");
        }
        // Unknown, forged, used and expired tokens get the same answer.
        let Some(grant) = self.take(token) else {
            return text(StatusCode::NOT_FOUND, "unknown, used or expired source token\n");
        };
        let dir = grant.dir.clone();
        let packed = tokio::task::spawn_blocking(move || archive(&dir))
            .await
            .unwrap_or_else(|e| Err(format!("the packing task failed: {e}")));
        match packed {
            Ok(bytes) => {
                tracing::info!(app = %grant.app, "release v{} source sent to its Fly machine", grant.release);
                let mut r = Response::new(GatewayBody::Full(Some(Bytes::from(bytes))));
                r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/gzip"));
                r
            }
            Err(e) => {
                tracing::error!(app = %grant.app, "packing release v{}'s source failed: {e}", grant.release);
                text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "packing the release's source failed (see the daemon log)\n",
                )
            }
        }
    }
}

impl InternalRoutes for SourceArchives {
    fn serve(
        &self,
        rest: &str,
        req: Request<Incoming>,
    ) -> std::pin::Pin<Box<dyn Future<Output = Response<GatewayBody>> + Send + '_>> {
        let rest = rest.to_string();
        Box::pin(async move { self.answer(&rest, req).await })
    }
}

fn text(status: StatusCode, body: &str) -> Response<GatewayBody> {
    let mut r = Response::new(GatewayBody::Full(Some(Bytes::from(body.to_string()))));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

/// `dir` as a gzipped tar (symlinks kept as links; the export only contains links inside the tree).
pub fn archive(dir: &Path) -> Result<Vec<u8>, String> {
    if !dir.is_dir() {
        return Err(format!("{} does not exist", dir.display()));
    }
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    tar.follow_symlinks(false);
    tar.append_dir_all(".", dir).map_err(|e| format!("packing {}: {e}", dir.display()))?;
    let gz = tar.into_inner().map_err(|e| format!("packing {}: {e}", dir.display()))?;
    gz.finish().map_err(|e| format!("compressing {}: {e}", dir.display()))
}

/// Unpacks an [`archive`] into `dest` (the tar crate refuses entries that would land outside it).
pub fn unpack(bytes: &[u8], dest: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dest).map_err(|e| format!("creating {}: {e}", dest.display()))?;
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(bytes));
    tar.set_preserve_permissions(true);
    tar.unpack(dest).map_err(|e| format!("unpacking the source into {}: {e}", dest.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_single_use_and_bound_to_their_grant() {
        let s = SourceArchives::default();
        let t1 = s.grant("a", 1, Path::new("/x"));
        let t2 = s.grant("a", 2, Path::new("/y"));
        assert_eq!(t1.len(), 64);
        assert_ne!(t1, t2);
        assert!(s.take("0".repeat(64).as_str()).is_none());
        let g = s.take(&t1).expect("first use");
        assert_eq!((g.app.as_str(), g.release, g.dir.as_path()), ("a", 1, Path::new("/x")));
        assert!(s.take(&t1).is_none(), "second use");
        s.revoke("a", 2);
        assert!(s.take(&t2).is_none(), "revoked");
    }

    #[test]
    fn archives_round_trip_with_modes_and_links() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        std::fs::create_dir_all(src.join("pkg")).unwrap();
        std::fs::write(src.join("pkg/server.py"), "print('hi')\n").unwrap();
        std::fs::write(src.join("run.sh"), "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(src.join("run.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::symlink("pkg/server.py", src.join("link.py")).unwrap();
        let bytes = archive(&src).unwrap();
        let out = tmp.path().join("out");
        unpack(&bytes, &out).unwrap();
        assert_eq!(std::fs::read_to_string(out.join("pkg/server.py")).unwrap(), "print('hi')\n");
        assert_eq!(std::fs::metadata(out.join("run.sh")).unwrap().permissions().mode() & 0o777, 0o755);
        assert_eq!(std::fs::read_link(out.join("link.py")).unwrap(), Path::new("pkg/server.py"));
        assert!(archive(&tmp.path().join("missing")).is_err());
    }
}

//! Release sources for Fly machines: `GET /_catwalk/source/<token>` on the daemon's HTTP server.
//!
//! A release built from its repository has no package to install at boot: the machine's runner
//! downloads the release's exported source (`releases/vN/src` of the app, as a tar.gz) from the daemon
//! and builds it there. The download needs a one-time token:
//! - random 256 bits, created for one release of one app when its machines are staged;
//! - handed to the machines as the Fly secret `CATWALK_SOURCE_TOKEN` (never in the machine config; Fly
//!   secrets are per app, so the release's machines share it);
//! - one use per machine of the release: each download takes one, and once all are taken the token is
//!   gone (a further request answers 404, like an unknown or forged one);
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

/// What a token grants: one release's source directory, `uses` more times.
#[derive(Clone)]
struct Grant {
    app: String,
    release: u32,
    dir: PathBuf,
    expires: Instant,
    uses: u32,
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
    /// A new token for `dir`, the exported source of `app`'s release `release`, good for `uses` downloads
    /// (one per machine of the release).
    pub fn grant(&self, app: &str, release: u32, dir: &Path, uses: u32) -> String {
        let token = hex::encode(rand::random::<[u8; 32]>());
        let mut grants = self.grants.lock().expect("source grants");
        let now = Instant::now();
        grants.retain(|_, g| g.expires > now);
        grants.insert(
            digest(&token),
            Grant {
                app: app.to_string(),
                release,
                dir: dir.to_path_buf(),
                expires: now + TOKEN_TTL,
                uses: uses.max(1),
            },
        );
        token
    }

    /// Revokes the unused tokens of `app`'s release `release` (its deploy ended).
    pub fn revoke(&self, app: &str, release: u32) {
        self.grants.lock().expect("source grants").retain(|_, g| !(g.app == app && g.release == release));
    }

    /// Takes one use of `token`'s grant (the grant is gone with its last use): what it grants (`uses` is
    /// how many are left). `None` when unknown, used up or expired.
    fn take(&self, token: &str) -> Option<Grant> {
        let mut grants = self.grants.lock().expect("source grants");
        let key = digest(token);
        let grant = grants.get_mut(&key)?;
        if grant.expires <= Instant::now() {
            grants.remove(&key);
            return None;
        }
        grant.uses -= 1;
        if grant.uses == 0 {
            return grants.remove(&key);
        }
        Some(grant.clone())
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

/// Limits of one archive: content bytes, entries, directory depth (one open handle per level).
const ARCHIVE_MAX_BYTES: u64 = 512 << 20;
const ARCHIVE_MAX_ENTRIES: usize = 100_000;
const ARCHIVE_MAX_DEPTH: usize = 128;

/// `dir` as a gzipped tar of its directories, regular files and symlinks (kept as links).
///
/// The release's source is a tree the pusher shaped, so no path beneath `dir` is ever resolved while
/// packing it (the tar crate's `append_dir_all` walks by path): each directory is opened from its
/// parent's handle with `O_NOFOLLOW`, each file is opened with `O_NOFOLLOW|O_NONBLOCK` and packed only
/// if `fstat` says it is a regular file, and a link is packed as its target text (`readlinkat`). A link
/// therefore never brings a host file into the archive, even if the tree changes while it is packed;
/// FIFOs, sockets and device nodes are left out.
pub fn archive(dir: &Path) -> Result<Vec<u8>, String> {
    let root = cap_std::fs::Dir::open_ambient_dir(dir, cap_std::ambient_authority())
        .map_err(|e| format!("opening {}: {e}", dir.display()))?;
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut packer = Packer { tar: tar::Builder::new(gz), bytes: 0, entries: 0 };
    packer.pack_dir(&root, Path::new(""), 0).map_err(|e| format!("packing {}: {e}", dir.display()))?;
    let gz = packer.tar.into_inner().map_err(|e| format!("packing {}: {e}", dir.display()))?;
    gz.finish().map_err(|e| format!("compressing {}: {e}", dir.display()))
}

/// The archive being written and what it has used of its limits.
struct Packer {
    tar: tar::Builder<flate2::write::GzEncoder<Vec<u8>>>,
    bytes: u64,
    entries: usize,
}

impl Packer {
    /// Packs the entries of `dir` (whose path in the archive is `at`), sorted by name.
    fn pack_dir(&mut self, dir: &cap_std::fs::Dir, at: &Path, depth: usize) -> std::io::Result<()> {
        use cap_fs_ext::{DirExt, FollowSymlinks, OpenOptionsFollowExt, OpenOptionsSyncExt};
        use cap_std::fs::PermissionsExt;
        use std::io::{Error, Read};
        if depth >= ARCHIVE_MAX_DEPTH {
            return Err(Error::other(format!(
                "{} is nested deeper than {ARCHIVE_MAX_DEPTH} levels",
                at.display()
            )));
        }
        let mut entries: Vec<(std::ffi::OsString, cap_std::fs::FileType)> = Vec::new();
        for entry in dir.entries()? {
            let entry = entry?;
            entries.push((entry.file_name(), entry.file_type()?));
        }
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, kind) in entries {
            self.entries += 1;
            if self.entries > ARCHIVE_MAX_ENTRIES {
                return Err(Error::other(format!("more than {ARCHIVE_MAX_ENTRIES} entries")));
            }
            let path = at.join(&name);
            let mut header = tar::Header::new_gnu();
            header.set_mtime(0);
            if kind.is_dir() {
                // Opened without following: a directory swapped for a link since it was listed fails here.
                let sub = dir.open_dir_nofollow(&name)?;
                header.set_entry_type(tar::EntryType::Directory);
                header.set_mode(sub.dir_metadata()?.permissions().mode() & 0o7777);
                header.set_size(0);
                self.tar.append_data(&mut header, &path, std::io::empty())?;
                self.pack_dir(&sub, &path, depth + 1)?;
            } else if kind.is_symlink() {
                let target = dir.read_link_contents(&name)?;
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_mode(0o777);
                header.set_size(0);
                self.tar.append_link(&mut header, &path, &target)?;
            } else if kind.is_file() {
                let mut options = cap_std::fs::OpenOptions::new();
                options.read(true).follow(FollowSymlinks::No).nonblock(true);
                let file = dir.open_with(&name, &options)?;
                let meta = file.metadata()?;
                if !meta.is_file() {
                    continue; // replaced since it was listed: pack only regular files
                }
                let mut content = Vec::new();
                file.take(ARCHIVE_MAX_BYTES + 1 - self.bytes).read_to_end(&mut content)?;
                self.bytes += content.len() as u64;
                if self.bytes > ARCHIVE_MAX_BYTES {
                    return Err(Error::other(format!("more than {} MiB", ARCHIVE_MAX_BYTES >> 20)));
                }
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(meta.permissions().mode() & 0o777);
                header.set_size(content.len() as u64);
                self.tar.append_data(&mut header, &path, content.as_slice())?;
            }
            // FIFOs, sockets and device nodes: never part of a source tree, never packed.
        }
        Ok(())
    }
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
        let t1 = s.grant("a", 1, Path::new("/x"), 1);
        let t2 = s.grant("a", 2, Path::new("/y"), 1);
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
    fn a_token_of_several_machines_serves_each_once() {
        let s = SourceArchives::default();
        let t = s.grant("a", 1, Path::new("/x"), 3);
        for left in [2, 1, 0] {
            assert_eq!(s.take(&t).expect("a use left").uses, left);
        }
        assert!(s.take(&t).is_none(), "a fourth download");
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

    #[test]
    fn links_are_packed_as_links_and_never_bring_a_host_file_along() {
        let tmp = tempfile::tempdir().unwrap();
        let host = tmp.path().join("host");
        std::fs::create_dir_all(&host).unwrap();
        std::fs::write(host.join("secret"), "host-secret-canary").unwrap();
        let src = tmp.path().join("src");
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("server.py"), "print('hi')\n").unwrap();
        std::os::unix::fs::symlink(host.join("secret"), src.join("file-link")).unwrap();
        std::os::unix::fs::symlink(&host, src.join("dir-link")).unwrap();
        nix::unistd::mkfifo(&src.join("fifo"), nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let bytes = archive(&src).unwrap();
        let mut plain = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(bytes.as_slice()), &mut plain).unwrap();
        assert!(
            !String::from_utf8_lossy(&plain).contains("host-secret-canary"),
            "a link's target was packed"
        );
        let mut tar = tar::Archive::new(plain.as_slice());
        let mut seen: Vec<(String, tar::EntryType)> = tar
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (e.path().unwrap().display().to_string(), e.header().entry_type())
            })
            .collect();
        seen.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            seen,
            [
                ("dir-link".to_string(), tar::EntryType::Symlink),
                ("file-link".to_string(), tar::EntryType::Symlink),
                ("server.py".to_string(), tar::EntryType::Regular),
            ],
            "links as links, no FIFO"
        );
    }
}

//! Reading the pushed commit with git2: manifests for analysis, and the whole tree for repository builds.
//!
//! In pre-receive the pushed objects are still in git's quarantine directory (they only join the
//! repository once the push is accepted), so the quarantine object dirs are added as alternates.
//! Nothing here checks out into the repository or runs anything from it.

use std::path::{Component, Path};

use git2::{ObjectType, Oid, Repository};

use super::analyse::Tree;

/// Limits on what a repository build may unpack.
const MAX_FILES: usize = 50_000;
const MAX_BYTES: u64 = 512 << 20;

/// A commit of a bare repository, readable file by file.
pub struct CommitTree {
    repo: Repository,
    tree: Oid,
}

impl CommitTree {
    /// Opens `commit` in the bare repository at `repo`, also looking in `extra_object_dirs` (quarantine).
    pub fn open(repo: &Path, extra_object_dirs: &[&Path], commit: &str) -> Result<CommitTree, String> {
        let repository = Repository::open_bare(repo)
            .map_err(|e| format!("opening {}: {}", repo.display(), e.message()))?;
        {
            let odb = repository.odb().map_err(|e| e.message().to_string())?;
            for dir in extra_object_dirs {
                odb.add_disk_alternate(&dir.to_string_lossy()).map_err(|e| e.message().to_string())?;
            }
        }
        let oid = Oid::from_str(commit).map_err(|_| format!("{commit:?} is not a commit id"))?;
        let tree = repository
            .find_commit(oid)
            .map_err(|e| format!("commit {commit} is not readable: {}", e.message()))?
            .tree_id();
        Ok(CommitTree { repo: repository, tree })
    }

    /// Writes the tree's files under `dest` (regular files and safe relative symlinks only).
    pub fn export(&self, dest: &Path) -> Result<(), String> {
        let tree = self.repo.find_tree(self.tree).map_err(|e| e.message().to_string())?;
        let mut files = 0usize;
        let mut bytes = 0u64;
        let mut failure: Option<String> = None;
        tree.walk(git2::TreeWalkMode::PreOrder, |dir, entry| {
            let Ok(name) = entry.name() else { return git2::TreeWalkResult::Skip };
            let rel = format!("{dir}{name}");
            if !is_safe_relative(&rel) {
                failure = Some(format!("the repository contains an unsafe path {rel:?}"));
                return git2::TreeWalkResult::Abort;
            }
            let path = dest.join(&rel);
            let result = match entry.kind() {
                Some(ObjectType::Tree) => std::fs::create_dir_all(&path).map_err(|e| e.to_string()),
                Some(ObjectType::Blob) => {
                    files += 1;
                    match self.repo.find_blob(entry.id()) {
                        Ok(blob) => {
                            bytes += blob.size() as u64;
                            if files > MAX_FILES || bytes > MAX_BYTES {
                                Err(format!(
                                    "the repository is larger than {MAX_FILES} files / {} MiB",
                                    MAX_BYTES >> 20
                                ))
                            } else {
                                write_entry(&path, blob.content(), entry.filemode())
                            }
                        }
                        Err(e) => Err(e.message().to_string()),
                    }
                }
                // Submodules (commits) are not fetched: the repository must be self-contained.
                _ => Ok(()),
            };
            match result {
                Ok(()) => git2::TreeWalkResult::Ok,
                Err(e) => {
                    failure = Some(format!("unpacking {rel}: {e}"));
                    git2::TreeWalkResult::Abort
                }
            }
        })
        .ok();
        match failure {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

fn write_entry(path: &Path, content: &[u8], mode: i32) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| e.to_string())?;
    }
    if mode == 0o120000 {
        // A symlink: allowed only when it stays inside the tree.
        let target = String::from_utf8_lossy(content).to_string();
        if target.starts_with('/') || !is_safe_relative(&target) {
            return Err(format!("symlink to {target:?} leaves the repository"));
        }
        return std::os::unix::fs::symlink(&target, path).map_err(|e| e.to_string());
    }
    std::fs::write(path, content).map_err(|e| e.to_string())?;
    let perm = if mode == 0o100755 { 0o755 } else { 0o644 };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(perm)).map_err(|e| e.to_string())
}

/// A relative path without `..` (symlink targets may climb within the tree, but never above it).
fn is_safe_relative(path: &str) -> bool {
    let mut depth: i32 = 0;
    for c in Path::new(path).components() {
        match c {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir => {
                depth -= 1;
                if depth < 0 {
                    return false;
                }
            }
            _ => return false,
        }
    }
    true
}

impl Tree for CommitTree {
    fn read(&self, path: &str) -> Option<Vec<u8>> {
        let tree = self.repo.find_tree(self.tree).ok()?;
        let entry = tree.get_path(Path::new(path)).ok()?;
        if entry.kind() != Some(ObjectType::Blob) || entry.filemode() == 0o120000 {
            return None;
        }
        Some(self.repo.find_blob(entry.id()).ok()?.content().to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn git(dir: &Path, args: &[&str]) {
        let ok = Command::new("git")
            .args(args)
            .current_dir(dir)
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .status()
            .unwrap();
        assert!(ok.success(), "git {args:?}");
    }

    #[test]
    fn reads_and_exports_a_commit() {
        let work = tempfile::tempdir().unwrap();
        let w = work.path();
        git(w, &["init", "-q", "-b", "main"]);
        std::fs::write(w.join("catwalk.toml"), "[server]\npackage = \"npm:x\"\n").unwrap();
        std::fs::create_dir_all(w.join("src")).unwrap();
        std::fs::write(w.join("src/server.py"), "print('hi')\n").unwrap();
        std::os::unix::fs::symlink("src/server.py", w.join("link.py")).unwrap();
        git(w, &["add", "."]);
        git(w, &["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"]);
        let head = String::from_utf8(
            Command::new("git").args(["rev-parse", "HEAD"]).current_dir(w).output().unwrap().stdout,
        )
        .unwrap();
        let t = CommitTree::open(&w.join(".git"), &[], head.trim()).unwrap();
        assert!(t.read("catwalk.toml").unwrap().starts_with(b"[server]"));
        assert!(t.read("missing").is_none());
        assert!(t.read("src").is_none(), "directories are not files");
        let out = tempfile::tempdir().unwrap();
        t.export(out.path()).unwrap();
        assert_eq!(std::fs::read_to_string(out.path().join("src/server.py")).unwrap(), "print('hi')\n");
        assert_eq!(std::fs::read_to_string(out.path().join("link.py")).unwrap(), "print('hi')\n");
    }

    #[test]
    fn unsafe_paths() {
        assert!(is_safe_relative("a/b"));
        assert!(is_safe_relative("a/../b"));
        assert!(!is_safe_relative("../b"));
        assert!(!is_safe_relative("/etc/passwd"));
        assert!(!is_safe_relative("a/../../b"));
    }
}

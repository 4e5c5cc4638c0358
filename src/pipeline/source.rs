//! Reading the pushed commit with git2: manifests for analysis, and the whole tree for repository builds.
//!
//! In pre-receive the pushed objects are still in git's quarantine directory (they only join the
//! repository once the push is accepted), so the quarantine object dirs are added as alternates.
//! Nothing here checks out into the repository or runs anything from it.
//!
//! # Exporting a tree the pusher shaped
//!
//! `git receive-pack` runs no fsck, and libgit2 parses whatever tree objects a push carries: entry names
//! with `/`, `..`, `.git` or duplicates are all representable. The export therefore never builds a path
//! from a tree entry. It holds a [`cap_std::fs::Dir`] for the release directory (opened once, with
//! ambient authority, from the daemon's own path) and creates every entry *relative to the handle of its
//! parent directory*: directories with `mkdirat` then opened with `O_NOFOLLOW`, files with
//! `O_CREAT|O_EXCL` (which never opens an existing name, link or not), links with `symlinkat`. No step
//! resolves a symbolic link, so a link in the tree can only ever be a link in the export; it is never a
//! way out of it. On top of that, entry names are checked like git's fsck does ([`check_entry_name`])
//! and refused with the entry's path, so the pusher learns what to fix.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use cap_fs_ext::DirExt;
use cap_std::fs::{Dir, OpenOptions, OpenOptionsExt, Permissions, PermissionsExt};
use git2::{ObjectType, Oid, Repository};

use super::analyse::Tree;

/// Limits on what a repository build may unpack: entries (files, directories and links together, so a
/// tree of empty trees cannot explode either), content bytes, and directory depth (each level holds
/// one open directory handle while its children are written).
const MAX_ENTRIES: usize = 50_000;
const MAX_BYTES: u64 = 512 << 20;
const MAX_DEPTH: usize = 128;

/// Git's tree entry modes. libgit2 normalises whatever mode a tree object carries to one of these
/// (any other regular-file mode reads as 100644, or 100755 with an executable bit).
const MODE_TREE: i32 = 0o040000;
const MODE_BLOB: i32 = 0o100644;
const MODE_BLOB_EXECUTABLE: i32 = 0o100755;
const MODE_LINK: i32 = 0o120000;
const MODE_SUBMODULE: i32 = 0o160000;

/// A commit of a bare repository, readable file by file.
pub struct CommitTree {
    repo: Repository,
    tree: Oid,
}

/// What an export has used of its limits so far.
#[derive(Default)]
struct Budget {
    entries: usize,
    bytes: u64,
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

    /// Writes the tree's files, directories and links into the empty directory `dest` (see the module
    /// docs). On failure `dest` is removed again, and the error names the offending entry.
    pub fn export(&self, dest: &Path) -> Result<(), String> {
        let root = Dir::open_ambient_dir(dest, cap_std::ambient_authority())
            .map_err(|e| format!("opening {}: {e}", dest.display()))?;
        let tree = self.repo.find_tree(self.tree).map_err(|e| e.message().to_string())?;
        let result = self.export_tree(&tree, &root, "", 0, &mut Budget::default());
        if result.is_err() {
            drop(root);
            // std's remove_dir_all never follows links (it walks with openat/O_NOFOLLOW).
            let _ = std::fs::remove_dir_all(dest);
        }
        result
    }

    /// Writes the entries of `tree` into `dir`; `shown` is the escaped path of `dir` for messages.
    fn export_tree(
        &self,
        tree: &git2::Tree<'_>,
        dir: &Dir,
        shown: &str,
        depth: usize,
        budget: &mut Budget,
    ) -> Result<(), String> {
        check_tree_names(tree.iter().map(|e| e.name_bytes().to_vec()), shown)?;
        for entry in tree.iter() {
            let name = OsStr::from_bytes(entry.name_bytes());
            let path = format!("{shown}{}", escape_name(entry.name_bytes()));
            budget.entries += 1;
            if budget.entries > MAX_ENTRIES {
                return Err(too_large());
            }
            let written = match entry.filemode() {
                MODE_TREE => {
                    if depth + 1 > MAX_DEPTH {
                        return Err(format!(
                            "the repository nests directories deeper than {MAX_DEPTH} levels (at {path})"
                        ));
                    }
                    let subtree = self.repo.find_tree(entry.id()).map_err(|e| unreadable(&path, &e))?;
                    dir.create_dir(name)
                        .and_then(|()| dir.open_dir_nofollow(name))
                        .map_err(|e| format!("unpacking {path}: {e}"))
                        .and_then(|sub| {
                            self.export_tree(&subtree, &sub, &format!("{path}/"), depth + 1, budget)
                        })
                }
                MODE_LINK => {
                    let blob = self.repo.find_blob(entry.id()).map_err(|e| unreadable(&path, &e))?;
                    let target = blob.content();
                    if !link_stays_inside(depth, target) {
                        return Err(format!(
                            "the repository contains a symlink {path} -> {} that points outside the repository; \
                             catwalk recreates only relative links that stay inside it",
                            escape_name(target)
                        ));
                    }
                    dir.symlink(OsStr::from_bytes(target), name).map_err(|e| format!("unpacking {path}: {e}"))
                }
                // Submodules (commits) are not fetched: the repository must be self-contained.
                MODE_SUBMODULE => Ok(()),
                mode @ (MODE_BLOB | MODE_BLOB_EXECUTABLE) => {
                    let blob = self.repo.find_blob(entry.id()).map_err(|e| unreadable(&path, &e))?;
                    budget.bytes += blob.size() as u64;
                    if budget.bytes > MAX_BYTES {
                        return Err(too_large());
                    }
                    let perm = if mode == MODE_BLOB_EXECUTABLE { 0o755 } else { 0o644 };
                    write_new_file(dir, name, blob.content(), perm)
                        .map_err(|e| format!("unpacking {path}: {e}"))
                }
                mode => Err(format!(
                    "the repository's entry {path} has the file mode {mode:o}, which git never writes \
                     (expected 100644, 100755, 120000, 040000 or 160000)"
                )),
            };
            written?;
        }
        Ok(())
    }
}

fn too_large() -> String {
    format!("the repository is larger than {MAX_ENTRIES} files / {} MiB", MAX_BYTES >> 20)
}

fn unreadable(path: &str, e: &git2::Error) -> String {
    format!("the repository's entry {path} is not readable: {}", e.message())
}

/// Creates `name` in `dir` with `content`; `O_CREAT|O_EXCL` refuses any existing name, a link included.
fn write_new_file(dir: &Dir, name: &OsStr, content: &[u8], perm: u32) -> std::io::Result<()> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true).mode(perm);
    let mut file = dir.open_with(name, &options)?;
    file.write_all(content)?;
    // The creation mode went through the umask; the executable bit must survive it.
    file.set_permissions(Permissions::from_mode(perm))
}

/// Why a tree entry's name cannot become a file name in an export, or `None` when it can.
///
/// The same rules as git's fsck (`badTreeEntry`-class checks), which `receive-pack` does not run:
/// no empty names, no `/` (a name is one path component), no NUL, not `.` or `..`, and not `.git` in
/// any letter case (a `.git` directory would make tools run inside the release treat it as a
/// repository with the pusher's config).
pub fn check_entry_name(name: &[u8]) -> Option<&'static str> {
    if name.is_empty() {
        Some("is empty")
    } else if name.contains(&b'/') {
        Some("contains '/'")
    } else if name.contains(&0) {
        Some("contains a NUL byte")
    } else if name == b"." || name == b".." {
        Some("is a relative directory name")
    } else if name.eq_ignore_ascii_case(b".git") {
        Some("is .git, which only git itself may create")
    } else {
        None
    }
}

/// Checks every name of one tree and that no name appears twice in it; `shown` is the tree's path.
fn check_tree_names(names: impl Iterator<Item = Vec<u8>>, shown: &str) -> Result<(), String> {
    let mut seen: HashSet<Vec<u8>> = HashSet::new();
    for name in names {
        if let Some(why) = check_entry_name(&name) {
            return Err(format!(
                "the repository's tree entry {shown}{} {why}: git never writes such a tree \
                 (it was crafted); push a tree made by `git add`/`git commit`",
                quoted(&name)
            ));
        }
        if !seen.insert(name.clone()) {
            return Err(format!(
                "the repository's tree {} lists the entry {} twice: git never writes such a tree \
                 (it was crafted); push a tree made by `git add`/`git commit`",
                if shown.is_empty() { "(root)".to_string() } else { shown.trim_end_matches('/').to_string() },
                quoted(&name)
            ));
        }
    }
    Ok(())
}

/// `name` for a message: as text, with control characters, backslashes and bytes that are not UTF-8
/// made visible (`\x1b`, `\\`, `\xff`), so a crafted name cannot write escape sequences to a terminal.
pub fn escape_name(name: &[u8]) -> String {
    let mut out = String::new();
    for chunk in name.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                c if c.is_control() && (c as u32) < 0x100 => out.push_str(&format!("\\x{:02x}", c as u32)),
                c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

/// [`escape_name`] in double quotes (an empty name stays visible as `""`).
fn quoted(name: &[u8]) -> String {
    format!("\"{}\"", escape_name(name))
}

/// Whether a link `depth` directories below the export's root, pointing at `target`, stays inside
/// the export when read lexically: relative, and never climbing above the root.
///
/// This is hygiene (a clear error for links that are meant to leave the repository), not the boundary:
/// a chain such as `0 -> .`, `z -> 0/0/0/../../..` passes it. The boundary is that the export (and
/// every later daemon access to the release directory) never follows a link at all, and that a server
/// following one does so inside its sandbox, where the host's files are not mounted.
fn link_stays_inside(depth: usize, target: &[u8]) -> bool {
    if target.is_empty() || target.starts_with(b"/") || target.contains(&0) {
        return false;
    }
    let mut level = depth as i64;
    for part in target.split(|b| *b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => {
                level -= 1;
                if level < 0 {
                    return false;
                }
            }
            _ => level += 1,
        }
    }
    true
}

impl Tree for CommitTree {
    fn read(&self, path: &str) -> Option<Vec<u8>> {
        let tree = self.repo.find_tree(self.tree).ok()?;
        let entry = tree.get_path(Path::new(path)).ok()?;
        if entry.kind() != Some(ObjectType::Blob) || entry.filemode() == MODE_LINK {
            return None;
        }
        Some(self.repo.find_blob(entry.id()).ok()?.content().to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;
    use std::process::{Command, Stdio};

    fn git(dir: &Path, args: &[&str]) -> String {
        git_with_input(dir, args, &[])
    }

    fn git_with_input(dir: &Path, args: &[&str], input: &[u8]) -> String {
        let mut child = Command::new("git")
            .args(args)
            .current_dir(dir)
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@t")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@t")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(input).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "git {args:?}");
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    /// A repository in which trees can be written byte by byte, as a hostile pusher would.
    struct Crafted {
        dir: tempfile::TempDir,
    }

    impl Crafted {
        fn new() -> Crafted {
            let dir = tempfile::tempdir().unwrap();
            git(dir.path(), &["init", "-q", "--bare"]);
            Crafted { dir }
        }
        fn blob(&self, content: &[u8]) -> String {
            git_with_input(self.dir.path(), &["hash-object", "-w", "--stdin"], content)
        }
        /// A tree with exactly these entries (mode, name, object), in this order, unchecked.
        fn tree(&self, entries: &[(&str, &[u8], &str)]) -> String {
            let mut raw = Vec::new();
            for (mode, name, oid) in entries {
                raw.extend_from_slice(mode.as_bytes());
                raw.push(b' ');
                raw.extend_from_slice(name);
                raw.push(0);
                raw.extend_from_slice(&hex::decode(oid).unwrap());
            }
            git_with_input(
                self.dir.path(),
                &["hash-object", "-t", "tree", "--literally", "-w", "--stdin"],
                &raw,
            )
        }
        fn commit(&self, tree: &str) -> CommitTree {
            let commit = git(self.dir.path(), &["commit-tree", tree, "-m", "crafted"]);
            CommitTree::open(self.dir.path(), &[], &commit).unwrap()
        }
        /// Exports `tree` into a fresh directory; returns the error or the directory.
        fn export(&self, tree: &str) -> (tempfile::TempDir, Result<(), String>) {
            let out = tempfile::tempdir().unwrap();
            let dest = out.path().join("src");
            std::fs::create_dir(&dest).unwrap();
            let result = self.commit(tree).export(&dest);
            (out, result)
        }
    }

    #[test]
    fn reads_and_exports_a_commit() {
        let work = tempfile::tempdir().unwrap();
        let w = work.path();
        git(w, &["init", "-q", "-b", "main"]);
        std::fs::write(w.join("catwalk.toml"), "[server]\npackage = \"npm:x\"\n").unwrap();
        std::fs::create_dir_all(w.join("src/deep")).unwrap();
        std::fs::write(w.join("src/server.py"), "print('hi')\n").unwrap();
        std::fs::write(w.join("run.sh"), "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(w.join("run.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::symlink("src/server.py", w.join("link.py")).unwrap();
        std::os::unix::fs::symlink("../server.py", w.join("src/deep/up.py")).unwrap();
        git(w, &["add", "."]);
        git(w, &["commit", "-qm", "init"]);
        let head = git(w, &["rev-parse", "HEAD"]);
        let t = CommitTree::open(&w.join(".git"), &[], &head).unwrap();
        assert!(t.read("catwalk.toml").unwrap().starts_with(b"[server]"));
        assert!(t.read("missing").is_none());
        assert!(t.read("src").is_none(), "directories are not files");
        let out = tempfile::tempdir().unwrap();
        t.export(out.path()).unwrap();
        assert_eq!(std::fs::read_to_string(out.path().join("src/server.py")).unwrap(), "print('hi')\n");
        assert_eq!(std::fs::read_to_string(out.path().join("link.py")).unwrap(), "print('hi')\n");
        assert_eq!(std::fs::read_to_string(out.path().join("src/deep/up.py")).unwrap(), "print('hi')\n");
        let mode = |p: &str| std::fs::metadata(out.path().join(p)).unwrap().permissions().mode() & 0o777;
        assert_eq!((mode("run.sh"), mode("src/server.py")), (0o755, 0o644));
    }

    #[test]
    fn entry_names_follow_gits_fsck_rules() {
        for good in
            [&b"a"[..], b"server.py", b".github", b".gitignore", b"...", b"a b", b"\xff\xfe", b".git2"]
        {
            assert_eq!(check_entry_name(good), None, "{}", escape_name(good));
        }
        for (bad, why) in [
            (&b""[..], "is empty"),
            (b"a/b", "contains '/'"),
            (b"/", "contains '/'"),
            (b"a\0b", "contains a NUL byte"),
            (b".", "is a relative directory name"),
            (b"..", "is a relative directory name"),
            (b".git", "is .git, which only git itself may create"),
            (b".GIT", "is .git, which only git itself may create"),
            (b".GiT", "is .git, which only git itself may create"),
        ] {
            assert_eq!(check_entry_name(bad), Some(why), "{}", escape_name(bad));
        }
        let twice =
            check_tree_names([b"a".to_vec(), b"b".to_vec(), b"a".to_vec()].into_iter(), "dir/").unwrap_err();
        assert!(twice.contains("tree dir lists the entry \"a\" twice"), "{twice}");
        let root = check_tree_names([b"x".to_vec(), b"x".to_vec()].into_iter(), "").unwrap_err();
        assert!(root.contains("tree (root) lists"), "{root}");
        let slash = check_tree_names([b"z/tmp/x".to_vec()].into_iter(), "a/").unwrap_err();
        assert!(slash.contains("entry a/\"z/tmp/x\" contains '/'"), "{slash}");
    }

    #[test]
    fn names_in_messages_cannot_carry_escape_sequences() {
        assert_eq!(escape_name(b"plain.txt"), "plain.txt");
        assert_eq!(escape_name(b"\x1b[2J\x07"), "\\x1b[2J\\x07");
        assert_eq!(escape_name(b"a\\b\nc\r"), "a\\\\b\\x0ac\\x0d");
        assert_eq!(escape_name("\u{9b}31m é".as_bytes()), "\\x9b31m é");
        assert_eq!(escape_name(b"\xff\xfeok"), "\\xff\\xfeok");
        assert_eq!(escape_name("\u{202e}x".as_bytes()), "\u{202e}x", "bidi marks are not controls");
    }

    #[test]
    fn links_must_stay_inside_lexically() {
        assert!(link_stays_inside(0, b"a/b"));
        assert!(link_stays_inside(0, b"a/../b"));
        assert!(link_stays_inside(2, b"../../x"), "from two levels down, two levels up is the root");
        assert!(!link_stays_inside(2, b"../../../x"));
        assert!(!link_stays_inside(0, b"../b"));
        assert!(!link_stays_inside(0, b"/etc/passwd"));
        assert!(!link_stays_inside(0, b"a/../../b"));
        assert!(!link_stays_inside(0, b""));
    }

    #[test]
    fn crafted_trees_are_refused_before_anything_escapes() {
        let c = Crafted::new();
        let canary_dir = tempfile::tempdir().unwrap();
        let canary = canary_dir.path().join("x");
        let file = c.blob(b"pwned\n");
        let dot = c.blob(b".");
        // `z` climbs as many levels as the export is deep below `/`, then into the canary's directory.
        let up = "../".repeat(40);
        let chain = c.blob(
            format!("0/0/0/0/0/0/0/0/0/0/0/0/0/0/0/0/0/0/0/0/0/0/0/0/0/0/0/0/0/0/0/0/0/0/0/0/0/0/0/0/{up}")
                .as_bytes(),
        );
        let slash_name = format!("z{}", canary.display());
        let cases: Vec<(String, &str)> = vec![
            (
                c.tree(&[
                    ("120000", b"0", &dot),
                    ("120000", b"z", &chain),
                    ("100644", slash_name.as_bytes(), &file),
                ]),
                "contains '/'",
            ),
            (c.tree(&[("100644", b"..", &file)]), "\"..\" is a relative directory name"),
            (c.tree(&[("100644", b".", &file)]), "\".\" is a relative directory name"),
            (c.tree(&[("100644", b".Git", &file)]), "\".Git\" is .git"),
            (c.tree(&[("100644", b"a", &file), ("100644", b"a", &file)]), "lists the entry \"a\" twice"),
            (
                c.tree(&[("120000", b"a", &chain), ("040000", b"a", &c.tree(&[("100644", b"x", &file)]))]),
                "lists the entry \"a\" twice",
            ),
            (
                c.tree(&[("100644", b"\x1b]0;owned\x07", &file), ("100644", b"\x1b/x", &file)]),
                "entry \"\\x1b/x\" contains '/'",
            ),
            (
                c.tree(&[("120000", b"out", &c.blob(b"../../../../../../../../etc"))]),
                "symlink out -> ../../../../../../../../etc that points outside",
            ),
            (
                c.tree(&[("120000", b"abs", &c.blob(b"/etc/passwd"))]),
                "symlink abs -> /etc/passwd that points outside",
            ),
        ];
        for (tree, expected) in cases {
            let (out, result) = c.export(&tree);
            let err = result.expect_err(expected);
            assert!(err.contains(expected), "expected {expected:?} in {err:?}");
            assert!(!err.contains('\x1b'), "an escape sequence reached the message: {err:?}");
            assert!(!out.path().join("src").exists(), "a refused export leaves nothing behind");
        }
        assert!(!canary.exists(), "the crafted tree wrote outside the export");
        // The same checks hold in subdirectories, with the path of the entry in the message.
        let nested =
            c.tree(&[("040000", b"lib", &c.tree(&[("100644", b"a", &file), ("100644", b"a", &file)]))]);
        let err = c.export(&nested).1.unwrap_err();
        assert!(err.contains("tree lib lists the entry \"a\" twice"), "{err}");
    }

    #[test]
    fn a_link_in_the_tree_is_never_followed_while_exporting() {
        // The export creates every name with O_CREAT|O_EXCL / mkdirat relative to its parent's handle:
        // a link already at that name (planted, or written earlier by the same export) is refused, not
        // written through.
        let outside = tempfile::tempdir().unwrap();
        let work = tempfile::tempdir().unwrap();
        let dest = work.path().join("src");
        std::fs::create_dir(&dest).unwrap();
        std::os::unix::fs::symlink(outside.path(), dest.join("lib")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("f"), dest.join("f")).unwrap();
        let root = Dir::open_ambient_dir(&dest, cap_std::ambient_authority()).unwrap();
        assert!(write_new_file(&root, OsStr::new("f"), b"x", 0o644).is_err());
        assert!(root.create_dir("lib").is_err());
        assert!(root.open_dir_nofollow("lib").is_err());
        assert!(std::fs::read_dir(outside.path()).unwrap().next().is_none(), "nothing was written outside");
    }

    #[test]
    fn limits_bound_entries_and_depth() {
        let c = Crafted::new();
        let mut tree = c.tree(&[]);
        for _ in 0..=MAX_DEPTH {
            tree = c.tree(&[("040000", b"d", &tree)]);
        }
        let err = c.export(&tree).1.unwrap_err();
        assert!(err.contains(&format!("deeper than {MAX_DEPTH} levels")), "{err}");
        // 40 entries that are each the same tree of 40 entries ... : a few objects, an exploding walk.
        let mut wide = c.tree(&[("100644", b"f", &c.blob(b""))]);
        let names: Vec<Vec<u8>> = (0..40).map(|i| format!("d{i:02}").into_bytes()).collect();
        for _ in 0..3 {
            let entries: Vec<(&str, &[u8], &str)> =
                names.iter().map(|n| ("040000", n.as_slice(), wide.as_str())).collect();
            wide = c.tree(&entries);
        }
        let err = c.export(&wide).1.unwrap_err();
        assert!(err.contains("larger than 50000 files"), "{err}");
    }
}

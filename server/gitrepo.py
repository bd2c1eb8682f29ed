"""The git operations the engine needs, and nothing more.

Every experiment is recorded as a commit under ``refs/autoresearch/...`` built from a temporary index, so recording
never touches HEAD, the branch, the user's index or the working tree: the agent keeps editing while history grows
beside it. Only a kept experiment moves the branch (``advance_branch``).

Every git command runs with hooks disabled (``-c core.hooksPath=/dev/null``): a hook is code in the workspace's
``.git`` that the agent could have written, and it must never run inside the server's own calls (a
``reference-transaction`` hook could otherwise re-point the refs the server just wrote). The repository check does not
trust git's own view of the work tree either: ``worktree_changes`` hashes the files and compares them with the
commit's tree, so ``.git/info/exclude``, ``--skip-worktree`` and ``--assume-unchanged`` hide nothing.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import stat
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path, PurePosixPath

import git

logger = logging.getLogger(__name__)

FALLBACK_NAME = "autoresearch"
FALLBACK_EMAIL = "autoresearch@localhost"
NO_HOOKS = ("-c", "core.hooksPath=/dev/null")  # prefixed to every git command the server runs


class GitError(RuntimeError):
    """A git operation failed; the message names the command and what to do next."""


class GitRepo:
    """A git work tree whose top level is the experiment workspace. Paths are posix, relative to the workspace."""

    def __init__(self, workspace: str | os.PathLike[str]) -> None:
        self.workspace = Path(workspace).resolve()
        try:
            self._repo = git.Repo(self.workspace, search_parent_directories=True)
        except (git.InvalidGitRepositoryError, git.NoSuchPathError) as exc:
            raise GitError(f"{self.workspace} is not a git repository; run `git init` there and commit your files") from exc
        top = Path(self._repo.working_tree_dir or "").resolve()
        if top != self.workspace:
            raise GitError(
                f"{self.workspace} is inside the git repository {top} but is not its top level; "
                "use the repository root as the workspace"
            )
        self._identity_checked = False

    # ---- plumbing ----

    def _git(self, *args: str, env: Mapping[str, str] | None = None, raw: bool = False) -> str:
        """Run ``git args...`` in the workspace; ``raw`` keeps the output byte-exact (no newline stripping)."""
        try:
            out = self._repo.git.execute(
                ["git", *NO_HOOKS, *args], env=dict(env) if env else None, strip_newline_in_stdout=not raw
            )
        except git.GitCommandError as exc:
            stderr = (exc.stderr or "").strip().removeprefix("stderr:").strip().strip("'")
            raise GitError(
                f"`git {' '.join(args)}` failed in {self.workspace} (exit {exc.status}): {stderr or 'no message'}; "
                "check the repository state with `git status` and retry"
            ) from exc
        return str(out)

    def _ok(self, *args: str) -> bool:
        """True when ``git args...`` exits 0 (for questions whose answer is the exit status)."""
        status, _, _ = self._repo.git.execute(["git", *NO_HOOKS, *args], with_exceptions=False,
                                              with_extended_output=True)
        return status == 0

    @staticmethod
    def _norm(path: str | os.PathLike[str]) -> str:
        posix = PurePosixPath(os.fspath(path).replace("\\", "/"))
        if posix.is_absolute() or ".." in posix.parts or posix.as_posix() in ("", "."):
            raise GitError(f"path {os.fspath(path)!r} must be relative to the workspace and free of '..'")
        return posix.as_posix()

    # ---- questions ----

    def resolve(self, rev: str) -> str:
        """Full sha of the commit ``rev`` names."""
        return self._git("rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")

    def head_commit(self) -> str:
        """Full sha of HEAD; an error on a repository without commits."""
        if not self._ok("rev-parse", "--verify", "--quiet", "HEAD^{commit}"):
            raise GitError(f"{self.workspace} has no commits yet; commit your files (`git add -A && git commit`) first")
        return self.resolve("HEAD")

    def current_branch(self) -> str | None:
        """The checked-out branch's short name, or None when HEAD is detached."""
        status, out, _ = self._repo.git.execute(
            ["git", *NO_HOOKS, "symbolic-ref", "--quiet", "--short", "HEAD"], with_exceptions=False,
            with_extended_output=True
        )
        return str(out).strip() if status == 0 else None

    def branch_exists(self, name: str) -> bool:
        return self._ok("show-ref", "--verify", "--quiet", f"refs/heads/{name}")

    def branch_tip(self, name: str) -> str:
        if not self.branch_exists(name):
            raise GitError(f"branch {name!r} does not exist; list branches with `git branch`")
        return self.resolve(f"refs/heads/{name}")

    def blob_at(self, commit: str, path: str) -> bytes:
        """Exact bytes of ``path`` at ``commit`` (an error when absent or not a file)."""
        rel = self._norm(path)
        try:
            obj = self._repo.commit(commit).tree[rel]
        except KeyError as exc:
            raise GitError(f"{rel} is not in commit {commit[:12]}; add and commit it first") from exc
        except (ValueError, git.BadName) as exc:
            raise GitError(f"{commit!r} is not a commit in {self.workspace}") from exc
        if obj.type != "blob":
            raise GitError(f"{rel} is a {obj.type} in commit {commit[:12]}, not a file")
        return bytes(obj.data_stream.read())

    def mode_at(self, commit: str, path: str) -> int:
        """Git file mode of ``path`` at ``commit`` (0o100644, 0o100755 or 0o120000)."""
        rel = self._norm(path)
        try:
            return int(self._repo.commit(commit).tree[rel].mode)
        except KeyError as exc:
            raise GitError(f"{rel} is not in commit {commit[:12]}; add and commit it first") from exc

    def _worktree_entry(self, rel: str) -> tuple[int, bytes] | None:
        """(git mode, content) of the working copy of ``rel``; None when absent or a directory."""
        full = self.workspace / rel
        try:
            st = os.lstat(full)
        except FileNotFoundError:
            return None
        if stat.S_ISLNK(st.st_mode):
            return 0o120000, os.fsencode(os.readlink(full))
        if not stat.S_ISREG(st.st_mode):
            return None
        return (0o100755 if st.st_mode & 0o111 else 0o100644), full.read_bytes()

    def file_changed_since(self, commit: str, path: str) -> bool:
        """Whether the working copy of ``path`` differs from ``commit`` in content, existence or file type."""
        rel = self._norm(path)
        try:
            entry = self._repo.commit(commit).tree[rel]
            committed: tuple[int, bytes] | None = (int(entry.mode), entry.data_stream.read())
        except KeyError:
            committed = None
        current = self._worktree_entry(rel)
        if committed is None or current is None:
            return committed != current
        is_link = (committed[0] == 0o120000, current[0] == 0o120000)
        return is_link[0] != is_link[1] or committed[1] != current[1]

    def dirty_paths(self) -> list[str]:
        """Tracked files modified, staged or deleted, plus untracked files that are not ignored."""
        out = self._git("status", "--porcelain=v1", "-z", "--untracked-files=all", "--no-renames", raw=True)
        paths: list[str] = []
        for entry in out.split("\0"):
            if len(entry) > 3 and entry[3:] not in paths:
                paths.append(entry[3:])
        return sorted(paths)

    def worktree_changes(self, commit: str, skip: Iterable[str] = ()) -> list[str]:
        """Paths whose working copy differs from ``commit``: every file of its tree is hashed from disk and compared
        with the tree entry, then files git would list as untracked are added, with only the project's
        ``.gitignore`` files honoured (not ``.git/info/exclude`` or ``core.excludesFile``). Index flags
        (``--skip-worktree``, ``--assume-unchanged``) play no part. ``skip``: path prefixes to leave out (``runs``)."""
        prefixes = tuple(p.rstrip("/") for p in skip)

        def skipped(rel: str) -> bool:
            return any(rel == p or rel.startswith(p + "/") for p in prefixes)

        tree = self._repo.commit(self.resolve(commit)).tree
        tracked: set[str] = set()
        changed: list[str] = []
        for item in tree.traverse():
            if item.type != "blob" or skipped(item.path):
                continue
            tracked.add(item.path)
            current = self._worktree_entry(item.path)
            if current is None or (current[0] == 0o120000) != (int(item.mode) == 0o120000) \
                    or _blob_sha(current[1]) != item.binsha:
                changed.append(item.path)
        index_and_others = self._git("ls-files", "-z", "--cached", "--others", "--exclude-per-directory=.gitignore",
                                     raw=True)
        for rel in index_and_others.split("\0"):
            if rel and rel not in tracked and not skipped(rel) and self._worktree_entry(rel) is not None:
                changed.append(rel)
        return sorted(set(changed))

    def ref_exists(self, ref: str) -> bool:
        return self._ok("show-ref", "--verify", "--quiet", ref)

    def parent_and_tree(self, commit: str) -> tuple[str | None, str]:
        """(first parent or None, tree) of ``commit``."""
        tree = self._git("rev-parse", "--verify", f"{commit}^{{tree}}")
        status, out, _ = self._repo.git.execute(["git", *NO_HOOKS, "rev-parse", "--verify", "--quiet", f"{commit}^1"],
                                                with_exceptions=False, with_extended_output=True)
        return (str(out).strip() if status == 0 else None), tree

    def message_of(self, commit: str) -> str:
        """The first line of ``commit``'s message."""
        return self._git("log", "-1", "--format=%s", commit, "--")

    def delete_ref(self, ref: str, expected: str | None = None) -> None:
        """Delete ``ref`` (only while it still points at ``expected`` when given); a missing ref is not an error."""
        if not ref.startswith("refs/") or ref.startswith("refs/heads/"):
            raise GitError(f"refusing to delete {ref!r}: only refs outside refs/heads/ are removed this way")
        if self.ref_exists(ref):
            self._git("update-ref", "-d", ref, *([expected] if expected else []))

    def point_ref(self, ref: str, commit: str, message: str) -> None:
        """Create or move ``ref`` (outside refs/heads/) to ``commit``: a repeat run's ref names the commit it re-runs."""
        if not ref.startswith("refs/") or ref.startswith("refs/heads/"):
            raise GitError(f"refusing to set {ref!r}: only refs outside refs/heads/ are set this way")
        self._git("update-ref", "-m", f"autoresearch: {message}", ref, self.resolve(commit))

    def refs_under(self, prefix: str) -> dict[str, str]:
        """Refs whose full name starts with ``prefix`` (e.g. ``refs/autoresearch/tag/``), mapped to their shas."""
        out = self._git("for-each-ref", "--format=%(refname) %(objectname)", prefix.rstrip("/"))
        refs: dict[str, str] = {}
        for line in out.splitlines():
            name, _, sha = line.partition(" ")
            if name.startswith(prefix):
                refs[name] = sha
        return refs

    # ---- changes that do not touch HEAD, the index or the working tree ----

    def _tree_with_worktree(self, parent: str, paths: Iterable[str]) -> str:
        """Tree sha: ``parent``'s tree with the working-copy content of ``paths`` (absent ones removed)."""
        with tempfile.TemporaryDirectory(prefix="autoresearch-index-") as tmp:
            env = {"GIT_INDEX_FILE": str(Path(tmp) / "index")}
            self._git("read-tree", parent, env=env)
            for path in paths:
                rel = self._norm(path)
                current = self._worktree_entry(rel)
                if current is None:
                    self._git("update-index", "--force-remove", "--", rel, env=env)
                    continue
                mode, content = current
                if mode == 0o120000:
                    link = Path(tmp) / "link"
                    link.write_bytes(content)
                    sha = self._git("hash-object", "-w", "--no-filters", "--", str(link))
                else:
                    sha = self._git("hash-object", "-w", "--", rel)
                self._git("update-index", "--add", "--cacheinfo", f"{mode:o},{sha},{rel}", env=env)
            return self._git("write-tree", env=env)

    def _commit_tree(self, tree: str, parent: str, message: str, second_parent: str | None = None) -> str:
        self.ensure_identity()
        extra = ["-p", second_parent] if second_parent else []
        return self._git("commit-tree", tree, "-p", parent, *extra, "-m", message)

    def snapshot_commit(self, parent: str, paths: Iterable[str], message: str, ref: str) -> str:
        """Record the working copy of ``paths`` as a child of ``parent`` under ``ref``; returns the commit sha.

        An existing ``ref`` is overwritten, so re-recording an experiment after a crash is idempotent.
        """
        if not ref.startswith("refs/") or ref.startswith("refs/heads/"):
            raise GitError(f"snapshot ref {ref!r} must be under refs/ and outside refs/heads/ (e.g. refs/autoresearch/...)")
        parent_sha = self.resolve(parent)
        commit = self._commit_tree(self._tree_with_worktree(parent_sha, paths), parent_sha, message)
        self._git("update-ref", "-m", f"autoresearch: {message.splitlines()[0] if message else 'snapshot'}", ref, commit)
        return commit

    def diff_worktree(self, commit: str, paths: Iterable[str]) -> str:
        """Unified diff from ``commit`` to the working copy of ``paths``, including untracked and deleted files."""
        rels = [self._norm(p) for p in paths]
        if not rels:
            return ""
        base = self.resolve(commit)
        tree = self._tree_with_worktree(base, rels)
        return self._git("diff", "--no-color", "--no-ext-diff", "--no-renames", "--binary", base, tree, "--", *rels,
                         raw=True)

    # ---- changes to the checked-out branch ----

    def create_branch(self, name: str, start: str, *, checkout: bool = True) -> None:
        """Create branch ``name`` at ``start`` (refusing an existing one) and check it out."""
        if self.branch_exists(name):
            raise GitError(
                f"branch {name!r} already exists (at {self.branch_tip(name)[:12]}); choose another run tag or "
                f"delete it with `git branch -D {name}`"
            )
        self._git("branch", "--no-track", name, self.resolve(start))
        if checkout:
            self.checkout(name)

    def checkout(self, name: str) -> None:
        """Check out branch (or commit) ``name``; git refuses if that would overwrite local changes."""
        self._git("checkout", "--quiet", name, "--")

    def advance_branch(self, branch: str, tree_from_commit: str, message: str,
                       second_parent: str | None = None) -> str:
        """Commit ``tree_from_commit``'s tree on the checked-out ``branch`` and reset the index to it (not the files).

        Only the branch and the index move; the caller puts the files in place. ``second_parent`` records where the
        content came from when it did not start from the tip (a variant of a wave started from an older tip): the
        commit then has the tip as first parent and that commit as second, so history shows both.
        """
        if self.current_branch() != branch:
            raise GitError(
                f"cannot advance {branch!r}: the checked-out branch is {self.current_branch()!r}; "
                f"run `git checkout {branch}` first"
            )
        tip = self.branch_tip(branch)
        tree = self._git("rev-parse", "--verify", f"{self.resolve(tree_from_commit)}^{{tree}}")
        commit = self._commit_tree(tree, tip, message, second_parent)
        self._git("update-ref", "-m", f"autoresearch: {message.splitlines()[0] if message else 'keep'}",
                  f"refs/heads/{branch}", commit, tip)
        self._git("reset", "--quiet", "--mixed")
        return commit

    def restore_paths(self, commit: str, paths: Iterable[str]) -> None:
        """Set the working copy and index of ``paths`` to ``commit``; a path absent at ``commit`` is removed."""
        sha = self.resolve(commit)
        tree = self._repo.commit(sha).tree
        for path in paths:
            rel = self._norm(path)
            full = self.workspace / rel
            try:
                present = tree[rel].type == "blob"
            except KeyError:
                present = False
            if full.is_dir() and not full.is_symlink():
                shutil.rmtree(full)
            if present:
                self._git("checkout", "--quiet", sha, "--", rel)
            else:
                self._git("rm", "--cached", "--quiet", "--ignore-unmatch", "--", rel)
                if full.is_symlink() or full.exists():
                    full.unlink()

    def ensure_identity(self) -> None:
        """Set a repo-local user.name/user.email where none is configured, so commits work on a fresh machine."""
        if self._identity_checked:
            return
        for key, fallback in (("user.name", FALLBACK_NAME), ("user.email", FALLBACK_EMAIL)):
            if not self._ok("config", "--get", key):
                logger.info("no git %s configured; setting %r in %s/.git/config", key, fallback, self.workspace)
                self._git("config", "--local", key, fallback)
        self._identity_checked = True


def _blob_sha(content: bytes) -> bytes:
    """The binary sha1 git gives a blob with these bytes (what a tree entry holds)."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).digest()

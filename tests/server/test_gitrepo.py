"""GitRepo against real repositories in tmp_path, with no global git configuration."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from server.gitrepo import FALLBACK_EMAIL, FALLBACK_NAME, GitError, GitRepo


@pytest.fixture(autouse=True)
def bare_git_env(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fresh machine: empty HOME, no system config, and git told to never guess an identity."""
    home = tmp_path_factory.mktemp("home")
    global_config = home / "gitconfig"
    global_config.write_text("[user]\n\tuseConfigOnly = true\n")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(global_config))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    for name in ("GIT_AUTHOR_NAME", "GIT_AUTHOR_EMAIL", "GIT_COMMITTER_NAME", "GIT_COMMITTER_EMAIL", "EMAIL",
                 "GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE"):
        monkeypatch.delenv(name, raising=False)


def git(ws: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=ws, check=True, capture_output=True, text=True).stdout


def make_repo(ws: Path, files: dict[str, str]) -> Path:
    """A repo on branch main with one commit of ``files``; its own config holds no identity."""
    ws.mkdir(parents=True, exist_ok=True)
    git(ws, "init", "-q", "-b", "main")
    for rel, text in files.items():
        (ws / rel).parent.mkdir(parents=True, exist_ok=True)
        (ws / rel).write_text(text)
    git(ws, "add", "-A")
    git(ws, "-c", "user.name=setup", "-c", "user.email=setup@example.com", "commit", "-q", "-m", "initial")
    return ws


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "ws", {"train.py": "lr = 0.1\n", "prepare.py": "DATA = 1\n",
                                       ".gitignore": "runs/\n*.log\n"})


def test_a_fresh_machine_cannot_commit_until_ensure_identity_sets_a_repo_local_one(ws: Path) -> None:
    tree = git(ws, "rev-parse", "HEAD^{tree}").strip()
    with pytest.raises(subprocess.CalledProcessError):
        git(ws, "commit-tree", tree, "-m", "x")
    GitRepo(ws).ensure_identity()
    assert git(ws, "config", "--local", "user.name").strip() == FALLBACK_NAME
    assert git(ws, "config", "--local", "user.email").strip() == FALLBACK_EMAIL
    git(ws, "commit-tree", tree, "-m", "x")


def test_ensure_identity_keeps_an_identity_the_user_configured(ws: Path) -> None:
    git(ws, "config", "user.name", "Ada")
    git(ws, "config", "user.email", "ada@example.com")
    GitRepo(ws).ensure_identity()
    assert git(ws, "config", "user.name").strip() == "Ada"


def test_head_branch_and_tip_questions_answer_from_the_repository(ws: Path) -> None:
    repo = GitRepo(ws)
    head = git(ws, "rev-parse", "HEAD").strip()
    assert repo.head_commit() == head
    assert repo.current_branch() == "main"
    assert repo.branch_exists("main") and not repo.branch_exists("nope")
    assert repo.branch_tip("main") == head
    git(ws, "checkout", "-q", "--detach")
    assert repo.current_branch() is None


def test_a_workspace_that_is_not_a_repository_or_has_no_commits_is_refused_clearly(tmp_path: Path) -> None:
    with pytest.raises(GitError, match="not a git repository; run `git init`"):
        GitRepo(tmp_path)
    git(tmp_path, "init", "-q")
    with pytest.raises(GitError, match="no commits yet"):
        GitRepo(tmp_path).head_commit()


def test_create_branch_checks_it_out_and_refuses_an_existing_branch(ws: Path) -> None:
    repo = GitRepo(ws)
    head = repo.head_commit()
    repo.create_branch("autoresearch/t1", head)
    assert repo.current_branch() == "autoresearch/t1"
    with pytest.raises(GitError, match="already exists"):
        repo.create_branch("autoresearch/t1", head)
    repo.checkout("main")
    assert repo.current_branch() == "main"


def test_a_failing_command_names_the_command_in_the_error(ws: Path) -> None:
    with pytest.raises(GitError, match="git checkout --quiet no-such-branch"):
        GitRepo(ws).checkout("no-such-branch")


def test_blob_at_returns_exact_bytes_including_trailing_newlines(ws: Path) -> None:
    (ws / "data.bin").write_bytes(b"\x00\x01line\n\n")
    git(ws, "add", "data.bin")
    git(ws, "-c", "user.name=s", "-c", "user.email=s@e", "commit", "-q", "-m", "bin")
    repo = GitRepo(ws)
    assert repo.blob_at("HEAD", "data.bin") == b"\x00\x01line\n\n"
    with pytest.raises(GitError, match="missing.py is not in commit"):
        repo.blob_at("HEAD", "missing.py")


def test_file_changed_since_sees_edits_deletions_and_symlinks(ws: Path) -> None:
    repo = GitRepo(ws)
    head = repo.head_commit()
    assert not repo.file_changed_since(head, "prepare.py")
    (ws / "prepare.py").write_text("DATA = 2\n")
    assert repo.file_changed_since(head, "prepare.py")
    (ws / "prepare.py").unlink()
    assert repo.file_changed_since(head, "prepare.py")
    (ws / "copy.py").write_text("DATA = 1\n")
    (ws / "prepare.py").symlink_to("copy.py")
    assert repo.file_changed_since(head, "prepare.py")
    assert repo.file_changed_since(head, "copy.py")  # absent at head, present now
    assert not repo.file_changed_since(head, "never.py")


def test_dirty_paths_lists_modified_staged_deleted_and_untracked_but_not_ignored_files(ws: Path) -> None:
    (ws / "train.py").write_text("lr = 0.2\n")
    (ws / "prepare.py").unlink()
    (ws / "notes" / "deep").mkdir(parents=True)
    (ws / "notes" / "deep" / "idea.md").write_text("x\n")
    (ws / "staged.py").write_text("y\n")
    git(ws, "add", "staged.py")
    (ws / "runs").mkdir()
    (ws / "runs" / "ledger.jsonl").write_text("{}\n")
    (ws / "out.log").write_text("noise\n")
    assert GitRepo(ws).dirty_paths() == ["notes/deep/idea.md", "prepare.py", "staged.py", "train.py"]


def test_snapshot_commit_records_the_working_copy_without_touching_head_index_or_files(ws: Path) -> None:
    repo = GitRepo(ws)
    head = repo.head_commit()
    (ws / "train.py").write_text("lr = 0.3\n")
    (ws / "new_module.py").write_text("X = 1\n")
    git(ws, "add", "new_module.py")
    status_before = git(ws, "status", "--porcelain")
    index_before = git(ws, "ls-files", "--stage")

    sha = repo.snapshot_commit(head, ["train.py", "brand_new.py"], "exp 0007: lr 0.3",
                               "refs/autoresearch/t1/exp/0007")

    assert repo.head_commit() == head and repo.current_branch() == "main"
    assert git(ws, "status", "--porcelain") == status_before
    assert git(ws, "ls-files", "--stage") == index_before
    assert (ws / "train.py").read_text() == "lr = 0.3\n"
    assert git(ws, "show", f"{sha}:train.py") == "lr = 0.3\n"
    assert git(ws, "show", f"{sha}:prepare.py") == "DATA = 1\n"
    assert git(ws, "rev-parse", f"{sha}^").strip() == head
    assert git(ws, "log", "-1", "--format=%s", sha).strip() == "exp 0007: lr 0.3"
    assert "new_module.py" not in git(ws, "ls-tree", "--name-only", sha)  # only the listed paths are recorded
    assert repo.refs_under("refs/autoresearch/t1/") == {"refs/autoresearch/t1/exp/0007": sha}
    assert repo.refs_under("refs/autoresearch/t2/") == {}


def test_snapshot_of_a_deleted_path_removes_it_from_the_recorded_tree(ws: Path) -> None:
    repo = GitRepo(ws)
    (ws / "train.py").unlink()
    sha = repo.snapshot_commit("HEAD", ["train.py"], "gone", "refs/autoresearch/t/exp/0001")
    assert git(ws, "ls-tree", "--name-only", sha).split() == [".gitignore", "prepare.py"]


def test_snapshot_keeps_the_executable_bit(ws: Path) -> None:
    repo = GitRepo(ws)
    os.chmod(ws / "train.py", 0o755)
    sha = repo.snapshot_commit("HEAD", ["train.py"], "exec", "refs/autoresearch/t/exp/0002")
    assert git(ws, "ls-tree", sha, "train.py").startswith("100755 blob")


def test_advance_branch_commits_the_snapshot_tree_and_leaves_git_status_clean(ws: Path) -> None:
    repo = GitRepo(ws)
    head = repo.head_commit()
    (ws / "train.py").write_text("lr = 0.4\n")
    (ws / "helper.py").write_text("H = 1\n")
    snap = repo.snapshot_commit(head, ["train.py", "helper.py"], "exp 1", "refs/autoresearch/t/exp/0001")

    kept = repo.advance_branch("main", snap, "keep exp 1: val_bpb 0.99")

    assert repo.branch_tip("main") == kept == repo.head_commit()
    assert git(ws, "rev-parse", f"{kept}^").strip() == head
    assert git(ws, "rev-parse", f"{kept}^{{tree}}") == git(ws, "rev-parse", f"{snap}^{{tree}}")
    assert git(ws, "status", "--porcelain") == ""
    assert (ws / "train.py").read_text() == "lr = 0.4\n"


def test_advance_branch_refuses_a_branch_that_is_not_checked_out(ws: Path) -> None:
    repo = GitRepo(ws)
    repo.create_branch("other", "HEAD", checkout=False)
    with pytest.raises(GitError, match="run `git checkout other` first"):
        repo.advance_branch("other", "HEAD", "x")


def test_restore_paths_puts_back_content_and_index_and_removes_files_absent_at_the_commit(ws: Path) -> None:
    repo = GitRepo(ws)
    head = repo.head_commit()
    (ws / "train.py").write_text("lr = 9\n")
    git(ws, "add", "train.py")
    (ws / "prepare.py").unlink()
    (ws / "extra.py").write_text("E\n")
    git(ws, "add", "extra.py")
    (ws / "loose.py").write_text("L\n")

    repo.restore_paths(head, ["train.py", "prepare.py", "extra.py", "loose.py"])

    assert (ws / "train.py").read_text() == "lr = 0.1\n"
    assert (ws / "prepare.py").read_text() == "DATA = 1\n"
    assert not (ws / "extra.py").exists() and not (ws / "loose.py").exists()
    assert git(ws, "status", "--porcelain") == ""


def test_restore_paths_replaces_a_directory_standing_where_a_file_was(ws: Path) -> None:
    repo = GitRepo(ws)
    (ws / "train.py").unlink()
    (ws / "train.py").mkdir()
    (ws / "train.py" / "inner").write_text("x")
    repo.restore_paths("HEAD", ["train.py"])
    assert (ws / "train.py").read_text() == "lr = 0.1\n"


def test_diff_worktree_shows_modified_new_untracked_and_deleted_files(ws: Path) -> None:
    repo = GitRepo(ws)
    head = repo.head_commit()
    (ws / "train.py").write_text("lr = 0.5\n")
    (ws / "fresh.py").write_text("NEW = True\n")
    (ws / "prepare.py").unlink()

    patch = repo.diff_worktree(head, ["train.py", "fresh.py", "prepare.py", "absent.py"])

    assert "--- a/train.py\n+++ b/train.py\n" in patch and "-lr = 0.1\n+lr = 0.5\n" in patch
    assert "new file mode 100644" in patch and "+++ b/fresh.py\n" in patch and "+NEW = True\n" in patch
    assert "deleted file mode 100644" in patch and "-DATA = 1\n" in patch
    assert patch.endswith("\n")
    assert repo.diff_worktree(head, ["absent.py"]) == ""
    # the patch applies cleanly to the commit it was taken against
    other = make_repo(ws.parent / "other", {"train.py": "lr = 0.1\n", "prepare.py": "DATA = 1\n"})
    (other / "p.patch").write_text(patch)
    git(other, "apply", "p.patch")
    assert (other / "fresh.py").read_text() == "NEW = True\n"
    assert not (other / "prepare.py").exists()


def test_paths_outside_the_workspace_are_refused(ws: Path) -> None:
    with pytest.raises(GitError, match="free of '..'"):
        GitRepo(ws).blob_at("HEAD", "../etc/passwd")

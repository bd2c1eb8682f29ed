"""Which shell commands an agent may run when a user turns shell commands on.

Claude Code's deny rules and Edit/Write hooks never see what a shell command does, so `sed -i prepare.py`, `cat >
prepare.py` or a Python one-liner would walk straight past them. This policy reads the command before it runs and
refuses anything that could write, move, delete or relink a protected file, and any git command that touches the
history or the working tree (the server owns git). It is deliberately conservative: a refused harmless command costs
the agent one retry, a missed write could cost a run. The file guard stays the last line of defence for whatever a
static reading of a shell command cannot see.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shlex
from pathlib import Path, PurePosixPath

INSTEAD = "Edit only the mutable files with the Edit tool; the server commits and reverts."

_SEPARATORS = {";", ";;", "&", "&&", "|", "||", "|&", "(", ")", "{", "}", "!", "\n"}
_REDIRECTS = {">", ">>", ">|", "&>", "&>>", "<>", ">&", "<", "<<", "<<<", "<<-", "<&"}
_SAFE_SINKS = {"/dev/null", "/dev/stdout", "/dev/stderr", "/dev/tty"}
_WRITE_TOOLS = {
    "cp", "mv", "rm", "ln", "install", "dd", "truncate", "tee", "shred", "unlink", "rmdir", "chmod", "chown", "chgrp",
    "touch", "rsync", "sponge", "patch", "ed", "ex", "vi", "vim", "nvim", "nano", "emacs", "tar", "unzip", "cpio",
    "setfacl", "chattr", "mkfifo", "mknod", "split", "csplit", "git-apply",
}
_SHELL_STATE = {"alias", "hash", "enable", "shopt", "sudo", "doas", "su", "pkexec"}
_WRAPPERS = {"env", "nice", "nohup", "time", "command", "builtin", "exec", "xargs", "stdbuf", "ionice",
             "setsid", "chronic", "timeout", "unbuffer", "caffeinate", "taskset", "chrt", "flock", "watch", "then",
             "do", "else", "if", "while", "until", "!"}
_SHELLS = {"bash", "sh", "zsh", "dash", "ksh", "fish", "csh", "tcsh", "busybox"}
_STDIN_NAMES = {"-", "/dev/stdin", "/dev/fd/0", "/proc/self/fd/0"}
_INTERPRETER = re.compile(r"^(python[\d.]*|pypy[\d.]*|node|nodejs|deno|bun|perl|ruby|php|lua[\d.]*|Rscript|"
                          r"osascript|awk|gawk|mawk|nawk|jq|sed|gsed)$")
_READ_ONLY = {
    "cat", "head", "tail", "less", "more", "grep", "egrep", "fgrep", "rg", "ag", "wc", "diff", "cmp", "ls", "stat",
    "file", "sha256sum", "sha1sum", "md5sum", "b2sum", "cksum", "nl", "od", "xxd", "hexdump", "strings", "sort", "uniq",
    "cut", "column", "realpath", "readlink", "basename", "dirname", "echo", "printf", "test", "[", "[[", "pwd", "tree",
    "du", "df", "true", "false", "which", "type", "whoami", "date", "nvidia-smi", "free", "uptime", "ps", "top",
    "fold", "fmt", "expand", "tac", "rev", "comm", "join", "paste", "look", "bat", "exa", "eza", "fd", "locate",
    "cd", "pushd", "popd", "set", "export", "sleep",
}
_GIT_READ_ONLY = {"status", "diff", "log", "show", "blame", "grep", "ls-files", "ls-tree", "rev-parse", "describe",
                  "shortlog", "cat-file", "help", "version", "rev-list", "whatchanged", "reflog", "annotate"}
_GIT_BRANCH_WRITES = {"-d", "-D", "-f", "-m", "-M", "-c", "-C", "--delete", "--force", "--move", "--copy",
                      "--set-upstream-to", "-u", "--unset-upstream", "--edit-description", "--track"}
_OPEN_WRITE = re.compile(r"""open\s*\(.*?['"][rbtU]*[wax+][rwabxtU+]*['"]""", re.S)
_WRITE_API = re.compile(
    r"O_WRONLY|O_RDWR|O_TRUNC|O_CREAT|O_APPEND|write_text|write_bytes|\.write\s*\(|os\.(remove|unlink|rename|replace|"
    r"system|truncate|symlink|link|chmod|popen|exec\w*|spawn\w*|rmdir)|shutil|subprocess|unlink\s*\(|rmtree|"
    r"writeFile|appendFile|createWriteStream|fs\.write|copyFile|renameSync|truncateSync|symlinkSync|child_process|"
    r"\bsystem\s*\(|\bexec\s*\(|\beval\s*\(|__import__|importlib|getattr\s*\(|File\.write|FileUtils|\bsyswrite\b|"
    r"\bprint\s*>|\bw\s+\S|\bfputs\b|\bfwrite\b|file_put_contents|io\.open|pathlib"
)
_SUBSTITUTION = re.compile(r"\$\(([^()]*)\)|`([^`]*)`|[<>]\(([^()]*)\)")


def check_command(command: str, locked: list[str], workspace: Path) -> str | None:
    """A sentence saying why ``command`` must not run, or None when it may.

    ``locked`` are workspace-relative posix paths (files or folders) that no command may touch.
    """
    return _check(command, [PurePosixPath(p).as_posix().rstrip("/") for p in locked], Path(workspace), depth=0)


def _check(command: str, locked: list[str], workspace: Path, depth: int) -> str | None:
    if depth > 4:
        return "the command nests shells or substitutions too deeply to check; run the parts one at a time"
    for match in _SUBSTITUTION.finditer(command):
        inner = next(g for g in match.groups() if g is not None)
        reason = _check(inner, locked, workspace, depth + 1)
        if reason:
            return reason
    try:
        tokens = _tokens(command)
    except ValueError as exc:
        return f"the command could not be parsed ({exc}): check its quoting, or run a simpler command"
    for words in _simple_commands(tokens):
        reason = _check_simple(words, command, locked, workspace, depth)
        if reason:
            return reason
    return None


def _tokens(command: str) -> list[str]:
    text = command.replace("`", " ; ").replace("\\\n", " ").replace("\n", " \n ")
    lexer = shlex.shlex(text, posix=True, punctuation_chars=";&|()<>")
    lexer.whitespace = " \t\r"  # newlines separate commands, so they must survive as tokens
    lexer.whitespace_split = True
    lexer.commenters = ""
    out: list[str] = []
    for token in lexer:
        out.extend(_split_operators(token) if token and set(token) <= _PUNCT else [token])
    return out


_PUNCT = set(";&|()<>")
_OPERATORS = ("&>>", "<<<", ">>", "<<", "&&", "||", ";;", "|&", ">|", "&>", "<>", ">&", "<&", ">", "<", "|", "&", ";",
              "(", ")")


def _split_operators(token: str) -> list[str]:
    """`;>` or `|>` arrive as one punctuation run; split it into shell operators so no redirect hides in it."""
    out: list[str] = []
    while token:
        op = next(o for o in _OPERATORS if token.startswith(o))
        out.append(op)
        token = token[len(op):]
    return out


def _simple_commands(tokens: list[str]) -> list[list[str]]:
    out: list[list[str]] = [[]]
    for token in tokens:
        if token in _SEPARATORS or (token and set(token) <= set(";&|()") and token not in _REDIRECTS):
            out.append([])
        else:
            out[-1].append(token)
    return [words for words in out if words]


def _check_simple(words: list[str], whole: str, locked: list[str], ws: Path, depth: int) -> str | None:
    words, redirect_reason = _strip_redirects(words, locked, ws)
    if redirect_reason:
        return redirect_reason
    words = _unwrap(words)
    if not words:
        return None
    program = os.path.basename(words[0])
    args = words[1:]
    if program in _WRITE_TOOLS:
        return (f"blocked `{program}`: commands that copy, move, delete, link, truncate or change files are not "
                f"allowed here. {INSTEAD}")
    if program in _SHELL_STATE:
        return (f"blocked `{program}`: changing what commands mean (aliases, hashed paths) or running them as another "
                f"user is not allowed. {INSTEAD}")
    if program == "git":
        return _check_git(args)
    if program in ("eval", "source", ".", "trap"):
        return _inline(program, " ".join(args), whole, locked, ws, depth, shell=True)
    if program in _SHELLS:
        code = _flag_value(args, ("-c",))
        if code is None and args and not args[0].startswith("-") and args[0] not in _STDIN_NAMES:
            return _mentions_reason(program, args, locked, ws)
        if code is None and "<<" not in whole:
            return _from_stdin(program)
        return _inline(program, code if code is not None else whole, whole, locked, ws, depth, shell=code is not None)
    if program == "find" and any(a in ("-delete", "-exec", "-execdir", "-ok", "-okdir", "-fprint", "-fprintf", "-fls")
                                 for a in args):
        return f"blocked `find` with -delete/-exec/-fprint: it can change files. {INSTEAD}"
    if _INTERPRETER.match(program):
        return _check_interpreter(program, args, whole, locked, ws, depth)
    if program in _READ_ONLY:
        return None
    return _mentions_reason(program, args, locked, ws)


def _strip_redirects(words: list[str], locked: list[str], ws: Path) -> tuple[list[str], str | None]:
    kept: list[str] = []
    i = 0
    while i < len(words):
        word = words[i]
        if word in _REDIRECTS:
            target = words[i + 1] if i + 1 < len(words) else ""
            i += 2
            if word in ("<", "<<", "<<<", "<<-", "<&"):
                continue  # reading input changes nothing
            if word == ">&" and (target.isdigit() or target == "-"):
                continue  # fd duplication such as 2>&1
            if word != "<>" and target in _SAFE_SINKS:
                continue
            return kept, (f"blocked the redirection `{word} {target}`: writing files from the shell is not allowed "
                          f"(only to /dev/null). {INSTEAD}")
        kept.append(word)
        i += 1
    return kept, None


def _unwrap(words: list[str]) -> list[str]:
    """Drop `VAR=value` prefixes and wrappers such as `sudo`, `env -i`, `timeout 5`, `xargs -0` to find the program."""
    i = 0
    while i < len(words):
        word = words[i]
        name = os.path.basename(word)
        if re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", word):
            i += 1
        elif name in _WRAPPERS:
            i += 1
            while i < len(words) and (words[i].startswith("-") or re.match(r"^[A-Za-z_]\w*=", words[i])):
                i += 1
            while i < len(words) and re.match(r"^[\d.]+[smhd]?$", words[i]):
                i += 1  # `timeout 5`, `nice -n 10`
        else:
            break
    return words[i:]


def _check_git(args: list[str]) -> str | None:
    i = 0
    while i < len(args) and args[i].startswith("-"):
        i += 2 if args[i] in ("-C", "-c", "--git-dir", "--work-tree", "--namespace") else 1
    sub = args[i] if i < len(args) else ""
    rest = args[i + 1:]
    if sub in ("", "--version", "--help") or sub in _GIT_READ_ONLY:
        if sub in ("diff", "log", "show") and any(a.startswith("--output") for a in rest):
            return f"blocked `git {sub} --output`: it writes a file. {INSTEAD}"
        return None
    if sub in ("branch", "tag", "remote", "stash") and (not rest or rest[0] in ("list", "-l", "--list", "-v", "-a",
                                                                                  "-r", "-vv", "show")):
        if sub != "stash" or rest[:1] in (["list"], ["show"]):
            return None
    if sub == "branch" and not any(a in _GIT_BRANCH_WRITES for a in rest) and all(a.startswith("-") for a in rest):
        return None
    return (f"blocked `git {sub}`: the server owns git (it commits kept experiments and reverts the rest), so git "
            "commands that change history, branches or the working tree are not allowed. Read-only git (status, "
            f"diff, log, show) is fine. {INSTEAD}")


def _check_interpreter(program: str, args: list[str], whole: str, locked: list[str], ws: Path,
                       depth: int) -> str | None:
    if program in ("sed", "gsed"):
        if any(re.match(r"^-[a-zA-Z]*i", a) or a.startswith("--in-place") for a in args):
            return f"blocked `sed -i`: in-place edits from the shell are not allowed. {INSTEAD}"
        return _mentions_reason(program, args, locked, ws) or _inline_write(program, " ".join(args), locked, ws)
    if program in ("awk", "gawk", "mawk", "nawk") and "inplace" in " ".join(args):
        return f"blocked `{program} -i inplace`: in-place edits from the shell are not allowed. {INSTEAD}"
    if program == "perl" and any(re.match(r"^-[a-zA-Z]*i", a) for a in args):
        return f"blocked `perl -i`: in-place edits from the shell are not allowed. {INSTEAD}"
    inline = _flag_value(args, ("-c", "-e", "-E", "--eval", "-p", "--print", "-r", "-x"))
    heredoc = "<<" in whole
    if inline is None and not heredoc and (not args or any(a in _STDIN_NAMES for a in args)) and \
            program not in ("awk", "gawk", "mawk", "nawk", "jq"):
        return _from_stdin(program)
    if inline is not None or heredoc or program in ("awk", "gawk", "mawk", "nawk", "jq"):
        code = inline if inline is not None and "<<" not in whole else whole
        return _inline(program, code, whole, locked, ws, depth, shell=False)
    return _mentions_reason(program, args, locked, ws)


def _from_stdin(program: str) -> str:
    return (f"blocked `{program}` reading its program from a pipe or stdin, which cannot be checked: run a "
            f"script file or an inline `-c` one-liner that only reads. {INSTEAD}")


def _inline(program: str, code: str, whole: str, locked: list[str], ws: Path, depth: int, *,
            shell: bool) -> str | None:
    if shell:
        reason = _check(code, locked, ws, depth + 1)
        if reason:
            return reason
    return _inline_write(program, code, locked, ws) or _mentions_reason(program, _words_of(code), locked, ws)


def _inline_write(program: str, code: str, locked: list[str], ws: Path) -> str | None:
    if _OPEN_WRITE.search(code) or _WRITE_API.search(code):
        return (f"blocked inline `{program}` code that opens a file for writing or calls a file/process API: "
                f"one-liners may only read. {INSTEAD}")
    return None


def _words_of(code: str) -> list[str]:
    return [w for w in re.split(r"""[\s'"`,;()\[\]{}=+]+""", code) if w]


def _flag_value(args: list[str], flags: tuple[str, ...]) -> str | None:
    for i, arg in enumerate(args):
        if arg in flags:
            return args[i + 1] if i + 1 < len(args) else ""
        for flag in flags:
            if flag.startswith("-") and not flag.startswith("--") and re.match(rf"^-[a-zA-Z]*{flag[1:]}$", arg):
                return args[i + 1] if i + 1 < len(args) else ""
    return None


def _mentions_reason(program: str, args: list[str], locked: list[str], ws: Path) -> str | None:
    for arg in args:
        hit = _mentioned(arg, locked, ws)
        if hit:
            return (f"blocked `{program}` on {hit} ({arg!r}): {hit} is protected and may not be changed or run from "
                    f"the shell. Read it with the Read tool. {INSTEAD}")
    return None


def _mentioned(arg: str, locked: list[str], ws: Path) -> str | None:
    """The protected path ``arg`` refers to (any spelling, glob or containing folder), or None."""
    for piece in {arg, *arg.split("="), *arg.split(":")}:
        piece = piece.strip()
        if not piece:
            continue
        rel = _normalise(piece, ws)
        pattern = re.sub(r"\{[^{}]*\}", "*", rel) if rel is not None else None
        for path in locked:
            name = os.path.basename(path)
            if "." in name.strip(".") and name in piece:
                return path  # `"$PWD"/prepare.py`, `prepare.py.bak` and other spellings of the name
            if rel is None:
                continue
            if rel in (path, ".") or path.startswith(rel + "/") or rel.startswith(path + "/"):
                return path
            if pattern and any(c in pattern for c in "*?[") and (
                    fnmatch.fnmatchcase(path, pattern) or fnmatch.fnmatchcase(os.path.basename(path), pattern)
                    or any(fnmatch.fnmatchcase(parent, pattern) for parent in _parents(path))):
                return path
    return None


def _normalise(piece: str, ws: Path) -> str | None:
    """The workspace-relative form of a path-like word; None when it points outside the workspace."""
    if piece.startswith("~") or piece.startswith("$"):
        return None
    full = os.path.normpath(piece if os.path.isabs(piece) else os.path.join(ws, piece))
    for root in {os.path.normpath(ws), os.path.realpath(ws)}:
        if full == root or root.startswith(full.rstrip(os.sep) + os.sep):
            return "."  # the workspace or a folder above it holds every protected path
        if full.startswith(root + os.sep):
            return full[len(root) + 1:].replace(os.sep, "/")
    return None


def _parents(path: str) -> list[str]:
    parts = PurePosixPath(path).parts
    return ["/".join(parts[:i]) for i in range(1, len(parts))]

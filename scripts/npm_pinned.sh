# Sourced by the install scripts: install one pinned npm package into a private prefix and check its binary.
#
#   install_pinned PACKAGE VERSION PREFIX BIN_NAME [extra npm install flags...]
#
# Prints the binary's path on stdout (everything else goes to stderr). Idempotent: nothing is installed when the
# binary already reports VERSION. Runs the package's install.cjs itself when npm skipped the postinstall step.

installed_version() {
    # The version the binary reports, or nothing when it is absent or does not run.
    [ -x "$1" ] || return 0
    "$1" --version 2>/dev/null | awk 'NR==1 {print $1}' || true
}

install_pinned() {
    local package="$1" version="$2" prefix="$3" bin_name="$4"
    shift 4
    local bin="${prefix}/node_modules/.bin/${bin_name}"
    if [ "$(installed_version "${bin}")" = "${version}" ]; then
        echo "${bin}"
        return 0
    fi
    if ! command -v npm >/dev/null 2>&1; then
        echo "error: npm not found on PATH; it is needed to install ${package}@${version}." >&2
        echo "Install Node.js 20 or newer (it ships npm), then run this again." >&2
        return 1
    fi
    mkdir -p "${prefix}"
    [ -f "${prefix}/package.json" ] || echo '{"private": true}' > "${prefix}/package.json"
    echo "installing ${package}@${version} into ${prefix}" >&2
    npm install --prefix "${prefix}" --no-audit --no-fund --loglevel=error "$@" "${package}@${version}" >&2
    local pkg_dir="${prefix}/node_modules/${package}"
    if [ "$(installed_version "${bin}")" != "${version}" ] && [ -f "${pkg_dir}/install.cjs" ]; then
        (cd "${pkg_dir}" && node install.cjs) >&2
    fi
    local got
    got="$(installed_version "${bin}")"
    if [ "${got}" != "${version}" ]; then
        echo "error: ${bin} reports version '${got:-<does not run>}', expected ${version}." >&2
        echo "Remove ${prefix} and run this again; check the npm output above for a failed install step." >&2
        return 1
    fi
    echo "${bin}"
}

